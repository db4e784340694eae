// Memory-efficient attention on the CPU: each (sequence, KV head) task walks
// the keys tile by tile with an online softmax (running max m, running sum l,
// rescaled accumulator), so no score matrix is ever stored. All query heads of
// a GQA group run in the same task and share its K/V rows in cache.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/vec_math.h"

namespace tinygpt::cpu {
namespace {

constexpr int kKeyTile = 64;

// kD > 0: the head dimension is a compile-time constant and the loops unroll
// fully (the common dims get their own instantiation); kD == 0: any n.
template <int kD>
inline float Dot(const float* a, const float* b, int n) {
  const int len = kD ? kD : n;
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < len; ++i) s += a[i] * b[i];
  return s;
}

template <int kD>
inline void Axpy(float a, const float* x, float* y, int n) {
  const int len = kD ? kD : n;
#pragma omp simd
  for (int i = 0; i < len; ++i) y[i] += a * x[i];
}

// 8×8 block transpose in registers (the usual unpack/shuffle/permute ladder).
inline void Transpose8x8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// tile[d][j] = rows[j][d] for j < n (tile is [D][kKeyTile]); columns n up to
// the next multiple of 8 are zeroed, so 8-key vectors never read stale data.
void RowsToTile(const float* const* rows, int n, int D, float* tile) {
  int j = 0;
  if (D % 8 == 0)
    for (; j + 8 <= n; j += 8)
      for (int d = 0; d < D; d += 8) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(rows[j + i] + d);
        Transpose8x8(r);
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(tile + (d + i) * kKeyTile + j, r[i]);
      }
  for (; j < n; ++j)
    for (int d = 0; d < D; ++d) tile[d * kKeyTile + j] = rows[j][d];
  for (int d = 0; d < D; ++d)
    for (int jj = n; jj < ((n + 7) & ~7); ++jj) tile[d * kKeyTile + jj] = 0.f;
}

// rows[j][d] += tile[d][j] for j < n: the transposed tile's way back.
void AddTileToRows(const float* tile, int n, int D, float* const* rows) {
  int j = 0;
  if (D % 8 == 0)
    for (; j + 8 <= n; j += 8)
      for (int d = 0; d < D; d += 8) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(tile + (d + i) * kKeyTile + j);
        Transpose8x8(r);
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(rows[j + i] + d, _mm256_add_ps(_mm256_loadu_ps(rows[j + i] + d), r[i]));
      }
  for (; j < n; ++j)
    for (int d = 0; d < D; ++d) rows[j][d] += tile[d * kKeyTile + j];
}

// y[d] += Σ_j w[j] · rows[j][d] for j < n, vectors along d (the forward's
// P·V and the backward's dQ = dS·K, from key/value rows, with no per-d
// horizontal sum and the accumulators in registers). Chunks of up to
// 64 dims stay in registers; D <= 32 splits even and odd keys over two sets
// of accumulators to keep enough FMA chains in flight.
template <int kD>
void AccumulateRows(const float* w, const float* const* rows, int n, int D, float* y) {
  if constexpr (kD > 0 && kD % 8 == 0) {
    constexpr int kChunk = kD < 64 ? kD : 64, kVecs = kChunk / 8, kSets = kD <= 32 ? 2 : 1;
    for (int d0 = 0; d0 < kD; d0 += kChunk) {
      __m256 a[kSets][kVecs];
      for (int t = 0; t < kSets; ++t)
        for (int c = 0; c < kVecs; ++c) a[t][c] = _mm256_setzero_ps();
      int j = 0;
      for (; j + kSets <= n; j += kSets)
        for (int t = 0; t < kSets; ++t) {
          const __m256 wj = _mm256_set1_ps(w[j + t]);
          for (int c = 0; c < kVecs; ++c) a[t][c] = _mm256_fmadd_ps(wj, _mm256_loadu_ps(rows[j + t] + d0 + 8 * c), a[t][c]);
        }
      for (; j < n; ++j) {
        const __m256 wj = _mm256_set1_ps(w[j]);
        for (int c = 0; c < kVecs; ++c) a[0][c] = _mm256_fmadd_ps(wj, _mm256_loadu_ps(rows[j] + d0 + 8 * c), a[0][c]);
      }
      for (int c = 0; c < kVecs; ++c) {
        __m256 sum = a[0][c];
        if constexpr (kSets == 2) sum = _mm256_add_ps(sum, a[1][c]);
        _mm256_storeu_ps(y + d0 + 8 * c, _mm256_add_ps(_mm256_loadu_ps(y + d0 + 8 * c), sum));
      }
    }
  } else {
    for (int j = 0; j < n; ++j) Axpy<kD>(w[j], rows[j], y, D);
  }
}

