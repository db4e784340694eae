// Linear layers of a decode step's batch (5 to 64 rows by default):
// y[r, o] = x[r, :] · w[o, :] + b[o], x [M, K] and w [N, K] both K-contiguous
// (nn.Linear's layout). At these shapes a product is a few microseconds of
// work (64 × 768 × 768 is 75 MFLOP and 1.2 MB of weights), so what costs is
// the launch, the tail and the serial K loop of few large tiles: cuBLASLt's
// tiles gave a 768-wide product of 64 rows a dozen blocks for 132 SMs. Here
// a block owns a small tile, BM = 16·kMTiles rows × 32 columns; its four
// warps share the tile and split each 64-wide K step (warp w takes the k16
// slice w), and their partial sums are added in shared memory at the end
// (split-K inside the block: every warp keeps a whole BM × 32 tile of
// accumulators and the loads are shared). Above 64 rows cuBLASLt's Hopper
// kernels were faster (H200, docs/benchmarks.md, issue #23).
//
// Per 64-wide K step: the x tile [BM, 64] and the weight tile [32, 64]
// stream through a kStages-deep cp.async pipeline (most of K in flight at
// once; 16-byte chunks, XOR swizzled: chunk c of row r lives at chunk
// c ^ (r & 7), so each ldmatrix phase's eight rows hit distinct banks);
// fragments by ldmatrix, products by mma.sync m16n8k16 with fp32
// accumulation. Weights do not depend on the kernel before: with
// programmatic dependent launch the first stages' weight tiles are requested
// before PdlWait (common.cuh).
//
// Epilogues fused where a decode step needs them: the bias; SwiGLU (a
// block's 32 weight rows are 16 "a" rows o.. and their 16 gate rows F + o..,
// so the block writes silu(a) · g for 16 outputs, each rounded to T first as
// the unfused Linear then SwiGLU would store them); and the QKV product's
// KV-cache append (the K and V columns also go to their cache slots).
#pragma once
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gemv_kernel.cuh"  // GemvKvAppend: the same append description
#include "kernels/cuda/mma_primitives.cuh"

