// A GEMM whose result for each row does not depend on how many rows are in
// the call. OpenBLAS' sgemm picks different kernels and blockings for
// different M, so the same token's logits would change with the batch it was
// scheduled in; a server must give a request the same output alone or among
// 64 others, so inference linears go through this kernel instead.
//
// Each output y[t, o] is always computed the same way: an 8-lane FMA
// accumulation over k in order, a fixed horizontal sum, the k tail, then the
// bias. The 4×2 register tile (8 accumulators, no spills on AVX2's 16
// registers) only shares loads between rows and outputs.
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/parallel.h"

namespace tinygpt::cpu {
namespace {

inline float HorizontalSum(__m256 v) {
  const __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  __m128 s = _mm_add_ps(lo, hi);                 // 4 lanes
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));        // 2 lanes
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x1));  // 1 lane
  return _mm_cvtss_f32(s);
}

// Finishes one output from its vector accumulator: the same code for every tile shape.
inline float Finish(__m256 acc, const float* x, const float* w, int k_vec, int in, const float* b, int o) {
  float s = HorizontalSum(acc);
  for (int k = k_vec; k < in; ++k) s = std::fma(x[k], w[k], s);
  return b ? s + b[o] : s;
}

template <int R, int O>
inline void Tile(const float* x, const float* w, const float* b, float* y, int t0, int o0, int in, int out) {
  const int k_vec = in & ~7;
  __m256 acc[R][O];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < O; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int k = 0; k < k_vec; k += 8) {
    __m256 wv[O];
    for (int c = 0; c < O; ++c) wv[c] = _mm256_loadu_ps(w + static_cast<long>(o0 + c) * in + k);
    for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_loadu_ps(x + static_cast<long>(t0 + r) * in + k);
      for (int c = 0; c < O; ++c) acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < O; ++c)
      y[static_cast<long>(t0 + r) * out + o0 + c] =
          Finish(acc[r][c], x + static_cast<long>(t0 + r) * in, w + static_cast<long>(o0 + c) * in, k_vec, in, b, o0 + c);
}

void Columns(const float* x, const float* w, const float* b, float* y, int T, int in, int out, int o_begin, int o_end) {
  int t = 0;
  for (; t + 4 <= T; t += 4) {
    int o = o_begin;
    for (; o + 2 <= o_end; o += 2) Tile<4, 2>(x, w, b, y, t, o, in, out);
    for (; o < o_end; ++o) Tile<4, 1>(x, w, b, y, t, o, in, out);
  }
  for (; t < T; ++t) {
    int o = o_begin;
    for (; o + 4 <= o_end; o += 4) Tile<1, 4>(x, w, b, y, t, o, in, out);
    for (; o < o_end; ++o) Tile<1, 1>(x, w, b, y, t, o, in, out);
  }
}

}  // namespace

void LinearForwardRowInvariant(const float* x, const float* w, const float* b, float* y, int T, int in, int out) {
  const long work = static_cast<long>(T) * in * out;
  if (work < kMinParallelWork * 4) {
    Columns(x, w, b, y, T, in, out, 0, out);
    return;
  }
  // Threads split the outputs (in multiples of the tile), never a dot product.
  constexpr int kChunk = 64;
  const int chunks = (out + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (int c = 0; c < chunks; ++c) Columns(x, w, b, y, T, in, out, c * kChunk, std::min(out, (c + 1) * kChunk));
}

}  // namespace tinygpt::cpu