// Calls fn(std::integral_constant<int, D>) for the head dims with their own
// instantiation, fn(std::integral_constant<int, 0>) otherwise.
template <class Fn>
void WithHeadDim(int D, Fn&& fn) {
  switch (D) {
    case 16: return fn(std::integral_constant<int, 16>());
    case 32: return fn(std::integral_constant<int, 32>());
    case 64: return fn(std::integral_constant<int, 64>());
    case 128: return fn(std::integral_constant<int, 128>());
    default: return fn(std::integral_constant<int, 0>());
  }
}

// Key/value row locators: sequence s, position j, KV head kvh → pointer.
// ForEach(s, kvh, j0, j1, fn) calls fn(j, k_row, v_row) for keys j0..j1-1 in
// order, stepping a pointer through each contiguous run of rows (no division
// per key: decode steps are short enough for it to show).
struct PackedRows {
  const PackedKv& kv;
  int head_dim;
  const float* k(int s, int j, int kvh) const { return kv.k + (static_cast<long>(kv.cu_k[s]) + j) * kv.stride + kvh * head_dim; }
  const float* v(int s, int j, int kvh) const { return kv.v + (static_cast<long>(kv.cu_k[s]) + j) * kv.stride + kvh * head_dim; }
  template <class Fn>
  void ForEach(int s, int kvh, int j0, int j1, Fn&& fn) const {
    const float *kr = k(s, j0, kvh), *vr = v(s, j0, kvh);
    for (int j = j0; j < j1; ++j, kr += kv.stride, vr += kv.stride) fn(j, kr, vr);
  }
};

struct PagedRows {
  const PagedKv& kv;
  int head_dim, n_kv_heads;
  template <class Fn>
  void ForEach(int s, int kvh, int j0, int j1, Fn&& fn) const {
    const long row_stride = static_cast<long>(n_kv_heads) * head_dim;
    const int32_t* table = kv.block_tables + static_cast<long>(s) * kv.max_blocks_per_seq;
    int blk = j0 / kv.block_size, off = j0 % kv.block_size;
    for (int j = j0; j < j1; ++blk, off = 0) {
      const long first = (static_cast<long>(table[blk]) * kv.block_size + off) * row_stride + kvh * head_dim;
      const float* kr = static_cast<const float*>(kv.k_cache) + first;
      const float* vr = static_cast<const float*>(kv.v_cache) + first;
      for (const int end = std::min(j1, j + kv.block_size - off); j < end; ++j, kr += row_stride, vr += row_stride)
        fn(j, kr, vr);
    }
  }
};

// Scalar multiply-adds of the forward pass: queries × visible keys × 2·D.
long AttentionWork(const AttentionDims& dims, const AttentionBatch& batch) {
  long pairs = 0;
  for (int s = 0; s < batch.num_seqs; ++s) {
    const long q_len = batch.cu_q[s + 1] - batch.cu_q[s];
    pairs += q_len * batch.ctx_len[s];
  }
  return pairs * dims.n_heads * 2 * dims.head_dim;
}

// s[j] = q · K^T[:, j] for 8-key chunks of a transposed key tile (kt is
// [D][kKeyTile]): vectors run along the keys, so no horizontal sums. Each
// key's score is one FMA chain over d in order, whatever the chunk count, so
// a query's scores never depend on how many keys its tile holds.
template <int kD, int kChunks>
inline void ScoresChunks(const float* q, const float* kt, int D, float* s) {
  __m256 a[kChunks];
  for (int c = 0; c < kChunks; ++c) a[c] = _mm256_setzero_ps();
  for (int d = 0; d < (kD ? kD : D); ++d) {
    const __m256 qd = _mm256_set1_ps(q[d]);
    for (int c = 0; c < kChunks; ++c) a[c] = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kt + d * kKeyTile + 8 * c), a[c]);
  }
  for (int c = 0; c < kChunks; ++c) _mm256_storeu_ps(s + 8 * c, a[c]);
}

