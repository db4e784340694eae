// The CUDA backend module (libtinygpt_cuda.so), opened with dlopen by
// kernels/backend_registry.cc. Weights, activations and the KV cache are bf16
// or fp16; accumulation, LayerNorm statistics and softmax are fp32. Linear
// layers: up to 4 rows the GEMV (gemv_kernel.cuh), up to 64 the skinny GEMM
// (skinny_gemm_kernel.cuh), above and for training cuBLASLt with the bias
// fused in its epilogue; attention, sampling and the small fused ops are
// this folder's kernels.
#include <cuda_profiler_api.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/attention_launch.h"
#include "kernels/cuda/attention_train_launch.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/decode_step_launch.h"
#include "kernels/cuda/elementwise_kernels.cuh"
#include "kernels/cuda/gemv_kernel.cuh"
#include "kernels/cuda/lt_gemm.h"
#include "kernels/cuda/nccl_collective.h"
#include "kernels/cuda/op_times.h"
#include "kernels/cuda/sampling_kernel.cuh"
#include "kernels/cuda/skinny_gemm_launch.h"
#include "kernels/cuda/train_kernels.cuh"
#include "kernels/row_buckets.h"

namespace tinygpt::cuda {
namespace {

// TINYGPT_FUSED_KV_APPEND=0: the QKV GEMV (or skinny GEMM) and the KV append kernel apart
// again (the A/B of device-run.sh decode).
bool FusedKvAppend() {
  static const bool on = EnvOn("TINYGPT_FUSED_KV_APPEND");
  return on;
}

int Blocks(long n, int threads) { return static_cast<int>(std::min<long>((n + threads - 1) / threads, 65535L * 8)); }

template <class T>
class CudaBackend final : public Backend {
 public:
  CudaBackend(DType dtype, int device) : dtype_(dtype) {
    TG_CUDA_CHECK(cudaSetDevice(device));
    cudaDeviceProp prop;
    TG_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    device_name_ = prop.name;
    num_sms_ = prop.multiProcessorCount;
    PdlEnabled() = prop.major >= 9 && EnvOn("TINYGPT_PDL");
    TG_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    gemm_ = std::make_unique<LtGemm>(CudaType<T>(), sizeof(T), stream_);
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    op_times_.Print();
    for (void* p : {scratch_, static_cast<void*>(ce_loss_), static_cast<void*>(ce_hit_), static_cast<void*>(sumsq_)})
      if (p) cudaFree(p);
    gemm_.reset();
    if (split_workspace_) cudaFree(split_workspace_);
    if (split_counters_) cudaFree(split_counters_);
    for (void* p : retired_) cudaFree(p);
    for (auto& [host, dev] : layer_tables_) cudaFree(dev);
    if (step_barrier_) cudaFree(step_barrier_);
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return "cuda"; }
  std::string device_name() const override { return device_name_; }
  DType dtype() const override { return dtype_; }
  absl::Status SupportsModel(int head_dim) const override {
    if (head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128) return absl::OkStatus();
    return absl::InvalidArgumentError("CUDA backend: head_dim " + std::to_string(head_dim) +
                                      " is not supported (16, 32, 64, 128)");
  }

