// Register-level tile helpers of the CPU attention (kernels/cpu/attention.cc):
// a key tile holds up to kKeyTile keys, kept transposed ([D][kKeyTile]) so
// that scores are computed with vectors along the keys; sums over keys are
// accumulated along the head dimension from untransposed rows. AVX2 + FMA.
#pragma once
#include <immintrin.h>

#include <limits>

namespace tinygpt::cpu::attention_tiles {

constexpr int kKeyTile = 64;

// 0, 1, ..., 7: lane j of an 8-key vector is key j0 + j.
inline const __m256 kLaneIndex = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);

inline float HorizontalSum(__m256 v) {  // a fixed order: ((0+4)+(2+6))+((1+5)+(3+7))
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_add_ss(x, _mm_shuffle_ps(x, x, 1)));
}

inline float HorizontalMax(__m256 v) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_max_ss(x, _mm_shuffle_ps(x, x, 1)));
}

// Logits of keys j .. j+7 of a tile from their raw scores s[j..]:
// s·scale + slope·(key − pos), with rel0 = j0 + j − pos the first lane's
// key − pos, and keys at n or beyond (not visible to the row) set to −inf.
inline __m256 MaskedLogits8(const float* s, int j, float rel0, int n, __m256 scale, __m256 slope) {
  const __m256 rel = _mm256_add_ps(_mm256_set1_ps(rel0), kLaneIndex);
  const __m256 x = _mm256_fmadd_ps(_mm256_loadu_ps(s + j), scale, _mm256_mul_ps(slope, rel));
  const __m256 past_n = _mm256_cmp_ps(_mm256_set1_ps(static_cast<float>(n - j)), kLaneIndex, _CMP_LE_OQ);
  return _mm256_blendv_ps(x, _mm256_set1_ps(-std::numeric_limits<float>::infinity()), past_n);
}

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
inline void RowsToTile(const float* const* rows, int n, int D, float* tile) {
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
inline void AddTileToRows(const float* tile, int n, int D, float* const* rows) {
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

// y_r[d] += Σ_j w_r[j] · rows[j][d] for j < n, for R rows at once (w rows
// kKeyTile floats apart): the forward's P·V and the backward's dQ = dS·K,
// from key/value rows, vectors along d, accumulators in registers and each
// key row loaded once for the R rows. Chunks of up to 64 dims stay in
// registers; D <= 32 splits even and odd keys over two sets of accumulators
// to keep enough FMA chains in flight. A row's arithmetic is the same for
// any R (key j always goes to set j % 2), so grouping never shows in its bits.
template <int kD, int R>
inline void AccumulateRows(const float* w, const float* const* rows, int n, int D, float* const* y) {
  if constexpr (kD > 0 && kD % 8 == 0) {
    constexpr int kChunk = kD < 64 ? kD : 64, kVecs = kChunk / 8, kSets = kD <= 32 ? 2 : 1;
    for (int d0 = 0; d0 < kD; d0 += kChunk) {
      __m256 a[R][kSets][kVecs];
      for (int r = 0; r < R; ++r)
        for (int t = 0; t < kSets; ++t)
          for (int c = 0; c < kVecs; ++c) a[r][t][c] = _mm256_setzero_ps();
      int j = 0;
      for (; j + kSets <= n; j += kSets)
        for (int t = 0; t < kSets; ++t) {
          __m256 v[kVecs];
          for (int c = 0; c < kVecs; ++c) v[c] = _mm256_loadu_ps(rows[j + t] + d0 + 8 * c);
          for (int r = 0; r < R; ++r) {
            const __m256 wj = _mm256_set1_ps(w[r * kKeyTile + j + t]);
            for (int c = 0; c < kVecs; ++c) a[r][t][c] = _mm256_fmadd_ps(wj, v[c], a[r][t][c]);
          }
        }
      for (; j < n; ++j)
        for (int r = 0; r < R; ++r) {
          const __m256 wj = _mm256_set1_ps(w[r * kKeyTile + j]);
          for (int c = 0; c < kVecs; ++c) a[r][0][c] = _mm256_fmadd_ps(wj, _mm256_loadu_ps(rows[j] + d0 + 8 * c), a[r][0][c]);
        }
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < kVecs; ++c) {
          __m256 sum = a[r][0][c];
          if constexpr (kSets == 2) sum = _mm256_add_ps(sum, a[r][1][c]);
          _mm256_storeu_ps(y[r] + d0 + 8 * c, _mm256_add_ps(_mm256_loadu_ps(y[r] + d0 + 8 * c), sum));
        }
    }
  } else {
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < n; ++j) Axpy<kD>(w[r * kKeyTile + j], rows[j], y[r], D);
  }
}

// s_r[j] = q_r · K^T[:, j] for R query rows and kChunks 8-key chunks of a
// transposed key tile (kt is [D][kKeyTile]; s rows kKeyTile apart): vectors
// run along the keys, so no horizontal sums, and each kt vector loaded serves
// the R rows. Each key's score is one FMA chain over d in order, whatever the
// row or chunk count, so a query's scores never depend on how many keys its
// tile holds or which rows it was grouped with.
template <int kD, int R, int kChunks>
inline void ScoresBlock(const float* const* q, const float* kt, int D, float* s) {
  __m256 a[R][kChunks];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kChunks; ++c) a[r][c] = _mm256_setzero_ps();
  for (int d = 0; d < (kD ? kD : D); ++d) {
    __m256 k[kChunks];
    for (int c = 0; c < kChunks; ++c) k[c] = _mm256_loadu_ps(kt + d * kKeyTile + 8 * c);
    for (int r = 0; r < R; ++r) {
      const __m256 qd = _mm256_set1_ps(q[r][d]);
      for (int c = 0; c < kChunks; ++c) a[r][c] = _mm256_fmadd_ps(qd, k[c], a[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kChunks; ++c) _mm256_storeu_ps(s + r * kKeyTile + 8 * c, a[r][c]);
}

// Scores of R rows over the first n keys of the tile (rounded up to whole
// 8-key chunks), in blocks of up to 8 / R chunks (eight accumulators).
template <int kD, int R>
inline void Scores(const float* const* q, const float* kt, int D, int n, float* s) {
  static_assert(kKeyTile == 64 && (R == 1 || R == 2), "chunk blocks sized for one or two rows");
  constexpr int kBlock = 8 / R;
  const int chunks = (n + 7) / 8;
  int c = 0;
  for (; c + kBlock <= chunks; c += kBlock) ScoresBlock<kD, R, kBlock>(q, kt + 8 * c, D, s + 8 * c);
  switch (chunks - c) {
    case 1: return ScoresBlock<kD, R, 1>(q, kt + 8 * c, D, s + 8 * c);
    case 2: return ScoresBlock<kD, R, 2>(q, kt + 8 * c, D, s + 8 * c);
    case 3: return ScoresBlock<kD, R, 3>(q, kt + 8 * c, D, s + 8 * c);
    case 4: return ScoresBlock<kD, R, 4>(q, kt + 8 * c, D, s + 8 * c);
    case 5: return ScoresBlock<kD, R, 5>(q, kt + 8 * c, D, s + 8 * c);
    case 6: return ScoresBlock<kD, R, 6>(q, kt + 8 * c, D, s + 8 * c);
    case 7: return ScoresBlock<kD, R, 7>(q, kt + 8 * c, D, s + 8 * c);
    default: return;
  }
}

}  // namespace tinygpt::cpu::attention_tiles
