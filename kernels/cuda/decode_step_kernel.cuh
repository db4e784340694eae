// A decode step of a few rows (1-4 sequences, one new token each) as one
// persistent kernel: every transformer block's five ops run as phases of
// the same grid, separated by grid-wide barriers instead of kernel launches.
//
// Why: at one sequence a step of bench-125m was 66 kernels of ~4.5 us each
// (H200, docs/benchmarks.md, issue #23), while its weights take 47 us to
// read at the copy bandwidth: each kernel paid its launch, its ramp and its
// drain. Inside one kernel a phase boundary is an arrival counter in L2, and
// each warp requests the weight rows of its next phase (cp.async into its
// own shared memory) before it waits at the barrier, so the weights stream
// in while the grid waits for the slowest block.
//
// Phases of one layer (R rows of width d; outputs spread over all warps of
// the grid, one weight row per warp at a time, as the GEMV of gemv_kernel.cuh):
//   A  every block normalizes x (norm1) into shared memory; qkv = ·Wqkv + b,
//      K and V appended to the cache
//   B  decode attention: blocks take (sequence, KV head, key split) items,
//      each as DecodeAttentionBlock (decode_attention_kernel.cuh)
//   C  every block merges the splits' partials into shared memory; x += ·Wo + bo
//   D  every block normalizes x (norm2); sw = SwiGLU(·W12 + b12)
//   E  x += sw·W3 + b3
// with a barrier after each (the last layer's E ends the kernel). Rounding
// follows the op-by-op path: the norm's output, each product and the SwiGLU
// inputs are rounded to T where those ops store them.
//
// All blocks must be resident at once (the barrier waits for every one): the
// launch sizes the grid to the occupancy of one wave. Activations written in
// this kernel are read through L2 (__ldcg, cp.async.cg), never through the
// non-coherent or L1 paths, which could hold another SM's stale copy.
#pragma once
#include <cfloat>

#include "kernels/cuda/decode_attention_kernel.cuh"
#include "kernels/cuda/gemv_kernel.cuh"

namespace tinygpt::cuda {

constexpr int kStepMaxRows = 4;     // rows (sequences) a step kernel takes
constexpr int kStepMaxSplits = 16;  // key splits of its attention phase
// A barrier that has waited this many polls (seconds) traps instead of hanging.
constexpr long kStepBarrierPolls = 1L << 24;

template <class T>
struct StepLayer {
  const T *norm1_w, *norm1_b, *qkv_w, *qkv_b, *proj_w, *proj_b, *norm2_w, *norm2_b, *w12_w, *w12_b, *w3_w, *w3_b;
  T *k_cache, *v_cache;
};

// The grid barrier's state (zero before the first launch, and left zero by
// every barrier's last arrival).
struct StepBarrier {
  unsigned count;
  unsigned generation;
};

// Byte offsets of the dynamic shared memory's regions in the GEMV phases
// (the attention phase uses all of it from 0 as its own layout).
struct StepSmem {
  int norm;     // the norm's weight then bias: 2 × d elements
  int weights;  // the split weights of phase C: rows × n_heads × kStepMaxSplits floats
  int regions;  // kWarps prefetch regions of region_vecs 16-byte vectors
  int region_vecs;
};

template <class T>
struct DecodeStepParams {
  const StepLayer<T>* layers;  // device array of n_layers
  int n_layers, rows, d, F, qkv_dim;
  float eps;
  T* x;  // [rows, d] the residual stream, in and out
  T* qkv;
  T* att;  // [rows, d] the attention output when unsplit
  T* sw;   // [rows, F]
  const int32_t* slots;
  AttentionParams attn;  // q = qkv, out = att; the caches set per layer
  int attn_items;        // num_seqs × n_kv_heads × num_splits
  StepBarrier* barrier;
  StepSmem smem;
};

// Waits until every block of the grid has arrived. Thread 0 reads the
// generation before it arrives (it cannot move before every block has), the
// last arrival resets the count and then moves the generation; the release
// and acquire chain makes every block's writes before the barrier visible to
// every block after it.
__device__ __forceinline__ void StepGridSync(StepBarrier* bar) {
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned gen, arrived;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(gen) : "l"(&bar->generation) : "memory");
    asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;\n" : "=r"(arrived) : "l"(&bar->count) : "memory");
    if (arrived == gridDim.x - 1) {
      asm volatile("st.relaxed.gpu.global.u32 [%0], 0;\n" ::"l"(&bar->count) : "memory");
      asm volatile("red.release.gpu.global.add.u32 [%0], 1;\n" ::"l"(&bar->generation) : "memory");
    } else {
      unsigned now;
      long polls = 0;
      do {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(now) : "l"(&bar->generation) : "memory");
        if (++polls > kStepBarrierPolls) __trap();  // a block that never arrives: fail, do not hang
      } while (now == gen);
    }
  }
  __syncthreads();
}

