#include "train/trainer.h"

#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string_view>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"
#include "model/transformer.h"

namespace tinygpt {
namespace {

// A training checkpoint is two files: OUT (the weights, a plain safetensors
// checkpoint that serve, generate and PyTorch load) and its optimizer state,
// OUT.step<STEP>-<COMMIT>.optim (the AdamW moments). Each save stamps both
// with the step and a random commit id, which also name the optimizer file,
// so that no save ever overwrites a file the current OUT needs:
//   1. the new optimizer file is written in full, fsynced and renamed into
//      place (its name is new: OUT still names the previous one);
//   2. OUT is written the same way: its rename is the one instant at which the
//      save takes effect;
//   3. only then are the previous optimizer file (and any orphan) removed.
// A kill at any instant thus leaves OUT beside the optimizer file its stamp
// names: the previous pair before OUT's rename, the new one after; --resume
// finds it from OUT's stamp, and the next run removes what the kill left
// (temporary files, an optimizer file no OUT names).
// Older versions wrote OUT.optim; such a pair still resumes when its stamps
// match, and is refused when they do not (a save torn between the two files).
constexpr const char* kStepKey = "tinygpt.step";
constexpr const char* kCommitKey = "tinygpt.commit";

std::string OptimizerPath(const std::string& checkpoint, long step, const std::string& commit) {
  return absl::StrCat(checkpoint, ".step", step, "-", commit, ".optim");
}

// Test hook of the crash-consistency test (tests/train_kill_test.sh):
// TINYGPT_TEST_KILL_AT_SAVE_POINT=K makes the trainer SIGKILL itself at the
// K-th point, counted from 1 over the whole run, at which a save changes
// what is on disk; each save has 9 of them (4 per file, see WritePointHook,
// then "previous optimizer state: removed").
long g_kill_at_point = 0, g_save_points = 0;
const char* g_saving = "";  // which file the points are about
void SavePoint(const char* point) {
  if (++g_save_points != g_kill_at_point) return;
  std::fprintf(stderr, "train: test hook: SIGKILL at save point %ld (%s: %s)\n", g_save_points, g_saving, point);
  std::fflush(stderr);
  ::raise(SIGKILL);
}
WritePointHook SaveHook() { return g_kill_at_point > 0 ? &SavePoint : nullptr; }

struct Stamp {
  std::string step = "(none)", commit = "(none)";
  bool present() const { return commit != "(none)"; }
};
Stamp StampOf(const std::map<std::string, std::string>& meta) {
  Stamp s;
  if (auto it = meta.find(kStepKey); it != meta.end()) s.step = it->second;
  if (auto it = meta.find(kCommitKey); it != meta.end()) s.commit = it->second;
  return s;
}
// The stamp in a checkpoint's header (its tensors are not read).
absl::StatusOr<Stamp> ReadStamp(const std::string& checkpoint) {
  auto file = MappedFile::Open(checkpoint);
  if (!file.ok()) return file.status();
  auto st = ParseSafetensorsView((*file)->data());
  if (!st.ok()) return absl::Status(st.status().code(), absl::StrCat(checkpoint, ": ", st.status().message()));
  return StampOf(st->metadata);
}

// Removes, beside `out`, what killed saves left: temporary files of writers
// that no longer run and, with `orphans`, optimizer files other than `keep`
// (the one OUT names; empty: none is kept). `old_style` also removes
// OUT.optim (once a new save no longer needs it). Returns how many went.
int RemoveCheckpointLeftovers(const std::string& out, const std::string& keep, bool orphans, bool old_style) {
  const size_t slash = out.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : out.substr(0, slash));
  const std::string base = slash == std::string::npos ? out : out.substr(slash + 1);
  const std::string keep_name = keep.substr(keep.rfind('/') == std::string::npos ? 0 : keep.rfind('/') + 1);
  auto digits = [](std::string_view v) { return !v.empty() && std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; }); };
  // ".step<STEP>-<16 hex>.optim"
  auto optimizer_suffix = [&](std::string_view v) {
    if (v.substr(0, 5) != ".step" || v.size() < 5 + 1 + 1 + 16 + 6 || v.substr(v.size() - 6) != ".optim") return false;
    const std::string_view mid = v.substr(5, v.size() - 11);  // STEP-COMMIT
    const size_t dash = mid.find('-');
    if (dash == std::string_view::npos || !digits(mid.substr(0, dash)) || mid.size() - dash - 1 != 16) return false;
    return std::all_of(mid.begin() + dash + 1, mid.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); });
  };
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return 0;
  std::vector<std::string> doomed;
  while (const dirent* e = ::readdir(d)) {
    const std::string_view name = e->d_name;
    if (name.size() <= base.size() || name.substr(0, base.size()) != base) continue;
    std::string_view rest = name.substr(base.size());
    if (const size_t tmp = rest.rfind(".tmp."); tmp != std::string_view::npos) {
      // OUT.tmp.PID, OUT.optim.tmp.PID (older versions), OUT.step..optim.tmp.PID
      const std::string_view target = rest.substr(0, tmp), pid = rest.substr(tmp + 5);
      int p = 0;
      if ((target.empty() || target == ".optim" || optimizer_suffix(target)) && digits(pid) && absl::SimpleAtoi(std::string(pid), &p) && p > 0 &&
          p != getpid() && ProcessIsGone(p))
        doomed.emplace_back(name);
    } else if ((orphans && optimizer_suffix(rest) && (keep.empty() || name != keep_name)) || (old_style && rest == ".optim")) {
      doomed.emplace_back(name);
    }
  }
  ::closedir(d);
  int removed = 0;
  for (const std::string& name : doomed) removed += ::unlink(absl::StrCat(dir, "/", name).c_str()) == 0;
  return removed;
}

