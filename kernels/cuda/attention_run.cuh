// Planning and launching one instantiation of a paged attention kernel (its
// traits fixed at compile time): the flash-attention tiles of
// attention_kernel.cuh (AttentionTraits) or a decode kernel (DecodeTraits:
// decode_stream_kernel.cuh, or the split kernel of decode_attention_kernel.cuh). attention_launch.cu picks the
// traits for a call; the attention benchmark also times other traits.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda/attention_kernel.cuh"
#include "kernels/cuda/attention_launch.h"
#include "kernels/cuda/decode_attention_kernel.cuh"
#include "kernels/cuda/decode_stream_kernel.cuh"

namespace tinygpt::cuda {

// A sequence's kernel rows: its longest query chunk × the GQA group (the
// query heads that share a KV head are packed into the tile's rows).
inline int RowsPerSequence(const AttentionDims& dims, const AttentionBatch& batch) {
  return std::max(1, batch.max_q_len) * dims.group();
}

// The grid: query tiles × (sequence, KV head) pairs × key splits.
template <class Tr>
dim3 Grid(const AttentionDims& dims, const AttentionBatch& batch, int num_splits) {
  return dim3((RowsPerSequence(dims, batch) + Tr::kBlockM - 1) / Tr::kBlockM, batch.num_seqs * dims.n_kv_heads, num_splits);
}

// Blocks of this shape that fit one SM (registers, shared memory, threads).
template <class Tr>
int BlocksPerSm() {
  static const int n = [] {
    TG_CUDA_CHECK(cudaFuncSetAttribute(PagedFlashAttentionKernel<Tr, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes));
    TG_CUDA_CHECK(cudaFuncSetAttribute(PagedFlashAttentionKernel<Tr, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes));
    int blocks = 0;
    TG_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, PagedFlashAttentionKernel<Tr, false>, Tr::kThreads, Tr::kSmemBytes));
    return std::max(1, blocks);
  }();
  return n;
}

// The split workspace: each split's normalized output and log-sum-exp.
inline size_t PartialFloats(const AttentionDims& dims, const AttentionBatch& batch, int num_splits) {
  return num_splits > 1 ? static_cast<size_t>(num_splits) * batch.total_q * dims.n_heads * (dims.head_dim + 1) : 0;
}

template <class T>
void LaunchCombine(const AttentionDims& dims, const AttentionBatch& batch, const AttentionParams& p, cudaStream_t stream) {
  LaunchKernel(true, AttentionCombineKernel<T>, batch.total_q * dims.n_heads, std::min(dims.head_dim, 128), 0, stream, p.partial_out,
               p.partial_lse, static_cast<T*>(p.out), p.num_splits, batch.total_q, dims.n_heads, dims.head_dim);
}

template <class Tr>
void PlanFor(const AttentionDims& dims, const AttentionBatch& batch, int num_sms, AttentionPlan* plan) {
  const dim3 grid = Grid<Tr>(dims, batch, 1);
  const long blocks = static_cast<long>(grid.x) * grid.y;
  const int key_tiles = (batch.max_ctx_len + Tr::kBlockN - 1) / Tr::kBlockN;
  // Aim for about four waves of resident blocks, so the last, partial wave
  // costs little. Each split keeps at least two key tiles while the unsplit
  // grid fills under a quarter of one wave, six once it fills more: there a
  // split's fixed cost (its Q and table loads, the combine) outweighs what
  // the extra blocks bring (H200, bench-125m at position 330: 64 sequences
  // 605 -> 559 us a step, 256 sequences 965 -> 930; docs/benchmarks.md).
  // The A/B of scripts/device-run.sh decode overrides both:
  // TINYGPT_DECODE_WAVES, TINYGPT_DECODE_MIN_SPLIT_TILES.
  static const long waves = std::max(1L, EnvLong("TINYGPT_DECODE_WAVES", 4)),
                    min_tiles_set = std::getenv("TINYGPT_DECODE_MIN_SPLIT_TILES")  // 0: unset, the rule above
                                        ? std::max(1L, EnvLong("TINYGPT_DECODE_MIN_SPLIT_TILES", 1)) : 0;
  const long wave = static_cast<long>(num_sms) * BlocksPerSm<Tr>(), target = waves * wave;
  const long min_tiles = min_tiles_set > 0 ? min_tiles_set : 4 * blocks >= wave ? 6 : 2;
  int splits = 1;
  if (blocks < target && key_tiles >= 2 * min_tiles)
    splits = static_cast<int>(std::min<long>({(target + blocks - 1) / blocks, key_tiles / min_tiles, 64}));
  plan->num_splits = std::max(1, splits);
  plan->partial_floats = PartialFloats(dims, batch, plan->num_splits);
}

