#include "train/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/ops.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"
#include "model/transformer.h"

namespace tinygpt {
namespace {

// Optimizer state: AdamW moments and the step count, beside the checkpoint.
absl::Status SaveOptimizer(const std::string& path, const std::vector<float>& m, const std::vector<float>& v, long step) {
  StFile f;
  f.metadata["tinygpt.step"] = std::to_string(step);
  f.tensors.emplace("adamw.m", F32Tensor({static_cast<long>(m.size())}, m.data()));
  f.tensors.emplace("adamw.v", F32Tensor({static_cast<long>(v.size())}, v.data()));
  return WriteFileAtomically(path, SerializeSafetensors(f));
}

absl::Status LoadOptimizer(const std::string& path, std::vector<float>* m, std::vector<float>* v, long* step) {
  auto f = ReadSafetensors(path);
  if (!f.ok()) return f.status();
  auto it = f->metadata.find("tinygpt.step");
  auto mi = f->tensors.find("adamw.m"), vi = f->tensors.find("adamw.v");
  if (it == f->metadata.end() || mi == f->tensors.end() || vi == f->tensors.end() || mi->second.numel() != m->size() ||
      vi->second.numel() != v->size())
    return absl::InvalidArgumentError(absl::StrCat(path, ": optimizer state does not match the model"));
  *m = mi->second.ToFloat();
  *v = vi->second.ToFloat();
  *step = std::stol(it->second);
  return absl::OkStatus();
}

// Weight decay applies to the linear layers' matrices only: not to biases,
// LayerNorm parameters or embeddings (the usual GPT recipe).
bool IsDecayed(const ParamTensor& t) {
  return t.shape.size() == 2 && t.name != "tok.weight" && t.name != "pos.weight";
}

}  // namespace

float LearningRate(const TrainOptions& o, long step) {
  if (step < o.warmup) return o.lr * static_cast<float>(step + 1) / static_cast<float>(o.warmup);
  const double progress = o.steps > o.warmup ? static_cast<double>(step - o.warmup) / (o.steps - o.warmup) : 1.0;
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, progress)));
  return static_cast<float>(o.lr * (o.min_lr_ratio + (1.0 - o.min_lr_ratio) * cosine));
}

absl::StatusOr<TrainResult> Train(const ModelConfig& cfg_in, DataSource& data, const TrainOptions& opt) {
  if (opt.out.empty()) return absl::InvalidArgumentError("train: --out is required");
  ModelConfig cfg = cfg_in;
  long step = 0;
  std::unique_ptr<Transformer> model;
  std::shared_ptr<const Tokenizer> tokenizer = opt.tokenizer;
  if (!opt.resume.empty()) {
    auto ck = LoadCheckpoint(opt.resume);
    if (!ck.ok()) return ck.status();
    cfg = ck->config;
    if (!tokenizer) tokenizer = ck->tokenizer;
    model = std::make_unique<Transformer>(cfg);
    model->params() = std::move(ck->params);
  } else {
    if (auto s = ValidateConfig(cfg); !s.ok()) return s;
    model = std::make_unique<Transformer>(cfg);
    model->InitParams(opt.seed);
  }
  std::vector<float> m(model->params().size(), 0.f), v(model->params().size(), 0.f);  // AdamW moments
  if (!opt.resume.empty())
    if (auto s = LoadOptimizer(opt.resume + ".optim", &m, &v, &step); !s.ok()) return s;
  const bool tty = isatty(fileno(stderr));
  TrainResult result;
  auto save = [&](long done) -> absl::Status {
    // Optimizer first: a checkpoint on disk always has matching state beside it.
    if (auto s = SaveOptimizer(opt.out + ".optim", m, v, done); !s.ok()) return s;
    return SaveCheckpoint(opt.out, cfg, model->params().data(), tokenizer.get());
  };
  auto t0 = std::chrono::steady_clock::now();
  long tokens = 0;
  const long first = step;
  for (; step < opt.steps; ++step) {
    PackedBatch batch = data.Batch(opt.seed, step);
    model->ZeroGrad();
    int correct = 0;
    const float loss = model->Forward(batch, &correct);
    if (!std::isfinite(loss)) return absl::InternalError(absl::StrCat("train: loss is ", loss, " at step ", step));
    model->Backward(batch);
    std::vector<float>& g = model->grads();
    const float norm = static_cast<float>(std::sqrt(cpu::SumOfSquares(g.data(), g.size())));
    if (opt.clip > 0.f && norm > opt.clip) cpu::Scale(g.data(), g.size(), opt.clip / norm);
    const float lr = LearningRate(opt, step);
    for (const auto& t : model->layout().tensors())
      cpu::AdamW(model->params().data() + t.offset, g.data() + t.offset, m.data() + t.offset, v.data() + t.offset, t.numel(),
                 lr, opt.beta1, opt.beta2, opt.eps, IsDecayed(t) ? opt.weight_decay : 0.f, step + 1);
    if (step - first < opt.untimed_steps) {
      t0 = std::chrono::steady_clock::now();  // the clock starts after the untimed steps
    } else {
      tokens += static_cast<long>(batch.tokens.size());
    }
    result.final_loss = loss;
    result.final_accuracy = static_cast<float>(correct) / batch.tokens.size();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    result.tokens_per_second = tokens / std::max(secs, 1e-9);
    const long done = step + 1;
    if (!opt.quiet && (tty || done % 20 == 0 || done == opt.steps || done == first + 1)) {
      const double eta = secs / std::max<long>(1, done - first - opt.untimed_steps) * (opt.steps - done);
      std::fprintf(stderr, "%sstep %5ld/%ld | loss %.4f | acc %5.1f%% | lr %.2e | %.0f tok/s | ETA %.0fs%s", tty ? "\r\033[K" : "", done,
                   opt.steps, loss, 100.0 * result.final_accuracy, lr, result.tokens_per_second, eta, tty ? "" : "\n");
    }
    if (opt.save_every > 0 && done % opt.save_every == 0 && done < opt.steps)
      if (auto s = save(done); !s.ok()) return s;
  }
  if (tty && !opt.quiet) std::fprintf(stderr, "\n");
  result.steps_run = step - first;
  if (auto s = save(step); !s.ok()) return s;
  return result;
}

}  // namespace tinygpt
