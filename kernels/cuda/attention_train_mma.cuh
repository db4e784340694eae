// Tensor-core attention for training (bf16/fp16), FlashAttention-2's
// forward and backward on mma.sync m16n8k16 (fp32 accumulation):
//  - MmaForwardKernel: a block owns 64 query rows of one head (16 per warp);
//    64-key tiles of K and V pass through shared memory; S = Q·K^T and
//    O += P·V on tensor cores, the online softmax on the S fragments in
//    registers; writes O and the rows' LSE.
//  - MmaDqKernel: the same walk over key tiles with dO; recomputes
//    P = exp(S − LSE), dP = dO·V^T, dS = P∘(dP − delta), dQ += dS·K.
//  - MmaDkDvKernel: a block owns 64 keys of one KV head (16 per warp); for
//    each query head of its GQA group, 64-query tiles of Q and dO pass
//    through shared memory; S^T = K·Q^T, dP^T = V·dO^T, dV += P^T·dO,
//    dK += dS^T·Q. Each key's dK/dV is summed over its group in registers
//    and written once.
// No T×T matrix is stored; P and dS go from the accumulator fragments
// straight into A fragments (the C layout of two n8 tiles is the A layout of
// one k16 step); operands come from shared memory through ldmatrix. Shapes: kernels/cuda/attention_train_traits.cuh; the
// fp32 path and the reference for the algorithm: attention_train_kernel.cuh.
#pragma once
#include <cfloat>

#include "kernels/cuda/attention_kernel.cuh"  // FastExp2 (and mma_primitives.cuh)
#include "kernels/cuda/attention_train_kernel.cuh"
#include "kernels/cuda/common.cuh"

namespace tinygpt::cuda {

template <int kHeadDim_>
struct MmaTrainTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBlockM = 16 * kWarps;  // rows a block owns (queries, or keys for dK/dV)
  static constexpr int kRows = kBlockM;        // (the grid helper's name for it)
  static constexpr int kBlockN = 64;           // rows of each streamed tile
  static constexpr int kNTiles = kBlockN / 8;  // n8 tiles across a streamed tile
  static constexpr int kDTiles = kHeadDim / 8;
  static constexpr int kKSteps = kHeadDim / 16;
  static constexpr int kStride = kHeadDim + 8;  // padded rows: fragment loads of 8 rows hit 8 different banks
  static constexpr int kTileElems = 64 * kStride;
  static_assert(kBlockM == kBlockN, "tiles of both sides are 64 rows (one loader)");
  // Blocks per SM the register allocation must allow (__launch_bounds__):
  // up to head_dim 64, 4 forward/dQ blocks (≤ 128 registers) and 3 dK/dV
  // blocks (≤ 168; unbounded it took 172, i.e. 2 blocks) for more warps to
  // hide the shared-memory and MMA latencies, at the cost of a few spilled
  // words; at 128 the accumulators need the registers.
  static constexpr int kMinBlocksRows = kHeadDim <= 64 ? 4 : 2;
  static constexpr int kMinBlocksDkDv = kHeadDim <= 64 ? 3 : 1;
};

// 64 rows × head_dim of T (row r at src + r*stride) into a padded shared
// tile with 16-byte copies; rows at or past `valid` are zero.
template <class Tr, class T>
__device__ __forceinline__ void LoadMmaTile(T* tile, const T* src, long stride, int valid) {
  constexpr int kChunks = Tr::kHeadDim / 8;
  for (int c = threadIdx.x; c < 64 * kChunks; c += Tr::kThreads) {
    const int r = c / kChunks, k = (c % kChunks) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < valid) v = *reinterpret_cast<const uint4*>(src + r * stride + k);
    *reinterpret_cast<uint4*>(tile + r * Tr::kStride + k) = v;
  }
}