template <class Tr>
void LaunchFor(const AttentionDims& dims, const AttentionBatch& batch, const AttentionParams& p, cudaStream_t stream) {
  BlocksPerSm<Tr>();  // raises the kernels' shared-memory limit once
  const dim3 grid = Grid<Tr>(dims, batch, p.num_splits);
  // Programmatic dependent launch where the backend has it on (common.cuh).
  if (p.alibi) LaunchKernel(true, PagedFlashAttentionKernel<Tr, true>, grid, Tr::kThreads, Tr::kSmemBytes, stream, p);
  else LaunchKernel(true, PagedFlashAttentionKernel<Tr, false>, grid, Tr::kThreads, Tr::kSmemBytes, stream, p);
  if (p.num_splits > 1) LaunchCombine<typename Tr::T>(dims, batch, p, stream);
}

// --- The decode kernel (DecodeTraits) ---

template <class Tr>
int DecodeBlocksPerSm() {
  static const int n = [] {
    for (auto kernel : {DecodeAttentionKernel<Tr, false>, DecodeAttentionKernel<Tr, true>, DecodeAttentionKernel<Tr, false, true>,
                        DecodeAttentionKernel<Tr, true, true>})
      TG_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes));
    int blocks = 0;
    TG_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, DecodeAttentionKernel<Tr, false>, Tr::kThreads, Tr::kSmemBytes));
    return std::max(1, blocks);
  }();
  return n;
}

// The split kernel: one block per (sequence, KV head) and split. Splits are
// added while the grid is under two waves of resident blocks, each keeping at
// least four key tiles per warp: a split's fixed cost (its Q, the merge of
// its warps, the merge of the splits) outweighs the latency it hides below
// that (H200, docs/benchmarks.md: 12/4 heads of 64, 330-token contexts, 64
// sequences 16.9 us with two splits of two tiles per warp, 8.6 unsplit).
// TINYGPT_DECODE_WAVES and TINYGPT_DECODE_MIN_SPLIT_TILES override both (the
// A/B of scripts/device-run.sh decode).
template <class Tr>
void PlanDecodeSplits(const AttentionDims& dims, const AttentionBatch& batch, int num_sms, AttentionPlan* plan) {
  const long blocks = static_cast<long>(batch.num_seqs) * dims.n_kv_heads;
  const int key_tiles = (batch.max_ctx_len + Tr::kBlockN - 1) / Tr::kBlockN;
  static const long waves = std::max(1L, EnvLong("TINYGPT_DECODE_WAVES", 2)),
                    min_tiles = std::max(1L, EnvLong("TINYGPT_DECODE_MIN_SPLIT_TILES", 4 * Tr::kWarps));
  const long target = waves * num_sms * DecodeBlocksPerSm<Tr>();
  int splits = 1;
  if (blocks < target && key_tiles >= 2 * min_tiles)
    splits = static_cast<int>(std::min<long>({(target + blocks - 1) / blocks, key_tiles / min_tiles, 64}));
  plan->num_splits = std::max(1, splits);
  plan->partial_floats = PartialFloats(dims, batch, plan->num_splits);
  static const bool fused_merge = EnvOn("TINYGPT_DECODE_FUSED_MERGE");
  plan->split_counters = plan->num_splits > 1 && fused_merge ? static_cast<int>(blocks) : 0;
}

// The dynamic shared memory a stream block may take: the device's opt-in
// limit per block (227 KB on sm_90) less the kernel's static __shared__
// arrays, which count against the same limit (asking for all 227 KB fails).
// The stages and the prefix of the sequences' tile counts fill it.
template <class Tr>
int DecodeStreamMaxSmem() {
  static const int limit = [] {
    int device = 0, optin = 0;
    TG_CUDA_CHECK(cudaGetDevice(&device));
    TG_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    cudaFuncAttributes plain{}, alibi{};
    TG_CUDA_CHECK(cudaFuncGetAttributes(&plain, DecodeStreamKernel<Tr, false>));
    TG_CUDA_CHECK(cudaFuncGetAttributes(&alibi, DecodeStreamKernel<Tr, true>));
    const int max_dynamic = optin - static_cast<int>(std::max(plain.sharedSizeBytes, alibi.sharedSizeBytes));
    TG_CUDA_CHECK(cudaFuncSetAttribute(DecodeStreamKernel<Tr, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, max_dynamic));
    TG_CUDA_CHECK(cudaFuncSetAttribute(DecodeStreamKernel<Tr, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, max_dynamic));
    return max_dynamic;
  }();
  return limit;
}

