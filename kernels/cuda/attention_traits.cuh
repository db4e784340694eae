// Tile shapes and shared-memory layout of the paged flash-attention kernel.
//
// A thread block owns kBlockM "rows" of one sequence and one KV head, where a
// row is a (query token, query head of the GQA group) pair: packing the group
// into M lets one K/V tile in shared memory serve every query head that reads
// that KV head (for decode, the whole group fits one tile). Each of the
// kWarps warps owns kMTiles × 16 rows: two m16 tiles per warp reuse every K/V
// fragment read from shared memory twice. Keys stream through kStages
// shared-memory stages, kBlockN at a time.
#pragma once

namespace tinygpt::cuda {

template <int kHeadDim_, class T_, int kWarps_, int kMTiles_, int kBlockN_, int kStages_>
struct AttentionTraits {
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kMTiles = kMTiles_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRowsPerWarp = 16 * kMTiles;
  static constexpr int kBlockM = kWarps * kRowsPerWarp;
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row
  static constexpr int kNTiles = kBlockN / 8;   // n8 MMA tiles across the keys
  static constexpr int kDTiles = kHeadDim / 8;  // n8 MMA tiles across head_dim
  static constexpr int kKSteps = kHeadDim / 16; // k16 steps of Q·K^T
  // Q fragments stay in registers when they are few; otherwise (head_dim 128
  // with two m-tiles) they are re-read from shared memory at each k-step, as
  // FlashAttention-2 does, to leave registers for the accumulators.
  static constexpr bool kQInRegisters = kMTiles * kHeadDim <= 128;
  // Shared memory (elements): Q, then kStages stages of K and of V. Rows are
  // padded by 16 bytes: the eight rows an ldmatrix phase reads then start in
  // eight different 16-byte bank groups (no conflicts), and every fragment
  // address is a per-thread base plus a compile-time offset, which the
  // instruction encodes (an XOR swizzle cost integer ops per ldmatrix: the
  // SASS of that version had four integer instructions per MMA).
  static constexpr int kRowStride = kHeadDim + 8;
  static constexpr int kQElems = kBlockM * kRowStride;
  static constexpr int kKVElems = kBlockN * kRowStride;
  // Then kStages × kBlockN block-table entries (int32).
  static constexpr int kSmemBytes = (kQElems + 2 * kStages * kKVElems) * 2 + kStages * kBlockN * 4;
  static_assert(kHeadDim == 16 || kHeadDim == 32 || kHeadDim == 64 || kHeadDim == 128, "head_dim 16, 32, 64 or 128");
  static_assert(kBlockN % 16 == 0 && kStages >= 2, "whole k16 steps of P·V; at least double buffering");
  static_assert(kThreads % kChunks == 0, "a pass of the block covers whole rows");

  __device__ __forceinline__ static constexpr int Offset(int row, int col) { return row * kRowStride + col; }
};

// The two shapes the backend launches, by head_dim:
//  - Wide: prefill chunks and mixed steps (many rows per sequence). At
//    head_dim 128 this uses 255 registers and spills 8 bytes, and still ran
//    10% faster than block N 32 without spills (docs/benchmarks.md). Three
//    stages where they fit two blocks per SM (head_dim ≤ 64: 2-6% faster).
//  - Narrow: decode steps where a sequence's rows (new tokens × GQA group) fit
//    one warp's 16: one warp per block and three stages, so that many small
//    blocks (four per SM at head_dim 128) keep enough K/V bytes in flight to
//    run at memory bandwidth (four stages fit one block fewer and ran slower).
template <int D, class T>
using WideAttention = AttentionTraits<D, T, 4, 2, 64, (D >= 128 ? 2 : 3)>;
// Decode (narrow) tiles: 32 keys at every head_dim since the H200 serving
// runs (docs/benchmarks.md: bench-125m, head_dim 64, 256 sequences of ~330
// tokens, 995 us per step with 32-key tiles, 1147 with 64). The 64-key tile
// at head_dim <= 64 takes 58 KB of shared memory (three blocks of one warp
// per SM); the 32-key one 30 KB (seven). TINYGPT_DECODE_BLOCK_N=64 selects
// the 64-key tile again.
template <int D, class T>
using NarrowAttention = AttentionTraits<D, T, 1, 1, 32, 3>;
template <int D, class T>
using NarrowAttention64 = AttentionTraits<D, T, 1, 1, 64, 3>;

}  // namespace tinygpt::cuda