// acc[nt] (16 × 64) = A(16 rows at `a`, row-major in shared memory) · B^T,
// B given as 64 rows of head_dim at `b` (so S = Q·K^T with a = Q, b = K).
// Fragments come from ldmatrix: lane l addresses row l%8 of 8×8 matrix l/8;
// for B, matrices (n-tile, k low), (n-tile, k high), (next n-tile, k low),
// (next n-tile, k high) give both registers of two n-tiles at once.
template <class Tr, class T>
__device__ __forceinline__ void MmaRowsTimesTileT(float (&acc)[Tr::kNTiles][4], const T* a, const T* b, int lane) {
#pragma unroll
  for (int nt = 0; nt < Tr::kNTiles; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
  const int mi = lane >> 3, r = lane & 7;
  // A: matrices (rows 0-7, k low), (rows 8-15, k low), (rows 0-7, k high), (rows 8-15, k high).
  const T* a_lane = a + ((mi & 1) * 8 + r) * Tr::kStride + (mi >> 1) * 8;
  const T* b_lane = b + ((mi >> 1) * 8 + r) * Tr::kStride + (mi & 1) * 8;
#pragma unroll
  for (int kk = 0; kk < Tr::kKSteps; ++kk) {
    uint32_t af[4];
    LdMatrixX4(af, a_lane + kk * 16);
#pragma unroll
    for (int nt = 0; nt < Tr::kNTiles; nt += 2) {
      uint32_t bf[4];
      LdMatrixX4(bf, b_lane + nt * 8 * Tr::kStride + kk * 16);
      Mma16816<T>(acc[nt], af, bf[0], bf[1]);
      Mma16816<T>(acc[nt + 1], af, bf[2], bf[3]);
    }
  }
}

// out[dt] (16 × head_dim) += P (16 × 64, the fragments p) · B, B given as
// 64 rows of head_dim at `b` (O += P·V, dQ += dS·K, dV += P^T·dO, ...).
// B's fragments: ldmatrix.trans of matrices (k low, d-tile), (k high,
// d-tile), (k low, next d-tile), (k high, next d-tile).
template <class Tr, class T>
__device__ __forceinline__ void MmaFragsTimesTile(float (&out)[Tr::kDTiles][4], const float (&p)[Tr::kNTiles][4], const T* b,
                                                  int lane) {
  const int mi = lane >> 3, r = lane & 7;
  const T* b_lane = b + ((mi & 1) * 8 + r) * Tr::kStride + (mi >> 1) * 8;
#pragma unroll
  for (int kk = 0; kk < Tr::kBlockN / 16; ++kk) {
    uint32_t af[4];
    af[0] = PackPair<T>(p[2 * kk][0], p[2 * kk][1]);
    af[1] = PackPair<T>(p[2 * kk][2], p[2 * kk][3]);
    af[2] = PackPair<T>(p[2 * kk + 1][0], p[2 * kk + 1][1]);
    af[3] = PackPair<T>(p[2 * kk + 1][2], p[2 * kk + 1][3]);
#pragma unroll
    for (int dt = 0; dt < Tr::kDTiles; dt += 2) {
      uint32_t bf[4];
      LdMatrixX4Trans(bf, b_lane + kk * 16 * Tr::kStride + dt * 8);
      Mma16816<T>(out[dt], af, bf[0], bf[1]);
      Mma16816<T>(out[dt + 1], af, bf[2], bf[3]);
    }
  }
}

// The column (within the tile) of accumulator element e of n-tile nt, and
// its row (0..15 within the warp's 16).
__device__ __forceinline__ int FragCol(int nt, int e, int t) { return nt * 8 + 2 * t + (e & 1); }
__device__ __forceinline__ int FragRow(int e, int g) { return g + (e >= 2 ? 8 : 0); }

template <class Tr>
__device__ __forceinline__ size_t MmaSmemBytes(int tiles) { return static_cast<size_t>(tiles) * Tr::kTileElems * 2; }

enum class MmaRowPass { kForward, kDq };

// 4 bytes global → shared without registers (the LSE and delta of a tile).
__device__ __forceinline__ void CpAsync4(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem));
}

// LoadMmaTile through cp.async (16-byte copies that bypass registers, so
// the next tile's loads are in flight while this one is computed on); rows
// at or past `valid` are zero-filled (never read from global memory).
template <class Tr, class T>
__device__ __forceinline__ void CpAsyncMmaTile(T* tile, const T* src, long stride, int valid) {
  constexpr int kChunks = Tr::kHeadDim / 8;
#pragma unroll
  for (int c = threadIdx.x; c < 64 * kChunks; c += Tr::kThreads) {
    const int r = c / kChunks, k = (c % kChunks) * 8;
    const bool ok = r < valid;
    CpAsync16(tile + r * Tr::kStride + k, src + static_cast<long>(ok ? r : 0) * stride + k, ok);
  }
}

