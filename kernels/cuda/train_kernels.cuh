// The training ops of the CUDA backend other than GEMMs and attention:
// backward of LayerNorm, embedding and SwiGLU, bias gradients, the fused
// cross-entropy, the global gradient norm and the fused AdamW. Activations
// are T (bf16/fp16/fp32); parameter gradients, LayerNorm statistics and the
// optimizer's buffers fp32; arithmetic fp32.
#pragma once
#include <cfloat>

#include "kernels/cuda/common.cuh"

namespace tinygpt::cuda {

// Grid-stride loops over n elements.
#define TG_GRID_STRIDE(i, n) \
  for (long i = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x; i < (n); i += static_cast<long>(gridDim.x) * blockDim.x)

template <class T>
__global__ void CastFromFloatKernel(const float* src, T* dst, long n) {
  TG_GRID_STRIDE(i, n) dst[i] = FromFloat<T>(src[i]);
}

// dst[i] += src[i] (fp32), e.g. a bias gradient from cuBLASLt's BGRADB epilogue into db.
// static (as SumSquaresKernel): this header is included by several of the backend's files.
static __global__ void AddFloatsKernel(float* dst, const float* src, long n) {
  TG_GRID_STRIDE(i, n) dst[i] += src[i];
}

// LayerNorm forward that keeps mean and rstd; one warp per row.
template <class T>
__global__ void LayerNormTrainKernel(const T* x, const T* w, const T* b, T* y, float* mean, float* rstd, int rows, int C,
                                     float eps) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
  if (row >= rows) return;
  const T* xr = x + static_cast<long>(row) * C;
  float sum = 0.f;
  for (int c = lane; c < C; c += 32) sum += ToFloat(xr[c]);
  const float m = WarpSum(sum) / C;
  float var = 0.f;
  for (int c = lane; c < C; c += 32) {
    const float d = ToFloat(xr[c]) - m;
    var += d * d;
  }
  const float rs = rsqrtf(WarpSum(var) / C + eps);
  T* yr = y + static_cast<long>(row) * C;
  for (int c = lane; c < C; c += 32) yr[c] = FromFloat<T>((ToFloat(xr[c]) - m) * rs * ToFloat(w[c]) + ToFloat(b[c]));
  if (lane == 0) mean[row] = m, rstd[row] = rs;
}

// LayerNorm backward in two kernels without shared state: dx row by row
// (one warp per row, as the forward), then dw/db column by column (as the
// bias gradient), each simple enough to see what bounds it.
// The pointers are __restrict__: dx is read then written in the second
// loop, and without the promise that it aliases nothing else the compiler
// may not load the next columns' dx before this column's store, so each of
// the row's 24 dx loads (the only ones that miss L1) waited for the last.
template <class T>
__global__ void LayerNormBackwardDxKernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ w,
                                          const float* __restrict__ mean, const float* __restrict__ rstd,
                                          T* __restrict__ dx, int rows, int C) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
  if (row >= rows) return;
  const T* xr = x + static_cast<long>(row) * C;
  const T* dyr = dy + static_cast<long>(row) * C;
  const float m = mean[row], rs = rstd[row];
  float dnorm_mean = 0.f, dnorm_norm_mean = 0.f;
  for (int c = lane; c < C; c += 32) {
    const float norm = (ToFloat(xr[c]) - m) * rs, dnorm = ToFloat(dyr[c]) * ToFloat(w[c]);
    dnorm_mean += dnorm;
    dnorm_norm_mean += dnorm * norm;
  }
  dnorm_mean = WarpSum(dnorm_mean) / C;
  dnorm_norm_mean = WarpSum(dnorm_norm_mean) / C;
  T* dxr = dx + static_cast<long>(row) * C;
#pragma unroll 8
  for (int c = lane; c < C; c += 32) {
    const float norm = (ToFloat(xr[c]) - m) * rs, dnorm = ToFloat(dyr[c]) * ToFloat(w[c]);
    dxr[c] = FromFloat<T>(ToFloat(dxr[c]) + (dnorm - dnorm_mean - norm * dnorm_norm_mean) * rs);
  }
}

