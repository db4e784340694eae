// A decode step of a few rows (1-4 sequences, one new token each) as one
// persistent kernel: every transformer block's five ops run as phases of
// the same grid, separated by grid-wide barriers instead of kernel launches.
//
// Why: at one sequence a step of bench-125m was 66 kernels of ~4.5 us each
// (H200, docs/benchmarks.md, issue #23), while its weights take 47 us to
// read at the copy bandwidth: each kernel paid its launch, its ramp and its
// drain. Inside one kernel a phase boundary is an arrival counter in L2, and
// each warp's weight rows come into its own shared memory a layer ahead (bulk
// copies into one slot per phase, StepFillSlot), so the weights stream in
// while the grid runs the phases before. The norms' weights and biases come
// the same way, one slot a block.
//
// Phases of one layer (R rows of width d; outputs spread over all warps of
// the grid, one weight row per warp at a time, as the GEMV of gemv_kernel.cuh):
//   A  every block normalizes x (norm1) into shared memory; qkv = ·Wqkv + b,
//      K and V appended to the cache
//   B  decode attention: blocks take (sequence, KV head, key split) items,
//      each as DecodeAttentionBlock (decode_attention_kernel.cuh); the last
//      split of each (sequence, KV head) to finish merges them all
//   C  every block reads the attention rows into shared memory; x += ·Wo + bo
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

#include "kernels/cuda/bulk_copy.cuh"
#include "kernels/cuda/decode_attention_kernel.cuh"
#include "kernels/cuda/gemv_kernel.cuh"

namespace tinygpt::cuda {

constexpr int kStepMaxRows = 4;     // rows (sequences) a step kernel takes
constexpr int kStepMaxSplits = 16;  // key splits of its attention phase (the merge takes 64 at most)
// A barrier that has waited this many polls (seconds) traps instead of hanging.
constexpr long kStepBarrierPolls = 1L << 24;
// TINYGPT_STEP_TRACE marks: the kernel's start, then for each layer and each
// of its five phases the moments every warp of the block had its inputs
// (normalized rows, attention rows; B: its start), had waited for its weight
// slot (B: its start), had its products (B: its attention items), was done
// with the phase (its next weights requested) and was let go by the barrier
// after it: mark index 1 + layer * 25 + phase * 5 + (0 inputs, 1 weights,
// 2 products, 3 done, 4 released). An attention block's start of B comes
// after its attention prologue, which is before the barrier (A's "done").
constexpr int kStepPhases = 5;  // A-E
constexpr int kStepTracePhaseMarks = 5;
constexpr int kStepTraceMarksPerLayer = kStepPhases * kStepTracePhaseMarks;
constexpr int StepTraceMarks(int n_layers) { return 1 + n_layers * kStepTraceMarksPerLayer; }

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

// Byte offsets of the dynamic shared memory's regions. The rows a GEMV phase
// reads (rows × max(d, F) elements from 0) lie over the attention phase's own
// layout; past that layout, held across phases, come the mbarriers (kWarps ×
// kStepSlots of the warps' slots, then the block's norm slot's), the norm
// slot (norm1's weight and bias, norm2's weight and bias: 4 × d elements)
// and the warps' weight regions.
struct StepSmem {
  int bars;
  int norms;
  int regions;  // kWarps weight regions of region_vecs 16-byte vectors
  int region_vecs;
};

template <class T>
struct DecodeStepParams {
  const StepLayer<T>* layers;  // device array of n_layers
  int n_layers, rows, d, F, qkv_dim;
  float eps;
  T* x;  // [rows, d] the residual stream, in and out
  T* qkv;
  T* att;  // [rows, d] the attention output
  T* sw;   // [rows, F]
  const int32_t* slots;
  AttentionParams attn;  // q = qkv, out = att, split counters when split; the caches set per layer
  int attn_items;        // num_seqs × n_kv_heads × num_splits
  StepBarrier* barrier;
  StepSmem smem;
  // Null, or (TINYGPT_STEP_TRACE) StepTraceMarks × grid SM clocks, then as
  // many global-timer readings (ns): mark m of block b at [m * grid + b].
  unsigned long long* trace;
};

// Records trace mark m of this block (thread 0; no-op without a trace). The
// recording is one out-of-line copy: inlined at the kernel's 25 marks a
// layer, it was 9 KB of the code each layer runs through.
static __device__ __noinline__ void StepTraceRecord(unsigned long long* trace, int marks, int m) {
  unsigned long long clk, ns;
  asm volatile("mov.u64 %0, %%clock64;\n" : "=l"(clk));
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(ns));
  trace[static_cast<long>(m) * gridDim.x + blockIdx.x] = clk;
  trace[static_cast<long>(marks + m) * gridDim.x + blockIdx.x] = ns;
}
__device__ __forceinline__ void StepTraceMark(unsigned long long* trace, int marks, int m) {
  if (trace && threadIdx.x == 0) StepTraceRecord(trace, marks, m);
}

