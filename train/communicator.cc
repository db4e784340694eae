#include "train/communicator.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/shared_module.h"
#include "train/mpi_module.h"
#include "train/rendezvous.h"

namespace tinygpt {
namespace {

class SingleProcess : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  int local_rank() const override { return 0; }
  bool SumsOnHost() const override { return true; }
  absl::Status AllReduceSum(float*, size_t) override { return absl::OkStatus(); }
  absl::Status AllReduceSum(double*, size_t) override { return absl::OkStatus(); }
  absl::Status Broadcast(std::string*) override { return absl::OkStatus(); }
  const char* launcher() const override { return "one process"; }
  [[noreturn]] void Abort(int code) override { std::exit(code); }
};

class MpiCommunicator : public Communicator {
 public:
  explicit MpiCommunicator(mpi::World* world) : world_(world) {}
  int rank() const override { return world_->rank(); }
  int world_size() const override { return world_->size(); }
  // OpenMPI's, Intel MPI's and Slurm's names for it; without one, each rank
  // is taken to be on a host of its own.
  int local_rank() const override {
    for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
      if (const char* v = std::getenv(var)) return std::atoi(v);
    return 0;
  }
  bool SumsOnHost() const override { return true; }
  absl::Status AllReduceSum(float* data, size_t n) override { return Wrap(world_->AllReduceSum(data, n, &error_)); }
  absl::Status AllReduceSum(double* data, size_t n) override { return Wrap(world_->AllReduceSum(data, n, &error_)); }
  absl::Status Broadcast(std::string* bytes) override { return Wrap(world_->Broadcast(bytes, &error_)); }
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

class RendezvousCommunicator : public Communicator {
 public:
  explicit RendezvousCommunicator(std::unique_ptr<Rendezvous> r) : r_(std::move(r)) {}
  int rank() const override { return r_->rank(); }
  int world_size() const override { return r_->world_size(); }
  int local_rank() const override { return r_->local_rank(); }
  bool SumsOnHost() const override { return false; }
  absl::Status AllReduceSum(float*, size_t) override { return NoHostSums(); }
  absl::Status AllReduceSum(double*, size_t) override { return NoHostSums(); }
  absl::Status Broadcast(std::string* bytes) override { return r_->Broadcast(bytes); }
  absl::Status CheckPeers() override { return r_->CheckPeers(); }
  const char* launcher() const override { return "rendezvous"; }
  // No launcher couples these ranks: each ends itself, and the others see
  // its connection close (CheckPeers) or their collective time out.
  [[noreturn]] void Abort(int code) override {
    std::fflush(nullptr);
    std::_Exit(code);
  }

 private:
  static absl::Status NoHostSums() {
    return absl::FailedPreconditionError(
        "ranks started by a rendezvous (--init-addr) sum their gradients on GPUs with NCCL; to train data-parallel on CPUs, "
        "start the ranks with mpirun -np N");
  }
  std::unique_ptr<Rendezvous> r_;
};

// The world size a launcher announced in the environment, 0 when none did.
int LauncherWorldSize() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"})
    if (const char* v = std::getenv(var)) return std::atoi(v);
  return 0;
}

}  // namespace

std::unique_ptr<Communicator> MakeSingleProcess() { return std::make_unique<SingleProcess>(); }

absl::StatusOr<std::unique_ptr<Communicator>> CommunicatorFromLauncher(const LaunchOptions& launch) {
  const int given = (launch.rank >= 0) + (launch.world_size > 0) + !launch.init_addr.empty();
  if (given > 0) {
    if (given < 3)
      return absl::InvalidArgumentError("a rendezvous needs all of --rank, --world-size and --init-addr (or TINYGPT_RANK, "
                                        "TINYGPT_WORLD_SIZE and TINYGPT_INIT_ADDR)");
    if (LauncherWorldSize() > 1)
      return absl::InvalidArgumentError("started by mpirun and given a rendezvous (--init-addr): use one of the two");
    RendezvousOptions o;
    o.rank = launch.rank;
    o.world_size = launch.world_size;
    o.addr = launch.init_addr;
    o.timeout = launch.timeout;
    o.fingerprint = launch.fingerprint;
    if (o.world_size == 1 && o.rank == 0) return MakeSingleProcess();
    auto r = Rendezvous::Join(o);
    if (!r.ok()) return r.status();
    return std::unique_ptr<Communicator>(std::make_unique<RendezvousCommunicator>(std::move(*r)));
  }
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