// dw[c] += Σ_rows dy·norm, db[c] += Σ_rows dy: blocks of 32 columns × 8
// row lanes over a slice of rows; slices meet in fp32 atomics.
template <class T>
__global__ void LayerNormBackwardDwDbKernel(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ mean,
                                            const float* __restrict__ rstd, float* dw, float* db, int rows, int C) {
  __shared__ float part_w[8][33], part_b[8][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  const int per = (rows + gridDim.y - 1) / gridDim.y, r0 = blockIdx.y * per, r1 = min(rows, r0 + per);
  float sw = 0.f, sb = 0.f;
  if (c < C)
#pragma unroll 4
    for (int r = r0 + threadIdx.y; r < r1; r += 8) {
      const long i = static_cast<long>(r) * C + c;
      const float g = ToFloat(dy[i]);
      sw += g * (ToFloat(x[i]) - mean[r]) * rstd[r];
      sb += g;
    }
  part_w[threadIdx.y][threadIdx.x] = sw;
  part_b[threadIdx.y][threadIdx.x] = sb;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    for (int k = 1; k < 8; ++k) sw += part_w[k][threadIdx.x], sb += part_b[k][threadIdx.x];
    atomicAdd(&dw[c], sw);
    atomicAdd(&db[c], sb);
  }
}

// LayerNorm backward in one pass over the rows (llm.c / Apex style): one
// warp per row, each lane owning the same 16-byte column chunks of every
// row (chunk k*32 + lane, k < kChunks), so that a row's x, dy and dx are
// read with a few 16-byte loads all issued before the first use, and the
// lane's dw/db partials stay in registers across all the rows its warp
// visits. At the end the block's warps meet in shared memory and each block
// adds its partials to dw/db with one fp32 atomic per column. dx
// accumulates. Needs C % (16 / sizeof(T)) == 0 and C <= 32·kChunks·that.
// One block of 12 warps per SM: a lane holds its chunks of x, dy, dx, w and
// 2·8·kChunks fp32 partials (~130 registers at bench-125m's 768 in bf16);
// 16 warps would cap it at 128 and spill.
inline constexpr int kLayerNormBackwardThreads = 384;
template <class T, int kChunks>
__global__ void __launch_bounds__(kLayerNormBackwardThreads, 1)
    LayerNormBackwardVecKernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ w,
                               const float* __restrict__ mean, const float* __restrict__ rstd, T* __restrict__ dx,
                               float* __restrict__ dw, float* __restrict__ db, int rows, int C) {
  constexpr int V = Vec16<T>::N;
  extern __shared__ float ln_red[];  // [2 * C]: the block's dw, then db
  for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) ln_red[c] = 0.f;
  __syncthreads();
  const int lane = threadIdx.x & 31, warps = blockDim.x / 32;
  const int nvec = C / V;
  Vec16<T> wv[kChunks];
  float dw_acc[kChunks][V], db_acc[kChunks][V];
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int cv = k * 32 + lane;
    if (cv < nvec) wv[k] = LoadVec(w + cv * V);
#pragma unroll
    for (int i = 0; i < V; ++i) dw_acc[k][i] = db_acc[k][i] = 0.f;
  }
  const float inv_c = 1.f / C;
  for (int row = blockIdx.x * warps + threadIdx.x / 32; row < rows; row += gridDim.x * warps) {
    const long base = static_cast<long>(row) * C;
    Vec16<T> xv[kChunks], dyv[kChunks], dxv[kChunks];
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int cv = k * 32 + lane;
      if (cv < nvec) {
        xv[k] = LoadVec(x + base + cv * V);
        dyv[k] = LoadVec(dy + base + cv * V);
        dxv[k] = LoadVec(dx + base + cv * V);
      }
    }
    const float m = mean[row], rs = rstd[row];
    float s1 = 0.f, s2 = 0.f;  // Σ dnorm, Σ dnorm·norm
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      if (k * 32 + lane < nvec) {
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const float g = ToFloat(dyv[k].v[i]), norm = (ToFloat(xv[k].v[i]) - m) * rs, dnorm = g * ToFloat(wv[k].v[i]);
          s1 += dnorm;
          s2 += dnorm * norm;
          dw_acc[k][i] += g * norm;
          db_acc[k][i] += g;
        }
      }
    }
    s1 = WarpSum(s1) * inv_c;
    s2 = WarpSum(s2) * inv_c;
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int cv = k * 32 + lane;
      if (cv < nvec) {
        Vec16<T> o;
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const float norm = (ToFloat(xv[k].v[i]) - m) * rs, dnorm = ToFloat(dyv[k].v[i]) * ToFloat(wv[k].v[i]);
          o.v[i] = FromFloat<T>(ToFloat(dxv[k].v[i]) + (dnorm - s1 - norm * s2) * rs);
        }
        StoreVec(dx + base + cv * V, o);
      }
    }
  }
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int cv = k * 32 + lane;
    if (cv < nvec) {
#pragma unroll
      for (int i = 0; i < V; ++i) {
        atomicAdd(&ln_red[cv * V + i], dw_acc[k][i]);
        atomicAdd(&ln_red[C + cv * V + i], db_acc[k][i]);
      }
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    atomicAdd(&dw[c], ln_red[c]);
    atomicAdd(&db[c], ln_red[C + c]);
  }
}

