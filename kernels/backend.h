// The op interface the model calls, implemented by each backend (CPU here,
// CUDA in a dlopen'ed module). Buffers are backend memory holding elements of
// the backend's dtype(); int32 index arrays are backend memory as well.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/attention_args.h"
#include "kernels/sampling_args.h"

namespace tinygpt {

enum class DType { kF32, kF16, kBF16 };
const char* DTypeName(DType t);
size_t DTypeSize(DType t);
absl::StatusOr<DType> ParseDType(const std::string& name);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;         // "cpu" or "cuda"
  virtual std::string device_name() const = 0;  // e.g. the GPU's name
  virtual DType dtype() const = 0;              // weights, activations and KV cache

  // Rejects model shapes the backend has no kernels for (e.g. head dims).
  virtual absl::Status SupportsModel(int head_dim) const = 0;

  virtual void* Alloc(size_t bytes) = 0;  // null when out of memory
  // Memory the backend could still allocate (host RAM or free device memory),
  // for sizing the KV cache by a fraction.
  virtual size_t AvailableBytes() const = 0;
  virtual void Free(void* p) = 0;
  virtual void CopyToDevice(void* dst, const void* src, size_t bytes) = 0;
  virtual void CopyToHost(void* dst, const void* src, size_t bytes) = 0;
  // Converts n fp32 values to dtype() on the way in / out.
  virtual void UploadFloats(void* dst, const float* src, size_t n) = 0;
  virtual void DownloadFloats(float* dst, const void* src, size_t n) = 0;
  // Uploads a linear weight given in nn.Linear's [out, in] layout into the
  // layout this backend's Linear reads (out·in elements of dtype()). The
  // default keeps [out, in]; the CPU backend packs it for its GEMM kernel.
  virtual void UploadLinearWeight(void* dst, const float* src, int out, int in) {
    UploadFloats(dst, src, static_cast<size_t>(out) * in);
  }

