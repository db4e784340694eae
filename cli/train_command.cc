#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "cli/commands.h"
#include "cli/common_flags.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "train/data.h"
#include "train/trainer.h"

ABSL_FLAG(std::string, preset, "seed", "model preset: seed | bench-125m");
ABSL_FLAG(std::string, task, "count", "synthetic task when --data is not given: count");
ABSL_FLAG(std::string, data, "",
          "train on this text file (documents separated by blank lines); byte tokens (vocab 256) unless "
          "--tokenizer-vocab or --tokenizer is given");
ABSL_FLAG(int, tokenizer_vocab, 0,
          "with --data: first train a SentencePiece BPE tokenizer (byte fallback) of this many tokens on the corpus");
ABSL_FLAG(std::string, tokenizer, "", "with --data: use this SentencePiece model (e.g. a tokenizer.model)");
ABSL_FLAG(std::string, pos_encoding, "", "override the preset: learned | alibi");
ABSL_FLAG(int, n_kv_heads, 0, "override the preset's KV heads (GQA)");
ABSL_FLAG(long, steps, 400, "optimizer steps");
ABSL_FLAG(int, batch, 64,
          "sequences (of max_seq_len tokens) per batch; with N ranks (mpirun -np N, or --world-size N) the global batch, N shards of "
          "batch/N");
ABSL_FLAG(float, lr, 3e-3f, "peak learning rate");
ABSL_FLAG(long, warmup, 20, "linear warmup steps");
ABSL_FLAG(float, weight_decay, 0.01f, "AdamW weight decay on matrices");
ABSL_FLAG(float, clip, 1.0f, "gradient global-norm clip (0: off)");
ABSL_FLAG(long, save_every, 0, "also checkpoint every N steps (0: only at the end)");
ABSL_FLAG(std::string, out, "tinygpt.safetensors", "checkpoint path");
ABSL_FLAG(std::string, resume, "", "continue from this checkpoint and its optimizer state");
ABSL_FLAG(std::string, precision, "", "bf16 | fp16 | fp32 (default: bf16 on CUDA; the CPU trains in fp32)");
ABSL_FLAG(int, seq_len, 0, "input tokens per training sequence (default: the count task's max_seq_len - 1, text chunks of max_seq_len)");
ABSL_FLAG(long, untimed_steps, 0, "first steps left out of tokens/s and MFU (a benchmark's warm-up)");
ABSL_FLAG(long, inject_overflow_step, -1, "test hook: make this step's gradients overflow (fp16 loss scaling must skip it)");
ABSL_FLAG(double, min_accuracy, 0.0, "exit 1 unless the last batch's accuracy reaches this (0..1)");
ABSL_FLAG(std::string, loss_log, "", "write each step's loss (one line a step, full precision) to this file");
ABSL_FLAG(int, rank, -1,
          "data parallelism started by any launcher (not mpirun): this process's rank, 0..world-size-1 (default: TINYGPT_RANK)");
ABSL_FLAG(int, world_size, 0, "data parallelism without mpirun: the number of ranks (default: TINYGPT_WORLD_SIZE)");
ABSL_FLAG(std::string, init_addr, "",
          "data parallelism without mpirun: host:port where rank 0 listens and the other ranks connect (default: TINYGPT_INIT_ADDR)");
ABSL_FLAG(int, dist_timeout, 300, "seconds a rank waits for the others: at the rendezvous, and for each step's gradient sums");

