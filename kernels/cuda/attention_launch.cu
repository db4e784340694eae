#include "kernels/cuda/attention_kernel.cuh"
#include "kernels/cuda/attention_launch.h"

#include <algorithm>

namespace tinygpt::cuda {
namespace {

template <int D, class T>
void Launch(const AttentionDims& dims, const AttentionBatch& batch, const AttentionParams& p, int num_splits, cudaStream_t stream) {
  using Tr = AttentionTraits<D, T>;
  static bool configured = [] {
    TG_CUDA_CHECK(cudaFuncSetAttribute(PagedFlashAttentionKernel<Tr>, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes));
    return true;
  }();
  (void)configured;
  const int rows = std::max(1, batch.max_q_len) * dims.group();
  const dim3 grid((rows + Tr::kBlockM - 1) / Tr::kBlockM, batch.num_seqs * dims.n_kv_heads, num_splits);
  PagedFlashAttentionKernel<Tr><<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(p);
  TG_CUDA_LAUNCH_CHECK();
  if (num_splits > 1) {
    AttentionCombineKernel<T><<<batch.total_q * dims.n_heads, std::min(D, 128), 0, stream>>>(
        p.partial_out, p.partial_lse, static_cast<T*>(p.out), num_splits, batch.total_q, dims.n_heads, D);
    TG_CUDA_LAUNCH_CHECK();
  }
}

template <class T>
void ForDim(const AttentionDims& d, const AttentionBatch& b, const AttentionParams& p, int splits, cudaStream_t s) {
  switch (d.head_dim) {
    case 16: return Launch<16, T>(d, b, p, splits, s);
    case 32: return Launch<32, T>(d, b, p, splits, s);
    case 64: return Launch<64, T>(d, b, p, splits, s);
    case 128: return Launch<128, T>(d, b, p, splits, s);
  }
  std::fprintf(stderr, "paged attention: head_dim %d has no kernel\n", d.head_dim);
  std::abort();
}

}  // namespace

int ChooseNumSplits(const AttentionDims& dims, const AttentionBatch& batch, int num_sms) {
  // The tile shape does not depend on head_dim or dtype.
  constexpr int kBlockM = AttentionTraits<64, __half>::kBlockM, kBlockN = AttentionTraits<64, __half>::kBlockN;
  const int rows_per_seq = std::max(1, batch.max_q_len) * dims.group();
  const int blocks = batch.num_seqs * dims.n_kv_heads * ((rows_per_seq + kBlockM - 1) / kBlockM);
  const int key_tiles = (batch.max_ctx_len + kBlockN - 1) / kBlockN;
  if (blocks >= num_sms || key_tiles < 4) return 1;
  return std::max(1, std::min({(2 * num_sms + blocks - 1) / blocks, key_tiles / 2, 32}));
}

void LaunchPagedAttention(bool bf16, const AttentionDims& dims, const AttentionBatch& batch, const void* qkv, long qkv_stride,
                          const PagedKv& kv, void* out, int num_splits, float* partial, cudaStream_t stream) {
  if (batch.num_seqs == 0 || batch.total_q == 0) return;
  AttentionParams p;
  p.q = qkv;
  p.q_stride = qkv_stride;
  p.k_cache = kv.k_cache;
  p.v_cache = kv.v_cache;
  p.block_tables = kv.block_tables;
  p.max_blocks_per_seq = kv.max_blocks_per_seq;
  p.block_size = kv.block_size;
  p.cu_q = batch.cu_q;
  p.ctx_len = batch.ctx_len;
  p.out = out;
  p.n_heads = dims.n_heads;
  p.n_kv_heads = dims.n_kv_heads;
  p.group = dims.group();
  p.scale_log2 = dims.scale() * 1.4426950408889634f;
  p.alibi = dims.alibi;
  p.num_splits = num_splits;
  p.total_q = batch.total_q;
  p.partial_out = partial;
  p.partial_lse = partial ? partial + static_cast<long>(num_splits) * batch.total_q * dims.n_heads * dims.head_dim : nullptr;
  if (bf16) ForDim<__nv_bfloat16>(dims, batch, p, num_splits, stream);
  else ForDim<__half>(dims, batch, p, num_splits, stream);
}

}  // namespace tinygpt::cuda
