// Linear layers of a few rows (decode steps of a small batch): y[r, o] =
// x[r, :] · w[o, :] + b[o]. Such a product reads every weight once and does
// little else, so it is bound by memory bandwidth; a GEMM library's tiles
// (64+ rows) would leave most of each tensor-core operation idle, and at one
// row cuBLASLt reached about a tenth of the copy bandwidth here. One warp per
// output feature streams its weight row with 16-byte loads; the few input
// rows come from L1/L2, where every warp finds them.
#pragma once
#include "kernels/cuda/common.cuh"

namespace tinygpt::cuda {

constexpr int kGemvMaxRows = 8;
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

// Where a product's rows then go through the residual add and LayerNorm (the
// output projection or the down projection, with the norm after it: one
// kernel instead of two per use, 23 launches of a decode step). Once every
// block has stored its columns of y, the last block to finish (counted in
// *counter, which it leaves at zero) adds y into the residual stream and
// normalizes it, one warp per row, with LayerNormVecKernel<kAdd>'s numerics:
// resid += y rounded to T, out = LayerNorm(resid). counter == nullptr: none.
template <class T>
struct GemvAddNorm {
  T* resid = nullptr;        // [rows, out]
  const T* w = nullptr;      // the norm's weight and bias [out]
  const T* b = nullptr;
  T* out = nullptr;          // [rows, out]
  float eps = 0.f;
  int* counter = nullptr;
};
constexpr int kGemvAddNormChunks = 4;  // 16-byte vectors per lane: rows of up to 1024

// The add + LayerNorm of GemvAddNorm by the grid's last block (every thread
// of every block calls it after its stores).
template <class T, int R>
__device__ __forceinline__ void GemvAddNormLastBlock(const T* y, int C, const GemvAddNorm<T>& an) {
  __shared__ bool last;
  __threadfence();  // this thread's y stores, visible device-wide before the count
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(an.counter, 1) == static_cast<int>(gridDim.x) - 1;
    if (last) *an.counter = 0;  // zero for the next product
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int r = threadIdx.x / 32, lane = threadIdx.x & 31;
  if (r >= R) return;
  constexpr int V = Vec16<T>::N;
  const int nvec = C / V;
  const long base = static_cast<long>(r) * C;
  Vec16<T> xv[kGemvAddNormChunks];
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < kGemvAddNormChunks; ++k) {
    const int cv = k * 32 + lane;
    if (cv < nvec) {
      xv[k] = LoadVec(an.resid + base + cv * V);
      const uint4 raw = __ldcg(reinterpret_cast<const uint4*>(y + base + cv * V));  // other blocks' stores: from L2
      const T* yv = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int i = 0; i < V; ++i) xv[k].v[i] = FromFloat<T>(ToFloat(xv[k].v[i]) + ToFloat(yv[i]));
      StoreVec(an.resid + base + cv * V, xv[k]);
#pragma unroll
      for (int i = 0; i < V; ++i) sum += ToFloat(xv[k].v[i]);
    }
  }
  const float m = WarpSum(sum) / C;
  float var = 0.f;
#pragma unroll
  for (int k = 0; k < kGemvAddNormChunks; ++k)
    if (k * 32 + lane < nvec) {
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float d = ToFloat(xv[k].v[i]) - m;
        var += d * d;
      }
    }
  const float rs = rsqrtf(WarpSum(var) / C + an.eps);
#pragma unroll
  for (int k = 0; k < kGemvAddNormChunks; ++k) {
    const int cv = k * 32 + lane;
    if (cv < nvec) {
      const Vec16<T> wv = LoadVec(an.w + cv * V), bv = LoadVec(an.b + cv * V);
      Vec16<T> o;
#pragma unroll
      for (int i = 0; i < V; ++i) o.v[i] = FromFloat<T>((ToFloat(xv[k].v[i]) - m) * rs * ToFloat(wv.v[i]) + ToFloat(bv.v[i]));
      StoreVec(an.out + base + cv * V, o);
    }
  }
}

// Weight vectors (16 bytes) per lane and weight row that are loaded before
// PdlWait: the weights are no predecessor's output, so with programmatic
// dependent launch they stream in while the kernel before finishes. Plain
// products take rows of up to 8 * 32 * 8 = 2048 inputs wholly (the down
// projection's too); the SwiGLU pair, two weight rows per warp, 1024 (its
// input is the model width); longer rows stream the rest after the wait.
template <bool kSwiGLU>
constexpr int kGemvPrefetch = kSwiGLU ? 4 : 8;

