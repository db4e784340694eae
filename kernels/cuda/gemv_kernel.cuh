// Linear layers of a few rows (decode steps of a small batch): y[r, o] =
// x[r, :] · w[o, :] + b[o]. Such a product reads every weight once and does
// little else, so it is bound by memory bandwidth; a GEMM library's tiles
// (64+ rows) would leave most of each tensor-core operation idle, and at one
// row cuBLASLt reached about a tenth of the copy bandwidth here. One warp per
// output feature streams its weight row with 16-byte loads; the few input
// rows come from L1/L2, where every warp finds them.
//
// Two fusions save a decode step's LayerNorm kernels (24 of ~90 kernels at
// one sequence, each mostly launch and completion latency): with a GemvNorm
// the input rows are the residual stream and each block normalizes them
// itself into shared memory before its products (a few rows of d_model are
// cheap to normalize again in every block, and no block waits for another);
// GemvEpilogue::kAddInPlace adds the product into y, the residual stream,
// instead of storing it (the add that the next norm would otherwise do).
#pragma once
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma_primitives.cuh"  // CpAsync16

namespace tinygpt::cuda {

constexpr int kGemvMaxRows = 8;  // instantiated row counts
// The products of at most this many rows go to the GEMV (the skinny GEMM
// takes the rest up to its own limit): TINYGPT_GEMV_MAX_ROWS, 1 to 8 (4: on
// the H200 a bench-125m step of 5-8 sequences was 10 us faster with the
// skinny GEMM, docs/benchmarks.md; 5-8 stay for the A/B).
inline int GemvMaxRows() {
  static const int n = static_cast<int>(std::min<long>(kGemvMaxRows, std::max(1L, EnvLong("TINYGPT_GEMV_MAX_ROWS", 4))));
  return n;
}
constexpr int kGemvWarps = 8;  // warps per block

// Eight elements of a 16-byte vector as floats.
template <class T>
__device__ __forceinline__ void Unpack8(const uint4& v, float* f) {
  const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int j = 0; j < 8; ++j) f[j] = ToFloat(e[j]);
}

// Where a QKV product also stores its K and V columns: the KV append fused
// into the product's epilogue (a decode step of a small batch then saves the
// append kernel per layer). Column o of a row is K feature o - k_offset when
// k_offset <= o < k_offset + kv_dim, V feature o - k_offset - kv_dim above;
// row r goes to slot slots[r] (negative: not stored). slots == nullptr: none.
template <class T>
struct GemvKvAppend {
  const int32_t* slots = nullptr;
  int k_offset = 0, kv_dim = 0;
  T* k_cache = nullptr;
  T* v_cache = nullptr;
};

// A LayerNorm applied to the input rows before the product (w == nullptr: none):
// rows of `in` elements, normalized as the LayerNorm kernel does (fp32
// statistics, two passes, the result rounded to T); w and b 16-byte aligned.
template <class T>
struct GemvNorm {
  const T* w = nullptr;
  const T* b = nullptr;
  float eps = 0.f;
};
// The normalized rows live in shared memory, with the norm's weight and bias:
// (rows + 2) × in elements of T; each row is one warp's registers while it
// is normalized (in <= 2048).
constexpr int kGemvNormMaxBytes = 32 << 10;
constexpr int kGemvNormMaxIn = 2048;

enum class GemvEpilogue { kStore, kSwiGLU, kAddInPlace };

// A LayerNorm's steps on one 16-byte vector of a row: its sum, its sum of
// squared deviations from the mean m, and the vector normalized ((x - m) * rs
// * w + b, rounded to T). WarpNormRow and SmemNormRow both use them, so their
// rows are the same.
template <class T>
__device__ __forceinline__ float NormVecSum(const uint4& v, float sum) {
  float f[8];
  Unpack8<T>(v, f);
#pragma unroll
  for (int j = 0; j < 8; ++j) sum += f[j];
  return sum;
}
template <class T>
__device__ __forceinline__ float NormVecSquares(const uint4& v, float m, float var) {
  float f[8];
  Unpack8<T>(v, f);
#pragma unroll
  for (int j = 0; j < 8; ++j) var += (f[j] - m) * (f[j] - m);
  return var;
}
template <class T>
__device__ __forceinline__ uint4 NormVecApply(const uint4& v, const uint4& w, const uint4& b, float m, float rs) {
  float f[8], gw[8], gb[8];
  Unpack8<T>(v, f);
  Unpack8<T>(w, gw);
  Unpack8<T>(b, gb);
  Vec16<T> o;
#pragma unroll
  for (int j = 0; j < 8; ++j) o.v[j] = FromFloat<T>((f[j] - m) * rs * gw[j] + gb[j]);
  return *reinterpret_cast<const uint4*>(&o);
}

