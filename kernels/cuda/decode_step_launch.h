// Host-side planning and launch of the decode step kernel
// (decode_step_kernel.cuh): every transformer block of a decode step of 1-4
// rows in one persistent kernel. The backend (cuda_backend.cu) asks for a
// plan and runs the layers op by op where there is none.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/attention_args.h"

namespace tinygpt::cuda {

struct DecodeStepPlan {
  bool ok = false;  // false: the kernel does not take this step (the reason in why)
  const char* why = "";
  int grid = 0, smem_bytes = 0, num_splits = 1;
  size_t partial_floats = 0;  // the attention splits' workspace (floats), 0 unsplit
  int split_counters = 0;     // ints of the splits' counters (zero, left zero), 0 unsplit
  int bars = 0, norms = 0, regions = 0, region_vecs = 0;  // StepSmem
};

// rows: the step's rows, one new token of one sequence each; max_ctx: the
// longest context the plan must serve (the graphs' context bucket).
// TINYGPT_STEP_MIN_TILES (1): the least 16-key tiles per warp of an
// attention split. TINYGPT_STEP_BLOCKS_PER_SM (0: the plan's choice) sets
// the grid's blocks per SM.
DecodeStepPlan PlanDecodeStep(bool bf16, const AttentionDims& dims, int rows, int d, int F, int max_ctx, int num_sms);

struct DecodeStepArgs {
  const void* layers = nullptr;  // device array of n_layers Backend::LayerWeights (StepLayer<T>'s layout)
  int n_layers = 0, rows = 0, d = 0, F = 0;
  float eps = 0.f;
  AttentionDims dims;
  AttentionBatch batch;
  PagedKv kv;  // block size and tables (the caches are each layer's)
  const int32_t* slots = nullptr;
  void *x = nullptr, *qkv = nullptr, *att = nullptr, *sw = nullptr;
  float* partial = nullptr;      // plan.partial_floats
  int* split_counters = nullptr;  // plan.split_counters
  void* barrier = nullptr;   // 8 bytes, zero (left zero)
  unsigned long long* trace = nullptr;  // null, or DecodeStepTraceWords(plan, n_layers) (TINYGPT_STEP_TRACE)
};

void LaunchDecodeStep(bool bf16, const DecodeStepPlan& plan, const DecodeStepArgs& a, cudaStream_t stream);

// Where a step kernel's time went (TINYGPT_STEP_TRACE=1; a diagnostic, not a
// hot path): each block's SM clock and the global timer at the start, at the
// end of each phase and at each barrier's release. The summary has, per phase
// averaged over the layers, the slowest and the median block's work and the
// barrier's wait for its last arrival, in microseconds.
size_t DecodeStepTraceWords(const DecodeStepPlan& plan, int n_layers);
std::string SummarizeDecodeStepTrace(const DecodeStepPlan& plan, int n_layers, int attn_items, const unsigned long long* trace);

}  // namespace tinygpt::cuda