// The barrier's generation when this kernel starts (thread 0's; it cannot
// move before this block arrives at the first barrier).
__device__ __forceinline__ unsigned StepBarrierGeneration(const StepBarrier* bar) {
  unsigned gen = 0;
  if (threadIdx.x == 0) asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(gen) : "l"(&bar->generation) : "memory");
  return gen;
}

// A trace mark for the whole block (a __syncthreads only when tracing).
__device__ __forceinline__ void StepTraceBlock(unsigned long long* trace, int marks, int m) {
  if (!trace) return;
  __syncthreads();
  StepTraceMark(trace, marks, m);
}

// The grid barrier, in two halves so that a block can work between its
// arrival and its wait (an attention block's prologue, which reads no other
// block's output). Thread 0 keeps the generation it waits to see move (gen,
// StepBarrierGeneration's, counted up at each wait); the last arrival resets
// the count and then moves the generation; the release and acquire chain
// makes every block's writes before its arrival visible to every block after
// its wait. Trace marks m (done: arrived) and m + 1 (released).
//
// Arrives; returns whether this block was the last (thread 0's answer).
__device__ __forceinline__ bool StepGridArrive(StepBarrier* bar, unsigned long long* trace, int marks, int m) {
  __syncthreads();
  StepTraceMark(trace, marks, m);
  bool last = false;
  if (threadIdx.x == 0) {
    unsigned arrived;
    asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;\n" : "=r"(arrived) : "l"(&bar->count) : "memory");
    last = arrived == gridDim.x - 1;
    if (last) {
      asm volatile("st.relaxed.gpu.global.u32 [%0], 0;\n" ::"l"(&bar->count) : "memory");
      asm volatile("red.release.gpu.global.add.u32 [%0], 1;\n" ::"l"(&bar->generation) : "memory");
    }
  }
  return last;
}

// Waits until every block has arrived (last: StepGridArrive's answer).
__device__ __forceinline__ void StepGridWait(StepBarrier* bar, unsigned& gen, bool last, unsigned long long* trace, int marks, int m) {
  if (threadIdx.x == 0) {
    if (!last) {
      unsigned now;
      long polls = 0;
      do {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(now) : "l"(&bar->generation) : "memory");
        if (++polls > kStepBarrierPolls) __trap();  // a block that never arrives: fail, do not hang
      } while (now == gen);
    }
    ++gen;
  }
  __syncthreads();
  StepTraceMark(trace, marks, m + 1);
}

__device__ __forceinline__ void StepGridSync(StepBarrier* bar, unsigned& gen, unsigned long long* trace, int marks, int m) {
  const bool last = StepGridArrive(bar, trace, marks, m);
  StepGridWait(bar, gen, last, trace, marks, m);
}

// The weight slots of a warp: each of the four product phases (A, C, D, E)
// has its own part of the warp's region, filled by bulk copies one layer
// ahead (the next layer's rows go in as soon as this layer's are read), so
// the weights stream from DRAM while the grid runs the phases between.
enum StepSlotId { kSlotQkv, kSlotProj, kSlotW12, kSlotW3, kStepSlots };