// One row's LayerNorm by one warp on 16-byte vectors held in registers (two
// passes over them, fp32 statistics, as LayerNormVecKernel): Load reads the
// row (kThroughL2: with __ldcg, for rows written earlier in the same kernel)
// and takes its statistics; Store writes the normalized row, rounded to T.
// The GEMV's fused norm and the decode step kernel's (decode_step_kernel.cuh).
template <class T>
struct WarpNormRow {
  static constexpr int kMaxVecs = kGemvNormMaxIn / 8 / 32;  // 16-byte vectors per lane of one row
  uint4 v[kMaxVecs];
  float m = 0.f, rs = 0.f;

  template <bool kThroughL2>
  __device__ __forceinline__ void Load(const uint4* xv, int in, float eps, int lane) {
    const int nvec = in / 8;
    float sum = 0.f;
#pragma unroll
    for (int k = 0; k < kMaxVecs; ++k) {
      const int c = lane + k * 32;
      if (c < nvec) {
        v[k] = kThroughL2 ? __ldcg(xv + c) : xv[c];
        sum = NormVecSum<T>(v[k], sum);
      }
    }
    m = WarpSum(sum) / in;
    float var = 0.f;
#pragma unroll
    for (int k = 0; k < kMaxVecs; ++k)
      if (lane + k * 32 < nvec) var = NormVecSquares<T>(v[k], m, var);
    rs = rsqrtf(WarpSum(var) / in + eps);
  }

  // dst = the normalized row; wv, bv: the norm's weight and bias.
  __device__ __forceinline__ void Store(const uint4* wv, const uint4* bv, uint4* dst, int in, int lane) const {
    const int nvec = in / 8;
#pragma unroll
    for (int k = 0; k < kMaxVecs; ++k) {
      const int c = lane + k * 32;
      if (c < nvec) dst[c] = NormVecApply<T>(v[k], wv[c], bv[c], m, rs);
    }
  }
};

// The same LayerNorm of one row by one warp, on the row in shared memory and
// in place, with the same sums in the same order as WarpNormRow (so the same
// rows), in loops that are not unrolled: a row takes in / 256 passes, and
// WarpNormRow's unrolled form is ~20 KB of code a copy. The decode step
// kernel's norms (decode_step_kernel.cuh), and the GEMV's under
// TINYGPT_GEMV_SMALL_NORM=1 (the A/B of whether a kernel's code size costs
// time; docs/benchmarks.md, issue #23).
template <class T>
struct SmemNormRow {
  float m = 0.f, rs = 0.f;

  __device__ __forceinline__ void Stats(const uint4* row, int in, float eps, int lane) {
    const int nvec = in / 8;
    float sum = 0.f;
#pragma unroll 1
    for (int c = lane; c < nvec; c += 32) sum = NormVecSum<T>(row[c], sum);
    m = WarpSum(sum) / in;
    float var = 0.f;
#pragma unroll 1
    for (int c = lane; c < nvec; c += 32) var = NormVecSquares<T>(row[c], m, var);
    rs = rsqrtf(WarpSum(var) / in + eps);
  }

  // row = the normalized row; wv, bv: the norm's weight and bias.
  __device__ __forceinline__ void Apply(uint4* row, const uint4* wv, const uint4* bv, int in, int lane) const {
    const int nvec = in / 8;
#pragma unroll 1
    for (int c = lane; c < nvec; c += 32) row[c] = NormVecApply<T>(row[c], wv[c], bv[c], m, rs);
  }
};

// How a GEMV normalizes its input rows: not at all, WarpNormRow (the
// default) or SmemNormRow (TINYGPT_GEMV_SMALL_NORM=1).
enum class GemvNormForm { kNone, kRegisters, kSmem };

// Weight vectors (16 bytes) per lane and weight row that are loaded before
// PdlWait: the weights are no predecessor's output, so with programmatic
// dependent launch they stream in while the kernel before finishes (rows of
// up to kGemvPrefetch * 32 * 8 = 1024 inputs wholly; longer rows stream the
// rest after the wait).
constexpr int kGemvPrefetch = 4;

