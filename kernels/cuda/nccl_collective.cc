#include "kernels/cuda/nccl_collective.h"

#include <dlfcn.h>

#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>
#include <type_traits>

#include "absl/strings/str_cat.h"

namespace tinygpt::cuda {
namespace {

// NCCL's stable C API (nccl.h, 2.x): the values and signatures are part of
// its ABI, so declaring them here lets the module build where NCCL is not
// installed.
using ncclComm_t = struct ncclComm*;
constexpr int kUniqueIdBytes = 128;
struct ncclUniqueId {
  char internal[kUniqueIdBytes];
};
enum ncclResult_t { ncclSuccess = 0, ncclInProgress = 7 };
enum ncclDataType_t { ncclFloat32 = 7 };
enum ncclRedOp_t { ncclSum = 0 };

// The oldest NCCL this is written against: ncclCommGetAsyncError and
// ncclCommAbort (2.4), version codes X*10000 + Y*100 + Z (2.9).
constexpr int kMinVersion = 20900;

struct NcclApi {
  ncclResult_t (*GetVersion)(int*);
  ncclResult_t (*GetUniqueId)(ncclUniqueId*);
  ncclResult_t (*CommInitRank)(ncclComm_t*, int, ncclUniqueId, int);
  ncclResult_t (*AllReduce)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*CommGetAsyncError)(ncclComm_t, ncclResult_t*);
  ncclResult_t (*CommAbort)(ncclComm_t);
  ncclResult_t (*CommDestroy)(ncclComm_t);
  const char* (*GetErrorString)(ncclResult_t);
  int version = 0;
  std::string error;  // why NCCL cannot be used, when it cannot
};

// libnccl.so.2, opened once per process.
const NcclApi& Nccl() {
  static NcclApi api;
  static std::once_flag once;
  std::call_once(once, [] {
    void* h = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      api.error = absl::StrCat("NCCL is not installed (", dlerror(), "); data-parallel training on GPUs needs libnccl.so.2 (NVIDIA's "
                               "libnccl2 package), on the library path");
      return;
    }
    bool all = true;
    auto sym = [&](auto* fn, const char* name) {
      *fn = reinterpret_cast<std::remove_pointer_t<decltype(fn)>>(dlsym(h, name));
      if (!*fn) all = false;
    };
    sym(&api.GetVersion, "ncclGetVersion");
    sym(&api.GetUniqueId, "ncclGetUniqueId");
    sym(&api.CommInitRank, "ncclCommInitRank");
    sym(&api.AllReduce, "ncclAllReduce");
    sym(&api.CommGetAsyncError, "ncclCommGetAsyncError");
    sym(&api.CommAbort, "ncclCommAbort");
    sym(&api.CommDestroy, "ncclCommDestroy");
    sym(&api.GetErrorString, "ncclGetErrorString");
    if (!all || api.GetVersion(&api.version) != ncclSuccess) {
      api.error = "libnccl.so.2 lacks functions of NCCL's 2.x API";
      return;
    }
    if (api.version < kMinVersion)
      api.error = absl::StrCat("NCCL ", api.version, " is older than ", kMinVersion / 10000, ".", kMinVersion / 100 % 100, ", the oldest supported");
  });
  return api;
}

absl::Status NcclError(const char* what, ncclResult_t r) {
  return absl::InternalError(absl::StrCat("NCCL ", what, ": ", Nccl().GetErrorString(r)));
}

class NcclWorld final : public NcclCollective {
 public:
  NcclWorld(ncclComm_t comm, cudaStream_t compute) : comm_(comm), compute_(compute) {}
  ~NcclWorld() override {
    if (comm_) Nccl().CommDestroy(comm_);
    if (done_) cudaEventDestroy(done_);
    if (ready_) cudaEventDestroy(ready_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  absl::Status Init() {
    if (cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking) != cudaSuccess ||
        cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&done_, cudaEventDisableTiming) != cudaSuccess)
      return absl::InternalError("NCCL: cannot create the collectives' stream and events");
    return absl::OkStatus();
  }

  absl::Status AllReduceSum(float* data, size_t n) override {
    if (aborted_) return absl::FailedPreconditionError("NCCL: the collectives were aborted");
    if (n == 0) return absl::OkStatus();
    // After the compute work so far (the gradients of these n values).
    if (cudaEventRecord(ready_, compute_) != cudaSuccess || cudaStreamWaitEvent(stream_, ready_, 0) != cudaSuccess)
      return Abort(absl::InternalError("NCCL: cannot order the sum after the backward"));
    if (ncclResult_t r = Nccl().AllReduce(data, data, n, ncclFloat32, ncclSum, comm_, stream_); r != ncclSuccess && r != ncclInProgress)
      return Abort(NcclError("all-reduce", r));
    pending_ = true;
    return absl::OkStatus();
  }

