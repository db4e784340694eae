// Attention for training, FlashAttention-2's algorithm on CUDA cores:
//  - forward: per query row an online softmax over key tiles; writes the
//    output and the row's log-sum-exp (LSE) of the scaled, ALiBi-biased
//    scores;
//  - backward: delta = rowsum(dO ∘ O), then two kernels that recompute the
//    probabilities P = exp(S − LSE) tile by tile (no T×T matrix is ever
//    stored): one per block of query rows for dQ = Σ_j dS_ij K_j · scale,
//    one per block of keys of a KV head for dV = Σ_i P_ij dO_i and
//    dK = Σ_i dS_ij Q_i · scale, summing over every query head of its GQA
//    group, so dK/dV are written once without atomics.
// dS = P ∘ (dP − delta), dP = dO·V^T. Sequences are packed (cu_seqlens,
// block-diagonal causal); fp32 arithmetic, T (bf16/fp16/fp32) storage.
#pragma once
#include <cfloat>

#include "kernels/cuda/attention_train_traits.cuh"
#include "kernels/cuda/common.cuh"

namespace tinygpt::cuda {

struct TrainAttentionParams {
  const void* qkv;  // fused rows: n_heads query heads, then n_kv_heads keys, then values
  long qkv_stride;  // elements per row
  const void* out;  // [total, n_heads * head_dim]
  const void* dout;
  void* out_w;      // forward output
  float* lse;       // [total, n_heads]
  float* delta;     // [total, n_heads]
  void* dqkv;       // the gradient, qkv's layout
  const int32_t* cu;
  const int32_t* lens;
  int n_heads, n_kv_heads, group;
  float scale;
  bool alibi;
};

// Per-block sequence bookkeeping: which rows of which packed sequence.
struct SeqBlock {
  int start, len, row0;  // the sequence's first packed row, its length, this block's first row in it
  __device__ SeqBlock(const TrainAttentionParams& p, int rows_per_block)
      : start(p.cu[blockIdx.y]), len(p.lens[blockIdx.y]), row0(blockIdx.x * rows_per_block) {}
  __device__ SeqBlock(const TrainAttentionParams& p, int rows_per_block, int seq, int row_block)
      : start(p.cu[seq]), len(p.lens[seq]), row0(row_block * rows_per_block) {}
};

// Heavy blocks first (causal attention's blocks differ in work: a query
// block's cost grows with its position, a key block's shrinks): the grid
// (row blocks, sequences, heads) is walked with the row block slowest, so
// that the blocks the scheduler starts first are, across all sequences and
// heads, the most expensive ones, and the cheap ones fill the tail.
// kReverse: row blocks from the last (forward, dQ) or from the first (dK/dV).
struct BlockOrder {
  int row_block, seq, head;
  template <bool kReverse>
  __device__ static BlockOrder Make() {
    const unsigned pairs = gridDim.y * gridDim.z;
    const unsigned linear = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned rank = linear / pairs, pair = linear % pairs;
    BlockOrder o;
    o.row_block = kReverse ? static_cast<int>(gridDim.x - 1 - rank) : static_cast<int>(rank);
    o.seq = static_cast<int>(pair % gridDim.y);
    o.head = static_cast<int>(pair / gridDim.y);
    return o;
  }
};

__device__ __forceinline__ float AlibiSlopeDev(int h, int n_heads) { return exp2f(-8.0f / n_heads * (h + 1)); }

// The head_dim column of a row's element e held by thread r of the row:
// threads own 4 consecutive columns of every 16 (r*4 .. r*4+3), so that
// each thread reads a tile row with 16-byte shared-memory loads and the four
// threads of a row read 64 contiguous bytes (no bank conflicts).
__device__ __forceinline__ int Col(int e, int r) { return (e >> 2) * 16 + r * 4 + (e & 3); }

// Sum over the kThreadsPerRow (4) adjacent lanes that share a row.
__device__ __forceinline__ float RowSum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  return v;
}

// Copies `rows` rows of head_dim elements (row i at base + i*stride) into an
// fp32 shared tile; rows at or past `valid` are zero.
template <class Tr, class T>
__device__ __forceinline__ void LoadTile(float (*tile)[Tr::kHeadDim], const T* base, long stride, int valid) {
  for (int e = threadIdx.x; e < Tr::kTile * Tr::kHeadDim; e += Tr::kThreads) {
    const int r = e / Tr::kHeadDim, c = e % Tr::kHeadDim;
    tile[r][c] = r < valid ? ToFloat(base[r * stride + c]) : 0.f;
  }
}

// Forward (mode kForward) and dQ (mode kDq) share the structure: a row is a
// (query, head) pair; keys stream through shared memory.
enum class RowPass { kForward, kDq };

