// Data parallelism across processes: the collectives the training loop needs
// (sums of gradients and of the step's loss and accuracy), behind one
// interface. One process is a world of one; ranks started by `mpirun` sum
// through MPI (libtinygpt_mpi.so, opened at run time, so that tinygpt starts
// where OpenMPI is not installed). No collective is written by hand.
#pragma once
#include <cstddef>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tinygpt {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // Replaces data[0..n) on every rank by its sum over the ranks.
  virtual absl::Status AllReduceSum(float* data, size_t n) = 0;
  virtual absl::Status AllReduceSum(double* data, size_t n) = 0;
  // What started the ranks (for messages): "one process" or "MPI".
  virtual const char* launcher() const = 0;
  // Ends every rank with exit status `code`: what a rank that failed on its
  // own calls, so that the others do not wait for it in a collective.
  [[noreturn]] virtual void Abort(int code) = 0;
};

std::unique_ptr<Communicator> MakeSingleProcess();

// The ranks this process belongs to: MPI's world when a launcher of
// OpenMPI's (mpirun, mpiexec) or a PMI one (srun) started more than one
// process, else one process. An error when it did but MPI cannot be opened.
absl::StatusOr<std::unique_ptr<Communicator>> CommunicatorFromLauncher();

}  // namespace tinygpt
