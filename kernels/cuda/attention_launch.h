// Host-side launch of the paged flash-attention kernel (attention_launch.cu):
// picks the instantiation for head_dim and dtype, the grid, and the
// split-KV combine.
#pragma once
#include <cuda_runtime.h>

#include "kernels/attention_args.h"

namespace tinygpt::cuda {

// Key splits for one call (flash-decoding): more than one when (sequences ×
// KV heads × query tiles) leave SMs idle and contexts are long enough to share.
int ChooseNumSplits(const AttentionDims& dims, const AttentionBatch& batch, int num_sms);

// qkv: fused rows of qkv_stride elements (queries first); out: [total_q,
// n_heads*head_dim]. With num_splits > 1, `partial` holds num_splits ×
// total_q × n_heads × (head_dim + 1) floats.
void LaunchPagedAttention(bool bf16, const AttentionDims& dims, const AttentionBatch& batch, const void* qkv, long qkv_stride,
                          const PagedKv& kv, void* out, int num_splits, float* partial, cudaStream_t stream);

}  // namespace tinygpt::cuda