// cp.async of n elements (a multiple of 8) into shared memory by the whole
// block, as one commit group.
template <class T>
__device__ __forceinline__ void StepCopyToSmem(T* dst, const T* src, int n) {
  for (int c = threadIdx.x; c < n / 8; c += blockDim.x) CpAsync16(dst + c * 8, src + c * 8, true);
}

// This warp's weight rows of a phase (outputs o = gw, gw + nw, ...; kW rows
// each: o, o + out, ...) into its region, as many as fit; one commit group.
template <class T, int kW>
__device__ __forceinline__ void StepPrefetchWeights(const T* w, int out, int in, uint4* region, int region_vecs, int gw, int nw,
                                                    int lane) {
  __syncwarp();  // every lane is done reading the region's previous rows
  const int nvec = in / 8, per = kW * nvec, fits = region_vecs / per;
  int i = 0;
  for (int o = gw; o < out && i < fits; o += nw, ++i)
#pragma unroll
    for (int k = 0; k < kW; ++k)
      for (int c = lane; c < nvec; c += 32)
        CpAsync16(region + i * per + k * nvec + c, w + (static_cast<long>(o) + k * out) * in + c * 8, true);
  CpAsyncCommit();
}

// xs[r] = LayerNorm(x[r]) for r < rows (warp r normalizes row r in
// registers, fp32 statistics in two passes, as the GEMV's fused norm), with
// the norm's weight and bias in shared memory (their copy is the older of
// the two commit groups in flight).
template <class T>
__device__ __forceinline__ void StepNormRows(const T* x, int rows, int in, const T* nw, const T* nb, float eps, T* xs) {
  constexpr int kMaxVecs = kGemvNormMaxIn / 8 / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, nvec = in / 8;
  CpAsyncWait<1>();
  __syncthreads();  // the norm's weight and bias, copied by every thread
  if (warp < rows) {
    const uint4* xv = reinterpret_cast<const uint4*>(x) + warp * nvec;
    uint4 v[kMaxVecs];
    float sum = 0.f;
#pragma unroll
    for (int k = 0; k < kMaxVecs; ++k) {
      const int c = lane + k * 32;
      if (c < nvec) {
        v[k] = __ldcg(xv + c);
        float f[8];
        Unpack8<T>(v[k], f);
#pragma unroll
        for (int j = 0; j < 8; ++j) sum += f[j];
      }
    }
    const float m = WarpSum(sum) / in;
    float var = 0.f;
#pragma unroll
    for (int k = 0; k < kMaxVecs; ++k)
      if (lane + k * 32 < nvec) {
        float f[8];
        Unpack8<T>(v[k], f);
#pragma unroll
        for (int j = 0; j < 8; ++j) var += (f[j] - m) * (f[j] - m);
      }
    const float rs = rsqrtf(WarpSum(var) / in + eps);
    const uint4* wv = reinterpret_cast<const uint4*>(nw);
    const uint4* bv = reinterpret_cast<const uint4*>(nb);
#pragma unroll
    for (int k = 0; k < kMaxVecs; ++k) {
      const int c = lane + k * 32;
      if (c < nvec) {
        float f[8], gw[8], gb[8];
        Unpack8<T>(v[k], f);
        Unpack8<T>(wv[c], gw);
        Unpack8<T>(bv[c], gb);
        Vec16<T> o;
#pragma unroll
        for (int j = 0; j < 8; ++j) o.v[j] = FromFloat<T>((f[j] - m) * rs * gw[j] + gb[j]);
        reinterpret_cast<uint4*>(xs)[warp * nvec + c] = *reinterpret_cast<const uint4*>(&o);
      }
    }
  }
  __syncthreads();
}

