// Host-side launch of the training attention kernels
// (attention_train_kernel.cuh), instantiated in attention_train_launch.cu for
// T = __nv_bfloat16, __half and float and head_dim 16, 32, 64, 128.
#pragma once
#include <cuda_runtime.h>

#include "kernels/attention_args.h"

namespace tinygpt::cuda {

// out [total, n_heads*head_dim], lse [total, n_heads]. batch.cu_q/ctx_len
// are device pointers (ctx_len = the sequence lengths); max_q_len sizes the grid.
template <class T>
void LaunchTrainAttentionForward(const AttentionDims& dims, const AttentionBatch& batch, const T* qkv, T* out, float* lse,
                                 cudaStream_t stream);

// Writes all of dqkv. `delta` is total*n_heads floats of workspace.
template <class T>
void LaunchTrainAttentionBackward(const AttentionDims& dims, const AttentionBatch& batch, const T* qkv, const T* out,
                                  const T* dout, const float* lse, float* delta, T* dqkv, cudaStream_t stream);

}  // namespace tinygpt::cuda
