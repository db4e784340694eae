// Host-side launch of the paged flash-attention kernel (attention_launch.cu):
// picks the tile shape for the step, the split-KV count and the instantiation
// for head_dim and dtype, then the split-KV combine.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/attention_args.h"

namespace tinygpt::cuda {

// Which kernel a call runs: the flash-attention tiles of prefill and mixed
// steps (wide), or, for decode steps whose rows per sequence (new tokens ×
// GQA group) fit one m16 tile, a decode kernel (decode_stream_kernel.cuh, or
// decode_attention_kernel.cuh's split kernel; AttentionPlan::stream_blocks);
// narrow is the flash-attention kernel with one warp per block that decode
// steps ran before it (TINYGPT_DECODE_KERNEL=narrow, for the A/B).
enum class AttentionShape { kWide, kDecode, kNarrow };

// How one call runs: the kernel and the key splits (flash-decoding: more
// than one when the grid would leave the GPU idle and contexts are long
// enough to share).
struct AttentionPlan {
  AttentionShape shape = AttentionShape::kWide;
  int num_splits = 1;
  size_t partial_floats = 0;  // split workspace: num_splits × total_q × n_heads × (head_dim + 1), 0 unsplit
  // Split counters the decode kernel merges its splits with (one int per
  // sequence and KV head, zero between calls; 0: the splits, if any, are
  // merged by a combine kernel). TINYGPT_DECODE_FUSED_MERGE=0 turns it off.
  int split_counters = 0;
  // The decode stream kernel (decode_stream_kernel.cuh; with
  // TINYGPT_DECODE_STREAM=1, the split kernel otherwise): its grid, and its partials' slots (two
  // per warp; partial_floats = slots × 16 rows × (head_dim + 1)). 0: not it.
  int stream_blocks = 0;
  int stream_slots = 0;
  int stream_min_tiles = 1, stream_max_parts = 1;  // AttentionParams' (attention_kernel.cuh)
};

AttentionPlan PlanPagedAttention(bool bf16, const AttentionDims& dims, const AttentionBatch& batch, int num_sms);
// The stream kernel's plan for a decode step whose rows fit it, whatever
// TINYGPT_DECODE_STREAM says (for the benchmark, which launches it with
// LaunchPagedAttention beside the default).
AttentionPlan PlanPagedDecodeStream(bool bf16, const AttentionDims& dims, const AttentionBatch& batch, int num_sms);

// qkv: fused rows of qkv_stride elements (queries first); out: [total_q,
// n_heads*head_dim]. `partial` holds plan.partial_floats floats, `counters`
// plan.split_counters ints that are zero (the kernel leaves them zero; a
// buffer of its own: a later call's partials must not overwrite them).
// kv.block_size must be a power of two.
void LaunchPagedAttention(bool bf16, const AttentionPlan& plan, const AttentionDims& dims, const AttentionBatch& batch,
                          const void* qkv, long qkv_stride, const PagedKv& kv, void* out, float* partial, int* counters,
                          cudaStream_t stream);

}  // namespace tinygpt::cuda
