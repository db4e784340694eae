// Data parallelism across processes: who the ranks are and what they share
// on the host, behind one interface. One process is a world of one. Ranks
// started by `mpirun` sum on the host through MPI (libtinygpt_mpi.so, opened
// at run time, so that tinygpt starts where OpenMPI is not installed). Ranks
// started by any launcher with --rank/--world-size/--init-addr meet at a
// rendezvous (train/rendezvous.h); they train on GPUs, whose gradients NCCL
// sums (Backend::AllReduceSum), so the rendezvous only carries NCCL's unique
// id. No collective is written by hand.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tinygpt {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // This rank's place among the ranks on its host (its GPU).
  virtual int local_rank() const = 0;
  // Whether AllReduceSum works (MPI: yes; the rendezvous: no, its ranks sum
  // on the GPU through NCCL).
  virtual bool SumsOnHost() const = 0;
  // Replaces data[0..n) on every rank by its sum over the ranks.
  virtual absl::Status AllReduceSum(float* data, size_t n) = 0;
  virtual absl::Status AllReduceSum(double* data, size_t n) = 0;
  // Rank 0's *bytes on every rank (NCCL's unique id).
  virtual absl::Status Broadcast(std::string* bytes) = 0;
  // Whether the other ranks are still there (no wait; a rank polls it while
  // it waits for a collective on the GPU, so that one rank's death ends the
  // run at once instead of at the collective's timeout).
  virtual absl::Status CheckPeers() { return absl::OkStatus(); }
  // What started the ranks (for messages): "one process", "MPI" or "rendezvous".
  virtual const char* launcher() const = 0;
  // Ends every rank with exit status `code`: what a rank that failed on its
  // own calls, so that the others do not wait for it in a collective.
  [[noreturn]] virtual void Abort(int code) = 0;
};

std::unique_ptr<Communicator> MakeSingleProcess();

// How this process was told it is one of several (train's flags, or
// TINYGPT_RANK, TINYGPT_WORLD_SIZE and TINYGPT_INIT_ADDR).
struct LaunchOptions {
  int rank = -1;        // -1: not given
  int world_size = 0;   // 0: not given
  std::string init_addr;  // rank 0's host:port
  absl::Duration timeout = absl::Seconds(300);
  std::string fingerprint;  // the flags every rank must share
};

// The ranks this process belongs to: a rendezvous world when `launch` names
// one (all three of rank, world size and address, or none); else MPI's world
// when a launcher of OpenMPI's (mpirun, mpiexec) or a PMI one (srun) started
// more than one process; else one process. An error when a launcher's
// world cannot be joined.
absl::StatusOr<std::unique_ptr<Communicator>> CommunicatorFromLauncher(const LaunchOptions& launch = {});

}  // namespace tinygpt