  virtual void Embedding(const int32_t* tokens, const int32_t* positions, const void* tok, const void* pos, void* out,
                         int T, int C) = 0;
  virtual void LayerNorm(const void* x, const void* w, const void* b, void* y, int T, int C, float eps) = 0;
  // y[T,out] = x[T,in] · w[out,in]^T + b, w as UploadLinearWeight stored it
  virtual void Linear(const void* x, const void* w, const void* b, void* y, int T, int in, int out) = 0;
  virtual void AddInPlace(void* x, const void* y, size_t n) = 0;
  // x += r (the residual stream, [T, C]), then y = LayerNorm(x): one pass
  // where a backend fuses them (CUDA), AddInPlace then LayerNorm otherwise.
  virtual void AddLayerNorm(void* x, const void* r, const void* w, const void* b, void* y, int T, int C, float eps) {
    AddInPlace(x, r, static_cast<size_t>(T) * C);
    LayerNorm(x, w, b, y, T, C, eps);
  }
  virtual void SwiGLU(const void* h, void* out, int T, int F) = 0;
  // out = SwiGLU(x·w^T + b) for w [2F, in] (the SiLU branch's F rows, then
  // the gate's); h [T, 2F] is scratch for backends that do not fuse them.
  virtual void LinearSwiGLU(const void* x, const void* w, const void* b, void* h, void* out, int T, int in, int F) {
    Linear(x, w, b, h, T, in, 2 * F);
    SwiGLU(h, out, T, F);
  }
  // dst[i] = src[rows[i]] for n rows of C elements.
  virtual void GatherRows(const void* src, const int32_t* rows, void* dst, int n, int C) = 0;
  // Writes each token's K and V (from its fused qkv row) into its cache slot.
  virtual void KvAppend(const void* qkv, int T, const int32_t* slot_mapping, const AttentionDims& dims, void* k_cache,
                        void* v_cache) = 0;
  // qkv[T, qkv_dim] = x · w^T + b (the fused QKV projection), then KvAppend
  // of its rows: one kernel where a backend fuses them (CUDA, at few rows).
  virtual void LinearKvAppend(const void* x, const void* w, const void* b, void* qkv, int T, int in, int qkv_dim,
                              const int32_t* slot_mapping, const AttentionDims& dims, void* k_cache, void* v_cache) {
    Linear(x, w, b, qkv, T, in, qkv_dim);
    KvAppend(qkv, T, slot_mapping, dims, k_cache, v_cache);
  }
  // A decode step of a few rows, with each LayerNorm folded into the product
  // that reads it and each residual add into the product before it: the
  // runner calls NormLinearKvAppend, LinearAddInPlace and NormLinearSwiGLU
  // instead of LayerNorm / AddLayerNorm and the plain products when this
  // says the backend fuses them for T rows of width C (CUDA: the GEMV's rows).
  virtual bool FusesNormIntoLinear(int /*T*/, int /*C*/) const { return false; }
  // LinearKvAppend of LayerNorm(x) (norm_w, norm_b, eps); ln [T, in] is
  // scratch for backends that do not fuse them.
  virtual void NormLinearKvAppend(const void* x, const void* norm_w, const void* norm_b, float eps, void* ln, const void* w,
                                  const void* b, void* qkv, int T, int in, int qkv_dim, const int32_t* slot_mapping,
                                  const AttentionDims& dims, void* k_cache, void* v_cache) {
    LayerNorm(x, norm_w, norm_b, ln, T, in, eps);
    LinearKvAppend(ln, w, b, qkv, T, in, qkv_dim, slot_mapping, dims, k_cache, v_cache);
  }
  // LinearSwiGLU of LayerNorm(x); ln [T, in] and h [T, 2F] are scratch.
  virtual void NormLinearSwiGLU(const void* x, const void* norm_w, const void* norm_b, float eps, void* ln, const void* w,
                                const void* b, void* h, void* out, int T, int in, int F) {
    LayerNorm(x, norm_w, norm_b, ln, T, in, eps);
    LinearSwiGLU(ln, w, b, h, out, T, in, F);
  }
  // residual[T, out] += x · w^T + b; y [T, out] is scratch.
  virtual void LinearAddInPlace(const void* x, const void* w, const void* b, void* y, void* residual, int T, int in, int out) {
    Linear(x, w, b, y, T, in, out);
    AddInPlace(residual, y, static_cast<size_t>(T) * out);
  }
  // The transformer blocks of one forward pass (LayersArgs below): the
  // residual stream x [T, d_model] goes in as the embeddings and comes out
  // before the final norm, each layer's K/V written into its cache. The
  // default runs them op by op (RunLayersOpByOp); the CUDA backend runs a
  // decode step of a few rows as one kernel (decode_step_kernel.cuh).
  struct LayerWeights {
    const void *norm1_w, *norm1_b, *qkv_w, *qkv_b, *proj_w, *proj_b, *norm2_w, *norm2_b, *w12_w, *w12_b, *w3_w, *w3_b;
    void *k_cache, *v_cache;
  };
  struct LayersArgs {
    const LayerWeights* layers = nullptr;  // host array of n_layers
    int n_layers = 0;
    int T = 0, d_model = 0, ffn_hidden = 0;
    float norm_eps = 1e-5f;
    AttentionDims dims;
    AttentionBatch batch;        // backend memory; the step's queries
    int block_size = 16;         // the caches' paging (PagedKv's, the table per layer the same)
    const int32_t* block_tables = nullptr;
    int max_blocks_per_seq = 0;
    const int32_t* slots = nullptr;  // [T] the cache slot of each row's K/V
    void* x = nullptr;               // [T, d_model], in and out
    // Scratch, each T rows: ln [d], qkv [qkv_dim], att [d], tmp [d], h12 [2F], sw [F].
    void *ln = nullptr, *qkv = nullptr, *att = nullptr, *tmp = nullptr, *h12 = nullptr, *sw = nullptr;
  };
  virtual void TransformerLayers(const LayersArgs& a);
  // Block-diagonal causal attention with offset over the paged cache; the
  // queries are the first n_heads*head_dim columns of the fused qkv rows.
  virtual void PagedAttention(const AttentionDims& dims, const AttentionBatch& batch, const void* qkv, const PagedKv& kv,
                              void* out) = 0;
  // One token per logits row. params and tokens are backend memory, and the
  // op is enqueued like any other (no wait for the result), so that a
  // captured graph can hold it. A row holding a NaN or an infinity gets
  // kNonFiniteLogits instead of a token.
  virtual void Sample(const void* logits, int rows, int vocab, const SamplingParams* params, int32_t* tokens) = 0;
  // out = logits with each row's penalties applied (kernels/sampling_args.h);
  // rows/entries are backend memory. Rows without penalties are copied.
  virtual void ApplyPenalties(const void* logits, void* out, int rows, int vocab, const PenaltyRow* row_params,
                              const PenaltyEntry* entries) = 0;
  // tokens[i] < 0 means "the token sampled in row -tokens[i]-1 of the
  // previous step" (a decode step planned before that step's result came
  // back): replaced by sampled[-tokens[i]-1], or by 0 where that row was
  // kNonFiniteLogits (the sequence is ended; the token's result is dropped).
  virtual void FillPendingTokens(int32_t* tokens, int n, const int32_t* sampled) = 0;
  virtual void Synchronize() {}