// Shared memory of the kernels below (bytes): forward Q + 2 stages of
// (K, V); dQ also dO; dK/dV: K, V + 2 stages of (Q, dO) and of the tile's
// LSE and delta.
template <class Tr>
constexpr size_t MmaForwardSmem() { return 5 * Tr::kTileElems * 2; }
template <class Tr>
constexpr size_t MmaDqSmem() { return 6 * Tr::kTileElems * 2; }
template <class Tr>
constexpr size_t MmaDkDvSmem() { return 6 * Tr::kTileElems * 2 + 4 * Tr::kBlockN * sizeof(float); }

// kLog2 (the default; false keeps the natural-log form of the first
// tensor-core version, selectable with TINYGPT_CUDA_ATTN_EXP=1): scores are
// kept in log2 units, s·scale·log2(e) (+ ALiBi's slope·log2(e)·(j − i)),
// masked ones −inf, so that each probability is one ex2 of an FFMA'd
// argument: no −FLT_MAX select, no int-to-float ALiBi term without ALiBi,
// no hidden multiply inside __expf. The softmax arithmetic per score
// element is a good part of these kernels' time (as much as the MMAs at
// head_dim 64), so this is worth its two forms.
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

// Forward and dQ: a block owns 64 query rows of one head (BlockOrder: the
// last row blocks, which see the most keys, start first). Key/value tiles
// stream through a two-stage cp.async pipeline: tile it+1 is copied while
// tile it is computed on.
template <class Tr, class T, MmaRowPass kPass, bool kLog2>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocksRows) MmaRowsKernel(const TrainAttentionParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr bool kDq = kPass == MmaRowPass::kDq;
  T* qs = reinterpret_cast<T*>(smem_raw);
  T* dos = qs + Tr::kTileElems;                      // dQ only
  T* kv = qs + (kDq ? 2 : 1) * Tr::kTileElems;       // stage s: K at kv + 2s·tile, V after it
  constexpr int D = Tr::kHeadDim;
  const BlockOrder bo = BlockOrder::Make<true>();
  const SeqBlock sb(p, Tr::kBlockM, bo.seq, bo.row_block);
  if (sb.row0 >= sb.len) return;
  const int h = bo.head, kvh = h / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const T* qkv = static_cast<const T*>(p.qkv);
  const long od = static_cast<long>(p.n_heads) * D;
  const float slope = p.alibi ? AlibiSlopeDev(h, p.n_heads) : 0.f;
  const float c2 = p.scale * kLog2e, slope2 = slope * kLog2e;  // kLog2
  const int valid_rows = min(Tr::kBlockM, sb.len - sb.row0);
  // Keys 0 .. the block's last query (causal).
  const int n_keys = min(sb.len, sb.row0 + Tr::kBlockM);
  const int n_tiles = (n_keys + Tr::kBlockN - 1) / Tr::kBlockN;
  const T* kbase = qkv + static_cast<long>(sb.start) * p.qkv_stride + (p.n_heads + kvh) * D;
  const T* vbase = kbase + static_cast<long>(p.n_kv_heads) * D;
  CpAsyncMmaTile<Tr>(qs, qkv + static_cast<long>(sb.start + sb.row0) * p.qkv_stride + h * D, p.qkv_stride, valid_rows);
  if constexpr (kDq)
    CpAsyncMmaTile<Tr>(dos, static_cast<const T*>(p.dout) + static_cast<long>(sb.start + sb.row0) * od + h * D, od, valid_rows);
  CpAsyncMmaTile<Tr>(kv, kbase, p.qkv_stride, n_keys);
  CpAsyncMmaTile<Tr>(kv + Tr::kTileElems, vbase, p.qkv_stride, n_keys);
  CpAsyncCommit();
  // This thread's two rows (g and g+8 of the warp's 16): query positions.
  const int i_row[2] = {sb.row0 + warp * 16 + g, sb.row0 + warp * 16 + g + 8};
  float m[2] = {-FLT_MAX, -FLT_MAX}, l[2] = {0.f, 0.f}, lse[2] = {0.f, 0.f}, delta[2] = {0.f, 0.f};
  if constexpr (kDq) {
    for (int r = 0; r < 2; ++r) {
      const long row = sb.start + min(i_row[r], sb.len - 1);
      lse[r] = p.lse[row * p.n_heads + h];
      if constexpr (kLog2) lse[r] *= kLog2e;
      delta[r] = p.delta[row * p.n_heads + h];
    }
  }
  float acc[Tr::kDTiles][4] = {};
  const T* my_q = qs + warp * 16 * Tr::kStride;
  const T* my_do = dos + warp * 16 * Tr::kStride;
  for (int it = 0; it < n_tiles; ++it) {
    const int j0 = it * Tr::kBlockN;
    if (it + 1 < n_tiles) {  // stage (it+1)&1 was last read in iteration it-1, which ended with a barrier
      T* next = kv + ((it + 1) & 1) * 2 * Tr::kTileElems;
      const long off = static_cast<long>(j0 + Tr::kBlockN) * p.qkv_stride;
      CpAsyncMmaTile<Tr>(next, kbase + off, p.qkv_stride, n_keys - j0 - Tr::kBlockN);
      CpAsyncMmaTile<Tr>(next + Tr::kTileElems, vbase + off, p.qkv_stride, n_keys - j0 - Tr::kBlockN);
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();  // tile it (and Q, dO) visible to every warp
    const T* ks = kv + (it & 1) * 2 * Tr::kTileElems;
    const T* vs = ks + Tr::kTileElems;
    float s[Tr::kNTiles][4];
    MmaRowsTimesTileT<Tr>(s, my_q, ks, lane);
    // Scores: scale, ALiBi; the causal and sequence masks only on the tile
    // that holds the block's own positions (every key of an earlier tile
    // precedes every query of the block).
    if (kLog2 && j0 + Tr::kBlockN <= sb.row0) {
      if (p.alibi) {
#pragma unroll
        for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            s[nt][e] = s[nt][e] * c2 + slope2 * static_cast<float>(j0 + FragCol(nt, e, t) - i_row[e >> 1]);
      } else {
#pragma unroll
        for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[nt][e] *= c2;
      }
    } else if (kLog2) {
#pragma unroll
      for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int j = j0 + FragCol(nt, e, t), i = i_row[e >> 1];
          s[nt][e] = (j <= i && j < n_keys) ? s[nt][e] * c2 + slope2 * static_cast<float>(j - i) : -INFINITY;
        }
    } else if (j0 + Tr::kBlockN <= sb.row0) {
#pragma unroll
      for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          s[nt][e] = s[nt][e] * p.scale + slope * static_cast<float>(j0 + FragCol(nt, e, t) - i_row[e >> 1]);
    } else {
#pragma unroll
      for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int j = j0 + FragCol(nt, e, t), i = i_row[e >> 1];
          s[nt][e] = (j <= i && j < n_keys) ? s[nt][e] * p.scale + slope * static_cast<float>(j - i) : -FLT_MAX;
        }
    }
    if constexpr (kPass == MmaRowPass::kForward) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = m[r];
#pragma unroll
        for (int nt = 0; nt < Tr::kNTiles; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // (m starts at -FLT_MAX and mx >= m is finite: every row sees key 0 in the first tile.)
        const float corr = kLog2 ? FastExp2(m[r] - mx) : __expf(m[r] - mx);
        m[r] = mx;
        l[r] *= corr;
#pragma unroll
        for (int dt = 0; dt < Tr::kDTiles; ++dt) acc[dt][2 * r] *= corr, acc[dt][2 * r + 1] *= corr;
#pragma unroll
        for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
          for (int e = 2 * r; e < 2 * r + 2; ++e) {
            if constexpr (kLog2)
              s[nt][e] = FastExp2(s[nt][e] - mx);  // −inf (masked) → 0
            else
              s[nt][e] = s[nt][e] == -FLT_MAX ? 0.f : __expf(s[nt][e] - mx);
            l[r] += s[nt][e];
          }
      }
      MmaFragsTimesTile<Tr>(acc, s, vs, lane);
    } else {
      float dp[Tr::kNTiles][4];
      MmaRowsTimesTileT<Tr>(dp, my_do, vs, lane);
#pragma unroll
      for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float pij = kLog2 ? FastExp2(s[nt][e] - lse[e >> 1]) : s[nt][e] == -FLT_MAX ? 0.f : __expf(s[nt][e] - lse[e >> 1]);
          s[nt][e] = pij * (dp[nt][e] - delta[e >> 1]);  // dS
        }
      MmaFragsTimesTile<Tr>(acc, s, ks, lane);
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }
  // Each row's sum of P from the four lanes that hold its columns (every
  // lane of the warp takes part, before any of them leaves).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (i_row[r] >= sb.len) continue;
    const long row = sb.start + i_row[r];
    if constexpr (kPass == MmaRowPass::kForward) {
      const float sum = l[r];
      T* out = static_cast<T*>(p.out_w) + row * od + h * D;
      const float inv = 1.f / sum;
#pragma unroll
      for (int dt = 0; dt < Tr::kDTiles; ++dt)
        *reinterpret_cast<uint32_t*>(out + dt * 8 + 2 * t) = PackPair<T>(acc[dt][2 * r] * inv, acc[dt][2 * r + 1] * inv);
      if (t == 0) p.lse[row * p.n_heads + h] = kLog2 ? m[r] * kLn2 + __logf(sum) : m[r] + __logf(sum);
    } else {
      T* dq = static_cast<T*>(p.dqkv) + row * p.qkv_stride + h * D;
#pragma unroll
      for (int dt = 0; dt < Tr::kDTiles; ++dt)
        *reinterpret_cast<uint32_t*>(dq + dt * 8 + 2 * t) = PackPair<T>(acc[dt][2 * r] * p.scale, acc[dt][2 * r + 1] * p.scale);
    }
  }
}

