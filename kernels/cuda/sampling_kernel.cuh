// Token sampling on the GPU, one block per logits row; only token ids go back
// to the host. Same rule as the CPU backend (kernels/cpu/sampling.cc): greedy
// at temperature 0 (lowest index on ties); otherwise keep the tokens whose
// logit reaches the top-k threshold and then the top-p threshold, and walk
// their probabilities in index order to the draw `uniform`.
#pragma once
#include <cfloat>

#include "kernels/cuda/common.cuh"
#include "kernels/sampling_args.h"

namespace tinygpt::cuda {

constexpr int kSampleThreads = 256;

// Block-wide reductions through shared memory (all threads must call).
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  v = WarpSum(v);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  float total = 0.f;
  for (int i = 0; i < kSampleThreads / 32; ++i) total += scratch[i];
  return total;
}
__device__ __forceinline__ float BlockMax(float v, float* scratch) {
  v = WarpMax(v);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  float m = -FLT_MAX;
  for (int i = 0; i < kSampleThreads / 32; ++i) m = fmaxf(m, scratch[i]);
  return m;
}

template <class T>
__global__ void __launch_bounds__(kSampleThreads) SampleKernel(const T* logits, int vocab, const SamplingParams* params, int32_t* out) {
  PdlWait();  // launched with programmatic dependent launch (common.cuh)
  PdlLaunchDependents();
  __shared__ float scratch[kSampleThreads / 32];
  __shared__ float chunk_sums[kSampleThreads];
  __shared__ int chosen;
  const T* l = logits + static_cast<long>(blockIdx.x) * vocab;
  const SamplingParams p = params[blockIdx.x];
  const int tid = threadIdx.x;
  // Max, and for greedy the lowest index holding it. fmaxf drops NaN, so a
  // row with a NaN or an infinity is flagged here (kNonFiniteLogits) rather
  // than sampled; the flag goes back in the ids buffer, with no extra copy.
  float mx = -FLT_MAX;
  int bad = 0;
  for (int i = tid; i < vocab; i += kSampleThreads) {
    const float v = ToFloat(l[i]);
    mx = fmaxf(mx, v);
    bad |= !isfinite(v);
  }
  if (__syncthreads_or(bad)) {
    if (tid == 0) out[blockIdx.x] = kNonFiniteLogits;
    return;
  }
  mx = BlockMax(mx, scratch);
  if (p.temperature <= 0.f) {
    if (tid == 0) chosen = vocab;
    __syncthreads();
    for (int i = tid; i < vocab; i += kSampleThreads)
      if (ToFloat(l[i]) == mx) atomicMin(&chosen, i);
    __syncthreads();
    if (tid == 0) out[blockIdx.x] = chosen;
    return;
  }
  const float inv_t = 1.f / p.temperature;
  auto prob = [&](float v) { return __expf((v - mx) * inv_t); };
  // Thresholds on the logit value by bisection: the largest x whose set
  // {v >= x} has at least top_k members, then mass >= top_p of the top-k mass.
  float mn = FLT_MAX;
  for (int i = tid; i < vocab; i += kSampleThreads) mn = fminf(mn, ToFloat(l[i]));
  const float lo = -BlockMax(-mn, scratch), hi = mx;
  float threshold = lo;
  if (p.top_k > 0 && p.top_k < vocab) {
    float a = lo, b = hi;
    for (int it = 0; it < 48; ++it) {
      const float mid = 0.5f * (a + b);
      float count = 0.f;
      for (int i = tid; i < vocab; i += kSampleThreads) count += ToFloat(l[i]) >= mid;
      if (BlockSum(count, scratch) >= p.top_k) a = mid; else b = mid;
    }
    threshold = a;
  }
  if (p.top_p < 1.f) {
    float z = 0.f;
    for (int i = tid; i < vocab; i += kSampleThreads) z += ToFloat(l[i]) >= threshold ? prob(ToFloat(l[i])) : 0.f;
    z = BlockSum(z, scratch);
    float a = threshold, b = hi;
    for (int it = 0; it < 48; ++it) {
      const float mid = 0.5f * (a + b);
      float mass = 0.f;
      for (int i = tid; i < vocab; i += kSampleThreads) mass += ToFloat(l[i]) >= mid ? prob(ToFloat(l[i])) : 0.f;
      if (BlockSum(mass, scratch) >= p.top_p * z) a = mid; else b = mid;
    }
    threshold = a;
  }
  // Snap to the smallest logit at or above the threshold.
  float snap = FLT_MAX;
  for (int i = tid; i < vocab; i += kSampleThreads) if (ToFloat(l[i]) >= threshold) snap = fminf(snap, ToFloat(l[i]));
  threshold = -BlockMax(-snap, scratch);
  // Inverse CDF in index order: each thread owns a contiguous chunk.
  const int per = (vocab + kSampleThreads - 1) / kSampleThreads, begin = min(vocab, tid * per), end = min(vocab, begin + per);
  float mine = 0.f;
  for (int i = begin; i < end; ++i) mine += ToFloat(l[i]) >= threshold ? prob(ToFloat(l[i])) : 0.f;
  chunk_sums[tid] = mine;
  if (tid == 0) chosen = -1;
  __syncthreads();
  if (tid == 0) {
    float total = 0.f;
    for (int i = 0; i < kSampleThreads; ++i) total += chunk_sums[i];
    float target = p.uniform * total, cum = 0.f;
    int owner = -1;
    float before_last = 0.f;
    for (int i = 0; i < kSampleThreads; ++i) {
      if (chunk_sums[i] <= 0.f) continue;
      owner = i;  // rounding can leave the target past the end: keep the last kept chunk
      before_last = cum;
      if (target < cum + chunk_sums[i]) break;
      cum += chunk_sums[i];
    }
    cum = before_last;
    chunk_sums[0] = target - cum;  // what is left to walk inside the owner's chunk
    chosen = -owner - 2;
  }
  __syncthreads();
  if (tid == -chosen - 2) {
    float left = chunk_sums[0];
    int last = -1;
    for (int i = begin; i < end; ++i) {
      if (ToFloat(l[i]) < threshold) continue;
      last = i;
      left -= prob(ToFloat(l[i]));
      if (left < 0.f) break;
    }
    out[blockIdx.x] = last;
  }
}

