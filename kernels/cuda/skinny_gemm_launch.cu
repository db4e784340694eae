#include "kernels/cuda/skinny_gemm_launch.h"

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/skinny_gemm_kernel.cuh"

namespace tinygpt::cuda {
namespace {

// 32-row tiles, 12 stages (96 KB: two blocks per SM). On the H200 64-row
// tiles (8 stages) were slower at every batch measured (64 and 256 rows:
// docs/benchmarks.md).
using SkinnyTile = SkinnyGemmTraits<2, 12>;

template <class T, SkinnyEpilogue kEpi>
void Launch(const T* x, const T* w, const T* b, T* y, int rows, int in, int out, const GemvKvAppend<T>& kv, cudaStream_t stream) {
  using Tr = SkinnyTile;
  auto* kernel = SkinnyGemmKernel<T, Tr, kEpi>;
  static const bool smem_set = [&] {  // above 48 KB of dynamic shared memory: opt in, once
    TG_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(Tr::kSmemBytes)));
    return true;
  }();
  (void)smem_set;
  const int cols_per_block = kEpi == SkinnyEpilogue::kSwiGLU ? Tr::kBN / 2 : Tr::kBN;
  const dim3 grid((out + cols_per_block - 1) / cols_per_block, (rows + Tr::kBM - 1) / Tr::kBM);
  LaunchKernel(true, kernel, grid, dim3(Tr::kThreads), Tr::kSmemBytes, stream, x, w, b, y, rows, in, out, kv);
}

template <class T>
void LaunchTyped(const T* x, const T* w, const T* b, T* y, int rows, int in, int out, bool swiglu, const SkinnyKvAppend& kv_args,
                 cudaStream_t stream) {
  const GemvKvAppend<T> kv{kv_args.slots, kv_args.k_offset, kv_args.kv_dim, static_cast<T*>(kv_args.k_cache),
                           static_cast<T*>(kv_args.v_cache)};
  if (swiglu) return Launch<T, SkinnyEpilogue::kSwiGLU>(x, w, b, y, rows, in, out, kv, stream);
  Launch<T, SkinnyEpilogue::kBias>(x, w, b, y, rows, in, out, kv, stream);
}

}  // namespace

bool SkinnyGemmTakes(int rows, int in, int width, const void* x, const void* w) {
  static const bool on = EnvOn("TINYGPT_SKINNY_GEMM");
  static const long max_rows = EnvLong("TINYGPT_SKINNY_GEMM_MAX_ROWS", 64);
  static const long max_width = EnvLong("TINYGPT_SKINNY_GEMM_MAX_WIDTH", 16384);
  const bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
  return on && rows > GemvMaxRows() && rows <= max_rows && width <= max_width && in % 8 == 0 && aligned;
}

void LaunchSkinnyGemm(bool bf16, const void* x, const void* w, const void* b, void* y, int rows, int in, int out, bool swiglu,
                      const SkinnyKvAppend& kv, cudaStream_t stream) {
  if (bf16) {
    using T = __nv_bfloat16;
    LaunchTyped<T>(static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(b), static_cast<T*>(y), rows, in, out,
                   swiglu, kv, stream);
  } else {
    using T = __half;
    LaunchTyped<T>(static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(b), static_cast<T*>(y), rows, in, out,
                   swiglu, kv, stream);
  }
}

}  // namespace tinygpt::cuda
