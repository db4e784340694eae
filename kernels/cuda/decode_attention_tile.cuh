// What both decode attention kernels share: the traits of a decode block
// (DecodeTraits) and one warp's work on one 16-key tile of K/V in shared
// memory, as a small state machine (DecodeWarpState): S = Q·K^T on
// mma.sync m16n8k16 with fp32 accumulation, the mask and ALiBi, the online
// softmax in the log2 domain, O += P·V. The rows of the m16 tile are one
// sequence's new tokens × the GQA group that shares a KV head.
//
// decode_attention_kernel.cuh: a block per (sequence, KV head, key split),
// its warps sharing the keys. decode_stream_kernel.cuh: every warp of the
// grid takes an equal run of all key tiles of the step (stream-K).
#pragma once
#include <cfloat>
#include <type_traits>

#include "kernels/cuda/attention_kernel.cuh"

namespace tinygpt::cuda {

template <int kHeadDim_, class T_, int kWarps_, int kBlockN_, int kStages_, int kMinBlocks_>
struct DecodeTraits {
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr int kMinBlocks = kMinBlocks_;  // blocks per SM the launch bounds ask registers for
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRows = 16;                 // one m16 tile: new tokens × GQA group
  static constexpr int kChunks = kHeadDim / 8;     // 16-byte chunks per K/V row
  static constexpr int kRowsPerPass = 32 / kChunks;  // K/V rows one warp-wide pass of 16-byte copies covers
  static constexpr int kNTiles = kBlockN / 8;      // n8 MMA tiles across the keys
  static constexpr int kDTiles = kHeadDim / 8;     // n8 MMA tiles across head_dim
  static constexpr int kKSteps = kHeadDim / 16;    // k16 steps of Q·K^T
  // Rows padded by 16 bytes: the eight rows of an ldmatrix phase start in
  // eight different bank groups (see attention_traits.cuh).
  static constexpr int kRowStride = kHeadDim + 8;
  static constexpr int kQElems = kRows * kRowStride;
  static constexpr int kKVElems = kBlockN * kRowStride;      // one stage of K (or of V)
  static constexpr int kWarpElems = 2 * kStages * kKVElems;  // one warp's K and V stages
  static constexpr int kStageBytes = kWarps * kWarpElems * 2;  // every warp's stages
  static constexpr int kSmemBytes = kQElems * 2 + kStageBytes;  // the split kernel: Q, then the stages
  // A warp's merge record (its accumulators, row maxima and row sums, one
  // float per lane each) is written over its own stages once it is done.
  static constexpr int kMergeFloats = (kDTiles * 4 + 4) * 32;
  static_assert(kHeadDim == 16 || kHeadDim == 32 || kHeadDim == 64 || kHeadDim == 128, "head_dim 16, 32, 64 or 128");
  static_assert(kBlockN % 16 == 0 && kBlockN <= 32, "whole k16 steps of P·V; a tile's table entries fit one per lane");
  static_assert(kBlockN % kRowsPerPass == 0 && kStages >= 2, "whole passes per tile; at least double buffering");
  static_assert(kMergeFloats * 4 <= kWarpElems * 2, "the merge record fits the warp's stages");
  static_assert(kRows * 64 * 4 <= kWarpElems * 2, "the split weights (64 splits at most) fit a warp's stages");