template <class Tr, class T, RowPass kPass>
__global__ void __launch_bounds__(Tr::kThreads) TrainAttentionRowsKernel(const TrainAttentionParams p) {
  constexpr int D = Tr::kHeadDim, E = Tr::kPerThread;
  __shared__ __align__(16) float ks[Tr::kTile][D];
  __shared__ __align__(16) float vs[Tr::kTile][D];
  const SeqBlock sb(p, Tr::kRows);
  if (sb.row0 >= sb.len) return;
  const int h = blockIdx.z, kvh = h / p.group, r = threadIdx.x % Tr::kThreadsPerRow;
  const int i = sb.row0 + threadIdx.x / Tr::kThreadsPerRow;  // this row's query position
  const bool active = i < sb.len;
  const long row = sb.start + (active ? i : 0);
  const T* qkv = static_cast<const T*>(p.qkv);
  const float slope = p.alibi ? AlibiSlopeDev(h, p.n_heads) : 0.f;
  const long od = static_cast<long>(p.n_heads) * D;

  float q[E], acc[E], dout[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    q[e] = ToFloat(qkv[row * p.qkv_stride + h * D + Col(e, r)]);
    acc[e] = 0.f;
    if constexpr (kPass == RowPass::kDq) dout[e] = ToFloat(static_cast<const T*>(p.dout)[row * od + h * D + Col(e, r)]);
  }
  float m = -FLT_MAX, l = 0.f, lse = 0.f, delta = 0.f;
  if constexpr (kPass == RowPass::kDq) {
    lse = p.lse[row * p.n_heads + h];
    delta = p.delta[row * p.n_heads + h];
  }
  // Keys 0 .. the block's last query (causal).
  const int n_keys = min(sb.len, sb.row0 + Tr::kRows);
  const T* kbase = qkv + static_cast<long>(sb.start) * p.qkv_stride + (p.n_heads + kvh) * D;
  const T* vbase = kbase + static_cast<long>(p.n_kv_heads) * D;
  for (int j0 = 0; j0 < n_keys; j0 += Tr::kTile) {
    __syncthreads();  // the previous tile is no longer read
    LoadTile<Tr>(ks, kbase + static_cast<long>(j0) * p.qkv_stride, p.qkv_stride, n_keys - j0);
    LoadTile<Tr>(vs, vbase + static_cast<long>(j0) * p.qkv_stride, p.qkv_stride, n_keys - j0);
    __syncthreads();
    float s[Tr::kTile];
#pragma unroll
    for (int jj = 0; jj < Tr::kTile; ++jj) {
      float dot = 0.f;
#pragma unroll
      for (int e = 0; e < E; ++e) dot += q[e] * ks[jj][Col(e, r)];
      dot = RowSum(dot);
      const int j = j0 + jj;
      s[jj] = (active && j <= i) ? dot * p.scale + slope * static_cast<float>(j - i) : -FLT_MAX;
    }
    if constexpr (kPass == RowPass::kForward) {
      float m_new = m;
#pragma unroll
      for (int jj = 0; jj < Tr::kTile; ++jj) m_new = fmaxf(m_new, s[jj]);
      const float corr = __expf(m - m_new);
      l *= corr;
#pragma unroll
      for (int e = 0; e < E; ++e) acc[e] *= corr;
#pragma unroll
      for (int jj = 0; jj < Tr::kTile; ++jj) {
        const float pj = s[jj] == -FLT_MAX ? 0.f : __expf(s[jj] - m_new);
        l += pj;
#pragma unroll
        for (int e = 0; e < E; ++e) acc[e] += pj * vs[jj][Col(e, r)];
      }
      m = m_new;
    } else {
#pragma unroll
      for (int jj = 0; jj < Tr::kTile; ++jj) {
        const float pj = s[jj] == -FLT_MAX ? 0.f : __expf(s[jj] - lse);
        float dp = 0.f;
#pragma unroll
        for (int e = 0; e < E; ++e) dp += dout[e] * vs[jj][Col(e, r)];
        const float ds = pj * (RowSum(dp) - delta);
#pragma unroll
        for (int e = 0; e < E; ++e) acc[e] += ds * ks[jj][Col(e, r)];
      }
    }
  }
  if (!active) return;
  if constexpr (kPass == RowPass::kForward) {
    T* out = static_cast<T*>(p.out_w) + row * od + h * D;
    const float inv = 1.f / l;
#pragma unroll
    for (int e = 0; e < E; ++e) out[Col(e, r)] = FromFloat<T>(acc[e] * inv);
    if (r == 0) p.lse[row * p.n_heads + h] = m + __logf(l);
  } else {
    T* dq = static_cast<T*>(p.dqkv) + row * p.qkv_stride + h * D;
#pragma unroll
    for (int e = 0; e < E; ++e) dq[Col(e, r)] = FromFloat<T>(acc[e] * p.scale);
  }
}

