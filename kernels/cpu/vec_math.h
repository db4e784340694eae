// Vectorized expf for the CPU kernels (AVX2 + FMA). glibc's vector math is
// only declared under -ffast-math, which would also break the -inf masks the
// attention uses, so the CPU backend carries its own: Cody-Waite range
// reduction and a degree-6 polynomial (Cephes' expf), about 2 ulp. Every
// element goes through the same 8-lane code, tails included, so a value's
// exp never depends on its position (batch invariance).
#pragma once
#include <immintrin.h>

#include <cstring>

namespace tinygpt::cpu {

inline __m256 Exp8(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-88.3762626647949f);
  const __m256 is_neg_inf = _mm256_cmp_ps(x, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ);
  x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
  // x = n·ln2 + r, |r| ≤ ln2/2
  const __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n));
  return _mm256_andnot_ps(is_neg_inf, y);  // exp(-inf) = 0 exactly
}

// The last n < 8 elements of an array as a zero-padded vector, and back: the
// tails of 8-lane loops go through the same vector code as the rest.
inline __m256 LoadTail8(const float* p, int n) {
  float v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(v, p, sizeof(float) * n);
  return _mm256_loadu_ps(v);
}

inline void StoreTail8(float* p, __m256 x, int n) {
  float v[8];
  _mm256_storeu_ps(v, x);
  std::memcpy(p, v, sizeof(float) * n);
}

// x[i] = exp(x[i]) for i < n.
inline void ExpInPlace(float* x, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, Exp8(_mm256_loadu_ps(x + i)));
  if (i < n) StoreTail8(x + i, Exp8(LoadTail8(x + i, n - i)), n - i);
}

}  // namespace tinygpt::cpu