namespace tinygpt::cuda {

enum class SkinnyEpilogue { kBias, kSwiGLU };

template <int kMTiles_, int kStages_>
struct SkinnyGemmTraits {
  static constexpr int kMTiles = kMTiles_;  // m16 tiles per block (and per warp: each warp covers all rows)
  static constexpr int kWarps = 4;           // one k16 slice of each K step per warp
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBM = 16 * kMTiles;
  static constexpr int kBN = 32;  // four n8 tiles
  static constexpr int kNTiles = kBN / 8;
  static constexpr int kBK = 16 * kWarps;
  static constexpr int kChunks = kBK / 8;  // 16-byte chunks per tile row and K step
  // Deep enough that most of a product's K steps are in flight at once: a
  // block's few MMAs per step take far less than a load's latency (H200: a
  // 256-row step 1,146 us with four stages, 975 with 8-12).
  static constexpr int kStages = kStages_;
  static constexpr int kStageElems = (kBM + kBN) * kBK;
  // The pipeline's stages, reused at the end for the warps' partial sums
  // ([kWarps][kBM][kBN + 1] floats; the +1 spreads a column's rows over banks).
  static constexpr int kReduceStride = kBN + 1;
  static constexpr size_t kSmemBytes = std::max<size_t>(static_cast<size_t>(kStages) * kStageElems * 2,
                                                        static_cast<size_t>(kWarps) * kBM * kReduceStride * 4);
  static_assert(kChunks == 8, "the swizzle assumes 8 chunks (128 bytes) per tile row");
};

// Where element chunk `chunk` of tile row `row` sits in a stage's tile (in elements).
__device__ __forceinline__ int SwizzledChunk(int row, int chunk) { return row * 64 + ((chunk ^ (row & 7)) * 8); }

// kSwiGLU: w has 2·F rows ("a" rows, then the gates) and y is [M, F] (out = F).
template <class T, class Tr, SkinnyEpilogue kEpi>
__global__ void __launch_bounds__(Tr::kThreads) SkinnyGemmKernel(const T* __restrict__ x, const T* __restrict__ w,
                                                                  const T* __restrict__ b, T* __restrict__ y, int M, int K, int out,
                                                                  GemvKvAppend<T> kv) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  constexpr bool kSwiGLU = kEpi == SkinnyEpilogue::kSwiGLU;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, tid = threadIdx.x;
  const int row0 = blockIdx.y * Tr::kBM;
  // The block's 32 weight rows: columns col0..col0+31, or (SwiGLU) outputs
  // col0..col0+15 as tile rows 0-15 and their gates F + col0.. as 16-31.
  const int col0 = blockIdx.x * (kSwiGLU ? Tr::kBN / 2 : Tr::kBN);
  auto weight_row = [&](int j) -> int {  // tile row j's weight row, or -1 past the edge
    if constexpr (kSwiGLU) {
      const int o = col0 + (j % (Tr::kBN / 2));
      return o < out ? o + (j >= Tr::kBN / 2 ? out : 0) : -1;
    } else {
      const int o = col0 + j;
      return o < out ? o : -1;
    }
  };
  const int k_steps = (K + Tr::kBK - 1) / Tr::kBK;
  auto stage_a = [&](int s) { return smem + s * Tr::kStageElems; };
  auto stage_b = [&](int s) { return smem + s * Tr::kStageElems + Tr::kBM * Tr::kBK; };
  // Each thread copies fixed chunks: the weight tile's 32 × 8 chunks are two
  // per thread, the x tile's BM × 8 are BM / 16 per thread.
  auto load_w = [&](int step, int s) {
#pragma unroll
    for (int i = 0; i < Tr::kBN * Tr::kChunks / Tr::kThreads; ++i) {
      const int c = tid + i * Tr::kThreads, j = c / Tr::kChunks, chunk = c % Tr::kChunks;
      const int k = step * Tr::kBK + chunk * 8, wr = weight_row(j);
      const bool valid = wr >= 0 && k < K;
      CpAsync16(stage_b(s) + SwizzledChunk(j, chunk), w + (valid ? static_cast<long>(wr) * K + k : 0), valid);
    }
  };
  auto load_x = [&](int step, int s) {
#pragma unroll
    for (int i = 0; i < Tr::kBM * Tr::kChunks / Tr::kThreads; ++i) {
      const int c = tid + i * Tr::kThreads, r = c / Tr::kChunks, chunk = c % Tr::kChunks;
      const int k = step * Tr::kBK + chunk * 8;
      const bool valid = row0 + r < M && k < K;
      CpAsync16(stage_a(s) + SwizzledChunk(r, chunk), x + (valid ? static_cast<long>(row0 + r) * K + k : 0), valid);
    }
  };

  // Weights first (no predecessor wrote them), then x after the wait; the
  // first commit group holds every prefetched weight tile and x's first.
#pragma unroll
  for (int s = 0; s < Tr::kStages - 1; ++s)
    if (s < k_steps) load_w(s, s);
  PdlWait();
  PdlLaunchDependents();
#pragma unroll
  for (int s = 0; s < Tr::kStages - 1; ++s) {
    if (s < k_steps) load_x(s, s);
    CpAsyncCommit();
  }

  float acc[Tr::kMTiles][Tr::kNTiles][4];
#pragma unroll
  for (int mt = 0; mt < Tr::kMTiles; ++mt)
#pragma unroll
    for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.f;