// A slot's phase: `out` outputs, each kw weight rows of `in` elements (W12's
// two: the SwiGLU's value and gate). The kernel and its plan both size the
// slots from this.
struct StepSlotShape {
  int out, in, kw;
};
__host__ __device__ __forceinline__ StepSlotShape StepSlotShapeOf(int slot, int qkv_dim, int d, int F) {
  return slot == kSlotQkv ? StepSlotShape{qkv_dim, d, 1}
         : slot == kSlotProj ? StepSlotShape{d, d, 1}
         : slot == kSlotW12  ? StepSlotShape{F, d, 2}
                             : StepSlotShape{d, F, 1};
}

// Warp gw's outputs of a phase of `out` outputs (o = gw, gw + nw, ...).
__host__ __device__ __forceinline__ int StepWarpOutputs(int out, int gw, int nw) { return out > gw ? (out - gw + nw - 1) / nw : 0; }

// The norm slot's next layer: norm1's and norm2's weights and biases of
// layer L, four bulk copies counted on the block's norm barrier (thread 0;
// every thread is done reading the slot, the caller's __syncthreads).
template <class T>
__device__ __noinline__ void StepFillNorms(const StepLayer<T>& L, int d, T* norms, uint64_t* bar) {
  if (threadIdx.x != 0) return;
  const unsigned bytes = static_cast<unsigned>(d) * sizeof(T);
  MbarrierArriveExpectBytes(bar, 4 * bytes);
  FenceProxyAsyncShared();
  BulkCopyToSmem(norms, L.norm1_w, bytes, bar);
  BulkCopyToSmem(norms + d, L.norm1_b, bytes, bar);
  BulkCopyToSmem(norms + 2 * d, L.norm2_w, bytes, bar);
  BulkCopyToSmem(norms + 3 * d, L.norm2_b, bytes, bar);
}

// Where one phase's rows go in the warp's region: `fits` outputs of kW rows
// of `in` elements from vector `offset` (rows beyond fits are read from
// global memory where they are used).
struct StepSlot {
  int offset, fits;
};

// This warp's first `fits` outputs of a phase (kW rows each: o, o + out, ...)
// into its slot, counted on the slot's mbarrier. Every lane must be done
// reading the slot's previous rows (the caller's __syncwarp).
template <class T>
__device__ __noinline__ void StepFillSlot(const T* w, int out, int in, int kW, uint4* slot, int fits, int gw, int nw, int lane,
                                          uint64_t* bar) {
  if (fits == 0) return;
  const unsigned row_bytes = static_cast<unsigned>(in) * sizeof(T);
  if (lane == 0) MbarrierArriveExpectBytes(bar, fits * kW * row_bytes);
  FenceProxyAsyncShared();
  for (int j = lane; j < fits * kW; j += 32) {
    const int i = j / kW, k = j % kW;
    const long o = gw + static_cast<long>(i) * nw;
    BulkCopyToSmem(slot + j * (in / 8), w + (o + static_cast<long>(k) * out) * in, row_bytes, bar);
  }
}

// Lane j's share of a phase's epilogue operands, loaded before the barrier
// that precedes the phase so that their latency hides behind it: the bias
// of the warp's output j / kW (row j % kW), and the residual x[j % rows] of
// its output j / rows (kAddInPlace). Outputs past these lanes load theirs
// where they are used.
template <class T>
__device__ __forceinline__ float StepLoadBias(const T* b, int out, int kW, int gw, int nw, int lane) {
  const long o = gw + static_cast<long>(lane / kW) * nw;
  return b && o < out ? ToFloat(__ldg(b + o + static_cast<long>(lane % kW) * out)) : 0.f;
}
template <class T>
__device__ __forceinline__ float StepLoadResidual(const T* x, int rows, int out, int gw, int nw, int lane) {
  const long o = gw + static_cast<long>(lane / rows) * nw;
  return o < out ? ToFloat(__ldcg(x + static_cast<long>(lane % rows) * out + o)) : 0.f;
}

// xs = rows × n elements of src, written earlier in this kernel (through L2).
template <class T>
__device__ __forceinline__ void StepRowsToSmem(const T* src, int rows, int n, T* xs) {
  const int nvec = rows * n / 8;
  for (int c = threadIdx.x; c < nvec; c += blockDim.x)
    reinterpret_cast<uint4*>(xs)[c] = __ldcg(reinterpret_cast<const uint4*>(src) + c);
  __syncthreads();
}