  __device__ __forceinline__ static constexpr int Offset(int row, int col) { return row * kRowStride + col; }
};

template <class Tr> struct IsDecodeTraits : std::false_type {};
template <int D, class T, int W, int BN, int S, int B> struct IsDecodeTraits<DecodeTraits<D, T, W, BN, S, B>> : std::true_type {};

// The shapes the backend launches, by head_dim (docs/benchmarks.md, issue
// #23): four warps; 16-key tiles four stages deep at head_dim 64 (three
// blocks per SM), three at 128 (two); 32-key tiles below 64, whose rows are
// short.
template <int D, class T>
using DecodeAttention = DecodeTraits<D, T, 4, (D >= 64 ? 16 : 32), (D >= 128 ? 3 : 4), (D >= 128 ? 2 : 3)>;

// One K/V tile's copy into a warp's stage: 16-byte cp.async per lane, rows
// gathered through the block table. `entry` is lane x's copy of the x-th
// table entry the tile spans (a tile spans whole blocks or lies inside one:
// powers of two), `tile` the tile's index in its sequence, rows at or past
// ctx zero-filled.
template <class Tr>
__device__ __forceinline__ void DecodeLoadTile(typename Tr::T* dk, typename Tr::T* dv, const typename Tr::T* kc,
                                               const typename Tr::T* vc, int tile, int entry, int ctx, int kvh, int n_kv_heads,
                                               int shift, int lane) {
  constexpr int BN = Tr::kBlockN, D = Tr::kHeadDim;
  const int ch = lane % Tr::kChunks;
#pragma unroll
  for (int k = 0; k < BN / Tr::kRowsPerPass; ++k) {
    const int r = lane / Tr::kChunks + k * Tr::kRowsPerPass, j = tile * BN + r;
    const int block = __shfl_sync(0xffffffffu, entry, r >> shift);
    const bool valid = j < ctx;
    const long src = valid ? ((static_cast<long>(block) << shift) + (j & ((1 << shift) - 1))) * (n_kv_heads * D) + kvh * D + ch * 8 : 0;
    CpAsync16(dk + Tr::Offset(r, ch * 8), kc + src, valid);
    CpAsync16(dv + Tr::Offset(r, ch * 8), vc + src, valid);
  }
}

// Lane x's block-table entry for a tile: the x-th block the tile spans, 0
// past the tile's blocks or the context's last block.
template <class Tr>
__device__ __forceinline__ int DecodeTableEntry(const int32_t* table, int tile, int ctx, int shift, int lane) {
  const int tile_entries = max(1, Tr::kBlockN >> shift), last_entry = (ctx - 1) >> shift;
  const int e = ((tile * Tr::kBlockN) >> shift) + lane;
  return lane < tile_entries && e <= last_entry ? __ldg(table + e) : 0;
}

// One warp's softmax state over the keys it has seen, for its 16 rows. Lane
// l holds rows lo = l/4 and hi = l/4 + 8 (h = 0, 1) of the m16 tile: their
// running maxima m (score units: raw Q·K without ALiBi, log2 domain with it;
// score_scale takes them to log2), their partial sums l (this lane's
// columns), and the accumulators o of its output columns.
template <class Tr, bool kAlibi>
struct DecodeWarpState {
  using T = typename Tr::T;
  static constexpr float kMasked = -FLT_MAX;
  float o[Tr::kDTiles][4];
  float m[2], l[2];
  // Per segment (one sequence and KV head): the rows' positions and ALiBi slopes.
  int pos[2];
  float slope[2];
  float score_scale, scale_log2;

