// Shared CUDA helpers: element types, conversions, error checks.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace tinygpt::cuda {

// Aborts with the location on a CUDA error: these are programming errors or
// a lost device, after which nothing the backend returns can be trusted.
#define TG_CUDA_CHECK(expr)                                                                         \
  do {                                                                                              \
    cudaError_t err_ = (expr);                                                                      \
    if (err_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorName(err_), __FILE__, __LINE__, \
                   cudaGetErrorString(err_));                                                       \
      std::abort();                                                                                 \
    }                                                                                               \
  } while (0)
#define TG_CUDA_LAUNCH_CHECK() TG_CUDA_CHECK(cudaGetLastError())

template <class T> __device__ __forceinline__ float ToFloat(T v);
template <> __device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float ToFloat(float v) { return v; }

template <class T> __device__ __forceinline__ T FromFloat(float v);
template <> __device__ __forceinline__ __nv_bfloat16 FromFloat(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half FromFloat(float v) { return __float2half(v); }
template <> __device__ __forceinline__ float FromFloat(float v) { return v; }

// Packs two floats into the 32-bit pair an MMA operand register holds.
template <class T> __device__ __forceinline__ uint32_t PackPair(float lo, float hi);
template <> __device__ __forceinline__ uint32_t PackPair<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <> __device__ __forceinline__ uint32_t PackPair<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// 16 bytes of T (8 bf16/fp16 or 4 fp32), loaded and stored as one vector.
template <class T>
struct alignas(16) Vec16 {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};
template <class T>
__device__ __forceinline__ Vec16<T> LoadVec(const T* p) {
  return *reinterpret_cast<const Vec16<T>*>(p);
}
template <class T>
__device__ __forceinline__ void StoreVec(T* p, const Vec16<T>& v) {
  *reinterpret_cast<Vec16<T>*>(p) = v;
}

}  // namespace tinygpt::cuda