// xs[r] = LayerNorm(x[r]) for r < rows, with the norm's weight and bias in
// the norm slot: `wait` says whether to wait for its phase `parity` first
// (phase A; D's norm came with A's). The block copies the rows into xs, then
// warp r normalizes row r there in place (SmemNormRow, gemv_kernel.cuh: the
// rows equal the fused-norm GEMV's). Not inlined: one copy for both norms of
// a layer, since a layer's time follows the code it runs through
// (docs/benchmarks.md, issue #23).
template <class T>
__device__ __noinline__ void StepNormRows(const T* x, int rows, int in, const T* nw, const T* nb, float eps, T* xs, uint64_t* bar,
                                          bool wait, unsigned parity) {
  StepRowsToSmem(x, rows, in, xs);
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, nvec = in / 8;
  if (warp < rows) {
    uint4* row = reinterpret_cast<uint4*>(xs) + warp * nvec;
    SmemNormRow<T> norm;
    norm.Stats(row, in, eps, lane);
    if (wait) MbarrierWait(bar, parity);
    norm.Apply(row, reinterpret_cast<const uint4*>(nw), reinterpret_cast<const uint4*>(nb), in, lane);
  }
  __syncthreads();
}

// One phase's products: y[r, o] for this warp's outputs o (gw, gw + nw, ...)
// from the rows in xs, the first slot.fits outputs' weights from the warp's
// slot (StepFillSlot; the caller has waited for it), the rest from global
// memory. bias_lanes and resid_lanes: StepLoadBias's and StepLoadResidual's
// values; kv_slot: lane r's row's cache slot (kStore with kv.slots). Epilogues
// as GemvKernel's; kAddInPlace reads y through L2 (it is this kernel's output).
//
// Two outputs a pass: a warp's outputs are a chain of dependent loads, FMAs
// and shuffle reductions, and with one block of four warps per SM nothing
// else hides that chain's latency; two independent chains overlap. (A warp
// with an odd count computes its last output twice and stores it once.)
// Not inlined: phases C and E share one copy, and the call costs nothing
// beside the code a layer runs through (it passes kv by value: by reference
// it went through the stack).
template <class T, int kW, GemvEpilogue kEpi, int kRows>
__device__ __noinline__ void StepProducts(const T* xs, int rows, int in, const T* w, const T* b, T* y, int out, const uint4* slot, int fits,
                                          float bias_lanes, float resid_lanes, int gw, int nw, int lane, const GemvKvAppend<T> kv,
                                          long kv_slot) {
  constexpr int kU = 2;
  const int nvec = in / 8, per = kW * nvec, n_out = StepWarpOutputs(out, gw, nw);
  for (int i0 = 0; i0 < n_out; i0 += kU) {
    // Generic pointers, to the slot or to global memory: one load
    // instruction either way (a branch per load would have the compiler
    // copy the loop for each case).
    const uint4* wr[kU][kW];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int i = min(i0 + u, n_out - 1);
      const long o = gw + static_cast<long>(i) * nw;
#pragma unroll
      for (int k = 0; k < kW; ++k)
        wr[u][k] = i < fits ? slot + i * per + k * nvec : reinterpret_cast<const uint4*>(w + (o + static_cast<long>(k) * out) * in);
    }
    float acc[kU][kW][kRows];
#pragma unroll
    for (int u = 0; u < kU; ++u)
#pragma unroll
      for (int k = 0; k < kW; ++k)
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[u][k][r] = 0.f;
#pragma unroll 1  // a few iterations (in / 256); unrolled, the code outgrows the instruction cache
    for (int c = lane; c < nvec; c += 32) {
      float wf[kU][kW][8];
#pragma unroll
      for (int u = 0; u < kU; ++u)
#pragma unroll
        for (int k = 0; k < kW; ++k) Unpack8<T>(wr[u][k][c], wf[u][k]);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (r >= rows) break;
        float xf[8];
        Unpack8<T>(reinterpret_cast<const uint4*>(xs + r * in)[c], xf);
#pragma unroll
        for (int u = 0; u < kU; ++u)
#pragma unroll
          for (int k = 0; k < kW; ++k)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[u][k][r] = fmaf(wf[u][k][j], xf[j], acc[u][k][r]);
      }
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int i = i0 + u;
      if (i >= n_out) break;  // warp-uniform
      const int o = gw + i * nw;
      // Lane r stores row r (GemvKernel: the rows' stores go out in parallel).
      float v[kW] = {};
#pragma unroll
      for (int k = 0; k < kW; ++k) {
        const float bias = i < 32 / kW ? __shfl_sync(0xffffffffu, bias_lanes, i * kW + k) : b ? ToFloat(b[o + k * out]) : 0.f;
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          if (r >= rows) break;
          const float sum = WarpSum(acc[u][k][r]) + bias;
          if (lane == r) v[k] = sum;
        }
      }
      const bool resid_pre = i < 32 / rows;
      const float resid = __shfl_sync(0xffffffffu, resid_lanes, resid_pre ? (i * rows + lane) % 32 : 0);
      if (lane < rows) {
        T* yo = y + static_cast<long>(lane) * out + o;
        if constexpr (kEpi == GemvEpilogue::kSwiGLU) {
          const float a = ToFloat(FromFloat<T>(v[0])), g = ToFloat(FromFloat<T>(v[1]));
          *yo = FromFloat<T>(a / (1.f + __expf(-a)) * g);
        } else if constexpr (kEpi == GemvEpilogue::kAddInPlace) {
          *yo = FromFloat<T>((resid_pre ? resid : ToFloat(__ldcg(yo))) + ToFloat(FromFloat<T>(v[0])));
        } else {
          const T value = FromFloat<T>(v[0]);
          *yo = value;
          if (kv.slots && o >= kv.k_offset && o < kv.k_offset + 2 * kv.kv_dim) {
            const int f = o - kv.k_offset;
            if (kv_slot >= 0) (f < kv.kv_dim ? kv.k_cache : kv.v_cache)[kv_slot * kv.kv_dim + f % kv.kv_dim] = value;
          }
        }
      }
    }
  }
}

