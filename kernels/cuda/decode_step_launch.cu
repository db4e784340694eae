#include "kernels/cuda/decode_step_launch.h"

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <type_traits>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/attention_run.cuh"  // MakeAttentionParams (no kernel of it is instantiated here)
#include "kernels/cuda/decode_step_kernel.cuh"

namespace tinygpt::cuda {
namespace {

static_assert(sizeof(Backend::LayerWeights) == sizeof(StepLayer<__half>) &&
                  offsetof(Backend::LayerWeights, w3_b) == offsetof(StepLayer<__half>, w3_b) &&
                  offsetof(Backend::LayerWeights, v_cache) == offsetof(StepLayer<__half>, v_cache),
              "the backend's layer table is read as StepLayer<T>");

constexpr int Round16(long bytes) { return static_cast<int>((bytes + 15) / 16 * 16); }

// Calls fn.template operator()<Traits, kAlibi>() for the dtype, head_dim and ALiBi.
template <class Fn>
void Dispatch(bool bf16, int head_dim, bool alibi, const Fn& fn) {
  auto by_dim = [&](auto tag) {
    using T = std::decay_t<decltype(tag)>;
    auto with = [&](auto dim) {
      using Tr = DecodeAttention<decltype(dim)::value, T>;
      if (alibi) fn.template operator()<Tr, true>();
      else fn.template operator()<Tr, false>();
    };
    switch (head_dim) {
      case 16: return with(std::integral_constant<int, 16>());
      case 32: return with(std::integral_constant<int, 32>());
      case 64: return with(std::integral_constant<int, 64>());
      case 128: return with(std::integral_constant<int, 128>());
    }
  };
  if (bf16) by_dim(__nv_bfloat16());
  else by_dim(__half());
}

struct PlanFn {
  const AttentionDims& dims;
  int rows, d, F, max_ctx, num_sms;
  DecodeStepPlan* plan;
  template <class Tr, bool kAlibi> void operator()() const {
    using T = typename Tr::T;
    DecodeStepPlan& pl = *plan;
    // Shared memory: the rows a phase reads, the norm's weights and the split
    // weights (all three overlap the attention phase's own layout from 0),
    // then past both the warps' slot barriers and weight regions, which hold
    // the next layer's rows through the attention phase.
    pl.norm = Round16(static_cast<long>(rows) * std::max(d, F) * sizeof(T));
    pl.weights = pl.norm + Round16(2L * d * sizeof(T));
    pl.bars = std::max(Tr::kSmemBytes, pl.weights + Round16(static_cast<long>(rows) * dims.n_heads * kStepMaxSplits * 4));
    pl.bars = Round16(pl.bars);
    pl.regions = pl.bars + Round16(Tr::kWarps * kStepSlots * 8);
    int optin = 0, per_sm_smem = 0, device = 0;
    TG_CUDA_CHECK(cudaGetDevice(&device));
    TG_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    TG_CUDA_CHECK(cudaDeviceGetAttribute(&per_sm_smem, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
    auto kernel = DecodeStepKernel<Tr, kAlibi>;
    // Blocks per SM: the most (up to 4, TINYGPT_STEP_BLOCKS_PER_SM) that
    // registers and shared memory allow, each warp's region as big as its
    // rows of one layer (the first warp has the most) or what is left.
    static const long cap = EnvLong("TINYGPT_STEP_BLOCKS_PER_SM", 0);
    const int outs[kStepSlots] = {(dims.n_heads + 2 * dims.n_kv_heads) * dims.head_dim, d, F, d};
    const int ins[kStepSlots] = {d, d, d, F}, kws[kStepSlots] = {1, 1, 2, 1};
    // A block's dynamic shared memory: at most the opt-in limit, and c blocks
    // of an SM share its memory, each also with its static shared memory and
    // the 1 KB the system reserves per block.
    cudaFuncAttributes attrs{};
    TG_CUDA_CHECK(cudaFuncGetAttributes(&attrs, kernel));
    const long static_smem = static_cast<long>(attrs.sharedSizeBytes);
    int per_sm = 0;
    for (int c = cap > 0 ? static_cast<int>(std::min(4L, cap)) : 4; c >= 1 && per_sm == 0; --c) {
      const int nw = c * num_sms * Tr::kWarps;
      long need = 0;
      for (int k = 0; k < kStepSlots; ++k) need += static_cast<long>((outs[k] + nw - 1) / nw) * kws[k] * ins[k] * sizeof(T);
      const long limit = std::min(optin - static_smem, per_sm_smem / c - 1024 - static_smem);
      const long room = (limit - pl.regions) / Tr::kWarps / 16 * 16;
      const long region = std::min(need, room);
      if (region < 16) continue;
      const int smem = pl.regions + Tr::kWarps * static_cast<int>(region);
      TG_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      int fit = 0;
      TG_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, kernel, Tr::kThreads, smem));
      if (fit >= c) {
        per_sm = c;
        pl.smem_bytes = smem;
        pl.region_vecs = static_cast<int>(region / 16);
      }
    }
    if (per_sm < 1) {
      pl.why = "shared memory or occupancy";
      return;
    }
    TG_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, pl.smem_bytes));
    pl.grid = per_sm * num_sms;
    // Key splits: as many as the grid has blocks for each (sequence, KV
    // head), each with at least TINYGPT_STEP_MIN_TILES tiles per warp.
    static const long min_tiles = std::max(1L, EnvLong("TINYGPT_STEP_MIN_TILES", 1));
    const long pairs = static_cast<long>(rows) * dims.n_kv_heads;
    const long tiles = (std::max(1, max_ctx) + Tr::kBlockN - 1) / Tr::kBlockN;
    pl.num_splits = static_cast<int>(std::clamp(std::min<long>(pl.grid / pairs, tiles / (Tr::kWarps * min_tiles)), 1L,
                                                static_cast<long>(kStepMaxSplits)));
    pl.partial_floats = pl.num_splits > 1 ? PartialFloats(dims, AttentionBatch{rows, nullptr, nullptr, rows, 1, max_ctx}, pl.num_splits) : 0;
    pl.ok = true;
  }
};