// SwiGLU forward and backward over 16-byte vectors (F % (16 / sizeof(T)) ==
// 0): a block per row (grid-stride), threads across the row's vectors.
// h = [a | g] (rows × 2F), out = silu(a)·g (rows × F).
template <class T>
__global__ void SwiGLUVecKernel(const T* __restrict__ h, T* __restrict__ out, int rows, int F) {
  constexpr int V = Vec16<T>::N;
  PdlWait();  // inference launches it with programmatic dependent launch (common.cuh)
  PdlLaunchDependents();
  for (int t = blockIdx.x; t < rows; t += gridDim.x) {
    const T* hr = h + static_cast<long>(t) * 2 * F;
    T* o = out + static_cast<long>(t) * F;
    for (int f = threadIdx.x * V; f < F; f += blockDim.x * V) {
      const Vec16<T> a = LoadVec(hr + f), g = LoadVec(hr + F + f);
      Vec16<T> r;
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float av = ToFloat(a.v[i]);
        r.v[i] = FromFloat<T>(av / (1.f + __expf(-av)) * ToFloat(g.v[i]));
      }
      StoreVec(o + f, r);
    }
  }
}

// dh = d(swiglu)/dh · dsw (dsw: rows × F, h and dh: rows × 2F).
template <class T>
__global__ void SwiGLUBackwardVecKernel(const T* __restrict__ dsw, const T* __restrict__ h, T* __restrict__ dh, int rows,
                                        int F) {
  constexpr int V = Vec16<T>::N;
  for (int t = blockIdx.x; t < rows; t += gridDim.x) {
    const T* hr = h + static_cast<long>(t) * 2 * F;
    const T* d = dsw + static_cast<long>(t) * F;
    T* o = dh + static_cast<long>(t) * 2 * F;
    for (int f = threadIdx.x * V; f < F; f += blockDim.x * V) {
      const Vec16<T> a = LoadVec(hr + f), g = LoadVec(hr + F + f), dv = LoadVec(d + f);
      Vec16<T> da, dg;
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float av = ToFloat(a.v[i]), gv = ToFloat(g.v[i]), dd = ToFloat(dv.v[i]);
        const float sig = 1.f / (1.f + __expf(-av));
        da.v[i] = FromFloat<T>(dd * gv * sig * (1.f + av * (1.f - sig)));
        dg.v[i] = FromFloat<T>(dd * av * sig);
      }
      StoreVec(o + f, da);
      StoreVec(o + F + f, dg);
    }
  }
}

// Scatter-add of one token's gradient row into its embedding rows.
template <class T>
__global__ void EmbeddingBackwardKernel(const T* dout, const int32_t* tokens, const int32_t* positions, float* dtok,
                                        float* dpos, int C) {
  const int t = blockIdx.x;
  const T* d = dout + static_cast<long>(t) * C;
  float* te = dtok + static_cast<long>(tokens[t]) * C;
  float* pe = dpos ? dpos + static_cast<long>(positions[t]) * C : nullptr;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float g = ToFloat(d[c]);
    atomicAdd(&te[c], g);
    if (pe) atomicAdd(&pe[c], g);
  }
}