// kRows: the rows the products' loops are unrolled for: 1 for a step of
// one row, kStepMaxRows for 2-4. The kernel's code is past the size of the
// instruction cache (docs/benchmarks.md, issue #23), and a one-row step
// then runs loops unrolled for its one row only.
template <class Tr, bool kAlibi, int kRows>
__global__ void __launch_bounds__(Tr::kThreads, 1) DecodeStepKernel(const DecodeStepParams<typename Tr::T> p) {
  using T = typename Tr::T;
  static_assert(Tr::kWarps >= kStepMaxRows, "a warp normalizes each row");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* xs = reinterpret_cast<T*>(smem_raw);
  T* norms = reinterpret_cast<T*>(smem_raw + p.smem.norms);
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int gw = blockIdx.x * Tr::kWarps + warp, nw = gridDim.x * Tr::kWarps;
  uint4* region = reinterpret_cast<uint4*>(smem_raw + p.smem.regions) + warp * p.smem.region_vecs;
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem_raw + p.smem.bars) + warp * kStepSlots;
  uint64_t* norm_bar = reinterpret_cast<uint64_t*>(smem_raw + p.smem.bars) + Tr::kWarps * kStepSlots;
  const int R = p.rows, d = p.d, F = p.F;
  // Attention items go to the last blocks: the first ones hold the output
  // projection's rows (d outputs of fewer warps than the grid's).
  const int attn_block = gridDim.x - 1 - blockIdx.x;
  const bool attends = attn_block < p.attn_items;
  const int pairs = p.attn.num_seqs * p.attn.n_kv_heads;
  const GemvKvAppend<T> no_kv{};
  // Lane r's row's cache slot for the new K and V (the same every layer; a
  // host upload, read once here instead of in A's epilogue).
  const long kv_slot = p.slots && lane < R ? __ldg(p.slots + lane) : -1;
  const int marks = StepTraceMarks(p.n_layers);
  StepTraceMark(p.trace, marks, 0);

  // The warp's slots, in its region in phase order, each as many of the
  // warp's outputs as fit (the same every layer; the plan sizes the region
  // for all of them where shared memory allows).
  StepSlotShape shape[kStepSlots];
  StepSlot slot[kStepSlots];
  int used = 0;
