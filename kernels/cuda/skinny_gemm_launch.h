// Host-side launch of the skinny GEMM (skinny_gemm_kernel.cuh): the linear
// layers of decode steps above the GEMV's rows, with the bias, SwiGLU or
// the KV-cache append fused. Which products it takes is decided here; the
// backend (cuda_backend.cu) sends the rest to cuBLASLt.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace tinygpt::cuda {

// The QKV product's K and V columns also stored in the cache (as GemvKvAppend):
// column o is K feature o - k_offset for k_offset <= o < k_offset + kv_dim,
// V feature o - k_offset - kv_dim above; row r goes to slot slots[r]
// (negative: not stored). slots == nullptr: no append.
struct SkinnyKvAppend {
  const int32_t* slots = nullptr;
  int k_offset = 0, kv_dim = 0;
  void* k_cache = nullptr;
  void* v_cache = nullptr;
};

// Whether the skinny GEMM takes a product of `rows` rows, `in` inputs and
// `width` weight rows (2·F for SwiGLU): 16-bit storage, more rows than the
// GEMV takes (GemvMaxRows, gemv_kernel.cuh) and at most
// TINYGPT_SKINNY_GEMM_MAX_ROWS (64: on the H200 a bench-125m decode step
// was 6-8% faster at 64 sequences than with cuBLASLt's products and 14%
// slower at 256, docs/benchmarks.md), width up to
// TINYGPT_SKINNY_GEMM_MAX_WIDTH (16384: the vocabulary's product stays with
// cuBLASLt), whole 16-byte rows (in % 8 == 0) on 16-byte aligned x and w.
// TINYGPT_SKINNY_GEMM=0 turns it off (the A/B of scripts/device-run.sh decode).
bool SkinnyGemmTakes(int rows, int in, int width, const void* x, const void* w);

// y[rows, out] = x[rows, in] · w[out, in]^T + b (b may be null); with
// swiglu, w has 2·out rows (values, then gates) and y = silu(a) · g.
void LaunchSkinnyGemm(bool bf16, const void* x, const void* w, const void* b, void* y, int rows, int in, int out, bool swiglu,
                      const SkinnyKvAppend& kv, cudaStream_t stream);

}  // namespace tinygpt::cuda
