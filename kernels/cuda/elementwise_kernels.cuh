// The small fused kernels of the CUDA backend: embedding(+position),
// LayerNorm (fp32 statistics), residual add, SwiGLU, row gather, KV append.
// Storage is T (bf16/fp16); arithmetic is fp32.
#pragma once
#include "kernels/cuda/common.cuh"

namespace tinygpt::cuda {

template <class T>
__global__ void EmbeddingKernel(const int32_t* tokens, const int32_t* positions, const T* tok, const T* pos, T* out, int C) {
  const int t = blockIdx.x;
  const T* te = tok + static_cast<long>(tokens[t]) * C;
  const T* pe = pos ? pos + static_cast<long>(positions[t]) * C : nullptr;
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    out[static_cast<long>(t) * C + c] = FromFloat<T>(ToFloat(te[c]) + (pe ? ToFloat(pe[c]) : 0.f));
}

// One warp per row; two passes over the row (mean, then variance) from L1.
template <class T>
__global__ void LayerNormKernel(const T* x, const T* w, const T* b, T* y, int rows, int C, float eps) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
  if (row >= rows) return;
  const T* xr = x + static_cast<long>(row) * C;
  float sum = 0.f;
  for (int c = lane; c < C; c += 32) sum += ToFloat(xr[c]);
  const float mean = WarpSum(sum) / C;
  float var = 0.f;
  for (int c = lane; c < C; c += 32) {
    const float d = ToFloat(xr[c]) - mean;
    var += d * d;
  }
  const float rstd = rsqrtf(WarpSum(var) / C + eps);
  T* yr = y + static_cast<long>(row) * C;
  for (int c = lane; c < C; c += 32) yr[c] = FromFloat<T>((ToFloat(xr[c]) - mean) * rstd * ToFloat(w[c]) + ToFloat(b[c]));
}

// x += r, then y = LayerNorm(x), one warp per row: the sum is rounded to T
// as AddKernel stores it, and the statistics are taken of the rounded values
// (each lane re-reads only what it wrote), so the result equals AddKernel
// followed by LayerNormKernel.
template <class T>
__global__ void AddLayerNormKernel(T* x, const T* r, const T* w, const T* b, T* y, int rows, int C, float eps) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
  if (row >= rows) return;
  T* xr = x + static_cast<long>(row) * C;
  const T* rr = r + static_cast<long>(row) * C;
  float sum = 0.f;
  for (int c = lane; c < C; c += 32) {
    const T v = FromFloat<T>(ToFloat(xr[c]) + ToFloat(rr[c]));
    xr[c] = v;
    sum += ToFloat(v);
  }
  const float mean = WarpSum(sum) / C;
  float var = 0.f;
  for (int c = lane; c < C; c += 32) {
    const float d = ToFloat(xr[c]) - mean;
    var += d * d;
  }
  const float rstd = rsqrtf(WarpSum(var) / C + eps);
  T* yr = y + static_cast<long>(row) * C;
  for (int c = lane; c < C; c += 32) yr[c] = FromFloat<T>((ToFloat(xr[c]) - mean) * rstd * ToFloat(w[c]) + ToFloat(b[c]));
}

template <class T>
__global__ void AddKernel(T* x, const T* y, long n) {
  for (long i = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x; i < n; i += static_cast<long>(gridDim.x) * blockDim.x)
    x[i] = FromFloat<T>(ToFloat(x[i]) + ToFloat(y[i]));
}

template <class T>
__global__ void SwiGLUKernel(const T* h, T* out, int rows, int F) {
  const long n = static_cast<long>(rows) * F;
  for (long i = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x; i < n; i += static_cast<long>(gridDim.x) * blockDim.x) {
    const long t = i / F, f = i % F;
    const float a = ToFloat(h[t * 2 * F + f]), g = ToFloat(h[t * 2 * F + F + f]);
    out[i] = FromFloat<T>(a / (1.f + __expf(-a)) * g);
  }
}

template <class T>
__global__ void GatherRowsKernel(const T* src, const int32_t* rows, T* dst, int C) {
  const T* s = src + static_cast<long>(rows[blockIdx.x]) * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) dst[static_cast<long>(blockIdx.x) * C + c] = s[c];
}

// One block per token: its K and V rows (from the fused qkv row) into its slot.
template <class T>
__global__ void KvAppendKernel(const T* qkv, long qkv_stride, const int32_t* slots, int k_offset, int kv_dim, T* k_cache, T* v_cache) {
  const long slot = slots[blockIdx.x];
  if (slot < 0) return;
  const T* row = qkv + blockIdx.x * qkv_stride + k_offset;
  for (int c = threadIdx.x; c < kv_dim; c += blockDim.x) {
    k_cache[slot * kv_dim + c] = row[c];
    v_cache[slot * kv_dim + c] = row[kv_dim + c];
  }
}

}  // namespace tinygpt::cuda