// dh = d(swiglu)/dh · dsw for h = [a | g], out = silu(a)·g.
template <class T>
__global__ void SwiGLUBackwardKernel(const T* dsw, const T* h, T* dh, int rows, int F) {
  const long n = static_cast<long>(rows) * F;
  TG_GRID_STRIDE(i, n) {
    const long t = i / F, f = i % F;
    const float a = ToFloat(h[t * 2 * F + f]), g = ToFloat(h[t * 2 * F + F + f]), d = ToFloat(dsw[i]);
    const float sig = 1.f / (1.f + __expf(-a));
    dh[t * 2 * F + f] = FromFloat<T>(d * g * sig * (1.f + a * (1.f - sig)));
    dh[t * 2 * F + F + f] = FromFloat<T>(d * a * sig);
  }
}

// Two adjacent elements, loaded and stored as one (4 bytes for bf16/fp16).
template <class T>
struct alignas(2 * sizeof(T)) Two {
  T x, y;
};

// db[c] += Σ_rows dy[row, c]: blocks of 64 columns (two per thread, read
// as one 4-byte load when cols is even) × 8 row lanes, each block over a
// slice of rows; the slices' sums meet in fp32 atomics.
template <class T>
__global__ void BiasGradKernel(const T* dy, float* db, int rows, int cols) {
  __shared__ float part[8][65];
  const int c = blockIdx.x * 64 + 2 * threadIdx.x;
  const int per = (rows + gridDim.y - 1) / gridDim.y, r0 = blockIdx.y * per, r1 = min(rows, r0 + per);
  const bool pairs = cols % 2 == 0;
  float s0 = 0.f, s1 = 0.f;
  for (int r = r0 + threadIdx.y; r < r1; r += 8) {
    const T* row = dy + static_cast<long>(r) * cols;
    if (pairs && c < cols) {
      const Two<T> v = *reinterpret_cast<const Two<T>*>(row + c);
      s0 += ToFloat(v.x), s1 += ToFloat(v.y);
    } else {
      if (c < cols) s0 += ToFloat(row[c]);
      if (c + 1 < cols) s1 += ToFloat(row[c + 1]);
    }
  }
  part[threadIdx.y][2 * threadIdx.x] = s0;
  part[threadIdx.y][2 * threadIdx.x + 1] = s1;
  __syncthreads();
  if (threadIdx.y == 0) {
    for (int k = 1; k < 8; ++k) s0 += part[k][2 * threadIdx.x], s1 += part[k][2 * threadIdx.x + 1];
    if (c < cols) atomicAdd(&db[c], s0);
    if (c + 1 < cols) atomicAdd(&db[c + 1], s1);
  }
}