// dK and dV: a block owns 64 keys of one KV head (BlockOrder: the first key
// blocks, which are seen by the most queries, start first). For each query
// head of the GQA group in turn, the query tiles from the block's first key
// onward stream through a two-stage cp.async pipeline (Q, dO, LSE, delta).
template <class Tr, class T, bool kLog2>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocksDkDv) MmaDkDvKernel(const TrainAttentionParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* ks = reinterpret_cast<T*>(smem_raw);
  T* vs = ks + Tr::kTileElems;
  T* qdo = vs + Tr::kTileElems;  // stage s: Q at qdo + 2s·tile, dO after it
  float* stats = reinterpret_cast<float*>(qdo + 4 * Tr::kTileElems);  // stage s: LSE at stats + 2s·kBlockN, delta after it
  constexpr int D = Tr::kHeadDim;
  const BlockOrder bo = BlockOrder::Make<false>();
  const SeqBlock sb(p, Tr::kBlockM, bo.seq, bo.row_block);
  if (sb.row0 >= sb.len) return;
  const int kvh = bo.head;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const T* qkv = static_cast<const T*>(p.qkv);
  const T* dout = static_cast<const T*>(p.dout);
  const long od = static_cast<long>(p.n_heads) * D;
  const int valid_keys = min(Tr::kBlockM, sb.len - sb.row0);
  const T* krow0 = qkv + static_cast<long>(sb.start + sb.row0) * p.qkv_stride + (p.n_heads + kvh) * D;
  CpAsyncMmaTile<Tr>(ks, krow0, p.qkv_stride, valid_keys);
  CpAsyncMmaTile<Tr>(vs, krow0 + static_cast<long>(p.n_kv_heads) * D, p.qkv_stride, valid_keys);
  // Work items: (query head gi of the group, query tile) pairs, it = gi·n_q_tiles + tile.
  const int n_q_tiles = (sb.len - sb.row0 + Tr::kBlockN - 1) / Tr::kBlockN;
  const int total = p.group * n_q_tiles;
  auto issue = [&](int it, int stage) {
    const int gi = it / n_q_tiles, i0 = sb.row0 + (it - gi * n_q_tiles) * Tr::kBlockN;
    const int h = kvh * p.group + gi, valid = min(Tr::kBlockN, sb.len - i0);
    T* q_dst = qdo + stage * 2 * Tr::kTileElems;
    CpAsyncMmaTile<Tr>(q_dst, qkv + static_cast<long>(sb.start + i0) * p.qkv_stride + h * D, p.qkv_stride, valid);
    CpAsyncMmaTile<Tr>(q_dst + Tr::kTileElems, dout + static_cast<long>(sb.start + i0) * od + h * D, od, valid);
    float* st = stats + stage * 2 * Tr::kBlockN;
    for (int c = threadIdx.x; c < Tr::kBlockN; c += Tr::kThreads) {
      const long row = sb.start + i0 + min(c, valid - 1);
      CpAsync4(st + c, p.lse + row * p.n_heads + h);
      CpAsync4(st + Tr::kBlockN + c, p.delta + row * p.n_heads + h);
    }
  };
  issue(0, 0);
  CpAsyncCommit();
  const int j_row[2] = {sb.row0 + warp * 16 + g, sb.row0 + warp * 16 + g + 8};
  float dk[Tr::kDTiles][4] = {}, dv[Tr::kDTiles][4] = {};
  const T* my_k = ks + warp * 16 * Tr::kStride;
  const T* my_v = vs + warp * 16 * Tr::kStride;
  for (int it = 0; it < total; ++it) {
    const int stage = it & 1;
    if (it + 1 < total) {  // the other stage was last read in iteration it-1, which ended with a barrier
      issue(it + 1, stage ^ 1);
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    const int gi = it / n_q_tiles, i0 = sb.row0 + (it - gi * n_q_tiles) * Tr::kBlockN;
    const int h = kvh * p.group + gi, valid = min(Tr::kBlockN, sb.len - i0);
    const float slope = p.alibi ? AlibiSlopeDev(h, p.n_heads) : 0.f;
    const float c2 = p.scale * kLog2e, slope2 = slope * kLog2e;  // kLog2
    const T* qs = qdo + stage * 2 * Tr::kTileElems;
    const T* dos = qs + Tr::kTileElems;
    const float* lse_s = stats + stage * 2 * Tr::kBlockN;
    const float* delta_s = lse_s + Tr::kBlockN;
    float s[Tr::kNTiles][4], dp[Tr::kNTiles][4];
    MmaRowsTimesTileT<Tr>(s, my_k, qs, lane);   // S^T: keys × queries
    MmaRowsTimesTileT<Tr>(dp, my_v, dos, lane); // dP^T
    // Masks only on the diagonal tile (queries from the block's first key)
    // and a sequence's last, partial tile.
    if (kLog2 && i0 > sb.row0 && valid == Tr::kBlockN) {
      if (p.alibi) {
#pragma unroll
        for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int c = FragCol(nt, e, t);
            const float pij =
                FastExp2(s[nt][e] * c2 + slope2 * static_cast<float>(j_row[e >> 1] - i0 - c) - lse_s[c] * kLog2e);
            s[nt][e] = pij;
            dp[nt][e] = pij * (dp[nt][e] - delta_s[c]);
          }
      } else {
#pragma unroll
        for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int c = FragCol(nt, e, t);
            const float pij = FastExp2(fmaf(s[nt][e], c2, -lse_s[c] * kLog2e));
            s[nt][e] = pij;
            dp[nt][e] = pij * (dp[nt][e] - delta_s[c]);
          }
      }
    } else if (kLog2) {
#pragma unroll
      for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = FragCol(nt, e, t), i = i0 + c, j = j_row[e >> 1];
          const bool seen = c < valid && i >= j;
          const float pij = seen ? FastExp2(s[nt][e] * c2 + slope2 * static_cast<float>(j - i) - lse_s[c] * kLog2e) : 0.f;
          s[nt][e] = pij;
          dp[nt][e] = pij * (dp[nt][e] - delta_s[c]);
        }
    } else if (i0 > sb.row0 && valid == Tr::kBlockN) {
#pragma unroll
      for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = FragCol(nt, e, t);
          const float pij = __expf(s[nt][e] * p.scale + slope * static_cast<float>(j_row[e >> 1] - i0 - c) - lse_s[c]);
          s[nt][e] = pij;                                 // P^T
          dp[nt][e] = pij * (dp[nt][e] - delta_s[c]);     // dS^T
        }
    } else {
#pragma unroll
      for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = FragCol(nt, e, t), i = i0 + c, j = j_row[e >> 1];
          const bool seen = c < valid && i >= j;
          const float pij = seen ? __expf(s[nt][e] * p.scale + slope * static_cast<float>(j - i) - lse_s[c]) : 0.f;
          s[nt][e] = pij;
          dp[nt][e] = pij * (dp[nt][e] - delta_s[c]);
        }
    }
    MmaFragsTimesTile<Tr>(dv, s, dos, lane);
    MmaFragsTimesTile<Tr>(dk, dp, qs, lane);
    __syncthreads();  // every warp is done with this stage before it is refilled
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (j_row[r] >= sb.len) continue;
    T* dkr = static_cast<T*>(p.dqkv) + static_cast<long>(sb.start + j_row[r]) * p.qkv_stride + (p.n_heads + kvh) * D;
    T* dvr = dkr + static_cast<long>(p.n_kv_heads) * D;
#pragma unroll
    for (int dt = 0; dt < Tr::kDTiles; ++dt) {
      *reinterpret_cast<uint32_t*>(dkr + dt * 8 + 2 * t) = PackPair<T>(dk[dt][2 * r] * p.scale, dk[dt][2 * r + 1] * p.scale);
      *reinterpret_cast<uint32_t*>(dvr + dt * 8 + 2 * t) = PackPair<T>(dv[dt][2 * r], dv[dt][2 * r + 1]);
    }
  }
}

}  // namespace tinygpt::cuda