  absl::Status Wait(absl::Duration timeout, const std::function<absl::Status()>& check) override {
    if (!pending_) return absl::OkStatus();
    if (cudaEventRecord(done_, stream_) != cudaSuccess) return Abort(absl::InternalError("NCCL: cannot record the sums' end"));
    const absl::Time deadline = absl::Now() + timeout;
    for (long polls = 0;; ++polls) {
      const cudaError_t q = cudaEventQuery(done_);
      if (q == cudaSuccess) break;
      if (q != cudaErrorNotReady) return Abort(absl::InternalError(absl::StrCat("NCCL: ", cudaGetErrorString(q))));
      ncclResult_t async = ncclSuccess;
      Nccl().CommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) return Abort(NcclError("all-reduce", async));
      if (polls % 100 == 0 && check)
        if (absl::Status s = check(); !s.ok()) return Abort(s);
      if (absl::Now() > deadline)
        return Abort(absl::DeadlineExceededError(absl::StrCat("the gradients' all-reduce did not finish in ", absl::FormatDuration(timeout),
                                                              ": another rank died or hangs")));
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    pending_ = false;
    // The work after this (the norm, the update) follows the sums.
    if (cudaStreamWaitEvent(compute_, done_, 0) != cudaSuccess) return Abort(absl::InternalError("NCCL: cannot order the update after the sums"));
    return absl::OkStatus();
  }

 private:
  // Aborts the communicator at once: its kernels, which may spin on a dead
  // rank's flags, end, so that freeing memory (cudaFree waits for the whole
  // device) and the process's exit do not hang behind them.
  absl::Status Abort(absl::Status why) {
    aborted_ = true;
    if (comm_) Nccl().CommAbort(comm_);
    comm_ = nullptr;
    return why;
  }
  ncclComm_t comm_ = nullptr;
  cudaStream_t compute_ = nullptr, stream_ = nullptr;
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
  bool pending_ = false, aborted_ = false;
};

}  // namespace

absl::StatusOr<std::string> NcclCollective::NewId() {
  const NcclApi& api = Nccl();
  if (!api.error.empty()) return absl::FailedPreconditionError(api.error);
  ncclUniqueId id;
  if (ncclResult_t r = api.GetUniqueId(&id); r != ncclSuccess) return NcclError("unique id", r);
  return std::string(id.internal, kUniqueIdBytes);
}

absl::StatusOr<std::unique_ptr<NcclCollective>> NcclCollective::Join(const std::string& id, int rank, int world_size, cudaStream_t compute,
                                                                     absl::Duration timeout, const std::function<absl::Status()>& check) {
  const NcclApi& api = Nccl();
  if (!api.error.empty()) return absl::FailedPreconditionError(api.error);
  if (id.size() != kUniqueIdBytes) return absl::InvalidArgumentError(absl::StrCat("NCCL: a unique id has ", kUniqueIdBytes, " bytes, not ", id.size()));
  // ncclCommInitRank blocks until every rank has called it: on a thread of
  // its own, so that a rank that never comes ends the wait (the thread is
  // left behind; the process ends on the error).
  struct Init {
    std::mutex mu;
    bool done = false;
    ncclResult_t result = ncclSuccess;
    ncclComm_t comm = nullptr;
  };
  auto init = std::make_shared<Init>();
  ncclUniqueId uid;
  std::memcpy(uid.internal, id.data(), kUniqueIdBytes);
  int device = 0;
  cudaGetDevice(&device);
  std::thread([init, uid, rank, world_size, device] {
    cudaSetDevice(device);  // NCCL's communicator is on the calling thread's device
    ncclComm_t comm = nullptr;
    const ncclResult_t r = Nccl().CommInitRank(&comm, world_size, uid, rank);
    std::lock_guard<std::mutex> lock(init->mu);
    init->result = r;
    init->comm = comm;
    init->done = true;
  }).detach();
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(init->mu);
      if (init->done) break;
    }
    if (check)
      if (absl::Status s = check(); !s.ok()) return s;
    if (absl::Now() > deadline)
      return absl::DeadlineExceededError(absl::StrCat("NCCL: rank ", rank, " of ", world_size, " waited ", absl::FormatDuration(timeout),
                                                      " for the others to join"));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (init->result != ncclSuccess) return NcclError(absl::StrCat("init of rank ", rank, " of ", world_size).c_str(), init->result);
  auto world = std::make_unique<NcclWorld>(init->comm, compute);
  if (auto s = world->Init(); !s.ok()) return s;
  return std::unique_ptr<NcclCollective>(std::move(world));
}

}  // namespace tinygpt::cuda
