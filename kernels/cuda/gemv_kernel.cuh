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

// R rows (a compile-time count, so the accumulators stay in registers);
// `in` must be a multiple of 8. kSwiGLU: the warp of output o < F also takes
// weight row F + o (the gate) and writes swiglu: silu(a) * g, each rounded to
// T first as the unfused Linear then SwiGLU would store them; y is then
// [rows, F] with F = out.
template <class T, int R, bool kSwiGLU>
__global__ void __launch_bounds__(kGemvWarps * 32) GemvKernel(const T* __restrict__ x, const T* __restrict__ w,
                                                              const T* __restrict__ b, T* __restrict__ y, int in, int out) {
  const int o = blockIdx.x * kGemvWarps + threadIdx.x / 32, lane = threadIdx.x & 31;
  if (o >= out) return;
  constexpr int kW = kSwiGLU ? 2 : 1;  // weight rows per warp
  const uint4* wr[kW];
#pragma unroll
  for (int k = 0; k < kW; ++k) wr[k] = reinterpret_cast<const uint4*>(w + static_cast<long>(o + k * out) * in);
  const int nvec = in / 8;
  float acc[kW][R];
#pragma unroll
  for (int k = 0; k < kW; ++k)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[k][r] = 0.f;
  for (int c = lane; c < nvec; c += 32) {
    float wf[kW][8];
#pragma unroll
    for (int k = 0; k < kW; ++k) Unpack8<T>(__ldg(wr[k] + c), wf[k]);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float xf[8];
      Unpack8<T>(__ldg(reinterpret_cast<const uint4*>(x + static_cast<long>(r) * in) + c), xf);
#pragma unroll
      for (int k = 0; k < kW; ++k)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[k][r] = fmaf(wf[k][j], xf[j], acc[k][r]);
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    float v[kW];
#pragma unroll
    for (int k = 0; k < kW; ++k) v[k] = WarpSum(acc[k][r]) + (b ? ToFloat(b[o + k * out]) : 0.f);
    if (lane != 0) continue;
    if constexpr (kSwiGLU) {
      const float a = ToFloat(FromFloat<T>(v[0])), g = ToFloat(FromFloat<T>(v[1]));
      y[static_cast<long>(r) * out + o] = FromFloat<T>(a / (1.f + __expf(-a)) * g);
    } else {
      y[static_cast<long>(r) * out + o] = FromFloat<T>(v[0]);
    }
  }
}

// Launches the instantiation for `rows` (1..kGemvMaxRows). With kSwiGLU, w
// has 2*out rows and y gets out = F columns.
template <class T, bool kSwiGLU = false>
void LaunchGemv(const T* x, const T* w, const T* b, T* y, int rows, int in, int out, cudaStream_t stream) {
  const dim3 grid((out + kGemvWarps - 1) / kGemvWarps), block(kGemvWarps * 32);
  switch (rows) {
#define TG_GEMV_CASE(R) \
  case R: GemvKernel<T, R, kSwiGLU><<<grid, block, 0, stream>>>(x, w, b, y, in, out); break;
    TG_GEMV_CASE(1) TG_GEMV_CASE(2) TG_GEMV_CASE(3) TG_GEMV_CASE(4) TG_GEMV_CASE(5) TG_GEMV_CASE(6) TG_GEMV_CASE(7) TG_GEMV_CASE(8)
#undef TG_GEMV_CASE
  }
  TG_CUDA_LAUNCH_CHECK();
}

}  // namespace tinygpt::cuda