  __device__ __forceinline__ void Reset() {
    m[0] = m[1] = kMasked;
    l[0] = l[1] = 0.f;
#pragma unroll
    for (int d = 0; d < Tr::kDTiles; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
  }
  // The rows of (a sequence, KV head kvh): `rows` = new tokens × group,
  // the first new token at position `offset`.
  __device__ __forceinline__ void Begin(const AttentionParams& p, int kvh, int rows, int offset, int lane) {
    scale_log2 = p.scale_log2;
    score_scale = kAlibi ? 1.f : p.scale_log2;
    const float log2e = 1.4426950408889634f;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = min((lane >> 2) + 8 * h, rows - 1);
      pos[h] = offset + r / p.group;
      slope[h] = kAlibi ? powf(exp2f(-8.0f / p.n_heads), static_cast<float>(kvh * p.group + r % p.group + 1)) * log2e : 0.f;
    }
    Reset();
  }
  __device__ __forceinline__ void Rescale(int h, float corr) {
    l[h] *= corr;
#pragma unroll
    for (int d = 0; d < Tr::kDTiles; ++d) {
      o[d][2 * h] *= corr;
      o[d][2 * h + 1] *= corr;
    }
  }
  // S = Q·K^T of the tile in k (shared memory); qf: Q's A fragments.
  __device__ __forceinline__ static void Scores(const uint32_t (&qf)[Tr::kKSteps][4], const T* k, int lane,
                                                float (&sc)[Tr::kNTiles][4]) {
    const int mi = lane >> 3;  // ldmatrix x4: lanes 8i..8i+7 address sub-matrix i
#pragma unroll
    for (int n = 0; n < Tr::kNTiles; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < Tr::kKSteps; ++ks)
#pragma unroll
      for (int n = 0; n < Tr::kNTiles; n += 2) {
        uint32_t b[4];
        LdMatrixX4(b, k + Tr::Offset(n * 8 + (mi >> 1) * 8 + (lane & 7), ks * 16 + (mi & 1) * 8));
        Mma16816<T>(sc[n], qf[ks], b[0], b[1]);
        Mma16816<T>(sc[n + 1], qf[ks], b[2], b[3]);
      }
  }
  // The tile's scores into the state: mask (keys past a row's position),
  // ALiBi, the online softmax, then O += P·V with V in v (shared memory).
  // key0: the tile's first key position.
  template <bool kMask>
  __device__ __forceinline__ void Accumulate(float (&sc)[Tr::kNTiles][4], const T* v, int key0, int lane) {
    const int j0 = key0 + 2 * (lane & 3);  // this thread's first key column in the tile
    if constexpr (kAlibi || kMask) {
#pragma unroll
      for (int n = 0; n < Tr::kNTiles; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int h = e >> 1, dj = n * 8 + (e & 1);
          float x = sc[n][e];
          if constexpr (kAlibi) x = x * scale_log2 + slope[h] * static_cast<float>(j0 + dj - pos[h]);
          if constexpr (kMask) x = j0 + dj > pos[h] ? kMasked : x;
          sc[n][e] = x;
        }
    }
    float m_new[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float tmax = RowReduce<Tr::kNTiles>(sc, h, [](float a, float b) { return fmaxf(a, b); });
      tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
      tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));
      m_new[h] = fmaxf(m[h], tmax);
    }
    // Rescale only when some row of the warp has a new maximum.
    if (__any_sync(0xffffffffu, (m_new[0] > m[0]) | (m_new[1] > m[1]))) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        // A row whose keys so far are all masked keeps m = kMasked; 0 in its
        // place keeps its scores at -FLT_MAX, whose exp2 is 0.
        const float m_use = m_new[h] == kMasked ? 0.f : m_new[h];
        Rescale(h, FastExp2((m[h] - m_use) * score_scale));
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      m[h] = m_new[h];
      const float neg_m = -(m_new[h] == kMasked ? 0.f : m_new[h]) * score_scale;
#pragma unroll
      for (int n = 0; n < Tr::kNTiles; ++n) {
        sc[n][2 * h] = FastExp2(fmaf(sc[n][2 * h], score_scale, neg_m));
        sc[n][2 * h + 1] = FastExp2(fmaf(sc[n][2 * h + 1], score_scale, neg_m));
      }
      l[h] += RowReduce<Tr::kNTiles>(sc, h, [](float a, float b) { return a + b; });
    }
    // O += P · V, P's accumulators reused as A fragments.
    const int mi = lane >> 3;
#pragma unroll
    for (int kk = 0; kk < Tr::kNTiles / 2; ++kk) {
      uint32_t a[4];
      a[0] = PackPair<T>(sc[2 * kk][0], sc[2 * kk][1]);
      a[1] = PackPair<T>(sc[2 * kk][2], sc[2 * kk][3]);
      a[2] = PackPair<T>(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
      a[3] = PackPair<T>(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
      for (int dn = 0; dn < Tr::kDTiles; dn += 2) {
        uint32_t b[4];
        LdMatrixX4Trans(b, v + Tr::Offset(kk * 16 + (mi & 1) * 8 + (lane & 7), dn * 8 + (mi >> 1) * 8));
        Mma16816<T>(o[dn], a, b[0], b[1]);
        Mma16816<T>(o[dn + 1], a, b[2], b[3]);
      }
    }
  }
  // Row half h's exponential sum over the quad of lanes that share the row.
  __device__ __forceinline__ float RowSum(int h) const {
    float sum = l[h];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    return sum;
  }
  // The row's log-sum-exp in natural-log units (-FLT_MAX for a row that saw no key).
  __device__ __forceinline__ float Lse(int h, float sum) const {
    const float log2e = 1.4426950408889634f;
    return sum > 0.f ? (m[h] * score_scale + log2f(sum)) / log2e : -FLT_MAX;
  }
};

}  // namespace tinygpt::cuda
