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
#include "kernels/backend.h"
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

double TrainFlopsPerToken(const ModelConfig& cfg, int seq_len) {
  const ParamLayout layout(cfg);
  double n = 0;
  for (const auto& t : layout.tensors())
    if (t.name != "pos.weight") n += static_cast<double>(t.numel());
  return 6.0 * n + 12.0 * cfg.n_layers * cfg.d_model * static_cast<double>(seq_len);
}

namespace {

// Dense bf16/fp16 tensor-core peak of the GPUs we know (FLOP/s), for MFU;
// 0 (MFU not shown) elsewhere. H100 and H200 SXM: 989.4 TFLOP/s.
double PeakFlops(const std::string& device_name) {
  if (device_name.find("H100") != std::string::npos || device_name.find("H200") != std::string::npos) return 989.4e12;
  return 0.0;
}

// AdamW moments: host vectors on the CPU backend (the buffers themselves),
// device buffers and a host staging copy for checkpoints elsewhere.
class OptimizerState {
 public:
  OptimizerState(Backend* b, size_t n) : backend_(b), on_host_(b->name() == "cpu"), m_(n, 0.f), v_(n, 0.f) {
    if (!on_host_) {
      dm_ = static_cast<float*>(b->Alloc(n * sizeof(float)));  // zeroed
      dv_ = static_cast<float*>(b->Alloc(n * sizeof(float)));
    }
  }
  ~OptimizerState() {
    if (!on_host_) backend_->Free(dm_), backend_->Free(dv_);
  }
  bool ok() const { return on_host_ || (dm_ && dv_); }
  float* m() { return on_host_ ? m_.data() : dm_; }
  float* v() { return on_host_ ? v_.data() : dv_; }
  std::vector<float>& host_m() { return m_; }
  std::vector<float>& host_v() { return v_; }
  void ToDevice() {
    if (on_host_) return;
    backend_->CopyToDevice(dm_, m_.data(), m_.size() * sizeof(float));
    backend_->CopyToDevice(dv_, v_.data(), v_.size() * sizeof(float));
  }
  void ToHost() {
    if (on_host_) return;
    backend_->CopyToHost(m_.data(), dm_, m_.size() * sizeof(float));
    backend_->CopyToHost(v_.data(), dv_, v_.size() * sizeof(float));
  }

 private:
  Backend* backend_;
  bool on_host_;
  std::vector<float> m_, v_;
  float *dm_ = nullptr, *dv_ = nullptr;
};

absl::StatusOr<std::unique_ptr<Backend>> TrainingBackend(const TrainOptions& opt, std::string* precision) {
  std::string p = opt.precision;
  if (p == "f32") p = "fp32";
  if (p == "f16") p = "fp16";
  if (!p.empty() && p != "fp32" && p != "bf16" && p != "fp16")
    return absl::InvalidArgumentError(absl::StrCat("train: unknown --precision '", opt.precision, "' (bf16, fp16, fp32)"));
  if (opt.device == "cpu") {
    if (!p.empty() && p != "fp32")
      return absl::InvalidArgumentError(absl::StrCat("train: the CPU backend trains in fp32 only, not ", p));
    *precision = "fp32";
    return CreateBackend("cpu", "f32");
  }
  const std::string dtype = p.empty() || p == "bf16" ? "bf16" : p == "fp16" ? "f16" : "f32";
  auto b = CreateBackend(opt.device, dtype);
  if (!b.ok()) return b.status();
  if ((*b)->name() == "cpu" && !p.empty() && p != "fp32")
    return absl::InvalidArgumentError(absl::StrCat("train: no CUDA device for --precision ", p, " (the CPU trains in fp32)"));
  *precision = (*b)->name() == "cpu" ? "fp32" : (p.empty() ? "bf16" : p);
  return b;
}

}  // namespace

