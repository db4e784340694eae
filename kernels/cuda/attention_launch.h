// Host-side launch of the paged flash-attention kernel (attention_launch.cu):
// picks the tile shape for the step, the split-KV count and the instantiation
// for head_dim and dtype, then the split-KV combine.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/attention_args.h"

namespace tinygpt::cuda {

// How one call runs: the tile shape (wide for prefill and mixed steps, narrow
// for decode steps whose rows per sequence fit one warp) and the key splits
// (flash-decoding: more than one when the grid would leave the GPU idle and
// contexts are long enough to share).
struct AttentionPlan {
  bool narrow = false;
  int num_splits = 1;
  size_t partial_floats = 0;  // split workspace: num_splits × total_q × n_heads × (head_dim + 1), 0 unsplit
};

AttentionPlan PlanPagedAttention(bool bf16, const AttentionDims& dims, const AttentionBatch& batch, int num_sms);

// qkv: fused rows of qkv_stride elements (queries first); out: [total_q,
// n_heads*head_dim]. `partial` holds plan.partial_floats floats.
// kv.block_size must be a power of two.
void LaunchPagedAttention(bool bf16, const AttentionPlan& plan, const AttentionDims& dims, const AttentionBatch& batch,
                          const void* qkv, long qkv_stride, const PagedKv& kv, void* out, float* partial, cudaStream_t stream);

}  // namespace tinygpt::cuda
