#include "kernels/cuda/decode_step_launch.h"

#include <algorithm>
#include <cstddef>
#include <type_traits>

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
    // Shared memory: the rows a phase reads, the norm's weights, the split
    // weights, then each warp's prefetch region; the attention phase's own
    // layout over all of it. 16 KB regions hold every weight row a warp of
    // bench-125m's phases takes (at most 6 KB); bigger models stream the
    // rows that do not fit.
    pl.norm = Round16(static_cast<long>(rows) * std::max(d, F) * sizeof(T));
    pl.weights = pl.norm + Round16(2L * d * sizeof(T));
    pl.regions = pl.weights + Round16(static_cast<long>(rows) * dims.n_heads * kStepMaxSplits * 4);
    int optin = 0, device = 0;
    TG_CUDA_CHECK(cudaGetDevice(&device));
    TG_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    const int smem = std::max(Tr::kSmemBytes, pl.regions + Tr::kWarps * (16 << 10));
    if (smem + 1024 > optin) {
      pl.why = "shared memory";
      return;
    }
    pl.region_vecs = (smem - pl.regions) / 16 / Tr::kWarps;
    pl.smem_bytes = smem;
    auto kernel = DecodeStepKernel<Tr, kAlibi>;
    TG_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    int per_sm = 0;
    TG_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, Tr::kThreads, smem));
    if (per_sm < 1) {
      pl.why = "occupancy";
      return;
    }
    pl.grid = per_sm * num_sms;
    // Key splits: as many as the grid has blocks for each (sequence, KV
    // head), each with at least TINYGPT_STEP_MIN_TILES tiles per warp.
    static const long min_tiles = std::max(1L, EnvLong("TINYGPT_STEP_MIN_TILES", 2));
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
    p.smem = StepSmem{plan.norm, plan.weights, plan.regions, plan.region_vecs};
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

}  // namespace tinygpt::cuda