template <int kD>
void Scores(const float* q, const float* kt, int D, int n, float* s) {
  static_assert(kKeyTile == 64, "one case per 8-key chunk");
  switch ((n + 7) / 8) {
    case 1: return ScoresChunks<kD, 1>(q, kt, D, s);
    case 2: return ScoresChunks<kD, 2>(q, kt, D, s);
    case 3: return ScoresChunks<kD, 3>(q, kt, D, s);
    case 4: return ScoresChunks<kD, 4>(q, kt, D, s);
    case 5: return ScoresChunks<kD, 5>(q, kt, D, s);
    case 6: return ScoresChunks<kD, 6>(q, kt, D, s);
    case 7: return ScoresChunks<kD, 7>(q, kt, D, s);
    default: return ScoresChunks<kD, 8>(q, kt, D, s);
  }
}

// A task is one (sequence, KV head). Its queries go in blocks of kQueryBlock
// rows; each key tile is transposed once per block and head and serves every
// row of the block, each row keeping its own online-softmax state (m, l, acc).
template <int kD, class Rows>
void ForwardImpl(const AttentionDims& dims, const AttentionBatch& batch, const float* q, long q_stride, const Rows& rows,
                 float* out, long o_stride, float* lse) {
  constexpr int kQueryBlock = 64;
  const int D = dims.head_dim, G = dims.group(), H = dims.n_heads;
  const float scale = dims.scale();
  const int tasks = batch.num_seqs * dims.n_kv_heads;
  const long work = AttentionWork(dims, batch);
#pragma omp parallel for schedule(dynamic) if (work >= kMinParallelWork)
  for (int task = 0; task < tasks; ++task) {
    const int s = task / dims.n_kv_heads, kvh = task % dims.n_kv_heads;
    const int q0 = batch.cu_q[s], q_len = batch.cu_q[s + 1] - q0, offset = batch.ctx_len[s] - q_len;
    static thread_local std::vector<float> scratch;
    scratch.resize(static_cast<size_t>(D) * kKeyTile + static_cast<size_t>(kQueryBlock) * (D + 2));
    float* kt = scratch.data();               // K^T of the tile, [D][kKeyTile]
    float* acc = kt + D * kKeyTile;           // [kQueryBlock][D]
    float* m = acc + kQueryBlock * D;         // running max per row
    float* l = m + kQueryBlock;               // running sum per row
    const float *k_rows[kKeyTile], *v_rows[kKeyTile];
    float sc[kKeyTile];
    for (int hh = 0; hh < G; ++hh) {
      const int h = kvh * G + hh;
      const float slope = dims.alibi ? AlibiSlope(h, H) : 0.f;
      for (int i0 = 0; i0 < q_len; i0 += kQueryBlock) {
        const int nq = std::min(kQueryBlock, q_len - i0), last = offset + i0 + nq - 1;  // the block's last visible key
        std::fill(acc, acc + nq * D, 0.f);
        std::fill(m, m + nq, -std::numeric_limits<float>::infinity());
        std::fill(l, l + nq, 0.f);
        for (int j0 = 0; j0 <= last; j0 += kKeyTile) {
          const int nt = std::min(kKeyTile, last + 1 - j0);
          rows.ForEach(s, kvh, j0, j0 + nt, [&](int j, const float* kj, const float* vj) {
            k_rows[j - j0] = kj;
            v_rows[j - j0] = vj;
          });
          RowsToTile(k_rows, nt, D, kt);
          // Rows before the tile's first key see none of it.
          for (int r = std::max(0, j0 - offset - i0); r < nq; ++r) {
            const int pos = offset + i0 + r, n = std::min(nt, pos - j0 + 1);  // pos: the last key row r sees
            Scores<kD>(q + (q0 + i0 + r) * q_stride + h * D, kt, D, n, sc);
            float tile_max = -std::numeric_limits<float>::infinity();
            for (int j = 0; j < n; ++j) {
              sc[j] = sc[j] * scale + slope * static_cast<float>(j0 + j - pos);
              tile_max = std::max(tile_max, sc[j]);
            }
            const float m_new = std::max(m[r], tile_max), correction = std::exp(m[r] - m_new);
            float* ar = acc + r * D;
            l[r] *= correction;
            for (int d = 0; d < D; ++d) ar[d] *= correction;
            for (int j = 0; j < n; ++j) sc[j] -= m_new;
            ExpInPlace(sc, n);
            for (int j = 0; j < n; ++j) l[r] += sc[j];
            AccumulateRows<kD>(sc, v_rows, n, D, ar);
            m[r] = m_new;
          }
        }
        for (int r = 0; r < nq; ++r) {
          float* oi = out + (q0 + i0 + r) * o_stride + h * D;
          for (int d = 0; d < D; ++d) oi[d] = acc[r * D + d] / l[r];
          if (lse) lse[static_cast<long>(q0 + i0 + r) * H + h] = m[r] + std::log(l[r]);
        }
      }
    }
  }
}

}  // namespace