absl::StatusOr<TrainResult> Train(const ModelConfig& cfg_in, DataSource& data, const TrainOptions& opt) {
  if (opt.out.empty()) return absl::InvalidArgumentError("train: --out is required");
  TrainResult result;
  auto backend_or = TrainingBackend(opt, &result.precision);
  if (!backend_or.ok()) return backend_or.status();
  std::unique_ptr<Backend> backend = std::move(*backend_or);
  const bool on_device = backend->name() != "cpu";
  result.device = on_device ? backend->device_name() : "cpu";
  const size_t free_at_start = on_device ? backend->AvailableBytes() : 0;
  size_t min_free = free_at_start;

  ModelConfig cfg = cfg_in;
  long step = 0;
  std::unique_ptr<Transformer> model;
  std::vector<float> loaded;
  std::shared_ptr<const Tokenizer> tokenizer = opt.tokenizer;
  if (!opt.resume.empty()) {
    auto ck = LoadCheckpoint(opt.resume);
    if (!ck.ok()) return ck.status();
    cfg = ck->config;
    if (!tokenizer) tokenizer = ck->tokenizer;
    loaded = std::move(ck->params);
  } else if (auto s = ValidateConfig(cfg); !s.ok()) {
    return s;
  }
  if (auto s = backend->SupportsTraining(cfg.head_dim()); !s.ok()) return s;
  model = std::make_unique<Transformer>(cfg, backend.get());
  if (!opt.resume.empty()) {
    model->params() = std::move(loaded);
    model->ParamsToDevice();
  } else {
    model->InitParams(opt.seed);
  }
  OptimizerState adam(backend.get(), model->params().size());
  if (!adam.ok()) return absl::ResourceExhaustedError("train: out of device memory for the optimizer state");
  if (!opt.resume.empty()) {
    if (auto s = LoadOptimizer(opt.resume, &adam.host_m(), &adam.host_v(), &step); !s.ok()) return s;
    adam.ToDevice();
  }
  const bool tty = isatty(fileno(stderr));
  auto save = [&](long done) -> absl::Status {
    model->ParamsToHost();
    adam.ToHost();
    return SaveTrainingState(opt.out, cfg, model->params().data(), tokenizer.get(), adam.host_m(), adam.host_v(), done);
  };
  const bool fp16 = result.precision == "fp16";
  float loss_scale = fp16 ? opt.initial_loss_scale : 1.0f;
  long good_steps = 0;
  const double peak = on_device ? PeakFlops(backend->device_name()) : 0.0;
  const size_t n_params = model->params().size();
  auto t0 = std::chrono::steady_clock::now();
  long tokens = 0;
  double flops = 0;
  const long first = step;
  // The next step's batch is built on the host while the GPU finishes this
  // step's optimizer update (before the step's closing Synchronize).
  PackedBatch next_batch;
  bool have_next = false;
  for (; step < opt.steps; ++step) {
    PackedBatch batch = have_next ? std::move(next_batch) : data.Batch(opt.seed, step);
    have_next = false;
    model->ZeroGrad();
    int correct = 0;
    const float loss = model->Forward(batch, &correct, loss_scale);
    if (!std::isfinite(loss)) return absl::InternalError(absl::StrCat("train: loss is ", loss, " at step ", step));
    model->Backward(batch);
    float* g = model->device_grads();
    if (step == opt.inject_overflow_step) {
      const float inf = INFINITY;
      backend->CopyToDevice(g + n_params / 2, &inf, sizeof(inf));
    }
    const double sum_sq = backend->SumOfSquares(g, n_params);
    const float lr = LearningRate(opt, step);
    bool skipped = false;
    if (!std::isfinite(sum_sq)) {
      if (!fp16) return absl::InternalError(absl::StrCat("train: gradients are not finite at step ", step));
      // GradScaler: skip the update, lower the scale, start counting again.
      skipped = true;
      ++result.skipped_steps;
      loss_scale *= 0.5f;
      good_steps = 0;
      if (!opt.quiet)
        std::fprintf(stderr, "%sstep %5ld: inf/NaN gradients, update skipped, loss scale now %g\n", tty ? "\r\033[K" : "",
                     step + 1, loss_scale);
    } else {
      // The norm of the true (unscaled) gradients decides the clipping.
      const float norm = static_cast<float>(std::sqrt(sum_sq)) / loss_scale;
      float grad_scale = 1.0f / loss_scale;
      if (opt.clip > 0.f && norm > opt.clip) grad_scale *= opt.clip / norm;
      for (const auto& t : model->layout().tensors()) {
        void* compute = model->compute_params() == model->device_params()
                            ? nullptr
                            : static_cast<char*>(model->compute_params()) + t.offset * DTypeSize(backend->dtype());
        backend->AdamW(model->device_params() + t.offset, g + t.offset, adam.m() + t.offset, adam.v() + t.offset, t.numel(), lr,
                       opt.beta1, opt.beta2, opt.eps, IsDecayed(t) ? opt.weight_decay : 0.f, step + 1, grad_scale, compute);
      }
      if (fp16 && ++good_steps >= opt.loss_scale_growth_interval) {
        loss_scale *= 2.0f;
        good_steps = 0;
      }
    }
    if (on_device) {
      if (step + 1 < opt.steps) next_batch = data.Batch(opt.seed, step + 1), have_next = true;
      backend->Synchronize();
      min_free = std::min(min_free, backend->AvailableBytes());
    }
    const int seqs = std::max<int>(1, static_cast<int>(batch.cu_seqlens.size()) - 1);
    if (step - first < opt.untimed_steps) {
      t0 = std::chrono::steady_clock::now();  // the clock starts after the untimed steps
    } else {
      tokens += static_cast<long>(batch.tokens.size());
      flops += TrainFlopsPerToken(cfg, static_cast<int>(batch.tokens.size() / seqs)) * batch.tokens.size();
    }
    if (!skipped) {
      result.final_loss = loss;
      result.final_accuracy = static_cast<float>(correct) / batch.tokens.size();
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    result.tokens_per_second = tokens / std::max(secs, 1e-9);
    result.mfu = peak > 0 ? flops / std::max(secs, 1e-9) / peak : 0.0;
    const long done = step + 1;
    if (!opt.quiet && (tty || done % 20 == 0 || done == opt.steps || done == first + 1)) {
      const double eta = secs / std::max<long>(1, done - first - opt.untimed_steps) * (opt.steps - done);
      std::string mfu = peak > 0 ? absl::StrCat(" | MFU ", static_cast<int>(result.mfu * 1000) / 10.0, "%") : "";
      std::fprintf(stderr, "%sstep %5ld/%ld | loss %.4f | acc %5.1f%% | lr %.2e | %.0f tok/s%s | ETA %.0fs%s", tty ? "\r\033[K" : "", done,
                   opt.steps, loss, 100.0 * result.final_accuracy, lr, result.tokens_per_second, mfu.c_str(), eta, tty ? "" : "\n");
    }
    if (opt.save_every > 0 && done % opt.save_every == 0 && done < opt.steps)
      if (auto s = save(done); !s.ok()) return s;
  }
  if (tty && !opt.quiet) std::fprintf(stderr, "\n");
  result.steps_run = step - first;
  result.loss_scale = loss_scale;
  result.device_bytes = free_at_start - min_free;
  if (auto s = save(step); !s.ok()) return s;
  return result;
}

}  // namespace tinygpt