  // ---- Asynchronous steps (model/runner.cc). The CUDA backend enqueues every
  // op on one stream; these let the runner overlap the host's work with the
  // device's and replay whole steps as graphs. The CPU backend runs each op
  // when called, so its defaults are the synchronous versions.
  // Host memory that asynchronous copies may read/write (pinned on CUDA).
  virtual void* AllocHost(size_t bytes) { return std::calloc(bytes ? bytes : 1, 1); }
  virtual void FreeHost(void* p) { std::free(p); }
  // Enqueues a device-to-host copy: the data is there once an event recorded
  // after it has completed.
  virtual void CopyToHostAsync(void* dst, const void* src, size_t bytes) { CopyToHost(dst, src, bytes); }
  // Converts n elements of dtype() in host memory to fp32.
  virtual void HostToFloats(const void* src, float* dst, size_t n) = 0;
  // Events mark a point of the stream; WaitEvent blocks the host until the
  // device has passed it; EventSeconds is the device time between two.
  virtual void* CreateEvent() { return this; }
  virtual void DestroyEvent(void*) {}
  virtual void RecordEvent(void*) {}
  virtual void WaitEvent(void*) {}
  virtual double EventSeconds(void* /*start*/, void* /*end*/) { return 0.0; }
  // Graphs: the ops enqueued between BeginCapture and EndCapture are recorded
  // (not run) and LaunchGraph replays them with the same buffers and shapes.
  // BeginCapture returns false when capture cannot start; EndCapture returns
  // null when the capture failed.
  virtual bool SupportsGraphs() const { return false; }
  virtual bool BeginCapture() { return false; }
  virtual void* EndCapture() { return nullptr; }
  virtual void LaunchGraph(void*) {}
  virtual void DestroyGraph(void*) {}
  // One-time work a backend does for a new shape (the CUDA backend's cuBLASLt
  // algorithm choice for a linear layer's row-count bucket, its timing of the
  // candidates, a larger attention workspace). A server does it all before
  // it takes traffic (ModelRunner::Warmup) and counts what is left after.
  struct ShapeCounters {
    long gemm_searches = 0;         // algorithm choices made (each with a heuristic query, most timed)
    long workspace_growths = 0;     // device workspaces allocated or enlarged
  };
  virtual ShapeCounters shape_counters() const { return {}; }
  // The row counts at which to run the inference ops once so that every
  // per-shape choice for 1..max_rows rows is made (kernels/row_buckets.h);
  // empty when the backend makes none.
  virtual std::vector<int> WarmupRowCounts(int /*max_rows*/) const { return {}; }

