#include "train/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu/ops.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"
#include "model/transformer.h"

namespace tinygpt {
namespace {

// A training checkpoint is two files: OUT (the weights, which serve and
// generate load) and OUT.optim (the AdamW moments). Each save stamps both with
// the step and a random commit id, and writes OUT.optim first and OUT last:
// a save killed in between leaves a new OUT.optim beside the previous OUT,
// which --resume refuses (the stamps differ) instead of continuing from old
// weights with newer optimizer state and step count.
constexpr const char* kStepKey = "tinygpt.step";
constexpr const char* kCommitKey = "tinygpt.commit";

absl::Status SaveTrainingState(const std::string& out, const ModelConfig& cfg, const float* params, const Tokenizer* tokenizer,
                               const std::vector<float>& m, const std::vector<float>& v, long step) {
  std::random_device rd;
  const uint64_t id = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^
                      static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  const std::map<std::string, std::string> stamp = {{kStepKey, std::to_string(step)}, {kCommitKey, absl::StrCat(absl::Hex(id, absl::kZeroPad16))}};
  StFile f;
  f.metadata = stamp;
  f.tensors.emplace("adamw.m", F32Tensor({static_cast<long>(m.size())}, m.data()));
  f.tensors.emplace("adamw.v", F32Tensor({static_cast<long>(v.size())}, v.data()));
  if (auto s = WriteFileAtomically(out + ".optim", SerializeSafetensors(f)); !s.ok()) return s;
  return SaveCheckpoint(out, cfg, params, tokenizer, stamp);
}

// Loads `checkpoint`.optim into m and v (sized for the model) and the step,
// after checking that it was saved together with `checkpoint`.
absl::Status LoadOptimizer(const std::string& checkpoint, std::vector<float>* m, std::vector<float>* v, long* step) {
  const std::string path = checkpoint + ".optim";
  auto ck_file = MappedFile::Open(checkpoint);
  if (!ck_file.ok()) return ck_file.status();
  auto ck = ParseSafetensorsView((*ck_file)->data());  // the header only is read: the weights are loaded already
  if (!ck.ok()) return absl::Status(ck.status().code(), absl::StrCat(checkpoint, ": ", ck.status().message()));
  auto opt_file = MappedFile::Open(path);
  if (!opt_file.ok())
    return absl::Status(opt_file.status().code(), absl::StrCat("train: --resume needs the optimizer state beside the checkpoint: ",
                                                                opt_file.status().message()));
  auto f = ParseSafetensorsView((*opt_file)->data());
  if (!f.ok()) return absl::Status(f.status().code(), absl::StrCat(path, ": ", f.status().message()));
  auto stamp = [](const std::map<std::string, std::string>& meta, const char* key) {
    auto it = meta.find(key);
    return it == meta.end() ? std::string("(none)") : it->second;
  };
  const std::string ck_step = stamp(ck->metadata, kStepKey), ck_commit = stamp(ck->metadata, kCommitKey);
  const std::string opt_step = stamp(f->metadata, kStepKey), opt_commit = stamp(f->metadata, kCommitKey);
  if (ck_commit == "(none)" && opt_commit == "(none)") {
    // Written before commit stamps existed: the pair cannot be checked.
    std::fprintf(stderr, "train: warning: %s and %s carry no commit stamp (an older tinygpt wrote them); resuming unchecked\n",
                 checkpoint.c_str(), path.c_str());
  } else if (ck_commit != opt_commit || ck_step != opt_step) {
    return absl::FailedPreconditionError(absl::StrCat(
        "train: cannot resume: ", checkpoint, " is step ", ck_step, " (commit ", ck_commit, ") but ", path, " is step ", opt_step,
        " (commit ", opt_commit, "); they were not saved together (a save was interrupted between the two files), "
        "and resuming would pair these weights with another step's optimizer state"));
  }
  auto mi = f->tensors.find("adamw.m"), vi = f->tensors.find("adamw.v");
  long parsed_step = -1;
  if (!absl::SimpleAtoi(opt_step, &parsed_step) || parsed_step < 0)
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", kStepKey, " is '", opt_step.substr(0, 40), "', not a step count"));
  if (mi == f->tensors.end() || vi == f->tensors.end() || mi->second.numel != m->size() || vi->second.numel != v->size())
    return absl::InvalidArgumentError(absl::StrCat(path, ": optimizer state does not match the model (adamw.m and adamw.v of ",
                                                   m->size(), " values each)"));
  mi->second.ToFloat(m->data());
  vi->second.ToFloat(v->data());
  *step = parsed_step;
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
    if (auto s = LoadOptimizer(opt.resume, &m, &v, &step); !s.ok()) return s;
  const bool tty = isatty(fileno(stderr));
  TrainResult result;
  auto save = [&](long done) -> absl::Status {
    return SaveTrainingState(opt.out, cfg, model->params().data(), tokenizer.get(), m, v, done);
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
