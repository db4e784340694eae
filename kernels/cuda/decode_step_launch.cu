#include "kernels/cuda/decode_step_launch.h"

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <type_traits>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/attention_run.cuh"  // MakeAttentionParams (no kernel of it is instantiated here)
#include "kernels/cuda/decode_step_kernel.cuh"
#include "kernels/cuda/head_dim_dispatch.h"

namespace tinygpt::cuda {
namespace {

static_assert(sizeof(Backend::LayerWeights) == sizeof(StepLayer<__half>) &&
                  offsetof(Backend::LayerWeights, w3_b) == offsetof(StepLayer<__half>, w3_b) &&
                  offsetof(Backend::LayerWeights, v_cache) == offsetof(StepLayer<__half>, v_cache),
              "the backend's layer table is read as StepLayer<T>");

constexpr int Round16(long bytes) { return static_cast<int>((bytes + 15) / 16 * 16); }

// The rows a kernel's loops are unrolled for (DecodeStepKernel's kRows):
// one row has its own kernel unless TINYGPT_STEP_ONE_ROW_KERNEL=0 (the A/B).
int StepKernelRows(int rows) {
  static const bool one_row = EnvLong("TINYGPT_STEP_ONE_ROW_KERNEL", 1) != 0;
  return rows == 1 && one_row ? 1 : kStepMaxRows;
}

// Calls fn.template operator()<Traits, kAlibi, kRows>() for the dtype,
// head_dim, ALiBi and the step's rows.
template <class Fn>
void Dispatch(bool bf16, int head_dim, bool alibi, int rows, const Fn& fn) {
  ByHalfType(bf16, [&](auto tag) {
    using T = std::decay_t<decltype(tag)>;
    ByHeadDim(head_dim, "decode step kernel", [&](auto dim) {
      using Tr = DecodeAttention<decltype(dim)::value, T>;
      const bool one = StepKernelRows(rows) == 1;
      if (alibi) one ? fn.template operator()<Tr, true, 1>() : fn.template operator()<Tr, true, kStepMaxRows>();
      else one ? fn.template operator()<Tr, false, 1>() : fn.template operator()<Tr, false, kStepMaxRows>();
    });
  });
}

// Raises the kernel's dynamic shared-memory limit to `bytes`, never lowers
// it: the limit is the function's, plans of one instantiation differ (rows,
// widths), and a graph captured with a larger plan must still launch after an
// eager launch of a smaller one.
template <class Tr, bool kAlibi, int kRows>
void RaiseSmemLimit(int bytes) {
  static int limit = 0;  // one per instantiation, as the attribute is
  if (bytes <= limit) return;
  TG_CUDA_CHECK(cudaFuncSetAttribute(DecodeStepKernel<Tr, kAlibi, kRows>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  limit = bytes;
}

struct PlanFn {
  const AttentionDims& dims;
  int rows, d, F, max_ctx, num_sms;
  DecodeStepPlan* plan;
  template <class Tr, bool kAlibi, int kRows> void operator()() const {
    using T = typename Tr::T;
    DecodeStepPlan& pl = *plan;
    // Shared memory: the attention phase's layout from 0, over which the
    // GEMV phases lay the rows they read; past both, held across phases, the
    // mbarriers, the norm slot and the warps' weight regions (StepSmem).
    pl.bars = Round16(std::max<long>(Tr::kSmemBytes, static_cast<long>(rows) * std::max(d, F) * sizeof(T)));
    pl.norms = pl.bars + Round16((Tr::kWarps * kStepSlots + 1) * 8);
    pl.regions = pl.norms + Round16(4L * d * sizeof(T));
    int optin = 0, per_sm_smem = 0, device = 0;
    TG_CUDA_CHECK(cudaGetDevice(&device));
    TG_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    TG_CUDA_CHECK(cudaDeviceGetAttribute(&per_sm_smem, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
    auto kernel = DecodeStepKernel<Tr, kAlibi, kRows>;
    const int qkv_dim = (dims.n_heads + 2 * dims.n_kv_heads) * dims.head_dim;
    // A block's dynamic shared memory: at most the opt-in limit, and c blocks
    // of an SM share its memory, each also with its static shared memory and
    // the 1 KB the system reserves per block.
    cudaFuncAttributes attrs{};
    TG_CUDA_CHECK(cudaFuncGetAttributes(&attrs, kernel));
    const long static_smem = static_cast<long>(attrs.sharedSizeBytes);
    // Blocks per SM: the most (up to 4) at which every warp's region holds
    // all its rows of a layer (warp 0 has the most), so that no weight row is
    // read from DRAM where it is used; where no count does, the one whose
    // regions hold the most of a layer. TINYGPT_STEP_BLOCKS_PER_SM=N asks
    // for N (an experiment's knob; no plan if N blocks do not fit).
    static const long forced = std::clamp(EnvLong("TINYGPT_STEP_BLOCKS_PER_SM", 0), 0L, 4L);
    int best = 0;
    long best_bytes = 0, best_region = 0;
    bool best_fits = false;
    for (int c = forced > 0 ? static_cast<int>(forced) : 4; c >= (forced > 0 ? forced : 1); --c) {
      const int nw = c * num_sms * Tr::kWarps;
      long need = 0;
      for (int k = 0; k < kStepSlots; ++k) {
        const StepSlotShape sh = StepSlotShapeOf(k, qkv_dim, d, F);
        need += static_cast<long>(StepWarpOutputs(sh.out, 0, nw)) * sh.kw * sh.in * sizeof(T);
      }
      const long limit = std::min(optin - static_smem, per_sm_smem / c - 1024 - static_smem);
      const long room = (limit - pl.regions) / Tr::kWarps / 16 * 16;
      const long region = std::min(need, room);
      if (region < 16) continue;
      const int smem = pl.regions + Tr::kWarps * static_cast<int>(region);
      RaiseSmemLimit<Tr, kAlibi, kRows>(smem);
      int fit = 0;
      TG_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, kernel, Tr::kThreads, smem));
      if (fit < c) continue;
      const bool fits = region >= need;
      const long bytes = region * c;  // an SM's share of a layer's rows it holds
      if (best == 0 || (fits && !best_fits) || (!best_fits && bytes > best_bytes)) {
        best = c, best_bytes = bytes, best_region = region, best_fits = fits;
        pl.smem_bytes = smem;
      }
      if (best_fits) break;  // the most blocks per SM at which it all fits
    }
    if (best < 1) {
      pl.why = "shared memory or occupancy";
      return;
    }
    pl.region_vecs = static_cast<int>(best_region / 16);
    pl.grid = best * num_sms;
    // Key splits: as many as the grid has blocks for each (sequence, KV
    // head), each with at least TINYGPT_STEP_MIN_TILES tiles per warp. The
    // last split to finish merges them (a counter per (sequence, KV head)).
    static const long min_tiles = std::max(1L, EnvLong("TINYGPT_STEP_MIN_TILES", 1));
    const long pairs = static_cast<long>(rows) * dims.n_kv_heads;
    const long tiles = (std::max(1, max_ctx) + Tr::kBlockN - 1) / Tr::kBlockN;
    pl.num_splits = static_cast<int>(std::clamp(std::min<long>(pl.grid / pairs, tiles / (Tr::kWarps * min_tiles)), 1L,
                                                static_cast<long>(kStepMaxSplits)));
    pl.partial_floats = pl.num_splits > 1 ? PartialFloats(dims, AttentionBatch{rows, nullptr, nullptr, rows, 1, max_ctx}, pl.num_splits) : 0;
    pl.split_counters = pl.num_splits > 1 ? static_cast<int>(pairs) : 0;
    pl.ok = true;
  }
};

struct LaunchFn {
  const DecodeStepPlan& plan;
  const DecodeStepArgs& a;
  cudaStream_t stream;
  template <class Tr, bool kAlibi, int kRows> void operator()() const {
    using T = typename Tr::T;
    AttentionPlan ap;
    ap.shape = AttentionShape::kDecode;
    ap.num_splits = plan.num_splits;
    // The last split to finish merges them, always: the step kernel has no
    // combine phase (TINYGPT_DECODE_FUSED_MERGE is the standalone kernel's).
    ap.split_counters = plan.split_counters;
    const long qkv_dim = static_cast<long>(a.dims.n_heads + 2 * a.dims.n_kv_heads) * a.dims.head_dim;
    DecodeStepParams<T> p;
    p.layers = static_cast<const StepLayer<T>*>(a.layers);
    p.n_layers = a.n_layers;
    p.rows = a.rows;
    p.d = a.d;
    p.F = a.F;
    p.qkv_dim = static_cast<int>(qkv_dim);
    p.eps = a.eps;
    p.x = static_cast<T*>(a.x);
    p.qkv = static_cast<T*>(a.qkv);
    p.att = static_cast<T*>(a.att);
    p.sw = static_cast<T*>(a.sw);
    p.slots = a.slots;
    p.attn = MakeAttentionParams(ap, a.dims, a.batch, a.qkv, qkv_dim, a.kv, a.att, a.partial, a.split_counters);
    p.attn_items = a.batch.num_seqs * a.dims.n_kv_heads * plan.num_splits;
    p.barrier = static_cast<StepBarrier*>(a.barrier);
    p.smem = StepSmem{plan.bars, plan.norms, plan.regions, plan.region_vecs};
    p.trace = a.trace;
    RaiseSmemLimit<Tr, kAlibi, kRows>(plan.smem_bytes);  // the plan raised it; here beside the launch that needs it
    LaunchKernel(false, DecodeStepKernel<Tr, kAlibi, kRows>, plan.grid, Tr::kThreads, plan.smem_bytes, stream, p);
  }
};

}  // namespace

DecodeStepPlan PlanDecodeStep(bool bf16, const AttentionDims& dims, int rows, int d, int F, int max_ctx, int num_sms) {
  DecodeStepPlan plan;
  if (rows < 1 || rows > kStepMaxRows) plan.why = "rows";
  else if (d % 8 != 0 || F % 8 != 0 || d > kGemvNormMaxIn) plan.why = "widths";
  else if (dims.n_kv_heads < 1 || dims.group() > 16 || dims.n_heads % dims.n_kv_heads != 0) plan.why = "heads";
  else if (dims.head_dim != 16 && dims.head_dim != 32 && dims.head_dim != 64 && dims.head_dim != 128) plan.why = "head_dim";
  else Dispatch(bf16, dims.head_dim, dims.alibi, rows, PlanFn{dims, rows, d, F, max_ctx, num_sms, &plan});
  return plan;
}

void LaunchDecodeStep(bool bf16, const DecodeStepPlan& plan, const DecodeStepArgs& a, cudaStream_t stream) {
  Dispatch(bf16, a.dims.head_dim, a.dims.alibi, a.rows, LaunchFn{plan, a, stream});
}

size_t DecodeStepTraceWords(const DecodeStepPlan& plan, int n_layers) {
  return 2 * static_cast<size_t>(StepTraceMarks(n_layers)) * plan.grid;
}

std::string SummarizeDecodeStepTrace(const DecodeStepPlan& plan, int n_layers, int attn_items, const unsigned long long* trace) {
  const int G = plan.grid, M = StepTraceMarks(n_layers);
  auto clk = [&](int m, int b) { return static_cast<double>(trace[static_cast<size_t>(m) * G + b]); };
  auto ns = [&](int m, int b) { return static_cast<double>(trace[static_cast<size_t>(M + m) * G + b]); };
  const int last = M - 2;  // the last layer's E done (its release is never marked)
  // The SM clock's rate from block 0's whole run (clock64 counts per SM; the
  // global timer is one for the GPU but coarse).
  const double mhz = (clk(last, 0) - clk(0, 0)) / std::max(1.0, ns(last, 0) - ns(0, 0)) * 1e3;
  double t0 = ns(0, 0), t1 = ns(last, 0);
  for (int b = 0; b < G; ++b) t0 = std::min(t0, ns(0, b)), t1 = std::max(t1, ns(last, b));
  static const char* kNames[kStepPhases] = {"A norm1+qkv", "B attention", "C attention rows+proj", "D norm2+w12", "E w3"};
  char line[360];
  std::snprintf(line, sizeof line,
                "decode step kernel trace: grid %d, %d layers, %d attention items, region %d B a warp, %.0f MHz, %.1f us in all\n", G,
                n_layers, attn_items, plan.region_vecs * 16, mhz, (t1 - t0) / 1e3);
  std::string out = line;
  out += "microseconds a layer (mean over layers of the median block / of the slowest block):\n";
  out += "| phase | inputs | slot wait | products | rest | all work | attention blocks' work (slowest) | last arrival's wait |\n";
  out += "|---|---|---|---|---|---|---|---|\n";
  constexpr int kIntervals = 5;  // inputs, slot wait, products, rest, all work
  for (int ph = 0; ph < kStepPhases; ++ph) {
    double med[kIntervals] = {}, slow[kIntervals] = {}, attn_slow = 0, wait = 0;
    int waits = 0;
    for (int l = 0; l < n_layers; ++l) {
      // The phase's marks: prev (the barrier before it let go; the start for
      // layer 0's A), inputs, weights, products, done, released.
      const int base = 1 + l * kStepTraceMarksPerLayer + kStepTracePhaseMarks * ph, prev = base == 1 ? 0 : base - 1;
      const int from[kIntervals] = {prev, base, base + 1, base + 2, prev}, to[kIntervals] = {base, base + 1, base + 2, base + 3, base + 3};
      for (int q = 0; q < kIntervals; ++q) {
        std::vector<double> t(G);
        for (int b = 0; b < G; ++b) t[b] = (clk(to[q], b) - clk(from[q], b)) / mhz;
        if (q == kIntervals - 1)
          for (int b = 0; b < G; ++b)
            if (G - 1 - b < attn_items) attn_slow = std::max(attn_slow, t[b]);
        std::sort(t.begin(), t.end());
        med[q] += t[G / 2] / n_layers;
        slow[q] += t.back() / n_layers;
      }
      if (base + 3 != last) {
        double least = 1e30;
        for (int b = 0; b < G; ++b) least = std::min(least, (clk(base + 4, b) - clk(base + 3, b)) / mhz);
        wait += least, ++waits;
      }
    }
    std::snprintf(line, sizeof line, "| %s | %.2f / %.2f | %.2f / %.2f | %.2f / %.2f | %.2f / %.2f | %.2f / %.2f | %.2f | %.2f |\n",
                  kNames[ph], med[0], slow[0], med[1], slow[1], med[2], slow[2], med[3], slow[3], med[4], slow[4], attn_slow / n_layers,
                  waits ? wait / waits : 0.0);
    out += line;
  }
  return out;
}

}  // namespace tinygpt::cuda