namespace tinygpt {
namespace {

int Fail(const absl::Status& s, int code = 1) {
  std::fprintf(stderr, "tinygpt train: %s\n", std::string(s.message()).c_str());
  return code;
}

// The tokenizer of a text corpus: the resumed checkpoint's, a SentencePiece
// model file, one trained here on the corpus, or bytes.
// With --resume the model's shape (*cfg) is the checkpoint's as well.
absl::StatusOr<std::shared_ptr<const Tokenizer>> TextTokenizer(const std::vector<std::string>& docs, ModelConfig* cfg) {
  const int vocab = absl::GetFlag(FLAGS_tokenizer_vocab);
  const std::string file = absl::GetFlag(FLAGS_tokenizer);
  if (vocab > 0 && !file.empty()) return absl::InvalidArgumentError("give --tokenizer-vocab or --tokenizer, not both");
  if (!absl::GetFlag(FLAGS_resume).empty()) {
    if (vocab > 0 || !file.empty())
      return absl::InvalidArgumentError("--resume keeps the checkpoint's tokenizer; drop --tokenizer-vocab/--tokenizer");
    auto ck = LoadCheckpoint(absl::GetFlag(FLAGS_resume));
    if (!ck.ok()) return ck.status();
    if (!ck->tokenizer)
      return absl::InvalidArgumentError(absl::StrCat(absl::GetFlag(FLAGS_resume), " has no tokenizer to read --data with"));
    *cfg = ck->config;
    return ck->tokenizer;
  }
  if (!file.empty()) return LoadSentencePieceFile(file);
  if (vocab <= 0) return std::shared_ptr<const Tokenizer>(MakeByteTokenizer());
  size_t bytes = 0;
  for (const auto& d : docs) bytes += d.size();
  std::fprintf(stderr, "training a SentencePiece BPE tokenizer of %d tokens on %zu bytes...\n", vocab, bytes);
  const auto t0 = std::chrono::steady_clock::now();
  const int threads = absl::GetFlag(FLAGS_threads) > 0 ? absl::GetFlag(FLAGS_threads)
                                                      : static_cast<int>(std::thread::hardware_concurrency());
  auto tok = TrainSentencePiece(absl::StrJoin(docs, "\n"), vocab, threads);
  if (tok.ok())
    std::fprintf(stderr, "tokenizer trained in %.1fs\n",
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return tok;
}

}  // namespace

int TrainRank(Communicator* comm);

namespace {

// A flag, else the environment variable, else the flag's default.
int FlagOrEnvInt(int flag, int unset, const char* var) {
  if (flag != unset) return flag;
  const char* v = std::getenv(var);
  int n = unset;
  return v && absl::SimpleAtoi(v, &n) ? n : unset;
}

// What every rank must be given alike: a rank started with other flags
// would train another model, or shard another batch.
std::string TrainingFingerprint() {
  return absl::StrCat("preset=", absl::GetFlag(FLAGS_preset), " task=", absl::GetFlag(FLAGS_task), " data=", absl::GetFlag(FLAGS_data),
                      " tokenizer=", absl::GetFlag(FLAGS_tokenizer), " pos-encoding=", absl::GetFlag(FLAGS_pos_encoding),
                      " n-kv-heads=", absl::GetFlag(FLAGS_n_kv_heads), " steps=", absl::GetFlag(FLAGS_steps), " batch=", absl::GetFlag(FLAGS_batch),
                      " lr=", absl::GetFlag(FLAGS_lr), " warmup=", absl::GetFlag(FLAGS_warmup), " weight-decay=", absl::GetFlag(FLAGS_weight_decay),
                      " clip=", absl::GetFlag(FLAGS_clip), " seq-len=", absl::GetFlag(FLAGS_seq_len), " precision=", absl::GetFlag(FLAGS_precision),
                      " seed=", absl::GetFlag(FLAGS_seed));
}

}  // namespace

int TrainCommand() {
  // Ranks started by mpirun, or by any launcher with --rank/--world-size/
  // --init-addr, train one model data-parallel (train/communicator.h).
  LaunchOptions launch;
  launch.rank = FlagOrEnvInt(absl::GetFlag(FLAGS_rank), -1, "TINYGPT_RANK");
  launch.world_size = FlagOrEnvInt(absl::GetFlag(FLAGS_world_size), 0, "TINYGPT_WORLD_SIZE");
  launch.init_addr = absl::GetFlag(FLAGS_init_addr);
  if (launch.init_addr.empty() && std::getenv("TINYGPT_INIT_ADDR")) launch.init_addr = std::getenv("TINYGPT_INIT_ADDR");
  if (absl::GetFlag(FLAGS_dist_timeout) <= 0) return Fail(absl::InvalidArgumentError("--dist-timeout must be positive"), 2);
  launch.timeout = absl::Seconds(absl::GetFlag(FLAGS_dist_timeout));
  launch.fingerprint = TrainingFingerprint();
  auto comm = CommunicatorFromLauncher(launch);
  if (!comm.ok()) return Fail(comm.status());
  const int code = TrainRank(comm->get());
  // A rank that fails alone (its data file missing on its host, rank 0's
  // save or --loss-log) ends them all; failing together, they end together.
  if (code != 0 && (*comm)->world_size() > 1) (*comm)->Abort(code);
  return code;
}

// One rank's run (the whole run of one process).
int TrainRank(Communicator* comm) {
  const int world = comm->world_size();
  if (world > 1) {
    if (absl::GetFlag(FLAGS_batch) % world != 0)
      return Fail(absl::InvalidArgumentError(absl::StrCat("--batch ", absl::GetFlag(FLAGS_batch), " (the global batch) does not divide by the ",
                                                          world, " ranks: give a multiple of ", world)),
                  2);
    if (absl::GetFlag(FLAGS_tokenizer_vocab) > 0)
      return Fail(absl::InvalidArgumentError("--tokenizer-vocab trains a tokenizer on every rank; train it in one process first "
                                             "and give the ranks --tokenizer (or --resume its checkpoint)"),
                  2);
  }
  const bool rank0 = comm->rank() == 0;
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
  // --seq-len N trains on sequences of N input tokens (their positions 0..N-1
  // must exist in the model).
  const int seq_len = absl::GetFlag(FLAGS_seq_len);
  if (seq_len < 0 || seq_len > cfg->max_seq_len) {
    std::fprintf(stderr, "tinygpt train: --seq-len must be in 1..%d (the model's context)\n", cfg->max_seq_len);
    return 2;
  }
  std::unique_ptr<DataSource> data;
  std::shared_ptr<const Tokenizer> tokenizer;
  if (!absl::GetFlag(FLAGS_data).empty()) {
    auto docs = ReadDocuments(absl::GetFlag(FLAGS_data));
    if (!docs.ok()) return Fail(docs.status());
    auto tok = TextTokenizer(*docs, &*cfg);
    if (!tok.ok()) return Fail(tok.status());
    tokenizer = std::move(*tok);
    cfg->vocab_size = tokenizer->vocab_size();
    auto d = MakeTextData(*docs, *tokenizer, seq_len > 0 ? seq_len : cfg->max_seq_len, absl::GetFlag(FLAGS_batch), !rank0);
    if (!d.ok()) return Fail(d.status());
    data = std::move(*d);
  } else if (absl::GetFlag(FLAGS_tokenizer_vocab) > 0 || !absl::GetFlag(FLAGS_tokenizer).empty()) {
    return Fail(absl::InvalidArgumentError("--tokenizer-vocab and --tokenizer need --data"), 2);
  } else if (absl::GetFlag(FLAGS_task) == "count") {
    data = MakeCountTask(cfg->vocab_size, seq_len > 0 ? seq_len + 1 : cfg->max_seq_len, absl::GetFlag(FLAGS_batch));
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
  o.device = absl::GetFlag(FLAGS_device);
  o.precision = absl::GetFlag(FLAGS_precision);
  o.inject_overflow_step = absl::GetFlag(FLAGS_inject_overflow_step);
  o.untimed_steps = absl::GetFlag(FLAGS_untimed_steps);
  o.tokenizer = tokenizer;
  o.comm = comm;
  o.loss_log = absl::GetFlag(FLAGS_loss_log);
  o.collective_timeout = absl::Seconds(absl::GetFlag(FLAGS_dist_timeout));
  // Test hooks: TINYGPT_TEST_EXIT_RANK=R TINYGPT_TEST_EXIT_STEP=S make rank R
  // die at step S (the ranks' failure test).
  if (const char* r = std::getenv("TINYGPT_TEST_EXIT_RANK")) o.exit_rank = std::atoi(r);
  if (const char* s = std::getenv("TINYGPT_TEST_EXIT_STEP")) o.exit_step = std::atol(s);
  auto r = Train(*cfg, *data, o);
  if (!r.ok()) {
    std::fprintf(stderr, "tinygpt train: %s\n", std::string(r.status().message()).c_str());
    return 1;
  }
  if (!rank0) return r->final_accuracy >= absl::GetFlag(FLAGS_min_accuracy) ? 0 : 1;  // rank 0 reports
  if (world > 1) std::printf("%d ranks (%s): ", world, comm->launcher());
  std::printf("trained %ld steps on %s (%s): loss %.4f, next-token accuracy %.2f%%, %.0f tokens/s", r->steps_run,
              r->device.c_str(), r->precision.c_str(), r->final_loss, 100.0 * r->final_accuracy, r->tokens_per_second);
  if (r->mfu > 0) std::printf(", MFU %.1f%%", 100.0 * r->mfu);
  if (r->device_bytes > 0) std::printf(", device memory %.2f GiB", r->device_bytes / double(1 << 30));
  if (r->precision == "fp16") std::printf(", skipped steps %ld, loss scale %g", r->skipped_steps, r->loss_scale);
  std::printf("; wrote %s\n", o.out.c_str());
  return r->final_accuracy >= absl::GetFlag(FLAGS_min_accuracy) ? 0 : 1;
}

}  // namespace tinygpt