#pragma unroll
  for (int k = 0; k < kStepSlots; ++k) {
    shape[k] = StepSlotShapeOf(k, p.qkv_dim, d, F);
    const int per = shape[k].kw * shape[k].in / 8;
    slot[k].offset = used;
    slot[k].fits = min(StepWarpOutputs(shape[k].out, gw, nw), (p.smem.region_vecs - used) / per);
    used += slot[k].fits * per;
  }
  auto weights = [](const StepLayer<T>& L, int k) {
    return k == kSlotQkv ? L.qkv_w : k == kSlotProj ? L.proj_w : k == kSlotW12 ? L.w12_w : L.w3_w;
  };
  auto fill = [&](const StepLayer<T>& L, int k) {
    StepFillSlot(weights(L, k), shape[k].out, shape[k].in, shape[k].kw, region + slot[k].offset, slot[k].fits, gw, nw, lane, bars + k);
  };
  auto wait = [&](int k, int layer) {
    if (slot[k].fits) MbarrierWait(bars + k, layer & 1);  // layer l's rows are the barrier's phase l
  };
  if (lane == 0)
#pragma unroll
    for (int k = 0; k < kStepSlots; ++k) MbarrierInit(bars + k);
  if (threadIdx.x == 0) MbarrierInit(norm_bar);
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  __syncthreads();

  // Layer 0's weights into every slot and its norms into the norm slot; the
  // embeddings in x are the kernel before's output (plain stream order).