// The largest finite value of T, as a float that converts to it exactly.
template <class T> __device__ __forceinline__ float MaxFinite();
template <> __device__ __forceinline__ float MaxFinite<__half>() { return 65504.f; }
template <> __device__ __forceinline__ float MaxFinite<__nv_bfloat16>() { return 3.38953139e38f; }  // 0x7f7f
template <> __device__ __forceinline__ float MaxFinite<float>() { return FLT_MAX; }

// out = logits with row blockIdx.x's penalties applied (the rule of
// kernels/cpu/sampling.cc, in fp32, rounded back to T once): the row is
// copied, then one thread per seen token adjusts it (entries are unique per
// row, so no two threads touch one logit).
template <class T>
__global__ void ApplyPenaltiesKernel(const T* logits, T* out, int vocab, const PenaltyRow* rows, const PenaltyEntry* entries) {
  PdlWait();  // launched with programmatic dependent launch (common.cuh)
  PdlLaunchDependents();
  const long base = static_cast<long>(blockIdx.x) * vocab;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) out[base + i] = logits[base + i];
  __syncthreads();
  const PenaltyRow p = rows[blockIdx.x];
  for (int e = p.begin + threadIdx.x; e < p.end; e += blockDim.x) {
    const PenaltyEntry t = entries[e];
    if (t.token < 0 || t.token >= vocab) continue;
    const float raw = ToFloat(logits[base + t.token]);
    float v = raw;
    if (p.repetition != 1.f) v = v > 0.f ? v / p.repetition : v * p.repetition;
    if (t.output_count > 0) v -= p.frequency * static_cast<float>(t.output_count) + p.presence;
    // A large repetition penalty must not overflow a finite logit (fp16 ends
    // at 65504) into the infinity that sampling reports as the model's fault.
    if (isfinite(raw)) v = fminf(fmaxf(v, -MaxFinite<T>()), MaxFinite<T>());
    out[base + t.token] = FromFloat<T>(v);
  }
}

// tokens[i] < 0: the token sampled in row -tokens[i]-1 of the previous step
// (0 where that row was flagged non-finite: the sequence ends, and an
// out-of-range id must not reach the embedding).
// static: this header is included by several of the backend's files (cuda_backend.cuh).
static __global__ void FillPendingTokensKernel(int32_t* tokens, int n, const int32_t* sampled) {
  PdlWait();  // launched with programmatic dependent launch (common.cuh)
  PdlLaunchDependents();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n && tokens[i] < 0) tokens[i] = max(sampled[-tokens[i] - 1], 0);  // kNonFiniteLogits -> 0 (sampling_args.h)
}

}  // namespace tinygpt::cuda
