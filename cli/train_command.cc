#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "cli/commands.h"
#include "cli/common_flags.h"
#include "model/config.h"
#include "train/data.h"
#include "train/trainer.h"

ABSL_FLAG(std::string, preset, "seed", "model preset: seed | bench-125m");
ABSL_FLAG(std::string, task, "count", "synthetic task when --data is not given: count");
ABSL_FLAG(std::string, data, "", "train on this text file (byte tokens, vocab 256)");
ABSL_FLAG(std::string, pos_encoding, "", "override the preset: learned | alibi");
ABSL_FLAG(int, n_kv_heads, 0, "override the preset's KV heads (GQA)");
ABSL_FLAG(long, steps, 400, "optimizer steps");
ABSL_FLAG(int, batch, 64, "sequences (of max_seq_len tokens) per batch");
ABSL_FLAG(float, lr, 3e-3f, "peak learning rate");
ABSL_FLAG(long, warmup, 20, "linear warmup steps");
ABSL_FLAG(float, weight_decay, 0.01f, "AdamW weight decay on matrices");
ABSL_FLAG(float, clip, 1.0f, "gradient global-norm clip (0: off)");
ABSL_FLAG(long, save_every, 0, "also checkpoint every N steps (0: only at the end)");
ABSL_FLAG(std::string, out, "tinygpt.safetensors", "checkpoint path");
ABSL_FLAG(std::string, resume, "", "continue from this checkpoint and its optimizer state");
ABSL_FLAG(double, min_accuracy, 0.0, "exit 1 unless the last batch's accuracy reaches this (0..1)");

namespace tinygpt {

int TrainCommand() {
  auto cfg = PresetConfig(absl::GetFlag(FLAGS_preset));
  if (!cfg.ok()) {
    std::fprintf(stderr, "tinygpt train: %s\n", std::string(cfg.status().message()).c_str());
    return 2;
  }
  if (absl::GetFlag(FLAGS_pos_encoding) == "alibi") cfg->pos_encoding = PosEncoding::kAlibi;
  else if (absl::GetFlag(FLAGS_pos_encoding) == "learned") cfg->pos_encoding = PosEncoding::kLearned;
  else if (!absl::GetFlag(FLAGS_pos_encoding).empty()) {
    std::fprintf(stderr, "tinygpt train: --pos-encoding must be learned or alibi\n");
    return 2;
  }
  if (absl::GetFlag(FLAGS_n_kv_heads) > 0) cfg->n_kv_heads = absl::GetFlag(FLAGS_n_kv_heads);
  std::unique_ptr<DataSource> data;
  if (!absl::GetFlag(FLAGS_data).empty()) {
    cfg->vocab_size = 256;
    auto d = MakeTextData(absl::GetFlag(FLAGS_data), cfg->max_seq_len, absl::GetFlag(FLAGS_batch));
    if (!d.ok()) {
      std::fprintf(stderr, "tinygpt train: %s\n", std::string(d.status().message()).c_str());
      return 1;
    }
    data = std::move(*d);
  } else if (absl::GetFlag(FLAGS_task) == "count") {
    data = MakeCountTask(cfg->vocab_size, cfg->max_seq_len, absl::GetFlag(FLAGS_batch));
  } else {
    std::fprintf(stderr, "tinygpt train: unknown --task %s (count)\n", absl::GetFlag(FLAGS_task).c_str());
    return 2;
  }
  TrainOptions o;
  o.steps = absl::GetFlag(FLAGS_steps);
  o.lr = absl::GetFlag(FLAGS_lr);
  o.warmup = absl::GetFlag(FLAGS_warmup);
  o.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  o.clip = absl::GetFlag(FLAGS_clip);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.save_every = absl::GetFlag(FLAGS_save_every);
  o.out = absl::GetFlag(FLAGS_out);
  o.resume = absl::GetFlag(FLAGS_resume);
  auto r = Train(*cfg, *data, o);
  if (!r.ok()) {
    std::fprintf(stderr, "tinygpt train: %s\n", std::string(r.status().message()).c_str());
    return 1;
  }
  std::printf("trained %ld steps: loss %.4f, next-token accuracy %.2f%%, %.0f tokens/s; wrote %s\n", r->steps_run,
              r->final_loss, 100.0 * r->final_accuracy, r->tokens_per_second, o.out.c_str());
  return r->final_accuracy >= absl::GetFlag(FLAGS_min_accuracy) ? 0 : 1;
}

}  // namespace tinygpt