  // ldmatrix addressing: lane l gives row l % 8 of 8×8 matrix l / 8. x's
  // fragment (16 rows × k16) is matrices (rows 0-7 | 8-15) × (k 0-7 | 8-15) in
  // the order a0..a3 = (lo, k lo), (hi, k lo), (lo, k hi), (hi, k hi); the
  // weights' (two n8 tiles × k16) is (tile 0, k lo), (tile 0, k hi), (tile 1,
  // k lo), (tile 1, k hi), i.e. b0 b1 of tile 0, then of tile 1.
  const int lm = lane / 8, lr = lane % 8;
  const int a_row = (lm & 1) * 8 + lr, a_chunk = 2 * warp + (lm >> 1);
  const int b_row = (lm >> 1) * 8 + lr, b_chunk = 2 * warp + (lm & 1);
  for (int step = 0; step < k_steps; ++step) {
    CpAsyncWait<Tr::kStages - 2>();
    __syncthreads();  // this stage landed for every thread; the stage refilled below is read by no warp any more
    const int next = step + Tr::kStages - 1;
    if (next < k_steps) {
      load_w(next, next % Tr::kStages);
      load_x(next, next % Tr::kStages);
    }
    CpAsyncCommit();
    const T* sa = stage_a(step % Tr::kStages);
    const T* sb = stage_b(step % Tr::kStages);
    uint32_t af[Tr::kMTiles][4];
#pragma unroll
    for (int mt = 0; mt < Tr::kMTiles; ++mt) LdMatrixX4(af[mt], sa + SwizzledChunk(mt * 16 + a_row, a_chunk));
#pragma unroll
    for (int np = 0; np < Tr::kNTiles / 2; ++np) {
      uint32_t bf[4];
      LdMatrixX4(bf, sb + SwizzledChunk(np * 16 + b_row, b_chunk));
#pragma unroll
      for (int mt = 0; mt < Tr::kMTiles; ++mt) {
        Mma16816<T>(acc[mt][2 * np], af[mt], bf[0], bf[1]);
        Mma16816<T>(acc[mt][2 * np + 1], af[mt], bf[2], bf[3]);
      }
    }
  }
  CpAsyncWaitAll();
  __syncthreads();  // every warp is done with the stages: they become the reduction buffer

  // Each warp's partial tile to shared memory (C fragment: c0 c1 at row g,
  // columns 2t, 2t+1; c2 c3 at row g + 8), then the four added per element.
  float* red = reinterpret_cast<float*>(smem_raw);
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mt = 0; mt < Tr::kMTiles; ++mt)
#pragma unroll
    for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = mt * 16 + g + (e >= 2 ? 8 : 0), c = nt * 8 + 2 * t + (e & 1);
        red[(warp * Tr::kBM + r) * Tr::kReduceStride + c] = acc[mt][nt][e];
      }
  __syncthreads();
  auto tile_sum = [&](int r, int c) {
    float s = 0.f;
#pragma unroll
    for (int wp = 0; wp < Tr::kWarps; ++wp) s += red[(wp * Tr::kBM + r) * Tr::kReduceStride + c];
    return s;
  };
  if constexpr (kSwiGLU) {
    constexpr int kHalf = Tr::kBN / 2;
    const int c = tid % kHalf, o = col0 + c;
    if (o >= out) return;
    const float ba = b ? ToFloat(b[o]) : 0.f, bg = b ? ToFloat(b[out + o]) : 0.f;
    for (int r = tid / kHalf; r < Tr::kBM && row0 + r < M; r += Tr::kThreads / kHalf) {
      const float a = ToFloat(FromFloat<T>(tile_sum(r, c) + ba)), gate = ToFloat(FromFloat<T>(tile_sum(r, c + kHalf) + bg));
      y[static_cast<long>(row0 + r) * out + o] = FromFloat<T>(a / (1.f + __expf(-a)) * gate);
    }
  } else {
    const int c = tid % Tr::kBN, o = col0 + c;
    if (o >= out) return;
    const float bias = b ? ToFloat(b[o]) : 0.f;
    const bool kv_col = kv.slots && o >= kv.k_offset && o < kv.k_offset + 2 * kv.kv_dim;
    for (int r = tid / Tr::kBN; r < Tr::kBM && row0 + r < M; r += Tr::kThreads / Tr::kBN) {
      const T value = FromFloat<T>(tile_sum(r, c) + bias);
      y[static_cast<long>(row0 + r) * out + o] = value;
      if (kv_col) {
        const long slot = kv.slots[row0 + r];
        const int f = o - kv.k_offset;
        if (slot >= 0) (f < kv.kv_dim ? kv.k_cache : kv.v_cache)[slot * kv.kv_dim + f % kv.kv_dim] = value;
      }
    }
  }
}

}  // namespace tinygpt::cuda