// Fused cross-entropy, one block per row: max (and argmax), Σ exp, then the
// gradient written over the logits if dlogits == logits (each element is
// read by the thread that overwrites it, after the two reductions). Never
// holds more than a row in fp32. Rows of even length are read two elements
// per load (the logits are the largest tensor of the step: 4 GB at 64K
// tokens × 32000 in bf16).
template <class T>
__global__ void CrossEntropyKernel(const T* logits, const int32_t* targets, T* dlogits, int V, float grad_mul,
                                   float* row_loss, int32_t* row_hit) {
  __shared__ float red_v[32];
  __shared__ int red_i[32];
  const long t = blockIdx.x;
  const T* l = logits + t * V;
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const bool pairs = V % 2 == 0;
  const int n = pairs ? V / 2 : V;  // loads per row
  auto load = [&](int k, float* a, float* b) {  // element(s) of load k: indices 2k, 2k+1 (pairs) or k
    if (pairs) {
      const Two<T> v = reinterpret_cast<const Two<T>*>(l)[k];
      *a = ToFloat(v.x), *b = ToFloat(v.y);
    } else {
      *a = ToFloat(l[k]), *b = -FLT_MAX;
    }
  };
  float mx = -FLT_MAX;
  int arg = 0;
  for (int k = threadIdx.x; k < n; k += blockDim.x) {
    float a, b;
    load(k, &a, &b);
    const int i = pairs ? 2 * k : k;
    if (a > mx) mx = a, arg = i;
    if (pairs && b > mx) mx = b, arg = i + 1;
  }
  // Block argmax (ties: the lowest index, as the CPU's first-max scan).
  for (int o = 16; o > 0; o >>= 1) {
    const float om = __shfl_xor_sync(0xffffffffu, mx, o);
    const int oa = __shfl_xor_sync(0xffffffffu, arg, o);
    if (om > mx || (om == mx && oa < arg)) mx = om, arg = oa;
  }
  if (lane == 0) red_v[warp] = mx, red_i[warp] = arg;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < warps; ++w)
      if (red_v[w] > red_v[0] || (red_v[w] == red_v[0] && red_i[w] < red_i[0])) red_v[0] = red_v[w], red_i[0] = red_i[w];
  }
  __syncthreads();
  mx = red_v[0];
  arg = red_i[0];
  __syncthreads();
  float sum = 0.f;
  for (int k = threadIdx.x; k < n; k += blockDim.x) {
    float a, b;
    load(k, &a, &b);
    sum += __expf(a - mx) + (pairs ? __expf(b - mx) : 0.f);
  }
  sum = WarpSum(sum);
  if (lane == 0) red_v[warp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (int w = 0; w < warps; ++w) s += red_v[w];
    red_v[0] = s;
  }
  __syncthreads();
  const float lse = mx + __logf(red_v[0]);
  const int target = targets[t];
  if (threadIdx.x == 0) {
    row_loss[t] = lse - ToFloat(l[target]);
    row_hit[t] = arg == target;
  }
  __syncthreads();  // l[target] is read before anyone overwrites it
  if (!dlogits) return;
  T* d = dlogits + t * V;
  for (int k = threadIdx.x; k < n; k += blockDim.x) {
    float a, b;
    load(k, &a, &b);
    const int i = pairs ? 2 * k : k;
    const float ga = grad_mul * (__expf(a - lse) - (i == target ? 1.f : 0.f));
    if (pairs) {
      const float gb = grad_mul * (__expf(b - lse) - (i + 1 == target ? 1.f : 0.f));
      reinterpret_cast<Two<T>*>(d)[k] = Two<T>{FromFloat<T>(ga), FromFloat<T>(gb)};
    } else {
      d[k] = FromFloat<T>(ga);
    }
  }
}

// Cross-entropy in two passes over the row instead of three, for rows of
// 16-byte vectors (V % (16 / sizeof(T)) == 0): the first keeps a running
// (max, Σ exp(x − max), argmax) per thread (online softmax), merged across
// the block; the second writes the gradient (over the logits when dlogits
// == logits: each vector is read by the thread that overwrites it, after the
// reductions). Same results as CrossEntropyKernel (ties: lowest index).
template <class T>
__device__ __forceinline__ void OnlineMerge(float& m, float& s, int& arg, float om, float os, int oa) {
  const float nm = fmaxf(m, om);
  s = s * __expf(m - nm) + os * __expf(om - nm);
  if (om > m || (om == m && oa < arg)) arg = oa;
  m = nm;
}

template <class T>
__global__ void CrossEntropyVecKernel(const T* logits, const int32_t* targets, T* dlogits, int V, float grad_mul,
                                      float* row_loss, int32_t* row_hit) {
  constexpr int N = Vec16<T>::N;
  __shared__ float red_m[32], red_s[32];
  __shared__ int red_i[32];
  const long t = blockIdx.x;
  const T* l = logits + t * V;
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int nv = V / N;
  float mx = -FLT_MAX, sum = 0.f;
  int arg = 0x7fffffff;
  for (int k = threadIdx.x; k < nv; k += blockDim.x) {
    const Vec16<T> v = LoadVec(l + k * N);
    float a[N], vmax = -FLT_MAX;
    int varg = 0;
#pragma unroll
    for (int i = 0; i < N; ++i) {
      a[i] = ToFloat(v.v[i]);
      if (a[i] > vmax) vmax = a[i], varg = k * N + i;
    }
    if (vmax > mx) {
      sum *= __expf(mx - vmax);
      mx = vmax, arg = varg;
    }
#pragma unroll
    for (int i = 0; i < N; ++i) sum += __expf(a[i] - mx);
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float om = __shfl_xor_sync(0xffffffffu, mx, o), os = __shfl_xor_sync(0xffffffffu, sum, o);
    const int oa = __shfl_xor_sync(0xffffffffu, arg, o);
    OnlineMerge<T>(mx, sum, arg, om, os, oa);
  }
  if (lane == 0) red_m[warp] = mx, red_s[warp] = sum, red_i[warp] = arg;
  __syncthreads();
  if (threadIdx.x == 0) {
    float m = red_m[0], s = red_s[0];
    int a = red_i[0];
    for (int w = 1; w < warps; ++w) OnlineMerge<T>(m, s, a, red_m[w], red_s[w], red_i[w]);
    red_m[0] = m, red_s[0] = s, red_i[0] = a;
  }
  __syncthreads();
  const float lse = red_m[0] + __logf(red_s[0]);
  arg = red_i[0];
  const int target = targets[t];
  if (threadIdx.x == 0) {
    row_loss[t] = lse - ToFloat(l[target]);
    row_hit[t] = arg == target;
  }
  __syncthreads();  // l[target] is read before anyone overwrites it
  if (!dlogits) return;
  T* d = dlogits + t * V;
  for (int k = threadIdx.x; k < nv; k += blockDim.x) {
    const Vec16<T> v = LoadVec(l + k * N);
    Vec16<T> g;
#pragma unroll
    for (int i = 0; i < N; ++i)
      g.v[i] = FromFloat<T>(grad_mul * (__expf(ToFloat(v.v[i]) - lse) - (k * N + i == target ? 1.f : 0.f)));
    StoreVec(d + k * N, g);
  }
}

