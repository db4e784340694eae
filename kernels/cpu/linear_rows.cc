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
// The tiles are written once for any vector ISA (linear_rows_tiles.h); CPUs
// with AVX-512 run 6×64 tiles (linear_rows_avx512.cc), with the same bits.
#include "kernels/cpu/linear_rows.h"

#include <immintrin.h>

#include <omp.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/linear_rows_tiles.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/parallel.h"

namespace tinygpt::cpu {
namespace {

using linear_rows::kPanel;
constexpr int kRowBlock = 24;   // rows per parallel work item (4 tiles)
constexpr int kPanelBlock = 4;  // panels per parallel work item (64 outputs)

struct Avx2 {
  using V = __m256;
  static constexpr int kLanes = 8;
  // Panels per tile of R rows (index R): 1- and 2-row tiles (decode steps)
  // span several panels to keep eight FMA chains in flight; 6×1 fills the 16
  // registers with 12 accumulators.
  static constexpr int kTilePanels[linear_rows::kTileRows + 1] = {0, 4, 2, 1, 1, 1, 1};
  static V Zero() { return _mm256_setzero_ps(); }
  static V Load(const float* p) { return _mm256_loadu_ps(p); }
  static V Broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V Add(V a, V b) { return _mm256_add_ps(a, b); }
  static void Store(float* p, V v) { _mm256_storeu_ps(p, v); }
};

RowsIsa& SelectedIsa() {
  static RowsIsa isa = RowsIsaSupported(RowsIsa::kAvx512) ? RowsIsa::kAvx512 : RowsIsa::kAvx2;
  return isa;
}

void Block(const float* x, const float* w, const float* b, float* y, int t0, int t1, int in, int out, int p0, int p1) {
  if (SelectedIsa() == RowsIsa::kAvx512)
    linear_rows::BlockAvx512(x, w, b, y, t0, t1, in, out, p0, p1);
  else
    linear_rows::Block<Avx2>(x, w, b, y, t0, t1, in, out, p0, p1);
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

// packed panel layout (see the top of the file) of a weight whose element
// (o, k) — output o, input k — is at w[o·o_stride + k·k_stride].
void Pack(const float* w, long o_stride, long k_stride, float* packed, int in, int out) {
  const int panels = (out + kPanel - 1) / kPanel;
#pragma omp parallel for schedule(static) if (static_cast<long>(in) * out >= kMinParallelWork / 4)
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

bool RowsIsaSupported(RowsIsa isa) {
  return isa == RowsIsa::kAvx2 || __builtin_cpu_supports("avx512f");
}

void SetRowsIsa(RowsIsa isa) { SelectedIsa() = isa; }

RowsIsa CurrentRowsIsa() { return SelectedIsa(); }

const char* RowsIsaName(RowsIsa isa) { return isa == RowsIsa::kAvx512 ? "AVX-512" : "AVX2"; }

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
  // Threads split rows and panels, never a dot product. They take items as
  // they go (a core slowed by a neighbour would hold up a static split at the
  // barrier), in runs along a row block's panels while there are at least 8
  // runs per thread, so a thread mostly reuses the x rows it has in cache.
  const int row_blocks = (T + kRowBlock - 1) / kRowBlock, panel_blocks = (full + kPanelBlock - 1) / kPanelBlock;
  const int items = row_blocks * panel_blocks;
  const int run = std::max(1, std::min(panel_blocks, items / (8 * omp_get_max_threads())));
#pragma omp parallel for schedule(dynamic, run)
  for (int item = 0; item < items; ++item) {
    const int rb = item / panel_blocks, pb = item % panel_blocks;
    Block(x, w, b, y, rb * kRowBlock, std::min(T, (rb + 1) * kRowBlock), in, out, pb * kPanelBlock,
          std::min(full, (pb + 1) * kPanelBlock));
  }
}

}  // namespace tinygpt::cpu
