// The CUDA backend module (libtinygpt_cuda.so), opened with dlopen by
// kernels/backend_registry.cc. Weights, activations and the KV cache are bf16
// or fp16; accumulation, LayerNorm statistics and softmax are fp32. Linear
// layers: up to 4 rows the GEMV (gemv_kernel.cuh), up to 64 the skinny GEMM
// (skinny_gemm_kernel.cuh), above and for training cuBLASLt with the bias
// fused in its epilogue; attention, sampling and the small fused ops are
// this folder's kernels.
//
// The class is declared here; its members are defined by what they serve:
//   cuda_backend.cu            construction, memory, copies, events, graphs,
//                              the module's entry point
//   cuda_backend_inference.cu  the serving ops (linear layers, attention,
//                              the decode step kernel, sampling)
//   cuda_backend_train.cu      the training ops, and the data-parallel sums
// Each .cu file instantiates the class for bf16, fp16 and fp32.
#pragma once
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

// TINYGPT_FUSED_KV_APPEND=0: the QKV GEMV (or skinny GEMM) and the KV append kernel apart
// again (the A/B of device-run.sh decode).
inline bool FusedKvAppend() {
  static const bool on = EnvOn("TINYGPT_FUSED_KV_APPEND");
  return on;
}

inline int Blocks(long n, int threads) { return static_cast<int>(std::min<long>((n + threads - 1) / threads, 65535L * 8)); }

template <class T>
class CudaBackend final : public Backend {
 public:
  CudaBackend(DType dtype, int device);
  ~CudaBackend() override;

  std::string name() const override { return "cuda"; }
  std::string device_name() const override { return device_name_; }
  DType dtype() const override { return dtype_; }
  absl::Status SupportsModel(int head_dim) const override;

  void* Alloc(size_t bytes) override;
  size_t AvailableBytes() const override;
  void Free(void* p) override;
  void CopyToDevice(void* dst, const void* src, size_t bytes) override;
  void CopyToHost(void* dst, const void* src, size_t bytes) override;
  void UploadFloats(void* dst, const float* src, size_t n) override;
  void DownloadFloats(float* dst, const void* src, size_t n) override;

  void Embedding(const int32_t* tokens, const int32_t* positions, const void* tok, const void* pos, void* out, int T_,
                 int C) override;
  void LayerNorm(const void* x, const void* w, const void* b, void* y, int rows, int C, float eps) override;
  void Linear(const void* x, const void* w, const void* b, void* y, int rows, int in, int out) override;
  ShapeCounters shape_counters() const override;
  std::vector<int> WarmupRowCounts(int max_rows) const override;
  void AddInPlace(void* x, const void* y, size_t n) override;
  void AddLayerNorm(void* x, const void* r, const void* w, const void* b, void* y, int rows, int C, float eps) override;
  void LinearSwiGLU(const void* x, const void* w, const void* b, void* h, void* out, int rows, int in, int F) override;
  void SwiGLU(const void* h, void* out, int rows, int F) override;
  void GatherRows(const void* src, const int32_t* rows, void* dst, int n, int C) override;
  void KvAppend(const void* qkv, int T_, const int32_t* slots, const AttentionDims& d, void* k_cache, void* v_cache) override;
  void LinearKvAppend(const void* x, const void* w, const void* b, void* qkv, int rows, int in, int qkv_dim, const int32_t* slots,
                      const AttentionDims& d, void* k_cache, void* v_cache) override;
  // The norm folded into the GEMV (gemv_kernel.cuh) at up to
  // TINYGPT_FUSED_NORM_MAX_ROWS rows (4: on the H200 a bench-125m step was
  // 23-41 us faster so at 1-4 sequences and 48 us slower at 8) whose
  // normalized copy fits its shared memory; TINYGPT_FUSED_NORM=0 turns it off.
  bool FusesNormIntoLinear(int rows, int C) const override;
  void NormLinearKvAppend(const void* x, const void* norm_w, const void* norm_b, float eps, void* ln, const void* w, const void* b,
                          void* qkv, int rows, int in, int qkv_dim, const int32_t* slots, const AttentionDims& d, void* k_cache,
                          void* v_cache) override;
  void NormLinearSwiGLU(const void* x, const void* norm_w, const void* norm_b, float eps, void* ln, const void* w, const void* b,
                        void* h, void* out, int rows, int in, int F) override;
  void LinearAddInPlace(const void* x, const void* w, const void* b, void* y, void* residual, int rows, int in, int out) override;
  // With TINYGPT_DECODE_STEP_KERNEL=1 a decode step of 1-4 rows runs its
  // layers as one kernel (decode_step_kernel.cuh) where it plans one. Off by
  // default: on the H200 it passes the checks but is slower than op by op
  // (issue #23, docs/benchmarks.md).
  void TransformerLayers(const LayersArgs& a) override;
  void PagedAttention(const AttentionDims& d, const AttentionBatch& batch, const void* qkv, const PagedKv& kv, void* out) override;
  void Sample(const void* logits, int rows, int vocab, const SamplingParams* params, int32_t* tokens) override;
  void ApplyPenalties(const void* logits, void* out, int rows, int vocab, const PenaltyRow* row_params,
                      const PenaltyEntry* entries) override;
  void FillPendingTokens(int32_t* tokens, int n, const int32_t* sampled) override;