void AttentionForward(const AttentionDims& dims, const AttentionBatch& batch, const float* q, long q_stride,
                      const PackedKv& kv, float* out, long o_stride, float* lse) {
  WithHeadDim(dims.head_dim, [&](auto kD) {
    ForwardImpl<kD.value>(dims, batch, q, q_stride, PackedRows{kv, dims.head_dim}, out, o_stride, lse);
  });
}

void PagedAttentionForward(const AttentionDims& dims, const AttentionBatch& batch, const float* q, long q_stride,
                           const PagedKv& kv, float* out, long o_stride) {
  WithHeadDim(dims.head_dim, [&](auto kD) {
    ForwardImpl<kD.value>(dims, batch, q, q_stride, PagedRows{kv, dims.head_dim, dims.n_kv_heads}, out, o_stride, nullptr);
  });
}

namespace {

template <int kD>
void BackwardImpl(const AttentionDims& dims, const AttentionBatch& batch, const float* q, long q_stride,
                  const PackedKv& kv, const float* out, long o_stride, const float* dout, const float* lse,
                  float* dq, float* dk, float* dv, long dqkv_stride) {
  // Recomputes each probability from the saved log-sum-exp (as FlashAttention's
  // backward does). A task owns one (sequence, KV head): it alone writes those
  // dK/dV rows and the dQ rows of its query heads, so no atomics are needed.
  // Keys are handled a tile at a time in key-major (transposed) form, so the
  // inner loops run along the keys of the tile, not along the short head_dim.
  const int D = dims.head_dim, G = dims.group(), H = dims.n_heads;
  const float scale = dims.scale();
  const PackedRows rows{kv, D};
  const int tasks = batch.num_seqs * dims.n_kv_heads;
  const long work = 3 * AttentionWork(dims, batch);
#pragma omp parallel for schedule(dynamic) if (work >= kMinParallelWork)
  for (int task = 0; task < tasks; ++task) {
    const int s = task / dims.n_kv_heads, kvh = task % dims.n_kv_heads;
    const int q0 = batch.cu_q[s], q_len = batch.cu_q[s + 1] - q0, offset = batch.ctx_len[s] - q_len;
    const int n_keys = batch.ctx_len[s];
    const long k0 = kv.cu_k[s];
    // Per tile: K^T, V^T and their gradients, [D][kKeyTile] each.
    static thread_local std::vector<float> buf;
    buf.resize(4 * static_cast<size_t>(D) * kKeyTile);
    float *kt = buf.data(), *vt = kt + D * kKeyTile, *dkt = vt + D * kKeyTile, *dvt = dkt + D * kKeyTile;
    float p[kKeyTile], ds[kKeyTile];
    for (int j0 = 0; j0 < n_keys; j0 += kKeyTile) {
      const int nt = std::min(n_keys, j0 + kKeyTile) - j0;
      const float *k_rows[kKeyTile], *v_rows[kKeyTile];
      float *dk_rows[kKeyTile], *dv_rows[kKeyTile];
      for (int jj = 0; jj < nt; ++jj) {
        k_rows[jj] = rows.k(s, j0 + jj, kvh);
        v_rows[jj] = rows.v(s, j0 + jj, kvh);
        dk_rows[jj] = dk + (k0 + j0 + jj) * dqkv_stride + kvh * D;
        dv_rows[jj] = dv + (k0 + j0 + jj) * dqkv_stride + kvh * D;
      }
      RowsToTile(k_rows, nt, D, kt);
      RowsToTile(v_rows, nt, D, vt);
      std::fill(dkt, dkt + 2 * D * kKeyTile, 0.f);
      for (int hh = 0; hh < G; ++hh) {
        const int h = kvh * G + hh;
        const float slope = dims.alibi ? AlibiSlope(h, H) : 0.f;
        // Only queries at or after the tile's first key see any of it.
        for (int i = std::max(0, j0 - offset); i < q_len; ++i) {
          const long r = q0 + i;
          const float* qi = q + r * q_stride + h * D;
          const float* doi = dout + r * o_stride + h * D;
          const float delta = Dot<kD>(doi, out + r * o_stride + h * D, D);
          const float lse_i = lse[r * H + h];
          const int pos = offset + i, n = std::min(nt, pos - j0 + 1);
          // s = q·K^T and dp = do·V^T along the keys.
          float dp[kKeyTile];
          std::fill(p, p + n, 0.f);
          std::fill(dp, dp + n, 0.f);
          for (int d = 0; d < (kD ? kD : D); ++d) {
            const float qd = qi[d], dod = doi[d];
            const float* ktd = kt + d * kKeyTile;
            const float* vtd = vt + d * kKeyTile;
#pragma omp simd
            for (int j = 0; j < n; ++j) {
              p[j] += qd * ktd[j];
              dp[j] += dod * vtd[j];
            }
          }
          for (int j = 0; j < n; ++j) p[j] = p[j] * scale + slope * static_cast<float>(j0 + j - pos) - lse_i;
          ExpInPlace(p, n);
#pragma omp simd
          for (int j = 0; j < n; ++j) ds[j] = p[j] * (dp[j] - delta) * scale;
          for (int d = 0; d < (kD ? kD : D); ++d) {
            const float qd = qi[d], dod = doi[d];
            float* dktd = dkt + d * kKeyTile;
            float* dvtd = dvt + d * kKeyTile;
#pragma omp simd
            for (int j = 0; j < n; ++j) {
              dktd[j] += ds[j] * qd;
              dvtd[j] += p[j] * dod;
            }
          }
          AccumulateRows<kD>(ds, k_rows, n, D, dq + r * dqkv_stride + h * D);
        }
      }
      AddTileToRows(dkt, nt, D, dk_rows);
      AddTileToRows(dvt, nt, D, dv_rows);
    }
  }
}

}  // namespace