// Stream blocks of `smem_bytes` that fit one SM, by shared memory rounded up
// to 1 KB (the prefix of the sequences' tile counts grows with the batch).
template <class Tr>
int DecodeStreamBlocksPerSm(int smem_bytes) {
  static std::atomic<int> known[232] = {};
  const int max_kb = DecodeStreamMaxSmem<Tr>() / 1024;
  const int kb = std::min(std::min(231, max_kb), (smem_bytes + 1023) / 1024);
  int n = known[kb].load(std::memory_order_relaxed);
  if (n == 0) {
    TG_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, DecodeStreamKernel<Tr, false>, Tr::kThreads, kb * 1024));
    n = std::max(1, n);
    known[kb].store(n, std::memory_order_relaxed);
  }
  return n;
}

// The stream kernel: at most one wave of resident blocks, fewer when the
// step's tiles would leave a warp under TINYGPT_DECODE_STREAM_MIN_TILES (4)
// tiles, or split one (sequence, KV head) into more than
// TINYGPT_DECODE_STREAM_MAX_PARTS (31 at most: a merge has a lane per
// contributor) runs. Planned for every sequence at the longest context (the
// graphs' context bucket); the kernel applies both bounds again to the
// step's real contexts, leaving warps idle where they are shorter.
template <class Tr>
void PlanDecodeStream(const AttentionDims& dims, const AttentionBatch& batch, int num_sms, AttentionPlan* plan) {
  const long pairs = static_cast<long>(batch.num_seqs) * dims.n_kv_heads;
  const long pair_tiles = (batch.max_ctx_len + Tr::kBlockN - 1) / Tr::kBlockN;
  static const long min_tiles = std::max(1L, EnvLong("TINYGPT_DECODE_STREAM_MIN_TILES", 4)),
                    max_parts = std::clamp(EnvLong("TINYGPT_DECODE_STREAM_MAX_PARTS", 31), 1L, 31L);
  const long per_warp = std::max(min_tiles, (pair_tiles + max_parts - 1) / max_parts);
  const long warps = (pairs * pair_tiles + per_warp - 1) / per_warp;
  const long resident = static_cast<long>(num_sms) * DecodeStreamBlocksPerSm<Tr>(DecodeStreamSmemBytes<Tr>(batch.num_seqs));
  plan->stream_blocks = static_cast<int>(std::max(1L, std::min(resident, (warps + Tr::kWarps - 1) / Tr::kWarps)));
  plan->stream_slots = 2 * plan->stream_blocks * Tr::kWarps;
  plan->num_splits = 1;
  plan->partial_floats = static_cast<size_t>(plan->stream_slots) * Tr::kRows * (dims.head_dim + 1);
  plan->split_counters = static_cast<int>(pairs);
  plan->stream_min_tiles = static_cast<int>(min_tiles);
  plan->stream_max_parts = static_cast<int>(max_parts);
}

// The split kernel unless TINYGPT_DECODE_STREAM=1: the stream kernel was
// slower in the engine's steps at every batch (H200, docs/benchmarks.md,
// issue #23 fifth session: bench-125m at position 330, one sequence 373 us
// a step against 299, 256 sequences 949 against 857), and within 3% of it
// on the attention bench where it was faster (batch >= 64, contexts >= 4096).
// `stream`: the stream kernel where it fits. It holds three ints per
// sequence in shared memory beside its stages, so a batch of more than ~10k
// sequences takes the split kernel.
template <class Tr>
void PlanDecodeKernel(const AttentionDims& dims, const AttentionBatch& batch, int num_sms, bool stream, AttentionPlan* plan) {
  if (stream && DecodeStreamSmemBytes<Tr>(batch.num_seqs) <= DecodeStreamMaxSmem<Tr>()) PlanDecodeStream<Tr>(dims, batch, num_sms, plan);
  else PlanDecodeSplits<Tr>(dims, batch, num_sms, plan);
}
template <class Tr>
void PlanDecode(const AttentionDims& dims, const AttentionBatch& batch, int num_sms, AttentionPlan* plan) {
  static const bool stream = EnvLong("TINYGPT_DECODE_STREAM", 0) == 1;
  PlanDecodeKernel<Tr>(dims, batch, num_sms, stream, plan);
}