// R rows (a compile-time count, so the accumulators stay in registers);
// `in` must be a multiple of 8. kSwiGLU: the warp of output o < F also takes
// weight row F + o (the gate) and writes swiglu: silu(a) * g, each rounded to
// T first as the unfused Linear then SwiGLU would store them; y is then
// [rows, F] with F = out. kAddInPlace: y[r, o] += the product (rounded to T
// first, as Linear then the add would). kNormForm: how x is normalized first
// (norm), if it is.
template <class T, int R, GemvEpilogue kEpi, GemvNormForm kNormForm>
__global__ void __launch_bounds__(kGemvWarps * 32) GemvKernel(const T* __restrict__ x, const T* __restrict__ w,
                                                              const T* __restrict__ b, T* __restrict__ y, int in, int out,
                                                              GemvKvAppend<T> kv, GemvNorm<T> norm) {
  constexpr bool kSwiGLU = kEpi == GemvEpilogue::kSwiGLU;
  constexpr bool kNorm = kNormForm != GemvNormForm::kNone;
  const int o = blockIdx.x * kGemvWarps + threadIdx.x / 32, lane = threadIdx.x & 31;
  const bool valid = o < out;
  constexpr int kW = kSwiGLU ? 2 : 1;  // weight rows per warp
  const uint4* wr[kW];
#pragma unroll
  for (int k = 0; k < kW; ++k) wr[k] = reinterpret_cast<const uint4*>(w + static_cast<long>(valid ? o + k * out : 0) * in);
  const int nvec = in / 8;
  uint4 pre[kW][kGemvPrefetch];
#pragma unroll
  for (int k = 0; k < kW; ++k)
#pragma unroll
    for (int i = 0; i < kGemvPrefetch; ++i) {
      const int c = lane + i * 32;
      pre[k][i] = valid && c < nvec ? __ldg(wr[k] + c) : make_uint4(0, 0, 0, 0);
    }
  float bias[kW];
#pragma unroll
  for (int k = 0; k < kW; ++k) bias[k] = b && valid ? ToFloat(b[o + k * out]) : 0.f;
  // The norm's weight and bias are no predecessor's output either: copied to
  // shared memory (after the normalized rows) before the wait.
  extern __shared__ uint4 norm_smem[];
  if constexpr (kNorm) {
    for (int c = threadIdx.x; c < nvec; c += blockDim.x) {
      CpAsync16(norm_smem + R * nvec + c, reinterpret_cast<const uint4*>(norm.w) + c, true);
      CpAsync16(norm_smem + (R + 1) * nvec + c, reinterpret_cast<const uint4*>(norm.b) + c, true);
    }
    CpAsyncCommit();
  }
  PdlWait();  // x is the predecessor's output (common.cuh)
  PdlLaunchDependents();
  // The rows the products read: x itself, or (kNorm) its normalized copy in
  // shared memory, which every warp of the block helps to make.
  const T* xr = x;
  if constexpr (kNormForm == GemvNormForm::kSmem) {
    // The block copies the rows into shared memory; warp r normalizes row r
    // there in place (SmemNormRow); then every warp reads all rows.
    const int warp = threadIdx.x / 32;
    for (int c = threadIdx.x; c < R * nvec; c += blockDim.x) CpAsync16(norm_smem + c, reinterpret_cast<const uint4*>(x) + c, true);
    CpAsyncCommit();
    CpAsyncWaitAll();
    __syncthreads();  // the rows, and the norm's weight and bias, copied by every thread
    if (warp < R) {
      SmemNormRow<T> row;
      row.Stats(norm_smem + warp * nvec, in, norm.eps, lane);
      row.Apply(norm_smem + warp * nvec, norm_smem + R * nvec, norm_smem + (R + 1) * nvec, in, lane);
    }
    __syncthreads();
    xr = reinterpret_cast<const T*>(norm_smem);
  } else if constexpr (kNorm) {
    // Warp r normalizes row r in registers (WarpNormRow) into shared memory;
    // then every warp reads all rows from there. (A block-wide version with
    // element loops cost 5 us a product at 8 rows on the H200.)
    const int warp = threadIdx.x / 32;
    const bool normalizes = warp < R;
    WarpNormRow<T> row;
    if (normalizes) row.template Load<false>(reinterpret_cast<const uint4*>(x) + warp * nvec, in, norm.eps, lane);
    CpAsyncWaitAll();
    __syncthreads();  // the norm's weight and bias, copied by other threads
    if (normalizes) row.Store(norm_smem + R * nvec, norm_smem + (R + 1) * nvec, norm_smem + warp * nvec, in, lane);
    __syncthreads();
    xr = reinterpret_cast<const T*>(norm_smem);
  }
  if (!valid) return;
  float acc[kW][R];
#pragma unroll
  for (int k = 0; k < kW; ++k)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[k][r] = 0.f;
  auto fma_chunk = [&](const uint4 (&wv)[kW], int c) {
    float wf[kW][8];
#pragma unroll
    for (int k = 0; k < kW; ++k) Unpack8<T>(wv[k], wf[k]);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float xf[8];
      const uint4* xv = reinterpret_cast<const uint4*>(xr + static_cast<long>(r) * in) + c;
      Unpack8<T>(kNorm ? *xv : __ldg(xv), xf);
#pragma unroll
      for (int k = 0; k < kW; ++k)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[k][r] = fmaf(wf[k][j], xf[j], acc[k][r]);
    }
  };
