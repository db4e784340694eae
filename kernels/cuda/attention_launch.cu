#include "kernels/cuda/attention_launch.h"

#include "kernels/cuda/attention_run.cuh"
#include "kernels/cuda/head_dim_dispatch.h"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>

namespace tinygpt::cuda {
namespace {

bool NarrowBlockN64() {
  static const bool on = [] {
    const char* v = std::getenv("TINYGPT_DECODE_BLOCK_N");
    return v && std::string(v) == "64";
  }();
  return on;
}

bool NarrowDecode() {
  static const bool on = [] {
    const char* v = std::getenv("TINYGPT_DECODE_KERNEL");
    return v && std::string(v) == "narrow";
  }();
  return on;
}

// Calls fn.template operator()<Traits>() for the shape, head_dim and dtype.
template <class Fn>
void Dispatch(bool bf16, AttentionShape shape, int head_dim, const Fn& fn) {
  ByHalfType(bf16, [&](auto tag) {
    using T = std::decay_t<decltype(tag)>;  // decay: nvcc reads decltype(tag) as a reference inside the nested if constexpr
    ByHeadDim(head_dim, "paged attention", [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      if (shape == AttentionShape::kDecode) return fn.template operator()<DecodeAttention<D, T>>();
      if constexpr (D <= 64) {
        if (shape == AttentionShape::kNarrow && NarrowBlockN64()) return fn.template operator()<NarrowAttention64<D, T>>();
      }
      if (shape == AttentionShape::kNarrow) fn.template operator()<NarrowAttention<D, T>>();
      else fn.template operator()<WideAttention<D, T>>();
    });
  });
}

struct PlanFn {
  const AttentionDims& dims;
  const AttentionBatch& batch;
  int num_sms;
  AttentionPlan* plan;
  template <class Tr> void operator()() const {
    if constexpr (IsDecodeTraits<Tr>::value) PlanDecode<Tr>(dims, batch, num_sms, plan);
    else PlanFor<Tr>(dims, batch, num_sms, plan);
  }
};
struct PlanStreamFn {
  const AttentionDims& dims;
  const AttentionBatch& batch;
  int num_sms;
  AttentionPlan* plan;
  template <class Tr> void operator()() const {
    if constexpr (IsDecodeTraits<Tr>::value) PlanDecodeKernel<Tr>(dims, batch, num_sms, /*stream=*/true, plan);
  }
};
struct LaunchFn {
  const AttentionDims& dims;
  const AttentionBatch& batch;
  const AttentionParams& p;
  cudaStream_t stream;
  template <class Tr> void operator()() const {
    if constexpr (IsDecodeTraits<Tr>::value) LaunchDecode<Tr>(dims, batch, p, stream);
    else LaunchFor<Tr>(dims, batch, p, stream);
  }
};

}  // namespace

AttentionPlan PlanPagedAttention(bool bf16, const AttentionDims& dims, const AttentionBatch& batch, int num_sms) {
  AttentionPlan plan;
  // The decode kernel when every sequence's rows (new tokens × GQA group)
  // fit one m16 tile.
  if (RowsPerSequence(dims, batch) <= 16) plan.shape = NarrowDecode() ? AttentionShape::kNarrow : AttentionShape::kDecode;
  Dispatch(bf16, plan.shape, dims.head_dim, PlanFn{dims, batch, num_sms, &plan});
  return plan;
}

AttentionPlan PlanPagedDecodeStream(bool bf16, const AttentionDims& dims, const AttentionBatch& batch, int num_sms) {
  AttentionPlan plan;
  plan.shape = AttentionShape::kDecode;
  Dispatch(bf16, plan.shape, dims.head_dim, PlanStreamFn{dims, batch, num_sms, &plan});
  return plan;
}

void LaunchPagedAttention(bool bf16, const AttentionPlan& plan, const AttentionDims& dims, const AttentionBatch& batch,
                          const void* qkv, long qkv_stride, const PagedKv& kv, void* out, float* partial, int* counters,
                          cudaStream_t stream) {
  if (batch.num_seqs == 0 || batch.total_q == 0) return;
  const AttentionParams p = MakeAttentionParams(plan, dims, batch, qkv, qkv_stride, kv, out, partial, counters);
  Dispatch(bf16, plan.shape, dims.head_dim, LaunchFn{dims, batch, p, stream});
}

}  // namespace tinygpt::cuda