// xs = rows × n elements of src, written earlier in this kernel (through L2).
template <class T>
__device__ __forceinline__ void StepRowsToSmem(const T* src, int rows, int n, T* xs) {
  const int nvec = rows * n / 8;
  for (int c = threadIdx.x; c < nvec; c += blockDim.x)
    reinterpret_cast<uint4*>(xs)[c] = __ldcg(reinterpret_cast<const uint4*>(src) + c);
  __syncthreads();
}

// xs = the attention output of `rows` tokens: the splits' partial outputs
// weighted by exp(lse - max) (AttentionCombineKernel's merge), each block
// merging all of them for itself. wts: rows × n_heads × kStepMaxSplits floats.
template <class T>
__device__ __forceinline__ void StepMergeSplits(const AttentionParams& p, int rows, int head_dim, float* wts, T* xs) {
  const int H = p.n_heads, Z = p.num_splits, d = H * head_dim;
  const long stride = static_cast<long>(p.total_q) * H;
  for (int i = threadIdx.x; i < rows * H; i += blockDim.x) {  // i = token * H + head
    float lse[kStepMaxSplits], mx = -FLT_MAX;
#pragma unroll
    for (int z = 0; z < kStepMaxSplits; ++z) {
      lse[z] = z < Z ? __ldcg(p.partial_lse + z * stride + i) : -FLT_MAX;
      mx = fmaxf(mx, lse[z]);
    }
    float total = 0.f;
#pragma unroll
    for (int z = 0; z < kStepMaxSplits; ++z) {
      lse[z] = lse[z] == -FLT_MAX ? 0.f : expf(lse[z] - mx);
      total += lse[z];
    }
    const float inv = total > 0.f ? 1.f / total : 0.f;
#pragma unroll
    for (int z = 0; z < kStepMaxSplits; ++z)
      if (z < Z) wts[i * kStepMaxSplits + z] = lse[z] * inv;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < rows * d / 4; e += blockDim.x) {  // 4 elements of one (token, head)
    const int i = e * 4 / head_dim;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int z = 0; z < Z; ++z) {
      const float w = wts[i * kStepMaxSplits + z];
      const float4 v = __ldcg(reinterpret_cast<const float4*>(p.partial_out + z * stride * head_dim) + e);
      acc.x += w * v.x, acc.y += w * v.y, acc.z += w * v.z, acc.w += w * v.w;
    }
    T* o = xs + e * 4;
    o[0] = FromFloat<T>(acc.x), o[1] = FromFloat<T>(acc.y), o[2] = FromFloat<T>(acc.z), o[3] = FromFloat<T>(acc.w);
  }
  __syncthreads();
}