#pragma unroll
  for (int k = 0; k < kStepSlots; ++k) fill(p.layers[0], k);
  StepFillNorms(p.layers[0], d, norms, norm_bar);
  float bias = StepLoadBias(p.layers[0].qkv_b, p.qkv_dim, 1, gw, nw, lane), resid = 0.f;
  unsigned generation = StepBarrierGeneration(p.barrier);
  for (int l = 0; l < p.n_layers; ++l) {
    const StepLayer<T> L = p.layers[l];
    const bool more = l + 1 < p.n_layers;
    const StepLayer<T>& next = p.layers[more ? l + 1 : l];
    const int mark = 1 + l * kStepTraceMarksPerLayer;
    // A: qkv = norm1(x)·Wqkv + b, K and V into the cache.
    StepNormRows(p.x, R, d, norms, norms + d, p.eps, xs, norm_bar, true, l & 1);
    StepTraceBlock(p.trace, marks, mark + 0);
    const GemvKvAppend<T> kv{p.slots, p.attn.n_heads * Tr::kHeadDim, p.attn.n_kv_heads * Tr::kHeadDim, L.k_cache, L.v_cache};
    wait(kSlotQkv, l);
    StepTraceBlock(p.trace, marks, mark + 1);
    StepProducts<T, 1, GemvEpilogue::kStore, kRows>(xs, R, d, L.qkv_w, L.qkv_b, p.qkv, p.qkv_dim, region + slot[kSlotQkv].offset,
                                                    slot[kSlotQkv].fits, bias, 0.f, gw, nw, lane, kv, kv_slot);
    StepTraceBlock(p.trace, marks, mark + 2);
    __syncwarp();  // every lane has read the slot
    if (more) fill(next, kSlotQkv);
    // B: attention over the cache; the last split of each (sequence, KV
    // head) merges them into att. An attention block's first item reads its
    // block table and starts copying the cached keys between its arrival at
    // the barrier after A (whose products are its q and the new keys) and
    // its wait there. (The arrival's __syncthreads also ends every warp's
    // reads of xs, which the attention stages overlay.)
    const bool last_after_a = StepGridArrive(p.barrier, p.trace, marks, mark + 3);
    auto after_a = [&] {
      StepGridWait(p.barrier, generation, last_after_a, p.trace, marks, mark + 3);
      StepTraceBlock(p.trace, marks, mark + 5);
      StepTraceBlock(p.trace, marks, mark + 6);
    };
    if (attends) {
      AttentionParams ap = p.attn;
      ap.k_cache = L.k_cache;
      ap.v_cache = L.v_cache;
      // One call site, so one copy of the attention block's code (the
      // kernel's code is past the instruction cache's size already).
      for (int item = attn_block; item < p.attn_items; item += gridDim.x) {
        const bool first = item == attn_block;
        if (!first) __syncthreads();  // the block's shared memory is free again
        auto after_first = [&] {
          if (first) after_a();
        };
        DecodeAttentionBlock<Tr, kAlibi, decltype(after_first), true>(ap, item % pairs, item / pairs, smem_raw, after_first);
      }
      __syncthreads();
    } else {
      after_a();
    }
    StepTraceBlock(p.trace, marks, mark + 7);
    bias = StepLoadBias(L.proj_b, d, 1, gw, nw, lane);
    resid = StepLoadResidual(p.x, R, d, gw, nw, lane);
    StepGridSync(p.barrier, generation, p.trace, marks, mark + 8);
    // C: x += attention·Wo + bo.
    StepRowsToSmem(p.att, R, d, xs);
    StepTraceBlock(p.trace, marks, mark + 10);
    wait(kSlotProj, l);
    StepTraceBlock(p.trace, marks, mark + 11);
    StepProducts<T, 1, GemvEpilogue::kAddInPlace, kRows>(xs, R, d, L.proj_w, L.proj_b, p.x, d, region + slot[kSlotProj].offset,
                                                         slot[kSlotProj].fits, bias, resid, gw, nw, lane, no_kv, -1);
    StepTraceBlock(p.trace, marks, mark + 12);
    __syncwarp();
    if (more) fill(next, kSlotProj);
    bias = StepLoadBias(L.w12_b, F, 2, gw, nw, lane);
    StepGridSync(p.barrier, generation, p.trace, marks, mark + 13);
    // D: sw = SwiGLU(norm2(x)·W12 + b12). Once every warp has its normalized
    // rows, the norm slot takes the next layer's norms.
    StepNormRows(p.x, R, d, norms + 2 * d, norms + 3 * d, p.eps, xs, norm_bar, false, l & 1);
    if (more) StepFillNorms(next, d, norms, norm_bar);
    StepTraceBlock(p.trace, marks, mark + 15);
    wait(kSlotW12, l);
    StepTraceBlock(p.trace, marks, mark + 16);
    StepProducts<T, 2, GemvEpilogue::kSwiGLU, kRows>(xs, R, d, L.w12_w, L.w12_b, p.sw, F, region + slot[kSlotW12].offset,
                                                     slot[kSlotW12].fits, bias, 0.f, gw, nw, lane, no_kv, -1);
    StepTraceBlock(p.trace, marks, mark + 17);
    __syncwarp();
    if (more) fill(next, kSlotW12);
    bias = StepLoadBias(L.w3_b, d, 1, gw, nw, lane);
    resid = StepLoadResidual(p.x, R, d, gw, nw, lane);
    StepGridSync(p.barrier, generation, p.trace, marks, mark + 18);
    // E: x += sw·W3 + b3.
    StepRowsToSmem(p.sw, R, F, xs);
    StepTraceBlock(p.trace, marks, mark + 20);
    wait(kSlotW3, l);
    StepTraceBlock(p.trace, marks, mark + 21);
    StepProducts<T, 1, GemvEpilogue::kAddInPlace, kRows>(xs, R, F, L.w3_w, L.w3_b, p.x, d, region + slot[kSlotW3].offset,
                                                         slot[kSlotW3].fits, bias, resid, gw, nw, lane, no_kv, -1);
    StepTraceBlock(p.trace, marks, mark + 22);
    if (!more) {
      __syncthreads();
      StepTraceMark(p.trace, marks, mark + 23);
      break;
    }
    __syncwarp();
    fill(next, kSlotW3);
    bias = StepLoadBias(next.qkv_b, p.qkv_dim, 1, gw, nw, lane);
    StepGridSync(p.barrier, generation, p.trace, marks, mark + 23);
  }
}

}  // namespace tinygpt::cuda