struct LaunchFn {
  const DecodeStepPlan& plan;
  const DecodeStepArgs& a;
  cudaStream_t stream;
  template <class Tr, bool kAlibi> void operator()() const {
    using T = typename Tr::T;
    AttentionPlan ap;
    ap.shape = AttentionShape::kDecode;
    ap.num_splits = plan.num_splits;
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
    p.attn = MakeAttentionParams(ap, a.dims, a.batch, a.qkv, qkv_dim, a.kv, a.att, a.partial, nullptr);
    p.attn_items = a.batch.num_seqs * a.dims.n_kv_heads * plan.num_splits;
    p.barrier = static_cast<StepBarrier*>(a.barrier);
    p.smem = StepSmem{plan.norm, plan.weights, plan.bars, plan.regions, plan.region_vecs};
    p.trace = a.trace;
    LaunchKernel(false, DecodeStepKernel<Tr, kAlibi>, plan.grid, Tr::kThreads, plan.smem_bytes, stream, p);
  }
};

}  // namespace

DecodeStepPlan PlanDecodeStep(bool bf16, const AttentionDims& dims, int rows, int d, int F, int max_ctx, int num_sms) {
  DecodeStepPlan plan;
  if (rows < 1 || rows > kStepMaxRows) plan.why = "rows";
  else if (d % 8 != 0 || F % 8 != 0 || d > kGemvNormMaxIn) plan.why = "widths";
  else if (dims.n_kv_heads < 1 || dims.group() > 16 || dims.n_heads % dims.n_kv_heads != 0) plan.why = "heads";
  else if (dims.head_dim != 16 && dims.head_dim != 32 && dims.head_dim != 64 && dims.head_dim != 128) plan.why = "head_dim";
  else Dispatch(bf16, dims.head_dim, dims.alibi, PlanFn{dims, rows, d, F, max_ctx, num_sms, &plan});
  return plan;
}

void LaunchDecodeStep(bool bf16, const DecodeStepPlan& plan, const DecodeStepArgs& a, cudaStream_t stream) {
  Dispatch(bf16, a.dims.head_dim, a.dims.alibi, LaunchFn{plan, a, stream});
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
  static const char* kNames[5] = {"A norm1+qkv", "B attention", "C merge+proj", "D norm2+w12", "E w3"};
  char line[320];
  std::snprintf(line, sizeof line,
                "decode step kernel trace: grid %d, %d layers, %d attention items, region %d B a warp, %.0f MHz, %.1f us in all\n", G,
                n_layers, attn_items, plan.region_vecs * 16, mhz, (t1 - t0) / 1e3);
  std::string out = line;
  out += "microseconds a layer (mean over layers of the median block / of the slowest block):\n";
  out += "| phase | inputs | products | rest | all work | attention blocks' work (slowest) | last arrival's wait |\n";
  out += "|---|---|---|---|---|---|---|\n";
  for (int ph = 0; ph < 5; ++ph) {
    double med[4] = {}, slow[4] = {}, attn_slow = 0, wait = 0;
    int waits = 0;
    for (int l = 0; l < n_layers; ++l) {
      // The phase's marks: prev (the barrier before it let go; the start for
      // layer 0's A), inputs, products, done, released.
      const int base = 1 + l * kStepTraceMarksPerLayer + 4 * ph, prev = base == 1 ? 0 : base - 1;
      const int from[4] = {prev, base, base + 1, prev}, to[4] = {base, base + 1, base + 2, base + 2};
      for (int q = 0; q < 4; ++q) {
        std::vector<double> t(G);
        for (int b = 0; b < G; ++b) t[b] = (clk(to[q], b) - clk(from[q], b)) / mhz;
        if (q == 3)
          for (int b = 0; b < G; ++b)
            if (G - 1 - b < attn_items) attn_slow = std::max(attn_slow, t[b]);
        std::sort(t.begin(), t.end());
        med[q] += t[G / 2] / n_layers;
        slow[q] += t.back() / n_layers;
      }
      if (base + 2 != last) {
        double least = 1e30;
        for (int b = 0; b < G; ++b) least = std::min(least, (clk(base + 3, b) - clk(base + 2, b)) / mhz);
        wait += least, ++waits;
      }
    }
    std::snprintf(line, sizeof line, "| %s | %.2f / %.2f | %.2f / %.2f | %.2f / %.2f | %.2f / %.2f | %.2f | %.2f |\n", kNames[ph], med[0],
                  slow[0], med[1], slow[1], med[2], slow[2], med[3], slow[3], attn_slow / n_layers, waits ? wait / waits : 0.0);
    out += line;
  }
  return out;
}

}  // namespace tinygpt::cuda
