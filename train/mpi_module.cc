// libtinygpt_mpi.so: MPI's world for train/communicator.h (see mpi_module.h).
#include "train/mpi_module.h"

// MPI's C API only: OpenMPI's mpi.h otherwise declares its C++ bindings,
// whose library (libmpi_cxx) the module does not link.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdlib>

namespace tinygpt::mpi {
namespace {

std::string ErrorText(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, len);
}

class MpiWorld : public World {
 public:
  MpiWorld() {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  ~MpiWorld() override { MPI_Finalize(); }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool AllReduceSum(float* data, size_t n, std::string* error) override { return Sum(data, n, MPI_FLOAT, error); }
  bool AllReduceSum(double* data, size_t n, std::string* error) override { return Sum(data, n, MPI_DOUBLE, error); }
  bool Broadcast(std::string* bytes, std::string* error) override {
    unsigned long long n = bytes->size();
    int rc = MPI_Bcast(&n, 1, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD);
    if (rc == MPI_SUCCESS) {
      bytes->resize(n);
      if (n > 0 && n <= INT_MAX) rc = MPI_Bcast(bytes->data(), static_cast<int>(n), MPI_BYTE, 0, MPI_COMM_WORLD);
    }
    if (rc != MPI_SUCCESS) *error = "MPI_Bcast: " + ErrorText(rc);
    return rc == MPI_SUCCESS;
  }
  [[noreturn]] void Abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::abort();  // MPI_Abort does not return; should it, the process still ends
  }

 private:
  template <class T>
  bool Sum(T* data, size_t n, MPI_Datatype type, std::string* error) {
    // MPI counts are ints: large buffers go in chunks.
    constexpr size_t kChunk = INT_MAX / 2;
    for (size_t i = 0; i < n; i += kChunk) {
      const int count = static_cast<int>(std::min(kChunk, n - i));
      const int rc = MPI_Allreduce(MPI_IN_PLACE, data + i, count, type, MPI_SUM, MPI_COMM_WORLD);
      if (rc != MPI_SUCCESS) {
        *error = "MPI_Allreduce: " + ErrorText(rc);
        return false;
      }
    }
    return true;
  }
  int rank_ = 0, size_ = 1;
};

World* Init(std::string* error) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    const int rc = MPI_Init(nullptr, nullptr);
    if (rc != MPI_SUCCESS) {
      *error = "MPI_Init: " + ErrorText(rc);
      return nullptr;
    }
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  return new MpiWorld();
}

const Api kApi = {kApiVersion, &Init};

}  // namespace
}  // namespace tinygpt::mpi

extern "C" __attribute__((visibility("default"))) const tinygpt::mpi::Api* tinygpt_mpi_api() { return &tinygpt::mpi::kApi; }
