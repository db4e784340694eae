#include "kernels/cuda/skinny_gemm_launch.h"

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/skinny_gemm_kernel.cuh"

namespace tinygpt::cuda {
namespace {

template <class T, int kMTiles, SkinnyEpilogue kEpi>
void Launch(const T* x, const T* w, const T* b, T* y, int rows, int in, int out, const GemvKvAppend<T>& kv, cudaStream_t stream) {
  using Tr = SkinnyGemmTraits<kMTiles>;
  auto* kernel = SkinnyGemmKernel<T, Tr, kEpi>;
  static const bool smem_set = [&] {  // (48 KB and less need no opt-in; set anyway, once)
    TG_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(Tr::kSmemBytes)));
    return true;
  }();
  (void)smem_set;
  const int cols_per_block = kEpi == SkinnyEpilogue::kSwiGLU ? Tr::kBN / 2 : Tr::kBN;
  const dim3 grid((out + cols_per_block - 1) / cols_per_block, (rows + Tr::kBM - 1) / Tr::kBM);
  LaunchKernel(true, kernel, grid, dim3(Tr::kThreads), Tr::kSmemBytes, stream, x, w, b, y, rows, in, out, kv);
}

// Tile height: 64 rows when that grid already has a block per SM, else 32
// (twice the blocks; the weights are then read twice from L2).
// TINYGPT_SKINNY_GEMM_BM=32 or 64 fixes it (the A/B).
template <class T>
void LaunchTyped(const T* x, const T* w, const T* b, T* y, int rows, int in, int out, bool swiglu, const SkinnyKvAppend& kv_args,
                 int num_sms, cudaStream_t stream) {
  static const long forced_bm = EnvLong("TINYGPT_SKINNY_GEMM_BM", 0);
  const GemvKvAppend<T> kv{kv_args.slots, kv_args.k_offset, kv_args.kv_dim, static_cast<T*>(kv_args.k_cache),
                           static_cast<T*>(kv_args.v_cache)};
  const long col_blocks = (out + (swiglu ? 15 : 31)) / (swiglu ? 16 : 32);
  const bool tall = forced_bm ? forced_bm == 64 : col_blocks * ((rows + 63) / 64) >= num_sms;
  if (swiglu) {
    if (tall) return Launch<T, 4, SkinnyEpilogue::kSwiGLU>(x, w, b, y, rows, in, out, kv, stream);
    return Launch<T, 2, SkinnyEpilogue::kSwiGLU>(x, w, b, y, rows, in, out, kv, stream);
  }
  if (tall) return Launch<T, 4, SkinnyEpilogue::kBias>(x, w, b, y, rows, in, out, kv, stream);
  Launch<T, 2, SkinnyEpilogue::kBias>(x, w, b, y, rows, in, out, kv, stream);
}

}  // namespace

bool SkinnyGemmTakes(int rows, int in, int width, const void* x, const void* w) {
  static const bool on = EnvOn("TINYGPT_SKINNY_GEMM");
  static const long max_rows = EnvLong("TINYGPT_SKINNY_GEMM_MAX_ROWS", 512);
  static const long max_width = EnvLong("TINYGPT_SKINNY_GEMM_MAX_WIDTH", 16384);
  const bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
  return on && rows > kGemvMaxRows && rows <= max_rows && width <= max_width && in % 8 == 0 && aligned;
}

void LaunchSkinnyGemm(bool bf16, const void* x, const void* w, const void* b, void* y, int rows, int in, int out, bool swiglu,
                      const SkinnyKvAppend& kv, int num_sms, cudaStream_t stream) {
  if (bf16) {
    using T = __nv_bfloat16;
    LaunchTyped<T>(static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(b), static_cast<T*>(y), rows, in, out,
                   swiglu, kv, num_sms, stream);
  } else {
    using T = __half;
    LaunchTyped<T>(static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(b), static_cast<T*>(y), rows, in, out,
                   swiglu, kv, num_sms, stream);
  }
}

}  // namespace tinygpt::cuda