absl::Status SaveTrainingState(const std::string& out, const ModelConfig& cfg, const float* params, const Tokenizer* tokenizer,
                               const std::vector<float>& m, const std::vector<float>& v, long step) {
  std::random_device rd;
  const uint64_t id = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^
                      static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  const std::string commit = absl::StrCat(absl::Hex(id, absl::kZeroPad16));
  const std::map<std::string, std::string> stamp = {{kStepKey, std::to_string(step)}, {kCommitKey, commit}};
  StFile f;
  f.metadata = stamp;
  f.tensors.emplace("adamw.m", F32Tensor({static_cast<long>(m.size())}, m.data()));
  f.tensors.emplace("adamw.v", F32Tensor({static_cast<long>(v.size())}, v.data()));
  const std::string optimizer = OptimizerPath(out, step, commit);
  g_saving = "optimizer state";
  if (auto s = WriteFileAtomically(optimizer, SerializeSafetensors(f), SaveHook()); !s.ok()) return s;
  g_saving = "weights";
  if (auto s = SaveCheckpoint(out, cfg, params, tokenizer, stamp, SaveHook()); !s.ok()) return s;
  // OUT names the new optimizer file now: the previous one can go.
  RemoveCheckpointLeftovers(out, optimizer, /*orphans=*/true, /*old_style=*/true);
  if (auto s = SyncParentDir(out); !s.ok()) return s;
  g_saving = "previous optimizer state";
  if (g_kill_at_point > 0) SavePoint("removed");
  return absl::OkStatus();
}