  void* Alloc(size_t bytes) override {
    void* p = nullptr;
    if (cudaMalloc(&p, std::max<size_t>(bytes, 16)) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free allocation error
      return nullptr;
    }
    TG_CUDA_CHECK(cudaMemsetAsync(p, 0, std::max<size_t>(bytes, 16), stream_));
    return p;
  }
  size_t AvailableBytes() const override {
    size_t free_bytes = 0, total = 0;
    TG_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
    return free_bytes;
  }
  void Free(void* p) override {
    cudaStreamSynchronize(stream_);
    cudaFree(p);
  }
  void CopyToDevice(void* dst, const void* src, size_t bytes) override {
    TG_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  }
  void CopyToHost(void* dst, const void* src, size_t bytes) override {
    TG_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    TG_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void UploadFloats(void* dst, const float* src, size_t n) override {
    std::vector<T> tmp(n);
    for (size_t i = 0; i < n; ++i) tmp[i] = T(src[i]);
    // On our stream (non-blocking, so unordered with the legacy default
    // stream): after the Alloc's memset, before any use.
    TG_CUDA_CHECK(cudaMemcpyAsync(dst, tmp.data(), n * sizeof(T), cudaMemcpyHostToDevice, stream_));
    TG_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void DownloadFloats(float* dst, const void* src, size_t n) override {
    std::vector<T> tmp(n);
    CopyToHost(tmp.data(), src, n * sizeof(T));
    for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(tmp[i]);
  }

  void Embedding(const int32_t* tokens, const int32_t* positions, const void* tok, const void* pos, void* out, int T_,
                 int C) override {
    OpTimes::Scope timed(&op_times_, "embedding forward", stream_);
    if (T_ == 0) return;
    LaunchKernel(true, EmbeddingKernel<T>, T_, 128, 0, stream_, tokens, positions, P(tok), P(pos), P(out), C);
    TG_CUDA_LAUNCH_CHECK();
  }
  void LayerNorm(const void* x, const void* w, const void* b, void* y, int rows, int C, float eps) override {
    OpTimes::Scope timed(&op_times_, "layernorm", stream_);
    if (rows == 0) return;
    // x is only read without kAdd.
    if (LayerNormVec<false>(const_cast<T*>(P(x)), nullptr, P(w), P(b), P(y), nullptr, nullptr, rows, C, eps)) return;
    LaunchKernel(true, LayerNormKernel<T>, (rows + 7) / 8, 256, 0, stream_, P(x), P(w), P(b), P(y), rows, C, eps);
  }
  void Linear(const void* x, const void* w, const void* b, void* y, int rows, int in, int out) override {
    if (rows == 0) return;
    if constexpr (sizeof(T) == 2) {  // (no fp32 GEMV kernel is instantiated)
      if (GemvTakes(rows, in, x, w)) {
        OpTimes::Scope timed(&op_times_, out >= 16384 ? "linear (vocab, gemv)" : "linear (gemv)", stream_);
        LaunchGemv<T>(P(x), P(w), P(b), P(y), rows, in, out, stream_);
        return;
      }
      if (SkinnyGemmTakes(rows, in, out, x, w)) {
        OpTimes::Scope timed(&op_times_, "linear (skinny)", stream_);
        LaunchSkinnyGemm(dtype_ == DType::kBF16, x, w, b, y, rows, in, out, false, {}, stream_);
        return;
      }
    }
    OpTimes::Scope timed(&op_times_, out >= 16384 ? "linear (vocab)" : rows <= 512 ? "linear (rows <= 512)" : "linear (rows > 512)", stream_);
    // Row-major y[rows,out] = x[rows,in]·w[out,in]^T is, column-major,
    // y^T[out,rows] = (w viewed [in,out])^T · (x viewed [in,rows]).
    gemm_->InferenceGemm({true, false, out, rows, in, in, in, out, CudaType<T>(), b != nullptr}, w, x, y, b);
  }
  ShapeCounters shape_counters() const override {
    ShapeCounters c = counters_;
    c.gemm_searches = gemm_->searches();
    return c;
  }
  std::vector<int> WarmupRowCounts(int max_rows) const override { return RowBucketRepresentatives(max_rows); }
  void AddInPlace(void* x, const void* y, size_t n) override {
    OpTimes::Scope timed(&op_times_, "residual add", stream_);
    if (n == 0) return;
    LaunchKernel(true, AddKernel<T>, Blocks(n, 256), 256, 0, stream_, P(x), P(y), static_cast<long>(n));
  }
  void AddLayerNorm(void* x, const void* r, const void* w, const void* b, void* y, int rows, int C, float eps) override {
    if (rows == 0) return;
    {
      OpTimes::Scope timed(&op_times_, "add+layernorm", stream_);
      if (LayerNormVec<true>(P(x), P(r), P(w), P(b), P(y), nullptr, nullptr, rows, C, eps)) return;
    }
    Backend::AddLayerNorm(x, r, w, b, y, rows, C, eps);  // widths the vector kernel does not take: add, then norm
  }
  void LinearSwiGLU(const void* x, const void* w, const void* b, void* h, void* out, int rows, int in, int F) override {
    if constexpr (sizeof(T) == 2) {
      if (rows > 0 && GemvTakes(rows, in, x, w)) {
        OpTimes::Scope timed(&op_times_, "linear+swiglu (gemv)", stream_);
        LaunchGemv<T, GemvEpilogue::kSwiGLU>(P(x), P(w), P(b), P(out), rows, in, F, stream_);
        return;
      }
      if (rows > 0 && SkinnyGemmTakes(rows, in, 2 * F, x, w)) {
        OpTimes::Scope timed(&op_times_, "linear+swiglu (skinny)", stream_);
        LaunchSkinnyGemm(dtype_ == DType::kBF16, x, w, b, out, rows, in, F, true, {}, stream_);
        return;
      }
    }
    Linear(x, w, b, h, rows, in, 2 * F);
    SwiGLU(h, out, rows, F);
  }
  void SwiGLU(const void* h, void* out, int rows, int F) override {
    OpTimes::Scope timed(&op_times_, "swiglu forward", stream_);
    if (rows == 0) return;
    LaunchSwiGLU(h, out, rows, F, true);
  }
  void GatherRows(const void* src, const int32_t* rows, void* dst, int n, int C) override {
    OpTimes::Scope timed(&op_times_, "gather rows", stream_);
    if (n == 0) return;
    LaunchKernel(true, GatherRowsKernel<T>, n, 128, 0, stream_, P(src), rows, P(dst), C);
  }
  void KvAppend(const void* qkv, int T_, const int32_t* slots, const AttentionDims& d, void* k_cache, void* v_cache) override {
    OpTimes::Scope timed(&op_times_, "kv append", stream_);
    if (T_ == 0) return;
    const long stride = static_cast<long>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim;
    if (sizeof(T) == 2 && d.head_dim % 8 == 0 && Aligned16(qkv, k_cache, v_cache)) {
      LaunchKernel(true, KvAppendVecKernel<T>, (T_ + 3) / 4, 128, 0, stream_, P(qkv), stride, slots, T_, d.n_heads * d.head_dim,
                   d.n_kv_heads * d.head_dim, P(k_cache), P(v_cache));
      return;
    }
    LaunchKernel(true, KvAppendKernel<T>, T_, 128, 0, stream_, P(qkv), stride, slots, d.n_heads * d.head_dim,
                 d.n_kv_heads * d.head_dim, P(k_cache), P(v_cache));
  }
  void LinearKvAppend(const void* x, const void* w, const void* b, void* qkv, int rows, int in, int qkv_dim, const int32_t* slots,
                      const AttentionDims& d, void* k_cache, void* v_cache) override {
    if constexpr (sizeof(T) == 2) {
      if (rows > 0 && GemvTakes(rows, in, x, w) && FusedKvAppend()) {
        OpTimes::Scope timed(&op_times_, "linear+kv append (gemv)", stream_);
        GemvKvAppend<T> kv{slots, d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim, P(k_cache), P(v_cache)};
        LaunchGemv<T>(P(x), P(w), P(b), P(qkv), rows, in, qkv_dim, stream_, kv);
        return;
      }
      if (rows > 0 && SkinnyGemmTakes(rows, in, qkv_dim, x, w) && FusedKvAppend()) {
        OpTimes::Scope timed(&op_times_, "linear+kv append (skinny)", stream_);
        const SkinnyKvAppend kv{slots, d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim, k_cache, v_cache};
        LaunchSkinnyGemm(dtype_ == DType::kBF16, x, w, b, qkv, rows, in, qkv_dim, false, kv, stream_);
        return;
      }
    }
    Backend::LinearKvAppend(x, w, b, qkv, rows, in, qkv_dim, slots, d, k_cache, v_cache);
  }
  // The norm folded into the GEMV (gemv_kernel.cuh) at up to
  // TINYGPT_FUSED_NORM_MAX_ROWS rows (4: on the H200 a bench-125m step was
  // 23-41 us faster so at 1-4 sequences and 48 us slower at 8) whose
  // normalized copy fits its shared memory; TINYGPT_FUSED_NORM=0 turns it off.
  bool FusesNormIntoLinear(int rows, int C) const override {
    static const bool on = EnvOn("TINYGPT_FUSED_NORM");
    static const long max_rows = std::min<long>(GemvMaxRows(), EnvLong("TINYGPT_FUSED_NORM_MAX_ROWS", 4));
    return on && sizeof(T) == 2 && rows >= 1 && rows <= max_rows && C % 8 == 0 && C <= kGemvNormMaxIn &&
           static_cast<size_t>(rows + 2) * C * sizeof(T) <= static_cast<size_t>(kGemvNormMaxBytes);
  }
  void NormLinearKvAppend(const void* x, const void* norm_w, const void* norm_b, float eps, void* ln, const void* w, const void* b,
                          void* qkv, int rows, int in, int qkv_dim, const int32_t* slots, const AttentionDims& d, void* k_cache,
                          void* v_cache) override {
    if constexpr (sizeof(T) == 2) {
      if (FusesNormIntoLinear(rows, in) && GemvTakes(rows, in, x, w) && Aligned16(norm_w, norm_b) && FusedKvAppend()) {
        OpTimes::Scope timed(&op_times_, "norm+linear+kv append (gemv)", stream_);
        GemvKvAppend<T> kv{slots, d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim, P(k_cache), P(v_cache)};
        LaunchGemv<T>(P(x), P(w), P(b), P(qkv), rows, in, qkv_dim, stream_, kv, GemvNorm<T>{P(norm_w), P(norm_b), eps});
        return;
      }
    }
    Backend::NormLinearKvAppend(x, norm_w, norm_b, eps, ln, w, b, qkv, rows, in, qkv_dim, slots, d, k_cache, v_cache);
  }
  void NormLinearSwiGLU(const void* x, const void* norm_w, const void* norm_b, float eps, void* ln, const void* w, const void* b,
                        void* h, void* out, int rows, int in, int F) override {
    if constexpr (sizeof(T) == 2) {
      if (FusesNormIntoLinear(rows, in) && GemvTakes(rows, in, x, w) && Aligned16(norm_w, norm_b)) {
        OpTimes::Scope timed(&op_times_, "norm+linear+swiglu (gemv)", stream_);
        LaunchGemv<T, GemvEpilogue::kSwiGLU>(P(x), P(w), P(b), P(out), rows, in, F, stream_, {}, GemvNorm<T>{P(norm_w), P(norm_b), eps});
        return;
      }
    }
    Backend::NormLinearSwiGLU(x, norm_w, norm_b, eps, ln, w, b, h, out, rows, in, F);
  }
  void LinearAddInPlace(const void* x, const void* w, const void* b, void* y, void* residual, int rows, int in, int out) override {
    if constexpr (sizeof(T) == 2) {
      if (rows > 0 && GemvTakes(rows, in, x, w)) {
        OpTimes::Scope timed(&op_times_, "linear+residual (gemv)", stream_);
        LaunchGemv<T, GemvEpilogue::kAddInPlace>(P(x), P(w), P(b), P(residual), rows, in, out, stream_);
        return;
      }
    }
    Backend::LinearAddInPlace(x, w, b, y, residual, rows, in, out);
  }
  // With TINYGPT_DECODE_STEP_KERNEL=1 a decode step of 1-4 rows runs its
  // layers as one kernel (decode_step_kernel.cuh) where it plans one. Off by
  // default until it has run on a GPU (issue #23: built and compiled, not
  // yet checked or timed on the device).
  void TransformerLayers(const LayersArgs& a) override {
    if constexpr (sizeof(T) == 2) {
      if (RunDecodeStepKernel(a)) return;
    }
    Backend::TransformerLayers(a);
  }
  void PagedAttention(const AttentionDims& d, const AttentionBatch& batch, const void* qkv, const PagedKv& kv, void* out) override {
    OpTimes::Scope timed(&op_times_, batch.max_q_len == 1 ? "paged attention (decode)" : "paged attention (prefill)", stream_);
    if constexpr (std::is_same_v<T, float>) {
      // fp32 is a training precision (--precision fp32); the factory's callers
      // that serve (ModelRunner) ask for bf16 or f16.
      std::fprintf(stderr, "CUDA backend: paged attention has no fp32 kernel (serve with --dtype bf16 or f16)\n");
      std::abort();
    }
    const AttentionPlan plan = PlanPagedAttention(dtype_ == DType::kBF16, d, batch, num_sms_);
    GrowSplitWorkspace(plan.partial_floats * sizeof(float));
    GrowSplitCounters(plan.split_counters);
    LaunchPagedAttention(dtype_ == DType::kBF16, plan, d, batch, qkv, static_cast<long>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim, kv,
                         out, static_cast<float*>(split_workspace_), static_cast<int*>(split_counters_), stream_);
  }
  void Sample(const void* logits, int rows, int vocab, const SamplingParams* params, int32_t* tokens) override {
    OpTimes::Scope timed(&op_times_, "sample", stream_);
    if (rows == 0) return;
    LaunchKernel(true, SampleKernel<T>, rows, kSampleThreads, 0, stream_, P(logits), vocab, params, tokens);
  }
  void ApplyPenalties(const void* logits, void* out, int rows, int vocab, const PenaltyRow* row_params,
                      const PenaltyEntry* entries) override {
    if (rows == 0) return;
    LaunchKernel(true, ApplyPenaltiesKernel<T>, rows, 256, 0, stream_, P(logits), P(out), vocab, row_params, entries);
  }
  void FillPendingTokens(int32_t* tokens, int n, const int32_t* sampled) override {
    OpTimes::Scope timed(&op_times_, "fill pending tokens", stream_);
    if (n == 0) return;
    LaunchKernel(true, FillPendingTokensKernel, (n + 255) / 256, 256, 0, stream_, tokens, n, sampled);
  }

  // ---- Asynchronous steps: pinned staging, events and graphs on stream_.
  void* AllocHost(size_t bytes) override {
    void* p = nullptr;
    if (cudaHostAlloc(&p, std::max<size_t>(bytes, 16), cudaHostAllocDefault) != cudaSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    std::memset(p, 0, std::max<size_t>(bytes, 16));
    return p;
  }
  void FreeHost(void* p) override {
    if (!p) return;
    cudaStreamSynchronize(stream_);
    cudaFreeHost(p);
  }
  void CopyToHostAsync(void* dst, const void* src, size_t bytes) override {
    TG_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  }
  void HostToFloats(const void* src, float* dst, size_t n) override {
    const T* s = static_cast<const T*>(src);
    for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
  }
  void* CreateEvent() override {
    cudaEvent_t e;
    TG_CUDA_CHECK(cudaEventCreate(&e));
    return e;
  }
  void DestroyEvent(void* e) override { cudaEventDestroy(static_cast<cudaEvent_t>(e)); }
  void RecordEvent(void* e) override { TG_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(e), stream_)); }
  void WaitEvent(void* e) override { TG_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(e))); }
  double EventSeconds(void* start, void* end) override {
    float ms = 0.f;
    TG_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(end)));
    return ms * 1e-3;
  }
  // Relaxed mode: cuBLASLt may query the device while it is captured.
  // Buffers a graph holds (workspaces) are never freed while the backend
  // lives (see PagedAttention).
  bool SupportsGraphs() const override { return true; }
  bool BeginCapture() override {
    if (cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return true;
  }
  void* EndCapture() override {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
    if (end != cudaSuccess || !graph) {
      std::fprintf(stderr, "CUDA graph capture failed: %s\n", cudaGetErrorString(end));
      cudaGetLastError();
      if (graph) cudaGraphDestroy(graph);
      return nullptr;
    }
    const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (inst != cudaSuccess) {
      std::fprintf(stderr, "CUDA graph instantiation failed: %s\n", cudaGetErrorString(inst));
      cudaGetLastError();
      return nullptr;
    }
    return exec;
  }
  void LaunchGraph(void* g) override { TG_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(g), stream_)); }
  void DestroyGraph(void* g) override {
    cudaStreamSynchronize(stream_);
    cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(g));
  }

  // ---- Training ops (see kernels/backend.h).
  absl::Status SupportsTraining(int head_dim) const override { return SupportsModel(head_dim); }
  void Zero(void* p, size_t bytes) override {
    OpTimes::Scope timed(&op_times_, "zero", stream_);
    if (bytes) TG_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
  }
  void CastFromFloats(const float* src, void* dst, size_t n) override {
    if (n == 0 || static_cast<const void*>(src) == dst) return;
    CastFromFloatKernel<T><<<Blocks(n, 256), 256, 0, stream_>>>(src, P(dst), static_cast<long>(n));
    TG_CUDA_LAUNCH_CHECK();
  }
  void LinearTrain(const void* x, const void* w, const void* b, void* y, int rows, int in, int out) override {
    OpTimes::Scope timed(&op_times_, out >= 16384 ? "linear forward (vocab)" : "linear forward", stream_);
    // y^T[out, rows] = w^T... in column-major terms: (w stored in×out)^T · (x stored in×rows).
    if (rows) gemm_->Gemm({true, false, out, rows, in, in, in, out, CudaType<T>(), b != nullptr}, w, x, y, 0.f, b);
  }
  void LinearSwiGLUTrain(const void* x, const void* w, const void* b, void* h, void* out, int rows, int in, int F) override {
    OpTimes::Scope timed(&op_times_, "linear+swiglu forward", stream_);
    if (rows == 0) return;
    gemm_->Gemm({true, false, 2 * F, rows, in, in, in, 2 * F, CudaType<T>(), b != nullptr}, w, x, h, 0.f, b);
    LaunchSwiGLU(h, out, rows, F, false);  // no programmatic launch in training (common.cuh)
  }
  // y = x·w^T + b + residual: the residual add in the GEMM's epilogue (C =
  // residual, beta 1) instead of a pass of its own over y.
  void LinearResidualTrain(const void* x, const void* w, const void* b, const void* residual, void* y, int rows, int in,
                           int out) override {
    OpTimes::Scope timed(&op_times_, "linear+residual forward", stream_);
    if (rows) gemm_->Gemm({true, false, out, rows, in, in, in, out, CudaType<T>(), b != nullptr}, w, x, y, 1.f, b, residual);
  }
  void LinearBackward(const void* dy, const void* x, const void* w, void* dx, float* dw, float* db, int rows, int in,
                      int out) override {
    OpTimes::Scope timed(&op_times_, out >= 16384 ? "linear backward (vocab)" : "linear backward", stream_);
    if (rows == 0) return;
    // dx[rows, in] = dy·w: column-major dx^T[in, rows] = (w stored in×out) · (dy stored out×rows).
    if (dx) gemm_->Gemm({false, false, in, rows, out, in, out, in, CudaType<T>(), false}, w, dy, dx, 0.f, nullptr);
    // dw[out, in] += dy^T·x: column-major dw^T[in, out] = (x stored in×rows) · (dy stored out×rows)^T, fp32.
    // With db, cuBLASLt's BGRADB epilogue sums dy over the rows (op(B)'s k
    // dimension) in the same pass into an fp32 scratch vector, added into db
    // after (the epilogue writes; db accumulates). Where cuBLASLt has no such
    // algorithm (or TINYGPT_CUDA_NO_BGRADB is set), a kernel of its own reads dy again.
    const GemmShape plain{false, true, in, out, rows, in, out, in, CUDA_R_32F, false};
    GemmShape fused = plain;
    fused.bgradb = true;
    if (db && use_bgradb_ && BgradbFaster(plain, fused, x, dy, rows, out)) {
      gemm_->Gemm(fused, x, dy, dw, 1.f, bias_scratch_.p);
      AddFloatsKernel<<<Blocks(out, 256), 256, 0, stream_>>>(db, bias_scratch_.p, out);
      TG_CUDA_LAUNCH_CHECK();
      return;
    }
    gemm_->Gemm(plain, x, dy, dw, 1.f, nullptr);
    if (db) BiasGrad(dy, db, rows, out);
  }
  void BiasGrad(const void* dy, float* db, int rows, int out) {
    // Row slices enough for ~8 blocks per SM, of at least 256 rows each.
    const int col_blocks = (out + 63) / 64;
    const dim3 grid(col_blocks, std::max(1, std::min(rows / 256, 8 * num_sms_ / col_blocks + 1)));
    BiasGradKernel<T><<<grid, dim3(32, 8), 0, stream_>>>(P(dy), db, rows, out);
    TG_CUDA_LAUNCH_CHECK();
  }
  // Whether the BGRADB weight-gradient GEMM (+ the add into db) beats the
  // plain GEMM + BiasGradKernel for this shape, timed once on first use on
  // the real operands into scratch outputs (on the H200 the fused form was
  // 10% faster at 768×768 but slower at the vocab's 768×32000). False when
  // cuBLASLt has no BGRADB algorithm for it.
  bool BgradbFaster(const GemmShape& plain, const GemmShape& fused, const void* x, const void* dy, int rows, int out) {
    const auto key = std::make_tuple(plain.m, plain.n, plain.k);
    auto it = bgradb_choice_.find(key);
    if (it != bgradb_choice_.end()) return it->second;
    bool faster = false;
    if (gemm_->HasAlgorithm(fused)) {
      if (static_cast<size_t>(out) > bias_scratch_.floats) bias_scratch_.Grow(out, stream_);
      float *d = nullptr, *db = nullptr;
      const size_t d_bytes = static_cast<size_t>(plain.ldd) * plain.n * sizeof(float);
      if (cudaMalloc(&d, d_bytes) == cudaSuccess && cudaMalloc(&db, out * sizeof(float)) == cudaSuccess) {
        auto run_plain = [&] {
          gemm_->Gemm(plain, x, dy, d, 0.f, nullptr);
          BiasGrad(dy, db, rows, out);
        };
        auto run_fused = [&] {
          gemm_->Gemm(fused, x, dy, d, 0.f, bias_scratch_.p);
          AddFloatsKernel<<<Blocks(out, 256), 256, 0, stream_>>>(db, bias_scratch_.p, out);
          TG_CUDA_LAUNCH_CHECK();
        };
        cudaEvent_t start, stop;
        TG_CUDA_CHECK(cudaEventCreate(&start));
        TG_CUDA_CHECK(cudaEventCreate(&stop));
        auto time = [&](const auto& fn) {
          fn();  // warm-up (and the GEMM's own algorithm timing on first use)
          TG_CUDA_CHECK(cudaEventRecord(start, stream_));
          for (int i = 0; i < 3; ++i) fn();
          TG_CUDA_CHECK(cudaEventRecord(stop, stream_));
          TG_CUDA_CHECK(cudaEventSynchronize(stop));
          float ms = 0;
          TG_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
          return ms;
        };
        const float t_plain = time(run_plain), t_fused = time(run_fused);
        faster = t_fused < t_plain;
        if (std::getenv("TINYGPT_CUDA_OP_TIMES"))
          std::fprintf(stderr, "bias gradient m=%d n=%d k=%d: BGRADB GEMM %.3f ms, GEMM + kernel %.3f ms (x3): %s\n", plain.m,
                       plain.n, plain.k, t_fused, t_plain, faster ? "BGRADB" : "kernel");
        TG_CUDA_CHECK(cudaEventDestroy(start));
        TG_CUDA_CHECK(cudaEventDestroy(stop));
      } else {
        cudaGetLastError();  // no room to try: the kernel
      }
      TG_CUDA_CHECK(cudaStreamSynchronize(stream_));
      if (d) cudaFree(d);
      if (db) cudaFree(db);
    }
    bgradb_choice_[key] = faster;
    return faster;
  }
  void SwiGLULinearBackwardInput(const void* dy, const void* w, const void* h, void* dh, int rows, int F, int out) override {
    OpTimes::Scope timed(&op_times_, "swiglu+linear backward dh", stream_);
    if (rows == 0) return;
    // d(swiglu) = dy·w [rows, F] into scratch, then through SwiGLU's derivative.
    T* dsw = static_cast<T*>(Scratch(static_cast<size_t>(rows) * F * sizeof(T)));
    gemm_->Gemm({false, false, F, rows, out, F, out, F, CudaType<T>(), false}, w, dy, dsw, 0.f, nullptr);
    if (F % (16 / sizeof(T)) == 0 && Aligned16(dsw, h, dh))
      SwiGLUBackwardVecKernel<T><<<std::min(rows, 64 * num_sms_), VecThreads(F), 0, stream_>>>(dsw, P(h), P(dh), rows, F);
    else
      SwiGLUBackwardKernel<T><<<Blocks(static_cast<long>(rows) * F, 256), 256, 0, stream_>>>(dsw, P(h), P(dh), rows, F);
    TG_CUDA_LAUNCH_CHECK();
  }
  void LayerNormTrain(const void* x, const void* w, const void* b, void* y, float* mean, float* rstd, int rows, int C,
                      float eps) override {
    OpTimes::Scope timed(&op_times_, "layernorm forward", stream_);
    if (rows == 0) return;
    if (LayerNormVec<false>(const_cast<T*>(P(x)), nullptr, P(w), P(b), P(y), mean, rstd, rows, C, eps)) return;
    LayerNormTrainKernel<T><<<(rows + 7) / 8, 256, 0, stream_>>>(P(x), P(w), P(b), P(y), mean, rstd, rows, C, eps);
    TG_CUDA_LAUNCH_CHECK();
  }
  void LayerNormBackward(const void* dy, const void* x, const void* w, const float* mean, const float* rstd, void* dx,
                         float* dw, float* db, int rows, int C) override {
    OpTimes::Scope timed(&op_times_, "layernorm backward", stream_);
    if (rows == 0) return;
    // One pass (dx, dw, db) with 16-byte loads when the row splits into at
    // most 8 vectors per lane; else the two-kernel form below.
    constexpr int V = 16 / sizeof(T);
    const int chunks = (C / V + 31) / 32;
    if (C % V == 0 && chunks <= 8 && Aligned16(dy, x, w, dx)) {
      auto launch = [&](auto kernel) {
        constexpr int kWarps = kLayerNormBackwardThreads / 32;
        const int blocks = std::max(1, std::min((rows + kWarps - 1) / kWarps, num_sms_));
        const size_t smem = 2 * static_cast<size_t>(C) * sizeof(float);
        if (smem > 48 * 1024) TG_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
        kernel<<<blocks, kLayerNormBackwardThreads, smem, stream_>>>(P(dy), P(x), P(w), mean, rstd, P(dx), dw, db, rows, C);
        TG_CUDA_LAUNCH_CHECK();
      };
      switch (chunks) {
        case 1: return launch(LayerNormBackwardVecKernel<T, 1>);
        case 2: return launch(LayerNormBackwardVecKernel<T, 2>);
        case 3: return launch(LayerNormBackwardVecKernel<T, 3>);
        case 4: return launch(LayerNormBackwardVecKernel<T, 4>);
        case 5: case 6: return launch(LayerNormBackwardVecKernel<T, 6>);
        default: return launch(LayerNormBackwardVecKernel<T, 8>);
      }
    }
    LayerNormBackwardDxKernel<T><<<(rows + 7) / 8, 256, 0, stream_>>>(P(dy), P(x), P(w), mean, rstd, P(dx), rows, C);
    TG_CUDA_LAUNCH_CHECK();
    // Row slices enough for ~8 blocks per SM, of at least 256 rows each.
    const int col_blocks = (C + 31) / 32;
    const dim3 grid(col_blocks, std::max(1, std::min(rows / 256, 8 * num_sms_ / col_blocks + 1)));
    LayerNormBackwardDwDbKernel<T><<<grid, dim3(32, 8), 0, stream_>>>(P(dy), P(x), mean, rstd, dw, db, rows, C);
    TG_CUDA_LAUNCH_CHECK();
  }
  void EmbeddingBackward(const void* dout, const int32_t* tokens, const int32_t* positions, float* dtok, float* dpos,
                         int rows, int C) override {
    OpTimes::Scope timed(&op_times_, "embedding backward", stream_);
    if (rows == 0) return;
    EmbeddingBackwardKernel<T><<<rows, 128, 0, stream_>>>(P(dout), tokens, positions, dtok, dpos, C);
    TG_CUDA_LAUNCH_CHECK();
  }
  void AttentionTrain(const AttentionDims& d, const AttentionBatch& batch, const void* qkv, void* out, float* lse) override {
    OpTimes::Scope timed(&op_times_, "attention forward", stream_);
    LaunchTrainAttentionForward<T>(d, batch, P(qkv), P(out), lse, stream_);
  }
  void AttentionBackward(const AttentionDims& d, const AttentionBatch& batch, const void* qkv, const void* out,
                         const void* dout, const float* lse, void* dqkv) override {
    OpTimes::Scope timed(&op_times_, "attention backward", stream_);
    float* delta = static_cast<float*>(Scratch(static_cast<size_t>(batch.total_q) * d.n_heads * sizeof(float)));
    LaunchTrainAttentionBackward<T>(d, batch, P(qkv), P(out), P(dout), lse, delta, P(dqkv), stream_);
  }
  float CrossEntropy(const void* logits, const int32_t* targets, void* dlogits, int rows, int V, float dloss_scale,
                     int* correct) override {
    OpTimes::Scope timed(&op_times_, "cross-entropy", stream_);
    if (rows == 0) return 0.f;
    if (rows > ce_rows_) {
      TG_CUDA_CHECK(cudaStreamSynchronize(stream_));
      if (ce_loss_) TG_CUDA_CHECK(cudaFree(ce_loss_));
      if (ce_hit_) TG_CUDA_CHECK(cudaFree(ce_hit_));
      TG_CUDA_CHECK(cudaMalloc(&ce_loss_, rows * sizeof(float)));
      TG_CUDA_CHECK(cudaMalloc(&ce_hit_, rows * sizeof(int32_t)));
      ce_rows_ = rows;
    }
    if (V % (16 / sizeof(T)) == 0 && Aligned16(logits, dlogits))
      CrossEntropyVecKernel<T><<<rows, 256, 0, stream_>>>(P(logits), targets, P(dlogits), V, dloss_scale / rows, ce_loss_, ce_hit_);
    else
      CrossEntropyKernel<T><<<rows, 256, 0, stream_>>>(P(logits), targets, P(dlogits), V, dloss_scale / rows, ce_loss_, ce_hit_);
    TG_CUDA_LAUNCH_CHECK();
    // The per-row results come back once per step and are summed on the host
    // in double (T floats: tens of microseconds at 64K rows).
    std::vector<float> loss(rows);
    std::vector<int32_t> hit(rows);
    CopyToHost(loss.data(), ce_loss_, rows * sizeof(float));
    CopyToHost(hit.data(), ce_hit_, rows * sizeof(int32_t));
    double total = 0;
    int hits = 0;
    for (int r = 0; r < rows; ++r) total += loss[r], hits += hit[r];
    if (correct) *correct = hits;
    return static_cast<float>(total / rows);
  }
  double SumOfSquares(const float* g, size_t n) override {
    OpTimes::Scope timed(&op_times_, "sum of squares", stream_);
    constexpr int kBlocks = 1024;
    if (!sumsq_) TG_CUDA_CHECK(cudaMalloc(&sumsq_, kBlocks * sizeof(double)));
    SumSquaresKernel<<<kBlocks, 256, 0, stream_>>>(g, static_cast<long>(n), sumsq_);
    TG_CUDA_LAUNCH_CHECK();
    double partial[kBlocks];
    CopyToHost(partial, sumsq_, sizeof(partial));
    double total = 0;
    for (double s : partial) total += s;
    return total;
  }
  void AdamW(float* p, float* g, float* m, float* v, size_t n, float lr, float beta1, float beta2, float eps,
             float weight_decay, long step, float grad_scale, void* p_compute) override {
    OpTimes::Scope timed(&op_times_, "adamw", stream_);
    if (n == 0) return;
    const float bc1 = 1.0f - std::pow(beta1, static_cast<float>(step));
    const float bc2 = 1.0f - std::pow(beta2, static_cast<float>(step));
    const bool compute_aligned = reinterpret_cast<uintptr_t>(p_compute) % (4 * sizeof(T)) == 0;
    if (n % 4 == 0 && Aligned16(p, g, m, v) && compute_aligned)
      AdamWVecKernel<T><<<Blocks(n / 4, 256), 256, 0, stream_>>>(p, g, m, v, static_cast<long>(n / 4), lr, beta1, beta2, eps,
                                                                 weight_decay, bc1, bc2, grad_scale, P(p_compute));
    else
      AdamWKernel<T><<<Blocks(n, 256), 256, 0, stream_>>>(p, g, m, v, static_cast<long>(n), lr, beta1, beta2, eps, weight_decay,
                                                          bc1, bc2, grad_scale, P(p_compute));
    TG_CUDA_LAUNCH_CHECK();
  }

  // Data parallelism: NCCL (nccl_collective.h).
  absl::StatusOr<std::string> NewCollectiveId() override { return NcclCollective::NewId(); }
  absl::Status JoinCollective(const std::string& id, int rank, int world_size, absl::Duration timeout,
                              const std::function<absl::Status()>& check) override {
    auto c = NcclCollective::Join(id, rank, world_size, stream_, timeout, check);
    if (!c.ok()) return c.status();
    collective_ = std::move(*c);
    return absl::OkStatus();
  }
  absl::Status AllReduceSum(float* data, size_t n) override {
    if (!collective_) return absl::FailedPreconditionError("CUDA backend: AllReduceSum before JoinCollective");
    return collective_->AllReduceSum(data, n);
  }
  absl::Status WaitCollectives(absl::Duration timeout, const std::function<absl::Status()>& check) override {
    return collective_ ? collective_->Wait(timeout, check) : absl::OkStatus();
  }

  void Synchronize() override {
    TG_CUDA_CHECK(cudaStreamSynchronize(stream_));
    op_times_.OnSynchronize();
    // TINYGPT_CUDA_PROFILE_FROM_SYNC=N: a profiler run with
    // --profile-from-start off sees only what follows the N-th Synchronize()
    // (the engine bench's measured steps, not the GEMM tuning before them).
    static const long profile_from = EnvLong("TINYGPT_CUDA_PROFILE_FROM_SYNC", 0);
    if (profile_from > 0 && ++syncs_ == profile_from) TG_CUDA_CHECK(cudaProfilerStart());
  }

 private:
  long syncs_ = 0;  // Synchronize() calls, for TINYGPT_CUDA_PROFILE_FROM_SYNC
  static const T* P(const void* p) { return static_cast<const T*>(p); }
  static T* P(void* p) { return static_cast<T*>(p); }

  // LayerNormVecKernel (inference, the fused residual add, training with its
  // statistics) for the widths it takes: C a whole number of 16-byte vectors,
  // at most 8 per lane, aligned rows. False: the caller runs a scalar kernel.
  template <bool kAdd>
  bool LayerNormVec(T* x, const T* r, const T* w, const T* b, T* y, float* mean, float* rstd, int rows, int C, float eps) {
    constexpr int V = 16 / sizeof(T);
    const int chunks = (C / V + 31) / 32;
    if (C % V != 0 || chunks > 8 || !Aligned16(x, r, w, b, y)) return false;
    // Inference (no statistics kept) runs with programmatic dependent launch;
    // training does not: its weights change between steps (see common.cuh).
    // Two rows per block below 1024 rows: a decode step's 256 rows then
    // spread over 128 SMs instead of 32.
    const int threads = rows >= 1024 ? 256 : 64;
    auto launch = [&](auto kernel) {
      LaunchKernel(mean == nullptr, kernel, (rows + threads / 32 - 1) / (threads / 32), threads, 0, stream_, x, r, w, b, y, mean, rstd,
                   rows, C, eps);
      return true;
    };
    switch (chunks) {
      case 1: return launch(LayerNormVecKernel<T, 1, kAdd>);
      case 2: return launch(LayerNormVecKernel<T, 2, kAdd>);
      case 3: return launch(LayerNormVecKernel<T, 3, kAdd>);
      case 4: return launch(LayerNormVecKernel<T, 4, kAdd>);
      case 5: case 6: return launch(LayerNormVecKernel<T, 6, kAdd>);
      default: return launch(LayerNormVecKernel<T, 8, kAdd>);
    }
  }


  // Grows the one scratch buffer (the step's shapes settle after the first
  // step, so this allocates only then).
  void* Scratch(size_t bytes) {
    if (bytes > scratch_bytes_) {
      TG_CUDA_CHECK(cudaStreamSynchronize(stream_));
      if (scratch_) TG_CUDA_CHECK(cudaFree(scratch_));
      TG_CUDA_CHECK(cudaMalloc(&scratch_, bytes));
      scratch_bytes_ = bytes;
    }
    return scratch_;
  }

  // out = SwiGLU(h), on 16-byte vectors where the width and pointers allow
  // (the element-wise kernel took 0.55 ms at 65536×2048 rows × F, 4.2 us a
  // layer at 256 rows); pdl: programmatic dependent launch (inference only,
  // common.cuh).
  void LaunchSwiGLU(const void* h, void* out, int rows, int F, bool pdl) {
    if (F % (16 / sizeof(T)) == 0 && Aligned16(h, out)) {
      LaunchKernel(pdl, SwiGLUVecKernel<T>, std::min(rows, 64 * num_sms_), VecThreads(F), 0, stream_, P(h), P(out), rows, F);
      return;
    }
    LaunchKernel(pdl, SwiGLUKernel<T>, Blocks(static_cast<long>(rows) * F, 256), 256, 0, stream_, P(h), P(out), rows, F);
  }

  // Whether the GEMV kernel (16-bit storage only) takes a product of `rows`
  // rows instead of the skinny GEMM or cuBLASLt: a few rows (GemvMaxRows),
  // whole 16-byte vectors, aligned.
  static bool GemvTakes(int rows, int in, const void* x, const void* w) {
    return rows <= GemvMaxRows() && in % 8 == 0 && Aligned16(x, w);
  }

  // Whether the splits' workspace and counters already hold `bytes` and
  // `counters` (then GrowSplitWorkspace and GrowSplitCounters do nothing).
  bool SplitBuffersHold(size_t bytes, int counters) const {
    return bytes <= split_bytes_ && counters <= split_counters_cap_;
  }
  // The attention splits' workspace, at least `bytes` (the old one stays
  // allocated: captured graphs may point at it).
  void GrowSplitWorkspace(size_t bytes) {
    if (bytes <= split_bytes_) return;
    if (split_workspace_) retired_.push_back(split_workspace_);
    TG_CUDA_CHECK(cudaMalloc(&split_workspace_, bytes));
    split_bytes_ = bytes;
    ++counters_.workspace_growths;
  }
  // The decode kernels' split counters (the last split of each (sequence, KV
  // head) to finish merges the splits): zeroed once, each call leaves them
  // zero. (Inside a capture the memset is a graph node, replayed harmlessly
  // before the kernels.)
  void GrowSplitCounters(int count) {
    if (count <= split_counters_cap_) return;
    if (split_counters_) retired_.push_back(split_counters_);
    TG_CUDA_CHECK(cudaMalloc(&split_counters_, count * sizeof(int)));
    TG_CUDA_CHECK(cudaMemsetAsync(split_counters_, 0, count * sizeof(int), stream_));
    split_counters_cap_ = count;
    ++counters_.workspace_growths;
  }

  // The decode step kernel for the layers of `a`, when it takes them: false
  // leaves them to the op-by-op path (shapes it has no plan for, a layer
  // table first met during a graph capture).
  bool RunDecodeStepKernel(const LayersArgs& a) {
    static const bool on = EnvLong("TINYGPT_DECODE_STEP_KERNEL", 0) == 1;
    const AttentionBatch& bt = a.batch;
    if (!on || a.T != bt.num_seqs || bt.total_q != a.T || bt.max_q_len != 1 || a.n_layers < 1 ||
        !Aligned16(a.x, a.qkv, a.att, a.sw))
      return false;
    for (int l = 0; l < a.n_layers; ++l) {
      const LayerWeights& w = a.layers[l];
      if (!Aligned16(w.norm1_w, w.norm1_b, w.qkv_w, w.proj_w, w.norm2_w, w.norm2_b, w.w12_w, w.w3_w, w.k_cache, w.v_cache))
        return false;
    }
    const auto key = std::make_tuple(a.T, a.d_model, a.ffn_hidden, bt.max_ctx_len, a.dims.n_heads, a.dims.n_kv_heads,
                                     a.dims.head_dim, a.dims.alibi);
    auto it = step_plans_.find(key);
    if (it == step_plans_.end()) {
      it = step_plans_.emplace(key, PlanDecodeStep(dtype_ == DType::kBF16, a.dims, a.T, a.d_model, a.ffn_hidden, bt.max_ctx_len, num_sms_))
               .first;
      if (!it->second.ok && std::strcmp(it->second.why, "rows") != 0)
        std::fprintf(stderr, "CUDA backend: decode steps of %d rows run op by op (the step kernel's %s)\n", a.T, it->second.why);
    }
    const DecodeStepPlan& plan = it->second;
    if (!plan.ok) return false;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    TG_CUDA_CHECK(cudaStreamIsCapturing(stream_, &capture));
    const bool capturing = capture != cudaStreamCaptureStatusNone;
    // The layers' pointers, as a device table (one per distinct model; made
    // outside captures, which cannot copy from pageable memory).
    const void* table = nullptr;
    const size_t table_bytes = static_cast<size_t>(a.n_layers) * sizeof(LayerWeights);
    for (const auto& [host, dev] : layer_tables_)
      if (host.size() == static_cast<size_t>(a.n_layers) && std::memcmp(host.data(), a.layers, table_bytes) == 0) table = dev;
    if (!table || !step_barrier_) {
      if (capturing) return false;
      if (!step_barrier_) {
        TG_CUDA_CHECK(cudaMalloc(&step_barrier_, 16));
        TG_CUDA_CHECK(cudaMemsetAsync(step_barrier_, 0, 16, stream_));
      }
      if (!table) {
        void* dev = nullptr;
        TG_CUDA_CHECK(cudaMalloc(&dev, table_bytes));
        TG_CUDA_CHECK(cudaMemcpyAsync(dev, a.layers, table_bytes, cudaMemcpyHostToDevice, stream_));
        TG_CUDA_CHECK(cudaStreamSynchronize(stream_));
        layer_tables_.emplace_back(std::vector<LayerWeights>(a.layers, a.layers + a.n_layers), dev);
        table = dev;
      }
    }
    // Buffers grow outside captures only: a captured memset of new counters
    // would zero them at the graph's replays, not before an eager launch.
    if (capturing && !SplitBuffersHold(plan.partial_floats * sizeof(float), plan.split_counters)) return false;
    GrowSplitWorkspace(plan.partial_floats * sizeof(float));
    GrowSplitCounters(plan.split_counters);
    OpTimes::Scope timed(&op_times_, "decode step kernel", stream_);
    DecodeStepArgs s;
    s.layers = table;
    s.n_layers = a.n_layers;
    s.rows = a.T;
    s.d = a.d_model;
    s.F = a.ffn_hidden;
    s.eps = a.norm_eps;
    s.dims = a.dims;
    s.batch = bt;
    s.kv = PagedKv{nullptr, nullptr, a.block_size, a.block_tables, a.max_blocks_per_seq};
    s.slots = a.slots;
    s.x = a.x;
    s.qkv = a.qkv;
    s.att = a.att;
    s.sw = a.sw;
    s.partial = static_cast<float*>(split_workspace_);
    s.split_counters = static_cast<int*>(split_counters_);
    s.barrier = step_barrier_;
    // TINYGPT_STEP_TRACE=1: the 100th uncaptured step of each row count
    // prints where the kernel's time went (SummarizeDecodeStepTrace).
    static const bool trace = EnvLong("TINYGPT_STEP_TRACE", 0) == 1;
    const bool traced = trace && !capturing && ++step_traces_[a.T] == 100;
    if (traced) {
      const size_t words = DecodeStepTraceWords(plan, a.n_layers);
      TG_CUDA_CHECK(cudaMalloc(&s.trace, words * sizeof(unsigned long long)));
      LaunchDecodeStep(dtype_ == DType::kBF16, plan, s, stream_);
      std::vector<unsigned long long> host(words);
      TG_CUDA_CHECK(cudaMemcpyAsync(host.data(), s.trace, words * sizeof(unsigned long long), cudaMemcpyDeviceToHost, stream_));
      TG_CUDA_CHECK(cudaStreamSynchronize(stream_));
      TG_CUDA_CHECK(cudaFree(s.trace));
      std::fprintf(stderr, "%d rows: %s", a.T,
                   SummarizeDecodeStepTrace(plan, a.n_layers, bt.num_seqs * a.dims.n_kv_heads * plan.num_splits, host.data()).c_str());
      return true;
    }
    LaunchDecodeStep(dtype_ == DType::kBF16, plan, s, stream_);
    return true;
  }

  // Whether every pointer is 16-byte aligned (or null), for the 16-byte vector kernels (a parameter
  // tensor's compute copy starts wherever the layout puts it).
  template <class... Ptr>
  static bool Aligned16(const Ptr*... p) {
    return ((reinterpret_cast<uintptr_t>(p) % 16 == 0) && ...);
  }
  // Threads for the row-per-block vector kernels: one 16-byte vector each, 32..256.
  static int VecThreads(int F) {
    const int vecs = F / static_cast<int>(16 / sizeof(T));
    return std::min(256, std::max(32, (vecs + 31) / 32 * 32));
  }

  DType dtype_;
  std::string device_name_;
  int num_sms_ = 0;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<LtGemm> gemm_;  // cuBLASLt's products (lt_gemm.h)
  void* split_workspace_ = nullptr;
  size_t split_bytes_ = 0;
  void* split_counters_ = nullptr;  // the decode kernel's split counters (attention_launch.h)
  int split_counters_cap_ = 0;
  std::vector<void*> retired_;  // workspaces replaced by larger ones
  // The decode step kernel's plans (per rows, widths, plan context and
  // heads), the layer tables it reads, and its grid barrier.
  std::map<std::tuple<int, int, int, int, int, int, int, bool>, DecodeStepPlan> step_plans_;
  std::vector<std::pair<std::vector<LayerWeights>, void*>> layer_tables_;
  void* step_barrier_ = nullptr;
  std::map<int, long> step_traces_;  // TINYGPT_STEP_TRACE: uncaptured steps per row count
  ShapeCounters counters_;
  OpTimes op_times_;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  float* ce_loss_ = nullptr;
  int32_t* ce_hit_ = nullptr;
  int ce_rows_ = 0;
  double* sumsq_ = nullptr;
  // Training-only device buffers that free themselves.
  struct FloatBuffer {
    float* p = nullptr;
    size_t floats = 0;
    void Grow(size_t n, cudaStream_t stream) {
      TG_CUDA_CHECK(cudaStreamSynchronize(stream));
      if (p) TG_CUDA_CHECK(cudaFree(p));
      TG_CUDA_CHECK(cudaMalloc(&p, n * sizeof(float)));
      floats = n;
    }
    ~FloatBuffer() {
      if (p) cudaFree(p);
    }
  };
  FloatBuffer bias_scratch_;  // the BGRADB epilogue's bias gradient
  std::map<std::tuple<int, int, int>, bool> bgradb_choice_;  // BgradbFaster's verdict per (m, n, k)
  bool use_bgradb_ = std::getenv("TINYGPT_CUDA_NO_BGRADB") == nullptr;
  std::unique_ptr<NcclCollective> collective_;  // data-parallel training's world (JoinCollective)
};

}  // namespace
}  // namespace tinygpt::cuda