template <class Tr>
void LaunchDecode(const AttentionDims& dims, const AttentionBatch& batch, const AttentionParams& p, cudaStream_t stream) {
  if (p.stream_blocks > 0) {
    DecodeStreamMaxSmem<Tr>();  // raises the kernels' shared-memory limit once
    const int smem = DecodeStreamSmemBytes<Tr>(batch.num_seqs);
    if (p.alibi) LaunchKernel(true, DecodeStreamKernel<Tr, true>, p.stream_blocks, Tr::kThreads, smem, stream, p);
    else LaunchKernel(true, DecodeStreamKernel<Tr, false>, p.stream_blocks, Tr::kThreads, smem, stream, p);
    return;
  }
  DecodeBlocksPerSm<Tr>();  // raises the kernels' shared-memory limit once
  const dim3 grid(batch.num_seqs * dims.n_kv_heads, p.num_splits);
  // TINYGPT_DECODE_SMALL_CODE=1: the kernel's small-code form (one tile body,
  // rolled prologue; decode_attention_kernel.cuh), for the A/B.
  static const bool small_code = EnvLong("TINYGPT_DECODE_SMALL_CODE", 0) == 1;
  auto kernel = p.alibi ? (small_code ? DecodeAttentionKernel<Tr, true, true> : DecodeAttentionKernel<Tr, true>)
                        : (small_code ? DecodeAttentionKernel<Tr, false, true> : DecodeAttentionKernel<Tr, false>);
  LaunchKernel(true, kernel, grid, Tr::kThreads, Tr::kSmemBytes, stream, p);
  if (p.num_splits > 1 && p.split_counters == nullptr) LaunchCombine<typename Tr::T>(dims, batch, p, stream);
}

// The kernel's arguments for one call (see LaunchPagedAttention).
inline AttentionParams MakeAttentionParams(const AttentionPlan& plan, const AttentionDims& dims, const AttentionBatch& batch,
                                           const void* qkv, long qkv_stride, const PagedKv& kv, void* out, float* partial,
                                           int* counters) {
  const int shift = __builtin_ctz(static_cast<unsigned>(kv.block_size));
  if (kv.block_size <= 0 || (1 << shift) != kv.block_size) {
    std::fprintf(stderr, "paged attention: block_size %d is not a power of two\n", kv.block_size);
    std::abort();
  }
  AttentionParams p;
  p.q = qkv;
  p.q_stride = qkv_stride;
  p.k_cache = kv.k_cache;
  p.v_cache = kv.v_cache;
  p.block_tables = kv.block_tables;
  p.max_blocks_per_seq = kv.max_blocks_per_seq;
  p.block_shift = shift;
  p.cu_q = batch.cu_q;
  p.ctx_len = batch.ctx_len;
  p.out = out;
  p.n_heads = dims.n_heads;
  p.n_kv_heads = dims.n_kv_heads;
  p.group = dims.group();
  p.scale_log2 = dims.scale() * 1.4426950408889634f;
  p.alibi = dims.alibi;
  p.num_splits = plan.num_splits;
  p.total_q = batch.total_q;
  p.partial_out = plan.num_splits > 1 ? partial : nullptr;
  p.partial_lse = plan.num_splits > 1 ? partial + static_cast<long>(plan.num_splits) * batch.total_q * dims.n_heads * dims.head_dim
                                      : nullptr;
  p.num_seqs = batch.num_seqs;
  p.stream_blocks = plan.stream_blocks;
  p.stream_min_tiles = plan.stream_min_tiles;
  p.stream_max_parts = plan.stream_max_parts;
  if (plan.stream_blocks > 0) {
    p.partial_out = partial;
    p.partial_lse = partial + static_cast<long>(plan.stream_slots) * 16 * dims.head_dim;
  }
  p.split_counters = plan.split_counters > 0 ? counters : nullptr;
  return p;
}

}  // namespace tinygpt::cuda
