// The AVX-512 build of the row-invariant linear kernel's tiles
// (linear_rows_tiles.h): one 16-float register per panel and 32 registers,
// so the main tile is 6 rows × 4 panels (24 accumulators) where AVX2 fits
// 6 rows × 1 panel. Only the functions in the target region below use
// AVX-512; linear_rows.cc calls them after checking the CPU has it.
#include <immintrin.h>

#include "kernels/cpu/linear_rows.h"

#pragma GCC push_options
#pragma GCC target("avx512f")
#include "kernels/cpu/linear_rows_tiles.h"

namespace tinygpt::cpu::linear_rows {
namespace {

struct Avx512 {
  using V = __m512;
  static constexpr int kLanes = 16;
  // Panels per tile of R rows (index R): at least eight FMA chains, at most 24 accumulators.
  static constexpr int kTilePanels[kTileRows + 1] = {0, 8, 4, 4, 4, 4, 4};
  static V Zero() { return _mm512_setzero_ps(); }
  static V Load(const float* p) { return _mm512_loadu_ps(p); }
  static V Broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V Add(V a, V b) { return _mm512_add_ps(a, b); }
  static void Store(float* p, V v) { _mm512_storeu_ps(p, v); }
};

}  // namespace

void BlockAvx512(const float* x, const float* w, const float* b, float* y, int t0, int t1, int in, int out, int p0,
                 int p1) {
  Block<Avx512>(x, w, b, y, t0, t1, in, out, p0, p1);
}

}  // namespace tinygpt::cpu::linear_rows
#pragma GCC pop_options
