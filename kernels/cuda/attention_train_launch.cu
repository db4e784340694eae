#include "kernels/cuda/attention_train_launch.h"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "kernels/cuda/attention_train_kernel.cuh"
#include "kernels/cuda/attention_train_mma.cuh"
#include "kernels/cuda/head_dim_dispatch.h"

namespace tinygpt::cuda {
namespace {

TrainAttentionParams MakeParams(const AttentionDims& dims, const AttentionBatch& batch, const void* qkv) {
  TrainAttentionParams p{};
  p.qkv = qkv;
  p.qkv_stride = static_cast<long>(dims.n_heads + 2 * dims.n_kv_heads) * dims.head_dim;
  p.cu = batch.cu_q;
  p.lens = batch.ctx_len;
  p.n_heads = dims.n_heads;
  p.n_kv_heads = dims.n_kv_heads;
  p.group = dims.group();
  p.scale = dims.scale();
  p.alibi = dims.alibi;
  return p;
}

// One block per kRows rows of a sequence (× heads): blocks past a shorter
// sequence's end exit at once.
template <class Tr>
dim3 Grid(const AttentionBatch& batch, int heads) {
  return dim3((batch.max_q_len + Tr::kRows - 1) / Tr::kRows, batch.num_seqs, heads);
}

// The tensor-core kernels' score arithmetic: log2 units and ex2 (the
// default), or the natural-log form of the first version
// (TINYGPT_CUDA_ATTN_EXP=1), kept to compare and to fall back on.
bool Log2Scores() {
  static const bool log2 = [] {
    const char* v = std::getenv("TINYGPT_CUDA_ATTN_EXP");
    return !(v && std::string(v) == "1");
  }();
  return log2;
}

// Launches a tensor-core kernel with `smem` bytes of dynamic shared memory
// (over the 48 KB default at head_dim 128, hence the attribute).
template <class Kernel>
void LaunchMma(Kernel kernel, dim3 grid, int threads, size_t smem, const TrainAttentionParams& p, cudaStream_t stream) {
  TG_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<grid, threads, smem, stream>>>(p);
  TG_CUDA_LAUNCH_CHECK();
}

}  // namespace

// bf16/fp16 run on tensor cores (attention_train_mma.cuh); fp32, the
// reference precision, on CUDA cores (attention_train_kernel.cuh).
template <class T>
void LaunchTrainAttentionForward(const AttentionDims& dims, const AttentionBatch& batch, const T* qkv, T* out, float* lse,
                                 cudaStream_t stream) {
  if (batch.num_seqs == 0 || batch.total_q == 0) return;
  TrainAttentionParams p = MakeParams(dims, batch, qkv);
  p.out_w = out;
  p.lse = lse;
  if constexpr (!std::is_same_v<T, float>) {
    ByHeadDim(dims.head_dim, "training attention", [&](auto d) {
      using Tr = MmaTrainTraits<decltype(d)::value>;
      if (Log2Scores())
        LaunchMma(MmaRowsKernel<Tr, T, MmaRowPass::kForward, true>, Grid<Tr>(batch, dims.n_heads), Tr::kThreads,
                  MmaForwardSmem<Tr>(), p, stream);
      else
        LaunchMma(MmaRowsKernel<Tr, T, MmaRowPass::kForward, false>, Grid<Tr>(batch, dims.n_heads), Tr::kThreads,
                  MmaForwardSmem<Tr>(), p, stream);
    });
    return;
  }
  ByHeadDim(dims.head_dim, "training attention", [&](auto d) {
    using Tr = TrainAttentionTraits<decltype(d)::value>;
    TrainAttentionRowsKernel<Tr, T, RowPass::kForward><<<Grid<Tr>(batch, dims.n_heads), Tr::kThreads, 0, stream>>>(p);
    TG_CUDA_LAUNCH_CHECK();
  });
}

template <class T>
void LaunchTrainAttentionBackward(const AttentionDims& dims, const AttentionBatch& batch, const T* qkv, const T* out,
                                  const T* dout, const float* lse, float* delta, T* dqkv, cudaStream_t stream) {
  if (batch.num_seqs == 0 || batch.total_q == 0) return;
  const long rows_heads = static_cast<long>(batch.total_q) * dims.n_heads;
  const long delta_threads = rows_heads * (dims.head_dim / (16 / static_cast<int>(sizeof(T))));  // 16 bytes per thread
  TrainAttentionDeltaKernel<T><<<(delta_threads + 255) / 256, 256, 0, stream>>>(out, dout, delta, rows_heads, dims.head_dim);
  TG_CUDA_LAUNCH_CHECK();
  TrainAttentionParams p = MakeParams(dims, batch, qkv);
  p.out = out;
  p.dout = dout;
  p.lse = const_cast<float*>(lse);
  p.delta = delta;
  p.dqkv = dqkv;
  if constexpr (!std::is_same_v<T, float>) {
    ByHeadDim(dims.head_dim, "training attention", [&](auto d) {
      using Tr = MmaTrainTraits<decltype(d)::value>;
      if (Log2Scores()) {
        LaunchMma(MmaRowsKernel<Tr, T, MmaRowPass::kDq, true>, Grid<Tr>(batch, dims.n_heads), Tr::kThreads, MmaDqSmem<Tr>(), p,
                  stream);
        LaunchMma(MmaDkDvKernel<Tr, T, true>, Grid<Tr>(batch, dims.n_kv_heads), Tr::kThreads, MmaDkDvSmem<Tr>(), p, stream);
      } else {
        LaunchMma(MmaRowsKernel<Tr, T, MmaRowPass::kDq, false>, Grid<Tr>(batch, dims.n_heads), Tr::kThreads, MmaDqSmem<Tr>(), p,
                  stream);
        LaunchMma(MmaDkDvKernel<Tr, T, false>, Grid<Tr>(batch, dims.n_kv_heads), Tr::kThreads, MmaDkDvSmem<Tr>(), p, stream);
      }
    });
    return;
  }
  ByHeadDim(dims.head_dim, "training attention", [&](auto d) {
    using Tr = TrainAttentionTraits<decltype(d)::value>;
    TrainAttentionRowsKernel<Tr, T, RowPass::kDq><<<Grid<Tr>(batch, dims.n_heads), Tr::kThreads, 0, stream>>>(p);
    TG_CUDA_LAUNCH_CHECK();
    TrainAttentionDkDvKernel<Tr, T><<<Grid<Tr>(batch, dims.n_kv_heads), Tr::kThreads, 0, stream>>>(p);
    TG_CUDA_LAUNCH_CHECK();
  });
}

#define TG_INSTANTIATE(T)                                                                                              \
  template void LaunchTrainAttentionForward<T>(const AttentionDims&, const AttentionBatch&, const T*, T*, float*,      \
                                               cudaStream_t);                                                          \
  template void LaunchTrainAttentionBackward<T>(const AttentionDims&, const AttentionBatch&, const T*, const T*,       \
                                                const T*, const float*, float*, T*, cudaStream_t);
TG_INSTANTIATE(__nv_bfloat16)
TG_INSTANTIATE(__half)
TG_INSTANTIATE(float)
#undef TG_INSTANTIATE

}  // namespace tinygpt::cuda