// Loads the optimizer state saved with `checkpoint` into m and v (sized for
// the model) and the step: the file its stamp names, or an older version's
// checkpoint.optim whose stamp matches.
absl::Status LoadOptimizer(const std::string& checkpoint, std::vector<float>* m, std::vector<float>* v, long* step) {
  auto ck_stamp = ReadStamp(checkpoint);
  if (!ck_stamp.ok()) return ck_stamp.status();
  long ck_step = -1;
  std::string path = checkpoint + ".optim";
  if (ck_stamp->present() && absl::SimpleAtoi(ck_stamp->step, &ck_step) && ck_step >= 0 &&
      access(OptimizerPath(checkpoint, ck_step, ck_stamp->commit).c_str(), F_OK) == 0)
    path = OptimizerPath(checkpoint, ck_step, ck_stamp->commit);
  auto opt_file = MappedFile::Open(path);
  if (!opt_file.ok()) {
    const std::string wanted = ck_stamp->present() ? OptimizerPath(checkpoint, ck_step, ck_stamp->commit) : path;
    return absl::Status(opt_file.status().code(),
                        absl::StrCat("train: --resume needs the optimizer state beside the checkpoint: ", wanted,
                                     " (named by its step and commit stamp) is not there", ck_stamp->present() ? ", nor " + path : "",
                                     ": ", opt_file.status().message()));
  }
  auto f = ParseSafetensorsView((*opt_file)->data());
  if (!f.ok()) return absl::Status(f.status().code(), absl::StrCat(path, ": ", f.status().message()));
  const Stamp opt_stamp = StampOf(f->metadata);
  if (!ck_stamp->present() && !opt_stamp.present()) {
    // Written before commit stamps existed: the pair cannot be checked.
    std::fprintf(stderr, "train: warning: %s and %s carry no commit stamp (an older tinygpt wrote them); resuming unchecked\n",
                 checkpoint.c_str(), path.c_str());
  } else if (ck_stamp->commit != opt_stamp.commit || ck_stamp->step != opt_stamp.step) {
    return absl::FailedPreconditionError(absl::StrCat(
        "train: cannot resume: ", checkpoint, " is step ", ck_stamp->step, " (commit ", ck_stamp->commit, ") but ", path, " is step ",
        opt_stamp.step, " (commit ", opt_stamp.commit, "); they were not saved together (a save of an older tinygpt was interrupted "
        "between the two files), and resuming would pair these weights with another step's optimizer state"));
  }
  auto mi = f->tensors.find("adamw.m"), vi = f->tensors.find("adamw.v");
  long parsed_step = -1;
  if (!absl::SimpleAtoi(opt_stamp.step, &parsed_step) || parsed_step < 0)
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", kStepKey, " is '", opt_stamp.step.substr(0, 40), "', not a step count"));
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

void RemoveTrainingCheckpoint(const std::string& out) {
  RemoveCheckpointLeftovers(out, "", /*orphans=*/true, /*old_style=*/true);
  std::remove(out.c_str());
}

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

// gpu: the GPU index "cuda" and "auto" mean (a rank's local rank).
absl::StatusOr<std::unique_ptr<Backend>> TrainingBackend(const TrainOptions& opt, int gpu, std::string* precision) {
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
  // "auto" on a rank past the first GPU asks for its own GPU first: a
  // backend made on GPU 0 and then dropped would leave a context there.
  const std::string on_gpu = absl::StrCat("cuda:", gpu);
  auto b = CreateBackend(opt.device == "cuda" || (opt.device == "auto" && gpu > 0) ? on_gpu : opt.device, dtype);
  if (!b.ok() && opt.device == "auto") b = CreateBackend("cpu", dtype);
  if (!b.ok()) return b.status();
  if ((*b)->name() == "cpu" && !p.empty() && p != "fp32")
    return absl::InvalidArgumentError(absl::StrCat("train: no CUDA device for --precision ", p, " (the CPU trains in fp32)"));
  *precision = (*b)->name() == "cpu" ? "fp32" : (p.empty() ? "bf16" : p);
  return b;
}

}  // namespace

namespace {

// Rank 0 makes the NCCL world's id and sends it to the others over the
// launcher's channel; every rank joins. A rank 0 that cannot make one (no
// NCCL) sends why instead, so that every rank stops with the reason.
absl::Status JoinDeviceCollective(Communicator& comm, Backend& backend, absl::Duration timeout) {
  std::string id;
  if (comm.rank() == 0) {
    auto made = backend.NewCollectiveId();
    id = made.ok() ? "id " + *made : "error " + std::string(made.status().message());
  }
  if (auto s = comm.Broadcast(&id); !s.ok()) return s;
  if (absl::StartsWith(id, "error ")) return absl::FailedPreconditionError(absl::StrCat("train: rank 0: ", id.substr(6)));
  if (!absl::StartsWith(id, "id ")) return absl::InternalError("train: rank 0 sent no NCCL id");
  if (auto s = backend.JoinCollective(id.substr(3), comm.rank(), comm.world_size(), timeout, [&] { return comm.CheckPeers(); }); !s.ok())
    return absl::UnavailableError(absl::StrCat("train: rank ", comm.rank(), ": ", s.message()));
  return absl::OkStatus();
}

}  // namespace