  // ---- Asynchronous steps: pinned staging, events and graphs on stream_.
  void* AllocHost(size_t bytes) override;
  void FreeHost(void* p) override;
  void CopyToHostAsync(void* dst, const void* src, size_t bytes) override;
  void HostToFloats(const void* src, float* dst, size_t n) override;
  void* CreateEvent() override;
  void DestroyEvent(void* e) override { cudaEventDestroy(static_cast<cudaEvent_t>(e)); }
  void RecordEvent(void* e) override { TG_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(e), stream_)); }
  void WaitEvent(void* e) override { TG_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(e))); }
  double EventSeconds(void* start, void* end) override;
  // Relaxed mode: cuBLASLt may query the device while it is captured.
  // Buffers a graph holds (workspaces) are never freed while the backend
  // lives (see PagedAttention).
  bool SupportsGraphs() const override { return true; }
  bool BeginCapture() override;
  void* EndCapture() override;
  void LaunchGraph(void* g) override { TG_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(g), stream_)); }
  void DestroyGraph(void* g) override;

  // ---- Training ops (see kernels/backend.h).
  absl::Status SupportsTraining(int head_dim) const override { return SupportsModel(head_dim); }
  void Zero(void* p, size_t bytes) override;
  void CastFromFloats(const float* src, void* dst, size_t n) override;
  void LinearTrain(const void* x, const void* w, const void* b, void* y, int rows, int in, int out) override;
  void LinearSwiGLUTrain(const void* x, const void* w, const void* b, void* h, void* out, int rows, int in, int F) override;
  // y = x·w^T + b + residual: the residual add in the GEMM's epilogue (C =
  // residual, beta 1) instead of a pass of its own over y.
  void LinearResidualTrain(const void* x, const void* w, const void* b, const void* residual, void* y, int rows, int in,
                           int out) override;
  void LinearBackward(const void* dy, const void* x, const void* w, void* dx, float* dw, float* db, int rows, int in,
                      int out) override;
  void BiasGrad(const void* dy, float* db, int rows, int out);
  // Whether the BGRADB weight-gradient GEMM (+ the add into db) beats the
  // plain GEMM + BiasGradKernel for this shape, timed once on first use on
  // the real operands into scratch outputs (on the H200 the fused form was
  // 10% faster at 768×768 but slower at the vocab's 768×32000). False when
  // cuBLASLt has no BGRADB algorithm for it.
  bool BgradbFaster(const GemmShape& plain, const GemmShape& fused, const void* x, const void* dy, int rows, int out);
  void SwiGLULinearBackwardInput(const void* dy, const void* w, const void* h, void* dh, int rows, int F, int out) override;
  void LayerNormTrain(const void* x, const void* w, const void* b, void* y, float* mean, float* rstd, int rows, int C,
                      float eps) override;
  void LayerNormBackward(const void* dy, const void* x, const void* w, const float* mean, const float* rstd, void* dx,
                         float* dw, float* db, int rows, int C) override;
  void EmbeddingBackward(const void* dout, const int32_t* tokens, const int32_t* positions, float* dtok, float* dpos,
                         int rows, int C) override;
  void AttentionTrain(const AttentionDims& d, const AttentionBatch& batch, const void* qkv, void* out, float* lse) override;
  void AttentionBackward(const AttentionDims& d, const AttentionBatch& batch, const void* qkv, const void* out,
                         const void* dout, const float* lse, void* dqkv) override;
  float CrossEntropy(const void* logits, const int32_t* targets, void* dlogits, int rows, int V, float dloss_scale,
                     int* correct) override;
  double SumOfSquares(const float* g, size_t n) override;
  void AdamW(float* p, float* g, float* m, float* v, size_t n, float lr, float beta1, float beta2, float eps,
             float weight_decay, long step, float grad_scale, void* p_compute) override;

  // Data parallelism: NCCL (nccl_collective.h).
  absl::StatusOr<std::string> NewCollectiveId() override;
  absl::Status JoinCollective(const std::string& id, int rank, int world_size, absl::Duration timeout,
                              const std::function<absl::Status()>& check) override;
  absl::Status AllReduceSum(float* data, size_t n) override;
  absl::Status WaitCollectives(absl::Duration timeout, const std::function<absl::Status()>& check) override;

  void Synchronize() override;

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
  void* Scratch(size_t bytes);

  // out = SwiGLU(h), on 16-byte vectors where the width and pointers allow
  // (the element-wise kernel took 0.55 ms at 65536×2048 rows × F, 4.2 us a
  // layer at 256 rows); pdl: programmatic dependent launch (inference only,
  // common.cuh).
  void LaunchSwiGLU(const void* h, void* out, int rows, int F, bool pdl);

  // Whether the GEMV kernel (16-bit storage only) takes a product of `rows`
  // rows instead of the skinny GEMM or cuBLASLt: a few rows (GemvMaxRows),
  // whole 16-byte vectors, aligned.
  static bool GemvTakes(int rows, int in, const void* x, const void* w) {
    return rows <= GemvMaxRows() && in % 8 == 0 && Aligned16(x, w);
  }

  // Whether the splits' workspace and counters already hold `bytes` and
  // `counters` (then GrowSplitWorkspace and GrowSplitCounters do nothing).
  bool SplitBuffersHold(size_t bytes, int counters) const;
  // The attention splits' workspace, at least `bytes` (the old one stays
  // allocated: captured graphs may point at it).
  void GrowSplitWorkspace(size_t bytes);
  // The decode kernels' split counters (the last split of each (sequence, KV
  // head) to finish merges the splits): zeroed once, each call leaves them
  // zero. (Inside a capture the memset is a graph node, replayed harmlessly
  // before the kernels.)
  void GrowSplitCounters(int count);

  // The decode step kernel for the layers of `a`, when it takes them: false
  // leaves them to the op-by-op path (shapes it has no plan for, a layer
  // table first met during a graph capture).
  bool RunDecodeStepKernel(const LayersArgs& a);

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

}  // namespace tinygpt::cuda
