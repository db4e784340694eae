// The CUDA backend's device collectives (Backend::NewCollectiveId,
// JoinCollective, AllReduceSum, WaitCollectives): NCCL, opened at run time
// (dlopen of libnccl.so.2), so that the module loads and serves where NCCL
// is not installed and only data-parallel training needs it. The few types
// and functions of NCCL's stable C API that this uses are declared in
// nccl_collective.cc and checked against ncclGetVersion.
//
// The sums run on a stream of their own: each waits for the compute work
// enqueued before it (an event), so the backward's later layers run while
// the earlier layers' gradients are summed (PyTorch DDP's buckets).
#pragma once
#include <cuda_runtime.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tinygpt::cuda {

class NcclCollective {
 public:
  // NCCL's unique id for a new world (rank 0), as bytes.
  static absl::StatusOr<std::string> NewId();
  // This process as rank `rank` of `world_size`, on the current device;
  // `compute` is the stream whose work the sums follow. Waits for every
  // rank to join, `timeout` at most; `check`'s error ends the wait early.
  static absl::StatusOr<std::unique_ptr<NcclCollective>> Join(const std::string& id, int rank, int world_size, cudaStream_t compute,
                                                               absl::Duration timeout, const std::function<absl::Status()>& check);
  virtual ~NcclCollective() = default;
  virtual absl::Status AllReduceSum(float* data, size_t n) = 0;
  virtual absl::Status Wait(absl::Duration timeout, const std::function<absl::Status()>& check) = 0;
};

}  // namespace tinygpt::cuda
