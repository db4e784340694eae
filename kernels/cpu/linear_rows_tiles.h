// Register tiles of the row-invariant linear kernel (linear_rows.cc), written
// once for any vector ISA. `Isa` supplies the vector type and five
// operations (Zero, Load, Broadcast, Fma, Add, Store) over kLanes floats, and
// kTilePanels[R]: how many 16-output panels a tile of R rows spans (enough
// independent FMA chains for the ISA's latency, within its register file).
//
// Each output is one FMA chain over k = 0..in-1 in order from zero, then +
// bias, whatever the ISA, the tile or the row count: a vector lane rounds as
// std::fma does, so AVX2 and AVX-512 give the same bits.
//
// Instantiated by linear_rows.cc (AVX2) and linear_rows_avx512.cc; this
// header holds templates only, so each file compiles them for its own target.
#pragma once

namespace tinygpt::cpu::linear_rows {

constexpr int kPanel = 16;      // outputs per packed panel
constexpr int kTileRows = 6;    // rows of the main register tile

// R rows × P full panels. x: the tile's first row (row stride `in`); w: its
// first panel (panels kPanel·in floats apart); b, y: at the tile's first output.
// The loops over rows and vectors must unroll completely for the accumulators
// to live in registers: without the pragmas GCC 12 kept them in memory
// through the k loop, at less than half the speed.
template <class Isa, int R, int P>
inline void Tile(const float* x, int in, const float* w, const float* b, float* y, int out) {
  using V = typename Isa::V;
  constexpr int kV = kPanel / Isa::kLanes;  // vectors per panel
  V acc[R][P * kV];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
    for (int c = 0; c < P * kV; ++c) acc[r][c] = Isa::Zero();
  const long panel_stride = static_cast<long>(kPanel) * in;
  for (int k = 0; k < in; ++k) {
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const V xr = Isa::Broadcast(x + static_cast<long>(r) * in + k);
#pragma GCC unroll 32
      for (int c = 0; c < P * kV; ++c)  // each weight vector is loaded once for all rows (CSE)
        acc[r][c] = Isa::Fma(xr, Isa::Load(w + (c / kV) * panel_stride + k * kPanel + (c % kV) * Isa::kLanes), acc[r][c]);
    }
  }
  if (b) {
#pragma GCC unroll 32
    for (int c = 0; c < P * kV; ++c) {
      const V bias = Isa::Load(b + c * Isa::kLanes);
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r) acc[r][c] = Isa::Add(acc[r][c], bias);
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 32
    for (int c = 0; c < P * kV; ++c) Isa::Store(y + static_cast<long>(r) * out + c * Isa::kLanes, acc[r][c]);
}

// Rows [t, t+R) of full panels [p0, p1): tiles of P panels while they last, then one at a time.
template <class Isa, int R>
void RowTile(const float* x, const float* w, const float* b, float* y, int t, int in, int out, int p0, int p1) {
  constexpr int P = Isa::kTilePanels[R];
  int p = p0;
  const float* xt = x + static_cast<long>(t) * in;
  float* yt = y + static_cast<long>(t) * out;
  for (; p + P <= p1; p += P)
    Tile<Isa, R, P>(xt, in, w + static_cast<long>(p) * kPanel * in, b ? b + p * kPanel : nullptr, yt + p * kPanel, out);
  for (; p < p1; ++p)
    Tile<Isa, R, 1>(xt, in, w + static_cast<long>(p) * kPanel * in, b ? b + p * kPanel : nullptr, yt + p * kPanel, out);
}

// Rows [t0, t1) × full panels [p0, p1): 6-row tiles, then one tile of the rest.
template <class Isa>
void Block(const float* x, const float* w, const float* b, float* y, int t0, int t1, int in, int out, int p0, int p1) {
  int t = t0;
  for (; t + kTileRows <= t1; t += kTileRows) RowTile<Isa, kTileRows>(x, w, b, y, t, in, out, p0, p1);
  switch (t1 - t) {
    case 5: return RowTile<Isa, 5>(x, w, b, y, t, in, out, p0, p1);
    case 4: return RowTile<Isa, 4>(x, w, b, y, t, in, out, p0, p1);
    case 3: return RowTile<Isa, 3>(x, w, b, y, t, in, out, p0, p1);
    case 2: return RowTile<Isa, 2>(x, w, b, y, t, in, out, p0, p1);
    case 1: return RowTile<Isa, 1>(x, w, b, y, t, in, out, p0, p1);
    default: return;
  }
}

}  // namespace tinygpt::cpu::linear_rows