#pragma unroll
  for (int i = 0; i < kGemvPrefetch; ++i) {
    const int c = lane + i * 32;
    if (c < nvec) {
      uint4 wv[kW];
#pragma unroll
      for (int k = 0; k < kW; ++k) wv[k] = pre[k][i];
      fma_chunk(wv, c);
    }
  }
  for (int c = lane + kGemvPrefetch * 32; c < nvec; c += 32) {
    uint4 wv[kW];
#pragma unroll
    for (int k = 0; k < kW; ++k) wv[k] = __ldg(wr[k] + c);
    fma_chunk(wv, c);
  }
  // Every lane holds every row's sum after the butterfly; lane r stores row
  // r, so the rows' stores (and kAddInPlace's read of y) go out in parallel,
  // not one dependent round trip per row from lane 0 (H200: 66 us a step
  // at 8 rows with the residual add done so).
  float v[kW];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int k = 0; k < kW; ++k) {
      const float sum = WarpSum(acc[k][r]) + bias[k];
      if (lane == r) v[k] = sum;
    }
  if (lane >= R) return;
  const int r = lane;
  T* yo = y + static_cast<long>(r) * out + o;
  if constexpr (kSwiGLU) {
    const float a = ToFloat(FromFloat<T>(v[0])), g = ToFloat(FromFloat<T>(v[1]));
    *yo = FromFloat<T>(a / (1.f + __expf(-a)) * g);
  } else if constexpr (kEpi == GemvEpilogue::kAddInPlace) {
    *yo = FromFloat<T>(ToFloat(*yo) + ToFloat(FromFloat<T>(v[0])));
  } else {
    const T value = FromFloat<T>(v[0]);
    *yo = value;
    if (kv.slots && o >= kv.k_offset && o < kv.k_offset + 2 * kv.kv_dim) {
      const long slot = kv.slots[r];
      const int f = o - kv.k_offset;
      if (slot >= 0) (f < kv.kv_dim ? kv.k_cache : kv.v_cache)[slot * kv.kv_dim + f % kv.kv_dim] = value;
    }
  }
}

// Launches the instantiation for `rows` (1..kGemvMaxRows). With kSwiGLU, w
// has 2*out rows and y gets out = F columns. With a norm (norm.w set), (rows +
// 2) × in × sizeof(T) must be at most kGemvNormMaxBytes. Programmatic dependent
// launch where the backend has it on (common.cuh).
template <class T, int R, GemvEpilogue kEpi>
void LaunchGemvRows(const T* x, const T* w, const T* b, T* y, int in, int out, cudaStream_t stream, GemvKvAppend<T> kv,
                    GemvNorm<T> norm) {
  const dim3 grid((out + kGemvWarps - 1) / kGemvWarps), block(kGemvWarps * 32);
  if constexpr (kEpi != GemvEpilogue::kAddInPlace) {  // (no caller normalizes the input of an add)
    if (norm.w) {
      const size_t smem = static_cast<size_t>(R + 2) * in * sizeof(T);
      static const bool small_norm = EnvLong("TINYGPT_GEMV_SMALL_NORM", 0) == 1;
      LaunchKernel(true, small_norm ? GemvKernel<T, R, kEpi, GemvNormForm::kSmem> : GemvKernel<T, R, kEpi, GemvNormForm::kRegisters>, grid,
                   block, smem, stream, x, w, b, y, in, out, kv, norm);
      return;
    }
  }
  LaunchKernel(true, GemvKernel<T, R, kEpi, GemvNormForm::kNone>, grid, block, 0, stream, x, w, b, y, in, out, kv, norm);
}

template <class T, GemvEpilogue kEpi = GemvEpilogue::kStore>
void LaunchGemv(const T* x, const T* w, const T* b, T* y, int rows, int in, int out, cudaStream_t stream,
                GemvKvAppend<T> kv = {}, GemvNorm<T> norm = {}) {
  switch (rows) {
#define TG_GEMV_CASE(R) \
  case R: LaunchGemvRows<T, R, kEpi>(x, w, b, y, in, out, stream, kv, norm); break;
    TG_GEMV_CASE(1) TG_GEMV_CASE(2) TG_GEMV_CASE(3) TG_GEMV_CASE(4) TG_GEMV_CASE(5) TG_GEMV_CASE(6) TG_GEMV_CASE(7) TG_GEMV_CASE(8)
#undef TG_GEMV_CASE
  }
}

}  // namespace tinygpt::cuda
