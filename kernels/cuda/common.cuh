// Shared CUDA helpers: element types, conversions, error checks.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

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

// The backend's run-time switches (environment variables, read once by
// their callers): EnvLong gives the variable's integer value, or `fallback`
// when it is unset; EnvOn is true unless the variable is "0".
inline long EnvLong(const char* name, long fallback) {
  const char* v = std::getenv(name);
  return v ? std::atol(v) : fallback;
}
inline bool EnvOn(const char* name) {
  const char* v = std::getenv(name);
  return !(v && std::strcmp(v, "0") == 0);
}

// Programmatic dependent launch (sm_90+). A decode step is ~100 small
// kernels whose own work is a few microseconds; launched in plain stream
// order each one starts only after its predecessor has drained, and its
// first loads then wait a full memory latency. Launched with
// LaunchKernel(..., pdl = true), a kernel's blocks start while its
// predecessor finishes: what does not depend on the predecessor (weights,
// block tables, cached K/V) is loaded first, then PdlWait() blocks until
// the predecessor has completed and its writes are visible. Rules for a
// kernel launched so: every global read of a predecessor's output and every
// global write come after PdlWait(), and at least one thread of the grid
// calls it (so that the grid completes after its predecessor: the kernel
// after it relies on that). PdlLaunchDependents() right after the wait lets
// the next kernel's blocks start early in turn (after the wait, so that
// waiting blocks chain at most one kernel ahead). Both are no-ops for a
// kernel launched without the attribute.
__device__ __forceinline__ void PdlWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void PdlLaunchDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Whether inference kernels are launched with programmatic dependent launch:
// on for compute capability 9.0+, off with TINYGPT_PDL=0 (the A/B of
// scripts/device-run.sh decode). Set once by the backend.
inline bool& PdlEnabled() {
  static bool on = false;
  return on;
}

// kernel<<<grid, block, smem, stream>>>(args...), with the programmatic
// stream serialization attribute when `pdl` and PdlEnabled().
template <class... KernelArgs, class... Args>
void LaunchKernel(bool pdl, void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                  Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = pdl && PdlEnabled() ? 1 : 0;
  TG_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace tinygpt::cuda
