// A GEMM whose result for each row does not depend on how many rows are in
// the call. OpenBLAS' sgemm picks different kernels and blockings for
// different M, so the same token's logits would change with the batch it was
// scheduled in; a server must give a request the same output alone or among
// 64 others, so inference linears go through this kernel instead. Training
// uses it too (dense_ops.cc), for speed: it reads x in place.
//
// Each output y[t, o] is one FMA chain over k = 0..in-1 in order, starting
// from zero, then + bias. Every tile shape below performs exactly that chain
// per output (a vector FMA lane rounds as std::fma does), so which tile, which
// thread or which batch computed a row never shows in its bits.
//
// Speed comes from the weight layout (PackLinearWeight, done once at upload):
// panels of 16 outputs stored k-major, so a register tile of R rows × 16
// outputs reads two vectors of weights and broadcasts one x per row and k,
// with no horizontal sums (the GotoBLAS/BLIS micro-kernel shape; 6×16 fills
// AVX2's 16 registers with 12 accumulators). Few-row tiles (decode steps) span
// several panels instead, to keep enough independent FMA chains in flight.
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/parallel.h"

namespace tinygpt::cpu {
namespace {

constexpr int kPanel = 16;      // outputs per packed panel
constexpr int kTileRows = 6;    // rows of the main register tile
constexpr int kRowBlock = 24;   // rows per parallel work item (4 tiles)
constexpr int kPanelBlock = 4;  // panels per parallel work item (64 outputs)

// R rows × P full panels. x: the tile's first row (row stride `in`); w: its
// first panel (panels kPanel·in floats apart); b, y: at the tile's first output.
template <int R, int P>
inline void Tile(const float* x, int in, const float* w, const float* b, float* y, int out) {
  __m256 acc[R][2 * P];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 2 * P; ++c) acc[r][c] = _mm256_setzero_ps();
  const long panel_stride = static_cast<long>(kPanel) * in;
  for (int k = 0; k < in; ++k) {
    for (int p = 0; p < P; ++p) {
      const float* wk = w + p * panel_stride + k * kPanel;
      const __m256 w0 = _mm256_loadu_ps(wk), w1 = _mm256_loadu_ps(wk + 8);
      for (int r = 0; r < R; ++r) {
        const __m256 xr = _mm256_broadcast_ss(x + static_cast<long>(r) * in + k);
        acc[r][2 * p] = _mm256_fmadd_ps(xr, w0, acc[r][2 * p]);
        acc[r][2 * p + 1] = _mm256_fmadd_ps(xr, w1, acc[r][2 * p + 1]);
      }
    }
  }
  for (int p = 0; p < P; ++p) {
    const __m256 b0 = b ? _mm256_loadu_ps(b + p * kPanel) : _mm256_setzero_ps();
    const __m256 b1 = b ? _mm256_loadu_ps(b + p * kPanel + 8) : _mm256_setzero_ps();
    for (int r = 0; r < R; ++r) {
      float* yr = y + static_cast<long>(r) * out + p * kPanel;
      _mm256_storeu_ps(yr, b ? _mm256_add_ps(acc[r][2 * p], b0) : acc[r][2 * p]);
      _mm256_storeu_ps(yr + 8, b ? _mm256_add_ps(acc[r][2 * p + 1], b1) : acc[r][2 * p + 1]);
    }
  }
}

// A last panel narrower than kPanel ([in][width]): the same chain, in scalars.
void NarrowPanel(const float* x, int rows, int in, const float* w, int width, const float* b, float* y, int out) {
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < width; ++j) {
      float s = 0.f;
      for (int k = 0; k < in; ++k) s = std::fma(x[static_cast<long>(r) * in + k], w[static_cast<long>(k) * width + j], s);
      y[static_cast<long>(r) * out + j] = b ? s + b[j] : s;
    }
}