PackedBatch ShardBatch(const PackedBatch& batch, int rank, int world) {
  if (world <= 1) return batch;
  const int seqs = static_cast<int>(batch.cu_seqlens.size()) - 1;
  const int s0 = static_cast<int>(static_cast<long>(rank) * seqs / world), s1 = static_cast<int>(static_cast<long>(rank + 1) * seqs / world);
  const int t0 = batch.cu_seqlens[s0], t1 = batch.cu_seqlens[s1];
  PackedBatch shard;
  shard.tokens.assign(batch.tokens.begin() + t0, batch.tokens.begin() + t1);
  if (!batch.targets.empty()) shard.targets.assign(batch.targets.begin() + t0, batch.targets.begin() + t1);
  for (int s = s0; s <= s1; ++s) shard.cu_seqlens.push_back(batch.cu_seqlens[s] - t0);
  return shard;
}

absl::StatusOr<TrainResult> Train(const ModelConfig& cfg_in, DataSource& data, const TrainOptions& opt_in) {
  if (opt_in.out.empty()) return absl::InvalidArgumentError("train: --out is required");
  std::unique_ptr<Communicator> alone;
  Communicator* comm = opt_in.comm;
  if (!comm) comm = (alone = MakeSingleProcess()).get();
  const int rank = comm->rank(), world = comm->world_size();
  TrainOptions opt = opt_in;
  opt.quiet = opt_in.quiet || rank != 0;  // one progress line, rank 0's
  TrainResult result;
  auto backend_or = TrainingBackend(opt, world > 1 ? comm->local_rank() : 0, &result.precision);
  if (!backend_or.ok()) return backend_or.status();
  std::unique_ptr<Backend> backend = std::move(*backend_or);
  const bool on_device = backend->name() != "cpu";
  // Ranks on GPUs sum on the device (NCCL); on CPUs through the launcher (MPI).
  const bool device_sums = world > 1 && on_device;
  if (world > 1 && !on_device && !comm->SumsOnHost())
    return absl::FailedPreconditionError(absl::StrCat("train: ", world, " ranks of a ", comm->launcher(), " on CPUs: ",
                                                      comm->AllReduceSum(static_cast<float*>(nullptr), 0).message()));
  if (device_sums)
    if (auto s = JoinDeviceCollective(*comm, *backend, opt.collective_timeout); !s.ok()) return s;
  // The step's loss and hits, summed on the device beside the gradients.
  struct DeviceFloats {
    Backend* b;
    float* p;
    ~DeviceFloats() {
      if (p) b->Free(p);
    }
  } step_sums{backend.get(), device_sums ? static_cast<float*>(backend->Alloc(2 * sizeof(float))) : nullptr};
  if (device_sums && !step_sums.p) return absl::ResourceExhaustedError("train: out of device memory");
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
  // What a killed save left beside OUT goes now, before this run's first save:
  // temporary files, and optimizer files that OUT does not name (only when
  // OUT's stamp can be read: a file it might name is never guessed away).
  if (rank == 0) {
    std::string keep;
    bool orphans = access(opt.out.c_str(), F_OK) != 0;  // no OUT: it names no optimizer file
    if (!orphans) {
      auto stamp = ReadStamp(opt.out);
      long s = -1;
      if (stamp.ok() && stamp->present() && absl::SimpleAtoi(stamp->step, &s)) {
        keep = OptimizerPath(opt.out, s, stamp->commit);
        orphans = true;
      }
    }
    const int removed = RemoveCheckpointLeftovers(opt.out, keep, orphans, /*old_style=*/false);
    if (removed > 0 && !opt.quiet)
      std::fprintf(stderr, "train: removed %d file(s) left beside %s by an interrupted save\n", removed, opt.out.c_str());
  }
  if (const char* k = std::getenv("TINYGPT_TEST_KILL_AT_SAVE_POINT")) g_kill_at_point = std::atol(k);
  const bool tty = isatty(fileno(stderr));
  auto save = [&](long done) -> absl::Status {
    if (rank != 0) return absl::OkStatus();  // every rank holds the same state
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
  std::FILE* loss_log = nullptr;
  if (rank == 0 && !opt.loss_log.empty() && !(loss_log = std::fopen(opt.loss_log.c_str(), "w")))
    return absl::InvalidArgumentError(absl::StrCat("train: cannot write --loss-log ", opt.loss_log, ": ", std::strerror(errno)));
  struct CloseLog {
    std::FILE* f;
    ~CloseLog() {
      if (f) std::fclose(f);
    }
  } close_log{loss_log};
  for (; step < opt.steps; ++step) {
    PackedBatch global = have_next ? std::move(next_batch) : data.Batch(opt.seed, step);
    have_next = false;
    if (rank == opt.exit_rank && step == opt.exit_step) {
      std::fprintf(stderr, "train: test hook: rank %d SIGKILLs itself at step %ld\n", rank, step);
      ::raise(SIGKILL);
    }
    // This rank's shard (one process: the batch itself). Its loss gradient
    // is weighted by its share of the batch's tokens: summed over the ranks,
    // that is the gradient of the whole batch's mean loss.
    const PackedBatch shard = world > 1 ? ShardBatch(global, rank, world) : PackedBatch{};
    const PackedBatch& batch = world > 1 ? shard : global;
    const double share = static_cast<double>(batch.tokens.size()) / std::max<size_t>(1, global.tokens.size());
    model->ZeroGrad();
    int shard_correct = 0;
    const float shard_loss = model->Forward(batch, &shard_correct, static_cast<float>(loss_scale * share));
    float* g = model->device_grads();
    float loss = shard_loss;
    int correct = shard_correct;
    if (device_sums) {
      // NCCL sums each block's gradients as soon as its backward is
      // enqueued, while the blocks below it run (DDP's buckets).
      const float sums[2] = {static_cast<float>(shard_loss * share), static_cast<float>(shard_correct)};
      backend->CopyToDevice(step_sums.p, sums, sizeof(sums));
      absl::Status summing = backend->AllReduceSum(step_sums.p, 2);
      model->Backward(batch, [&](size_t offset, size_t count) {
        if (summing.ok()) summing = backend->AllReduceSum(g + offset, count);
      });
      if (summing.ok()) summing = backend->WaitCollectives(opt.collective_timeout, [&] { return comm->CheckPeers(); });
      if (!summing.ok()) return absl::UnavailableError(absl::StrCat("train: rank ", rank, " at step ", step, ": ", summing.message()));
      float summed[2];
      backend->CopyToHost(summed, step_sums.p, sizeof(summed));
      loss = summed[0];
      correct = static_cast<int>(std::lround(summed[1]));
    } else {
      model->Backward(batch);
    }
    if (world > 1 && !device_sums) {
      if (auto s = comm->AllReduceSum(g, n_params); !s.ok()) return s;
      double sums[2] = {shard_loss * share, static_cast<double>(shard_correct)};
      if (auto s = comm->AllReduceSum(sums, 2); !s.ok()) return s;
      loss = static_cast<float>(sums[0]);
      correct = static_cast<int>(std::lround(sums[1]));
    }
    if (!std::isfinite(loss)) return absl::InternalError(absl::StrCat("train: loss is ", loss, " at step ", step));
    if (loss_log) std::fprintf(loss_log, "%.9g\n", loss);
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
      if (step + 1 < opt.steps) next_batch = data.Batch(opt.seed, step + 1), have_next = true;  // the global batch
      backend->Synchronize();
      min_free = std::min(min_free, backend->AvailableBytes());
    }
    // Tokens/s and MFU of all ranks together: the global batch's.
    const int seqs = std::max<int>(1, static_cast<int>(global.cu_seqlens.size()) - 1);
    if (step - first < opt.untimed_steps) {
      t0 = std::chrono::steady_clock::now();  // the clock starts after the untimed steps
    } else {
      tokens += static_cast<long>(global.tokens.size());
      flops += TrainFlopsPerToken(cfg, static_cast<int>(global.tokens.size() / seqs)) * global.tokens.size();
    }
    if (!skipped) {
      result.final_loss = loss;
      result.final_accuracy = static_cast<float>(correct) / global.tokens.size();
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