// delta[t, h] = Σ_d dO·O. Rows of O and dO for (row, head) pairs are
// consecutive head_dim-element slices ([total, n_heads*head_dim]): each pair
// is read by head_dim/(16/sizeof(T)) adjacent lanes with 16-byte loads (a
// warp reads contiguous memory) and reduced with shuffles.
template <class T>
__global__ void TrainAttentionDeltaKernel(const T* out, const T* dout, float* delta, long rows_heads, int head_dim) {
  constexpr int N = 16 / sizeof(T);
  const int lanes = head_dim / N;  // 2..32, a power of two
  const long tid = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x;
  const long idx = tid / lanes;
  const int part = static_cast<int>(tid % lanes);
  float s = 0.f;
  if (idx < rows_heads) {
    const uint4 ov = *reinterpret_cast<const uint4*>(out + idx * head_dim + part * N);
    const uint4 dv = *reinterpret_cast<const uint4*>(dout + idx * head_dim + part * N);
    const T* o = reinterpret_cast<const T*>(&ov);
    const T* d = reinterpret_cast<const T*>(&dv);
#pragma unroll
    for (int i = 0; i < N; ++i) s += ToFloat(o[i]) * ToFloat(d[i]);
  }
  for (int off = 1; off < lanes; off <<= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (idx < rows_heads && part == 0) delta[idx] = s;
}

// dK and dV: a row is a key of KV head blockIdx.z; the queries that see it
// (positions ≥ the key's, in its sequence) stream through shared memory, for
// each query head of the group in turn.
template <class Tr, class T>
__global__ void __launch_bounds__(Tr::kThreads) TrainAttentionDkDvKernel(const TrainAttentionParams p) {
  constexpr int D = Tr::kHeadDim, E = Tr::kPerThread;
  __shared__ __align__(16) float qs[Tr::kTile][D];
  __shared__ __align__(16) float dos[Tr::kTile][D];
  __shared__ float lse_s[Tr::kTile], delta_s[Tr::kTile];
  const SeqBlock sb(p, Tr::kRows);
  if (sb.row0 >= sb.len) return;
  const int kvh = blockIdx.z, r = threadIdx.x % Tr::kThreadsPerRow;
  const int j = sb.row0 + threadIdx.x / Tr::kThreadsPerRow;  // this row's key position
  const bool active = j < sb.len;
  const long row = sb.start + (active ? j : 0);
  const T* qkv = static_cast<const T*>(p.qkv);
  const T* dout_g = static_cast<const T*>(p.dout);
  const long od = static_cast<long>(p.n_heads) * D;
  float k[E], v[E], dk[E], dv[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    k[e] = ToFloat(qkv[row * p.qkv_stride + (p.n_heads + kvh) * D + Col(e, r)]);
    v[e] = ToFloat(qkv[row * p.qkv_stride + (p.n_heads + p.n_kv_heads + kvh) * D + Col(e, r)]);
    dk[e] = dv[e] = 0.f;
  }
  for (int gi = 0; gi < p.group; ++gi) {
    const int h = kvh * p.group + gi;
    const float slope = p.alibi ? AlibiSlopeDev(h, p.n_heads) : 0.f;
    // Queries from the block's first key onward (earlier ones do not see it).
    for (int i0 = sb.row0; i0 < sb.len; i0 += Tr::kTile) {
      const int valid = min(Tr::kTile, sb.len - i0);
      __syncthreads();
      LoadTile<Tr>(qs, qkv + static_cast<long>(sb.start + i0) * p.qkv_stride + h * D, p.qkv_stride, valid);
      LoadTile<Tr>(dos, dout_g + static_cast<long>(sb.start + i0) * od + h * D, od, valid);
      if (threadIdx.x < Tr::kTile) {
        const long qrow = sb.start + i0 + min(static_cast<int>(threadIdx.x), valid - 1);
        lse_s[threadIdx.x] = p.lse[qrow * p.n_heads + h];
        delta_s[threadIdx.x] = p.delta[qrow * p.n_heads + h];
      }
      __syncthreads();
#pragma unroll 4
      for (int ii = 0; ii < Tr::kTile; ++ii) {
        const int i = i0 + ii;
        float dot = 0.f, dp = 0.f;
#pragma unroll
        for (int e = 0; e < E; ++e) {
          dot += k[e] * qs[ii][Col(e, r)];
          dp += v[e] * dos[ii][Col(e, r)];
        }
        dot = RowSum(dot);
        dp = RowSum(dp);
        const bool seen = active && ii < valid && i >= j;
        const float pij = seen ? __expf(dot * p.scale + slope * static_cast<float>(j - i) - lse_s[ii]) : 0.f;
        const float ds = pij * (dp - delta_s[ii]);
#pragma unroll
        for (int e = 0; e < E; ++e) {
          dv[e] += pij * dos[ii][Col(e, r)];
          dk[e] += ds * qs[ii][Col(e, r)];
        }
      }
    }
  }
  if (!active) return;
  T* dkr = static_cast<T*>(p.dqkv) + row * p.qkv_stride + (p.n_heads + kvh) * D;
  T* dvr = dkr + static_cast<long>(p.n_kv_heads) * D;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    dkr[Col(e, r)] = FromFloat<T>(dk[e] * p.scale);
    dvr[Col(e, r)] = FromFloat<T>(dv[e]);
  }
}

}  // namespace tinygpt::cuda
