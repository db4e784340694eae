// The small fused kernels of the CUDA backend: embedding(+position),
// LayerNorm (fp32 statistics), residual add, SwiGLU, row gather, KV append.
// Storage is T (bf16/fp16); arithmetic is fp32.
#pragma once
#include "kernels/cuda/common.cuh"

namespace tinygpt::cuda {

template <class T>
__global__ void EmbeddingKernel(const int32_t* tokens, const int32_t* positions, const T* tok, const T* pos, T* out, int C) {
  PdlWait();  // launched with programmatic dependent launch (common.cuh)
  PdlLaunchDependents();
  const int t = blockIdx.x;
  const T* te = tok + static_cast<long>(tokens[t]) * C;
  const T* pe = pos ? pos + static_cast<long>(positions[t]) * C : nullptr;
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    out[static_cast<long>(t) * C + c] = FromFloat<T>(ToFloat(te[c]) + (pe ? ToFloat(pe[c]) : 0.f));
}

// One warp per row; two passes over the row (mean, then variance) from L1.
template <class T>
__global__ void LayerNormKernel(const T* x, const T* w, const T* b, T* y, int rows, int C, float eps) {
  PdlWait();  // launched with programmatic dependent launch (common.cuh)
  PdlLaunchDependents();
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

// LayerNorm over 16-byte vectors (C % (16 / sizeof(T)) == 0, at most
// kChunks * 32 vectors, 16-byte aligned rows): one warp per row, a lane keeps
// its chunks of the row (chunk k*32 + lane) in registers for the mean, the
// variance and the output, so each element is read once and a lane's loads
// are issued together. The scalar LayerNormKernel above waits out a memory
// latency per element (about 15 us for one 768-wide row, which a decode step
// pays 25 times). kAdd: x += r first (the residual add, rounded to T and
// stored as AddKernel does; the statistics are of the rounded sum), so the
// result equals AddKernel then LayerNorm. mean/rstd, when non-null, get the
// row's statistics (training keeps them for the backward).
template <class T, int kChunks, bool kAdd>
__global__ void LayerNormVecKernel(T* __restrict__ x, const T* __restrict__ r, const T* __restrict__ w,
                                   const T* __restrict__ b, T* __restrict__ y, float* __restrict__ mean,
                                   float* __restrict__ rstd, int rows, int C, float eps) {
  constexpr int V = Vec16<T>::N;
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
  const int nvec = C / V;
  // The weights are no predecessor's output: loaded before PdlWait, they
  // arrive while the kernel before this one finishes.
  Vec16<T> wv[kChunks], bv[kChunks];
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int cv = k * 32 + lane;
    if (cv < nvec) wv[k] = LoadVec(w + cv * V), bv[k] = LoadVec(b + cv * V);
  }
  PdlWait();
  PdlLaunchDependents();
  if (row >= rows) return;
  const long base = static_cast<long>(row) * C;
  Vec16<T> xv[kChunks];
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int cv = k * 32 + lane;
    if (cv < nvec) {
      xv[k] = LoadVec(x + base + cv * V);
      if constexpr (kAdd) {
        const Vec16<T> rv = LoadVec(r + base + cv * V);
#pragma unroll
        for (int i = 0; i < V; ++i) xv[k].v[i] = FromFloat<T>(ToFloat(xv[k].v[i]) + ToFloat(rv.v[i]));
        StoreVec(x + base + cv * V, xv[k]);
      }
#pragma unroll
      for (int i = 0; i < V; ++i) sum += ToFloat(xv[k].v[i]);
    }
  }
  const float m = WarpSum(sum) / C;
  float var = 0.f;
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    if (k * 32 + lane < nvec) {
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float d = ToFloat(xv[k].v[i]) - m;
        var += d * d;
      }
    }
  }
  const float rs = rsqrtf(WarpSum(var) / C + eps);
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int cv = k * 32 + lane;
    if (cv < nvec) {
      Vec16<T> o;
#pragma unroll
      for (int i = 0; i < V; ++i) o.v[i] = FromFloat<T>((ToFloat(xv[k].v[i]) - m) * rs * ToFloat(wv[k].v[i]) + ToFloat(bv[k].v[i]));
      StoreVec(y + base + cv * V, o);
    }
  }
  if (lane == 0 && mean) mean[row] = m, rstd[row] = rs;
}

template <class T>
__global__ void AddKernel(T* x, const T* y, long n) {
  PdlWait();  // launched with programmatic dependent launch (common.cuh)
  PdlLaunchDependents();
  for (long i = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x; i < n; i += static_cast<long>(gridDim.x) * blockDim.x)
    x[i] = FromFloat<T>(ToFloat(x[i]) + ToFloat(y[i]));
}

template <class T>
__global__ void SwiGLUKernel(const T* h, T* out, int rows, int F) {
  PdlWait();  // launched with programmatic dependent launch (common.cuh)
  PdlLaunchDependents();
  const long n = static_cast<long>(rows) * F;
  for (long i = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x; i < n; i += static_cast<long>(gridDim.x) * blockDim.x) {
    const long t = i / F, f = i % F;
    const float a = ToFloat(h[t * 2 * F + f]), g = ToFloat(h[t * 2 * F + F + f]);
    out[i] = FromFloat<T>(a / (1.f + __expf(-a)) * g);
  }
}

template <class T>
__global__ void GatherRowsKernel(const T* src, const int32_t* rows, T* dst, int C) {
  PdlWait();  // launched with programmatic dependent launch (common.cuh)
  PdlLaunchDependents();
  const T* s = src + static_cast<long>(rows[blockIdx.x]) * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) dst[static_cast<long>(blockIdx.x) * C + c] = s[c];
}

// One block per token: its K and V rows (from the fused qkv row) into its slot.
template <class T>
__global__ void KvAppendKernel(const T* qkv, long qkv_stride, const int32_t* slots, int k_offset, int kv_dim, T* k_cache, T* v_cache) {
  PdlWait();  // launched with programmatic dependent launch (common.cuh)
  PdlLaunchDependents();
  const long slot = slots[blockIdx.x];
  if (slot < 0) return;
  const T* row = qkv + blockIdx.x * qkv_stride + k_offset;
  for (int c = threadIdx.x; c < kv_dim; c += blockDim.x) {
    k_cache[slot * kv_dim + c] = row[c];
    v_cache[slot * kv_dim + c] = row[kv_dim + c];
  }
}

// The same with 16-byte copies, one warp per token (kv_dim % 8 == 0 and the
// fused row's K offset and stride 8-aligned: the model's head dims).
template <class T>
__global__ void KvAppendVecKernel(const T* __restrict__ qkv, long qkv_stride, const int32_t* __restrict__ slots, int tokens,
                                  int k_offset, int kv_dim, T* __restrict__ k_cache, T* __restrict__ v_cache) {
  PdlWait();  // launched with programmatic dependent launch (common.cuh)
  PdlLaunchDependents();
  const int t = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
  if (t >= tokens) return;
  const long slot = slots[t];
  if (slot < 0) return;
  const uint4* k = reinterpret_cast<const uint4*>(qkv + t * qkv_stride + k_offset);
  const uint4* v = reinterpret_cast<const uint4*>(qkv + t * qkv_stride + k_offset + kv_dim);
  uint4* kd = reinterpret_cast<uint4*>(k_cache + slot * kv_dim);
  uint4* vd = reinterpret_cast<uint4*>(v_cache + slot * kv_dim);
  for (int c = lane; c < kv_dim / 8; c += 32) {
    kd[c] = k[c];
    vd[c] = v[c];
  }
}

}  // namespace tinygpt::cuda