// One phase's products: y[r, o] for this warp's outputs o (gw, gw + nw, ...)
// from the rows in xs, the first rows' weights from the warp's region (as
// StepPrefetchWeights put them), the rest from global memory. Epilogues as
// GemvKernel's; kAddInPlace reads y through L2 (it is this kernel's output).
template <class T, int kW, GemvEpilogue kEpi>
__device__ __forceinline__ void StepProducts(const T* xs, int rows, int in, const T* w, const T* b, T* y, int out, const uint4* region,
                                             int region_vecs, int gw, int nw, int lane, const GemvKvAppend<T>& kv) {
  const int nvec = in / 8, per = kW * nvec, fits = region_vecs / per;
  CpAsyncWaitAll();
  __syncwarp();  // the region's rows, copied by every lane
  int i = 0;
  for (int o = gw; o < out; o += nw, ++i) {
    const bool pre = i < fits;
    const uint4* wr[kW];
#pragma unroll
    for (int k = 0; k < kW; ++k)
      wr[k] = pre ? region + i * per + k * nvec : reinterpret_cast<const uint4*>(w + (static_cast<long>(o) + k * out) * in);
    float acc[kW][kStepMaxRows];
#pragma unroll
    for (int k = 0; k < kW; ++k)
#pragma unroll
      for (int r = 0; r < kStepMaxRows; ++r) acc[k][r] = 0.f;
    for (int c = lane; c < nvec; c += 32) {
      float wf[kW][8];
#pragma unroll
      for (int k = 0; k < kW; ++k) Unpack8<T>(pre ? wr[k][c] : __ldg(wr[k] + c), wf[k]);
#pragma unroll
      for (int r = 0; r < kStepMaxRows; ++r) {
        if (r >= rows) break;
        float xf[8];
        Unpack8<T>(reinterpret_cast<const uint4*>(xs + r * in)[c], xf);
#pragma unroll
        for (int k = 0; k < kW; ++k)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[k][r] = fmaf(wf[k][j], xf[j], acc[k][r]);
      }
    }
    // Lane r stores row r (GemvKernel: the rows' stores go out in parallel).
    float v[kW] = {};
#pragma unroll
    for (int r = 0; r < kStepMaxRows; ++r) {
      if (r >= rows) break;
#pragma unroll
      for (int k = 0; k < kW; ++k) {
        const float sum = WarpSum(acc[k][r]) + (b ? ToFloat(b[o + k * out]) : 0.f);
        if (lane == r) v[k] = sum;
      }
    }
    if (lane >= rows) continue;
    T* yo = y + static_cast<long>(lane) * out + o;
    if constexpr (kEpi == GemvEpilogue::kSwiGLU) {
      const float a = ToFloat(FromFloat<T>(v[0])), g = ToFloat(FromFloat<T>(v[1]));
      *yo = FromFloat<T>(a / (1.f + __expf(-a)) * g);
    } else if constexpr (kEpi == GemvEpilogue::kAddInPlace) {
      *yo = FromFloat<T>(ToFloat(__ldcg(yo)) + ToFloat(FromFloat<T>(v[0])));
    } else {
      const T value = FromFloat<T>(v[0]);
      *yo = value;
      if (kv.slots && o >= kv.k_offset && o < kv.k_offset + 2 * kv.kv_dim) {
        const long slot = __ldg(kv.slots + lane);
        const int f = o - kv.k_offset;
        if (slot >= 0) (f < kv.kv_dim ? kv.k_cache : kv.v_cache)[slot * kv.kv_dim + f % kv.kv_dim] = value;
      }
    }
  }
}

