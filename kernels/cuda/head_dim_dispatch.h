// The one switch from run-time shapes to the template arguments the
// attention kernels are instantiated for: the head dims 16, 32, 64 and 128
// and the 16-bit element types. The launch files (attention_launch.cu,
// attention_train_launch.cu, decode_step_launch.cu) build their dispatches
// from these.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdio>
#include <cstdlib>
#include <type_traits>

namespace tinygpt::cuda {

// Calls fn(std::integral_constant<int, D>()) for head_dim D. Any other head
// dim is a caller's bug (the planners refuse it first): reported with
// `what`, then abort.
template <class Fn>
void ByHeadDim(int head_dim, const char* what, const Fn& fn) {
  switch (head_dim) {
    case 16: return fn(std::integral_constant<int, 16>());
    case 32: return fn(std::integral_constant<int, 32>());
    case 64: return fn(std::integral_constant<int, 64>());
    case 128: return fn(std::integral_constant<int, 128>());
  }
  std::fprintf(stderr, "%s: head_dim %d has no kernel (16, 32, 64, 128)\n", what, head_dim);
  std::abort();
}

// Calls fn(__nv_bfloat16()) or fn(__half()).
template <class Fn>
void ByHalfType(bool bf16, const Fn& fn) {
  if (bf16) fn(__nv_bfloat16());
  else fn(__half());
}

}  // namespace tinygpt::cuda