void AttentionBackward(const AttentionDims& dims, const AttentionBatch& batch, const float* q, long q_stride,
                       const PackedKv& kv, const float* out, long o_stride, const float* dout, const float* lse,
                       float* dq, float* dk, float* dv, long dqkv_stride) {
  WithHeadDim(dims.head_dim, [&](auto kD) {
    BackwardImpl<kD.value>(dims, batch, q, q_stride, kv, out, o_stride, dout, lse, dq, dk, dv, dqkv_stride);
  });
}

void KvAppend(const float* qkv, long qkv_stride, int T, const int32_t* slot_mapping, const AttentionDims& dims,
              float* k_cache, float* v_cache) {
  const int kv_dim = dims.n_kv_heads * dims.head_dim;
  const int k_off = dims.n_heads * dims.head_dim, v_off = k_off + kv_dim;
  for (int t = 0; t < T; ++t) {
    const long slot = slot_mapping[t];
    if (slot < 0) continue;
    std::memcpy(k_cache + slot * kv_dim, qkv + t * qkv_stride + k_off, sizeof(float) * kv_dim);
    std::memcpy(v_cache + slot * kv_dim, qkv + t * qkv_stride + v_off, sizeof(float) * kv_dim);
  }
}

}  // namespace tinygpt::cpu