// Partial Σ g² per block in double (a fixed grid: the same bits every call).
static __global__ void SumSquaresKernel(const float* g, long n, double* partial) {
  __shared__ double red[32];
  double s = 0.0;
  TG_GRID_STRIDE(i, n) s += static_cast<double>(g[i]) * g[i];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < blockDim.x / 32; ++w) total += red[w];
    partial[blockIdx.x] = total;
  }
}

// AdamW on fp32 masters with the gradient scale (clipping, loss scale)
// folded in; also refreshes the compute copy of the weights.
template <class T>
__global__ void AdamWKernel(float* p, const float* g, float* m, float* v, long n, float lr, float beta1, float beta2,
                            float eps, float weight_decay, float bc1, float bc2, float grad_scale, T* p_compute) {
  TG_GRID_STRIDE(i, n) {
    const float gi = g[i] * grad_scale;
    const float mi = beta1 * m[i] + (1.f - beta1) * gi;
    const float vi = beta2 * v[i] + (1.f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float pi = p[i] - lr * ((mi / bc1) / (sqrtf(vi / bc2) + eps) + weight_decay * p[i]);
    p[i] = pi;
    if (p_compute) p_compute[i] = FromFloat<T>(pi);
  }
}

// AdamWKernel four parameters at a time (16-byte loads and stores of p, g,
// m, v; 4·sizeof(T) bytes of the compute copy) for n % 4 == 0 and aligned
// pointers: the same arithmetic per element.
template <class T>
struct alignas(4 * sizeof(T)) Four {
  T v[4];
};
template <class T>
__global__ void AdamWVecKernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                               float* __restrict__ v, long n4, float lr, float beta1, float beta2, float eps, float weight_decay,
                               float bc1, float bc2, float grad_scale, T* __restrict__ p_compute) {
  TG_GRID_STRIDE(i, n4) {
    const float4 gv = reinterpret_cast<const float4*>(g)[i];
    float4 mv = reinterpret_cast<float4*>(m)[i], vv = reinterpret_cast<float4*>(v)[i], pv = reinterpret_cast<float4*>(p)[i];
    float* pe = &pv.x;
    float* me = &mv.x;
    float* ve = &vv.x;
    const float ge[4] = {gv.x, gv.y, gv.z, gv.w};
    Four<T> out;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float gi = ge[k] * grad_scale;
      const float mi = beta1 * me[k] + (1.f - beta1) * gi;
      const float vi = beta2 * ve[k] + (1.f - beta2) * gi * gi;
      me[k] = mi;
      ve[k] = vi;
      pe[k] = pe[k] - lr * ((mi / bc1) / (sqrtf(vi / bc2) + eps) + weight_decay * pe[k]);
      out.v[k] = FromFloat<T>(pe[k]);
    }
    reinterpret_cast<float4*>(m)[i] = mv;
    reinterpret_cast<float4*>(v)[i] = vv;
    reinterpret_cast<float4*>(p)[i] = pv;
    if (p_compute) reinterpret_cast<Four<T>*>(p_compute)[i] = out;
  }
}

}  // namespace tinygpt::cuda