template <class Tr, bool kAlibi>
__global__ void __launch_bounds__(Tr::kThreads, 1) DecodeStepKernel(const DecodeStepParams<typename Tr::T> p) {
  using T = typename Tr::T;
  static_assert(Tr::kWarps >= kStepMaxRows, "a warp normalizes each row");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* xs = reinterpret_cast<T*>(smem_raw);
  T* norm_w = reinterpret_cast<T*>(smem_raw + p.smem.norm);
  T* norm_b = norm_w + p.d;
  float* wts = reinterpret_cast<float*>(smem_raw + p.smem.weights);
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int gw = blockIdx.x * Tr::kWarps + warp, nw = gridDim.x * Tr::kWarps;
  uint4* region = reinterpret_cast<uint4*>(smem_raw + p.smem.regions) + warp * p.smem.region_vecs;
  const int rv = p.smem.region_vecs, R = p.rows, d = p.d, F = p.F;
  // Attention items go to the last blocks: the first ones hold the output
  // projection's rows (d outputs of fewer warps than the grid's), whose
  // weights they can then request without waiting for the attention.
  const int attn_block = gridDim.x - 1 - blockIdx.x;
  const bool attends = attn_block < p.attn_items;
  const int pairs = p.attn.num_seqs * p.attn.n_kv_heads;
  const GemvKvAppend<T> no_kv{};

  // Layer 0's norm and QKV weights; the embeddings in x are the kernel
  // before's output (plain stream order).
  StepCopyToSmem(norm_w, p.layers[0].norm1_w, d);
  StepCopyToSmem(norm_b, p.layers[0].norm1_b, d);
  CpAsyncCommit();
  StepPrefetchWeights<T, 1>(p.layers[0].qkv_w, p.qkv_dim, d, region, rv, gw, nw, lane);
  for (int l = 0; l < p.n_layers; ++l) {
    const StepLayer<T> L = p.layers[l];
    // A: qkv = norm1(x)·Wqkv + b, K/V into the cache.
    StepNormRows(p.x, R, d, norm_w, norm_b, p.eps, xs);
    const GemvKvAppend<T> kv{p.slots, p.attn.n_heads * Tr::kHeadDim, p.attn.n_kv_heads * Tr::kHeadDim, L.k_cache, L.v_cache};
    StepProducts<T, 1, GemvEpilogue::kStore>(xs, R, d, L.qkv_w, L.qkv_b, p.qkv, p.qkv_dim, region, rv, gw, nw, lane, kv);
    if (!attends) StepPrefetchWeights<T, 1>(L.proj_w, d, d, region, rv, gw, nw, lane);
    StepGridSync(p.barrier);
    // B: attention over the cache.
    if (attends) {
      AttentionParams ap = p.attn;
      ap.k_cache = L.k_cache;
      ap.v_cache = L.v_cache;
      for (int item = attn_block; item < p.attn_items; item += gridDim.x) {
        DecodeAttentionBlock<Tr, kAlibi, false>(ap, item % pairs, item / pairs, smem_raw);
        __syncthreads();  // the block's shared memory is free again
      }
      StepPrefetchWeights<T, 1>(L.proj_w, d, d, region, rv, gw, nw, lane);
    }
    StepGridSync(p.barrier);
    // C: x += attention·Wo + bo.
    if (p.attn.num_splits > 1) StepMergeSplits(p.attn, R, Tr::kHeadDim, wts, xs);
    else StepRowsToSmem(p.att, R, d, xs);
    StepProducts<T, 1, GemvEpilogue::kAddInPlace>(xs, R, d, L.proj_w, L.proj_b, p.x, d, region, rv, gw, nw, lane, no_kv);
    StepCopyToSmem(norm_w, L.norm2_w, d);
    StepCopyToSmem(norm_b, L.norm2_b, d);
    CpAsyncCommit();
    StepPrefetchWeights<T, 2>(L.w12_w, F, d, region, rv, gw, nw, lane);
    StepGridSync(p.barrier);
    // D: sw = SwiGLU(norm2(x)·W12 + b12).
    StepNormRows(p.x, R, d, norm_w, norm_b, p.eps, xs);
    StepProducts<T, 2, GemvEpilogue::kSwiGLU>(xs, R, d, L.w12_w, L.w12_b, p.sw, F, region, rv, gw, nw, lane, no_kv);
    StepPrefetchWeights<T, 1>(L.w3_w, d, F, region, rv, gw, nw, lane);
    StepGridSync(p.barrier);
    // E: x += sw·W3 + b3.
    StepRowsToSmem(p.sw, R, F, xs);
    StepProducts<T, 1, GemvEpilogue::kAddInPlace>(xs, R, F, L.w3_w, L.w3_b, p.x, d, region, rv, gw, nw, lane, no_kv);
    if (l + 1 == p.n_layers) break;
    const StepLayer<T>& next = p.layers[l + 1];
    StepCopyToSmem(norm_w, next.norm1_w, d);
    StepCopyToSmem(norm_b, next.norm1_b, d);
    CpAsyncCommit();
    StepPrefetchWeights<T, 1>(next.qkv_w, p.qkv_dim, d, region, rv, gw, nw, lane);
    StepGridSync(p.barrier);
  }
}

}  // namespace tinygpt::cuda
