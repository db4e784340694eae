// Tile shapes and shared-memory layout of the paged flash-attention kernel.
//
// A thread block owns kBlockM "rows" of one sequence and one KV head, where a
// row is a (query token, query head of the GQA group) pair: packing the group
// into M lets one K/V tile in shared memory serve every query head that reads
// that KV head (for decode, the whole group fits one tile). Each of the
// kWarps warps owns 16 rows; keys are consumed kBlockN at a time.
#pragma once

namespace tinygpt::cuda {

template <int kHeadDim_, class T_>
struct AttentionTraits {
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockM = 16 * kWarps;
  static constexpr int kBlockN = 64;
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row
  static constexpr int kNTiles = kBlockN / 8;   // n8 MMA tiles across the keys
  static constexpr int kDTiles = kHeadDim / 8;  // n8 MMA tiles across head_dim
  static constexpr int kKSteps = kHeadDim / 16; // k16 steps of Q·K^T
  // Shared memory (elements): Q, then two stages of K and of V.
  static constexpr int kQElems = kBlockM * kHeadDim;
  static constexpr int kKVElems = kBlockN * kHeadDim;
  static constexpr int kSmemBytes = (kQElems + 4 * kKVElems) * 2;
  static_assert(kHeadDim == 16 || kHeadDim == 32 || kHeadDim == 64 || kHeadDim == 128, "head_dim 16, 32, 64 or 128");

  // XOR swizzle of the 16-byte chunks within a row, so the eight rows an
  // ldmatrix phase reads fall in different banks (fully for head_dim ≥ 64).
  static constexpr int kSwizzle = kChunks < 8 ? kChunks - 1 : 7;
  __device__ __forceinline__ static int Offset(int row, int col) {
    return row * kHeadDim + (((col >> 3) ^ (row & kSwizzle)) << 3) + (col & 7);
  }
};

}  // namespace tinygpt::cuda
