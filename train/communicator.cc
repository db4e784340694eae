#include "train/communicator.h"

#include <dlfcn.h>

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/shared_module.h"
#include "train/mpi_module.h"

namespace tinygpt {
namespace {

class SingleProcess : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  absl::Status AllReduceSum(float*, size_t) override { return absl::OkStatus(); }
  absl::Status AllReduceSum(double*, size_t) override { return absl::OkStatus(); }
  const char* launcher() const override { return "one process"; }
  [[noreturn]] void Abort(int code) override { std::exit(code); }
};

class MpiCommunicator : public Communicator {
 public:
  explicit MpiCommunicator(mpi::World* world) : world_(world) {}
  int rank() const override { return world_->rank(); }
  int world_size() const override { return world_->size(); }
  absl::Status AllReduceSum(float* data, size_t n) override { return Wrap(world_->AllReduceSum(data, n, &error_)); }
  absl::Status AllReduceSum(double* data, size_t n) override { return Wrap(world_->AllReduceSum(data, n, &error_)); }
  const char* launcher() const override { return "MPI"; }
  [[noreturn]] void Abort(int code) override {
    world_->Abort(code);
    __builtin_unreachable();  // World::Abort does not return
  }

 private:
  absl::Status Wrap(bool ok) {
    return ok ? absl::OkStatus() : absl::UnavailableError(absl::StrCat("rank ", world_->rank(), ": ", error_));
  }
  std::unique_ptr<mpi::World> world_;
  std::string error_;
};

// The world size a launcher announced in the environment, 0 when none did.
int LauncherWorldSize() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"})
    if (const char* v = std::getenv(var)) return std::atoi(v);
  return 0;
}

}  // namespace

std::unique_ptr<Communicator> MakeSingleProcess() { return std::make_unique<SingleProcess>(); }

absl::StatusOr<std::unique_ptr<Communicator>> CommunicatorFromLauncher() {
  if (LauncherWorldSize() <= 1) return MakeSingleProcess();
  std::string error;
  // RTLD_GLOBAL: OpenMPI opens its own components (mca_*.so) with dlopen,
  // and they resolve symbols of libmpi.
  void* handle = OpenSharedModule(mpi::kModuleName, RTLD_NOW | RTLD_GLOBAL, &error);
  if (!handle)
    return absl::FailedPreconditionError(absl::StrCat(
        "started by an MPI launcher with ", LauncherWorldSize(), " ranks, but ", mpi::kModuleName,
        " (OpenMPI: apt-get install libopenmpi3) does not load:", error));
  auto api_fn = reinterpret_cast<const mpi::Api* (*)()>(dlsym(handle, mpi::kApiSymbol));
  const mpi::Api* api = api_fn ? api_fn() : nullptr;
  if (!api || api->version != mpi::kApiVersion)
    return absl::FailedPreconditionError(absl::StrCat(mpi::kModuleName, " is not this build's (API version mismatch)"));
  mpi::World* world = api->init(&error);
  if (!world) return absl::UnavailableError(error);
  auto comm = std::make_unique<MpiCommunicator>(world);
  // A launcher of another MPI (MPICH's, or srun without PMIx) starts each
  // process as a world of its own: N runs of the whole batch writing one --out.
  if (comm->world_size() != LauncherWorldSize())
    return absl::FailedPreconditionError(absl::StrCat("the launcher started ", LauncherWorldSize(), " ranks but OpenMPI sees a world of ",
                                                      comm->world_size(), ": start the ranks with OpenMPI's mpirun"));
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace tinygpt