// R rows (a compile-time count, so the accumulators stay in registers);
// `in` must be a multiple of 8. kSwiGLU: the warp of output o < F also takes
// weight row F + o (the gate) and writes swiglu: silu(a) * g, each rounded to
// T first as the unfused Linear then SwiGLU would store them; y is then
// [rows, F] with F = out. kAddNorm: then GemvAddNormLastBlock (every warp
// of the grid reaches it; those past `out` compute on row 0 and store
// nothing).
template <class T, int R, bool kSwiGLU, bool kAddNorm>
__global__ void __launch_bounds__(kGemvWarps * 32) GemvKernel(const T* __restrict__ x, const T* __restrict__ w,
                                                              const T* __restrict__ b, T* __restrict__ y, int in, int out,
                                                              GemvKvAppend<T> kv, GemvAddNorm<T> an) {
  const int o = blockIdx.x * kGemvWarps + threadIdx.x / 32, lane = threadIdx.x & 31;
  const bool valid = o < out;
  constexpr int kW = kSwiGLU ? 2 : 1;  // weight rows per warp
  const uint4* wr[kW];
#pragma unroll
  for (int k = 0; k < kW; ++k) wr[k] = reinterpret_cast<const uint4*>(w + static_cast<long>(valid ? o + k * out : 0) * in);
  const int nvec = in / 8;
  constexpr int kPrefetch = kGemvPrefetch<kSwiGLU>;
  uint4 pre[kW][kPrefetch];
#pragma unroll
  for (int k = 0; k < kW; ++k)
#pragma unroll
    for (int i = 0; i < kPrefetch; ++i) {
      const int c = lane + i * 32;
      pre[k][i] = valid && c < nvec ? __ldg(wr[k] + c) : make_uint4(0, 0, 0, 0);
    }
  float bias[kW];
#pragma unroll
  for (int k = 0; k < kW; ++k) bias[k] = b && valid ? ToFloat(b[o + k * out]) : 0.f;
  PdlWait();  // x is the predecessor's output (common.cuh)
  PdlLaunchDependents();
  if (!valid && !kAddNorm) return;
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
      Unpack8<T>(__ldg(reinterpret_cast<const uint4*>(x + static_cast<long>(r) * in) + c), xf);
#pragma unroll
      for (int k = 0; k < kW; ++k)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[k][r] = fmaf(wf[k][j], xf[j], acc[k][r]);
    }
  };
#pragma unroll
  for (int i = 0; i < kPrefetch; ++i) {
    const int c = lane + i * 32;
    if (c < nvec) {
      uint4 wv[kW];
#pragma unroll
      for (int k = 0; k < kW; ++k) wv[k] = pre[k][i];
      fma_chunk(wv, c);
    }
  }
  for (int c = lane + kPrefetch * 32; c < nvec; c += 32) {
    uint4 wv[kW];
#pragma unroll
    for (int k = 0; k < kW; ++k) wv[k] = __ldg(wr[k] + c);
    fma_chunk(wv, c);
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    float v[kW];
#pragma unroll
    for (int k = 0; k < kW; ++k) v[k] = WarpSum(acc[k][r]) + bias[k];
    if (lane != 0 || !valid) continue;
    if constexpr (kSwiGLU) {
      const float a = ToFloat(FromFloat<T>(v[0])), g = ToFloat(FromFloat<T>(v[1]));
      y[static_cast<long>(r) * out + o] = FromFloat<T>(a / (1.f + __expf(-a)) * g);
    } else {
      const T value = FromFloat<T>(v[0]);
      y[static_cast<long>(r) * out + o] = value;
      if (kv.slots && o >= kv.k_offset && o < kv.k_offset + 2 * kv.kv_dim) {
        const long slot = kv.slots[r];
        const int f = o - kv.k_offset;
        if (slot >= 0) (f < kv.kv_dim ? kv.k_cache : kv.v_cache)[slot * kv.kv_dim + f % kv.kv_dim] = value;
      }
    }
  }
  if constexpr (kAddNorm) GemvAddNormLastBlock<T, R>(y, out, an);
}

// Launches the instantiation for `rows` (1..kGemvMaxRows). With kSwiGLU, w
// has 2*out rows and y gets out = F columns; with an.counter, the add +
// LayerNorm after it (out a multiple of 8, at most 1024). Programmatic
// dependent launch where the backend has it on (common.cuh).
template <class T, bool kSwiGLU = false>
void LaunchGemv(const T* x, const T* w, const T* b, T* y, int rows, int in, int out, cudaStream_t stream,
                GemvKvAppend<T> kv = {}, GemvAddNorm<T> an = {}) {
  const dim3 grid((out + kGemvWarps - 1) / kGemvWarps), block(kGemvWarps * 32);
  auto launch = [&](auto kernel) { LaunchKernel(true, kernel, grid, block, 0, stream, x, w, b, y, in, out, kv, an); };
  switch (rows) {
#define TG_GEMV_CASE(R)                                                               \
  case R:                                                                             \
    if (!kSwiGLU && an.counter) launch(GemvKernel<T, R, false, true>);                \
    else launch(GemvKernel<T, R, kSwiGLU, false>);                                    \
    break;
    TG_GEMV_CASE(1) TG_GEMV_CASE(2) TG_GEMV_CASE(3) TG_GEMV_CASE(4) TG_GEMV_CASE(5) TG_GEMV_CASE(6) TG_GEMV_CASE(7) TG_GEMV_CASE(8)
#undef TG_GEMV_CASE
  }
}

}  // namespace tinygpt::cuda