  // ---- Training (model/transformer.cc). Activations, their gradients and
  // `w`/`b` are dtype() (on the CPU fp32; on CUDA the compute copy of the fp32
  // master weights). Parameter gradients (`float* dw`, `db`, ...) and the
  // optimizer's buffers are fp32 backend memory, always ACCUMULATED into.
  // Input gradients: "writes" or "accumulates" as each op says. The CPU
  // backend implements these with kernels/cpu/ops.h, the reference.
  virtual absl::Status SupportsTraining(int head_dim) const = 0;
  // Sets `bytes` of backend memory to zero.
  virtual void Zero(void* p, size_t bytes) = 0;
  // Converts n fp32 values (backend memory) to dtype() (the compute copy).
  virtual void CastFromFloats(const float* src, void* dst, size_t n) = 0;
  // Linear in nn.Linear's layout [out, in] (training reads the weights as
  // they are updated, not in the inference upload layout).
  virtual void LinearTrain(const void* x, const void* w, const void* b, void* y, int T, int in, int out) = 0;
  // y = x·w^T + b + residual (the residual stream's add after a block's
  // output projection). residual may not alias y. The default is
  // LinearTrain then AddInPlace; CUDA folds the add into the GEMM.
  virtual void LinearResidualTrain(const void* x, const void* w, const void* b, const void* residual, void* y, int T, int in,
                                   int out) {
    LinearTrain(x, w, b, y, T, in, out);
    AddInPlace(y, residual, static_cast<size_t>(T) * out);
  }
  // h = x·w^T + b ([T, 2F]), out = swiglu(h) ([T, F]).
  virtual void LinearSwiGLUTrain(const void* x, const void* w, const void* b, void* h, void* out, int T, int in, int F) = 0;
  // dx = dy·w (writes; dx may be null), dw += dy^T·x, db += Σ_rows dy.
  virtual void LinearBackward(const void* dy, const void* x, const void* w, void* dx, float* dw, float* db, int T, int in,
                              int out) = 0;
  // dh (writes) for y = swiglu(h)·w^T, w: [out, F].
  virtual void SwiGLULinearBackwardInput(const void* dy, const void* w, const void* h, void* dh, int T, int F, int out) = 0;
  // LayerNorm saving per-row mean and rstd (fp32) for the backward.
  virtual void LayerNormTrain(const void* x, const void* w, const void* b, void* y, float* mean, float* rstd, int T, int C,
                              float eps) = 0;
  // dx accumulates (the residual stream's gradient), dw/db accumulate.
  virtual void LayerNormBackward(const void* dy, const void* x, const void* w, const float* mean, const float* rstd, void* dx,
                                 float* dw, float* db, int T, int C) = 0;
  // dtok/dpos (fp32, dpos null under ALiBi) accumulate dout's rows.
  virtual void EmbeddingBackward(const void* dout, const int32_t* tokens, const int32_t* positions, float* dtok, float* dpos,
                                 int T, int C) = 0;
  // Causal attention over the fused qkv rows (batch.ctx_len == the query
  // lengths): out [T, n_heads*head_dim], lse [T, n_heads] (fp32) of the
  // scaled (and ALiBi-biased) scores, kept for the backward.
  virtual void AttentionTrain(const AttentionDims& dims, const AttentionBatch& batch, const void* qkv, void* out,
                              float* lse) = 0;
  // Writes dqkv (the fused layout of qkv) from dout, recomputing the scores
  // from lse tile by tile.
  virtual void AttentionBackward(const AttentionDims& dims, const AttentionBatch& batch, const void* qkv, const void* out,
                                 const void* dout, const float* lse, void* dqkv) = 0;
  // Mean cross-entropy over T rows of logits (host result; targets backend
  // memory). Writes dlogits = dloss_scale·(softmax − onehot)/T, which may be
  // the logits buffer itself, and the argmax hits into *correct if non-null.
  virtual float CrossEntropy(const void* logits, const int32_t* targets, void* dlogits, int T, int V, float dloss_scale,
                             int* correct) = 0;
  // Σ g² in double (host result): the global norm, and inf/NaN when any
  // gradient is not finite (how fp16 loss scaling detects overflow).
  virtual double SumOfSquares(const float* g, size_t n) = 0;
  // One AdamW update of n parameters (step counts from 1) with the gradients
  // multiplied by grad_scale first (clipping and undoing a loss scale; the
  // CPU scales g in place, CUDA leaves it). p_compute, when non-null, receives the new weights in
  // dtype() (the compute copy).
  virtual void AdamW(float* p, float* g, float* m, float* v, size_t n, float lr, float beta1, float beta2, float eps,
                     float weight_decay, long step, float grad_scale, void* p_compute) = 0;