// Rows [t0, t1) of full panels [p0, p1): tiles of P panels while they last, then one at a time.
template <int R, int P>
void RowTile(const float* x, const float* w, const float* b, float* y, int t, int in, int out, int p0, int p1) {
  int p = p0;
  const float* xt = x + static_cast<long>(t) * in;
  float* yt = y + static_cast<long>(t) * out;
  for (; p + P <= p1; p += P)
    Tile<R, P>(xt, in, w + static_cast<long>(p) * kPanel * in, b ? b + p * kPanel : nullptr, yt + p * kPanel, out);
  for (; p < p1; ++p)
    Tile<R, 1>(xt, in, w + static_cast<long>(p) * kPanel * in, b ? b + p * kPanel : nullptr, yt + p * kPanel, out);
}

void Block(const float* x, const float* w, const float* b, float* y, int t0, int t1, int in, int out, int p0, int p1) {
  int t = t0;
  for (; t + kTileRows <= t1; t += kTileRows) RowTile<kTileRows, 1>(x, w, b, y, t, in, out, p0, p1);
  switch (t1 - t) {
    case 5: return RowTile<5, 1>(x, w, b, y, t, in, out, p0, p1);
    case 4: return RowTile<4, 1>(x, w, b, y, t, in, out, p0, p1);
    case 3: return RowTile<3, 1>(x, w, b, y, t, in, out, p0, p1);
    case 2: return RowTile<2, 2>(x, w, b, y, t, in, out, p0, p1);
    case 1: return RowTile<1, 4>(x, w, b, y, t, in, out, p0, p1);
    default: return;
  }
}

}  // namespace

namespace {

// packed panel layout (see the top of the file) of a weight whose element
// (o, k) — output o, input k — is at w[o·o_stride + k·k_stride].
void Pack(const float* w, long o_stride, long k_stride, float* packed, int in, int out) {
  const int panels = (out + kPanel - 1) / kPanel;
#pragma omp parallel for schedule(static) if (static_cast<long>(in) * out >= kMinParallelWork * 4)
  for (int p = 0; p < panels; ++p) {
    const int o0 = p * kPanel, width = std::min(kPanel, out - o0);
    float* panel = packed + static_cast<long>(o0) * in;
    for (int k = 0; k < in; ++k)
      for (int j = 0; j < width; ++j) panel[static_cast<long>(k) * width + j] = w[(o0 + j) * o_stride + k * k_stride];
  }
}

}  // namespace

void PackLinearWeight(const float* w, float* packed, int in, int out) { Pack(w, in, 1, packed, in, out); }

void PackLinearWeightTransposed(const float* w, float* packed, int in, int out) { Pack(w, 1, in, packed, out, in); }

void LinearForwardRowInvariant(const float* x, const float* w, const float* b, float* y, int T, int in, int out) {
  const int full = out / kPanel, narrow = out % kPanel;
  if (narrow) {
    const long o0 = static_cast<long>(full) * kPanel;
    NarrowPanel(x, T, in, w + o0 * in, narrow, b ? b + o0 : nullptr, y + o0, out);
  }
  const long work = static_cast<long>(T) * in * out;
  if (work < kMinParallelWork * 4) {
    Block(x, w, b, y, 0, T, in, out, 0, full);
    return;
  }
  // Threads split rows and panels, never a dot product.
  const int row_blocks = (T + kRowBlock - 1) / kRowBlock, panel_blocks = (full + kPanelBlock - 1) / kPanelBlock;
#pragma omp parallel for schedule(static)
  for (int item = 0; item < row_blocks * panel_blocks; ++item) {
    const int rb = item / panel_blocks, pb = item % panel_blocks;
    Block(x, w, b, y, rb * kRowBlock, std::min(T, (rb + 1) * kRowBlock), in, out, pb * kPanelBlock,
          std::min(full, (pb + 1) * kPanelBlock));
  }
}

}  // namespace tinygpt::cpu