// The module's one entry point (see kernels/backend.h).
extern "C" __attribute__((visibility("default"))) tinygpt::Backend* tinygpt_create_cuda_backend_v2(const char* dtype, int device,
                                                                                                char* error, size_t error_len) {
  auto fail = [&](const std::string& msg) -> tinygpt::Backend* {
    std::snprintf(error, error_len, "%s", msg.c_str());
    return nullptr;
  };
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0)
    return fail(std::string("no CUDA device (") + (err != cudaSuccess ? cudaGetErrorString(err) : "none found") + ")");
  if (device < 0 || device >= count)
    return fail("no CUDA device " + std::to_string(device) + " (this machine has " + std::to_string(count) + ")");
  const std::string d = dtype ? dtype : "bf16";
  if (d == "bf16") return new tinygpt::cuda::CudaBackend<__nv_bfloat16>(tinygpt::DType::kBF16, device);
  if (d == "f16" || d == "fp16") return new tinygpt::cuda::CudaBackend<__half>(tinygpt::DType::kF16, device);
  // fp32: training's reference precision (no paged attention kernel).
  if (d == "f32" || d == "fp32") return new tinygpt::cuda::CudaBackend<float>(tinygpt::DType::kF32, device);
  return fail("unsupported dtype '" + d + "' (bf16, f16, f32)");
}