  // --- Data parallelism on the device (CUDA: NCCL, opened at run time) ---
  // The CPU sums on the host instead (train/communicator.h, MPI).
  // A new world's id, made by rank 0 and carried to the others by the
  // launcher's channel (MPI or the rendezvous).
  virtual absl::StatusOr<std::string> NewCollectiveId() {
    return absl::UnimplementedError(name() + " backend has no device collectives (ranks on CPUs sum through MPI)");
  }
  // Makes this backend rank `rank` of the world that `id` names, once every
  // rank has joined (`timeout` at most; `check` as in WaitCollectives).
  virtual absl::Status JoinCollective(const std::string& /*id*/, int /*rank*/, int /*world_size*/, absl::Duration /*timeout*/,
                                      const std::function<absl::Status()>& /*check*/) {
    return absl::UnimplementedError(name() + " backend has no device collectives (ranks on CPUs sum through MPI)");
  }
  // data[0..n) (backend memory) replaced by its sum over the ranks, after
  // the work enqueued before it, on a stream of its own: the backward's
  // later ops run while it sums. Every rank sums the same ranges in the
  // same order.
  virtual absl::Status AllReduceSum(float* /*data*/, size_t /*n*/) {
    return absl::UnimplementedError(name() + " backend has no device collectives");
  }
  // Waits until every sum enqueued has finished (the work enqueued after
  // this call follows them). `check` runs between polls: its error, an
  // error of the collectives' or the timeout ends the wait and leaves the
  // collectives aborted, so that a dead rank ends the others, not hangs them.
  virtual absl::Status WaitCollectives(absl::Duration /*timeout*/, const std::function<absl::Status()>& /*check*/) {
    return absl::OkStatus();
  }
};

// Backend::TransformerLayers op by op: the fused norm and residual ops where
// the backend says FusesNormIntoLinear, else LayerNorm, the products and
// AddLayerNorm (kernels/layers.cc).
void RunLayersOpByOp(Backend& b, const Backend::LayersArgs& a);
inline void Backend::TransformerLayers(const LayersArgs& a) { RunLayersOpByOp(*this, a); }

// device: "auto" (CUDA when a GPU is found, else CPU), "cpu", "cuda" (GPU 0)
// or "cuda:N" (GPU N).
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const std::string& device, const std::string& dtype);

// The CUDA module exports this symbol (extern "C"); see kernels/cuda/.
using CreateCudaBackendFn = Backend* (*)(const char* dtype, int device, char* error, size_t error_len);
inline constexpr const char* kCudaModuleName = "libtinygpt_cuda.so";
inline constexpr const char* kCudaFactorySymbol = "tinygpt_create_cuda_backend_v2";  // v2: the device index

}  // namespace tinygpt
