// Tiling of the training attention kernels (attention_train_kernel.cuh).
//
// A thread block owns kRows rows — (query, head) pairs for the forward and
// dQ, keys of one KV head for dK/dV — and kThreadsPerRow threads share each
// row's vectors: thread r of a row holds columns r*4 .. r*4+3 of every 16 of
// head_dim (Col() in attention_train_kernel.cuh: 16-byte shared-memory loads,
// no bank conflicts). Dot products are reduced across
// those four lanes with two shuffles. The other side (keys for the forward
// and dQ, queries for dK/dV) streams through shared memory in fp32 tiles of
// kTile rows.
#pragma once

namespace tinygpt::cuda {

template <int kHeadDim_>
struct TrainAttentionTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kThreadsPerRow = 4;
  static constexpr int kPerThread = kHeadDim / kThreadsPerRow;  // elements of a row's vectors per thread
  static constexpr int kRows = 32;
  static constexpr int kThreads = kRows * kThreadsPerRow;
  static constexpr int kTile = 32;
  static_assert(kHeadDim == 16 || kHeadDim == 32 || kHeadDim == 64 || kHeadDim == 128, "head_dim 16, 32, 64 or 128");
};

}  // namespace tinygpt::cuda
