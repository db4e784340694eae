// The interface of libtinygpt_mpi.so, the shared module that links OpenMPI
// (train/communicator.h opens it when mpirun started this process). A plain
// virtual class and one factory cross the boundary, as for the SentencePiece
// module (model/sentencepiece_model.h).
#pragma once
#include <cstddef>
#include <string>

namespace tinygpt::mpi {

class World {
 public:
  virtual ~World() = default;  // MPI_Finalize
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // MPI_Allreduce(MPI_SUM) in place; false and *error on failure.
  virtual bool AllReduceSum(float* data, size_t n, std::string* error) = 0;
  virtual bool AllReduceSum(double* data, size_t n, std::string* error) = 0;
  // Rank 0's *bytes on every rank (MPI_Bcast of the size, then the bytes).
  virtual bool Broadcast(std::string* bytes, std::string* error) = 0;
  // MPI_Abort: ends every rank (a rank that failed alone would otherwise
  // leave the others waiting in a collective, and MPI_Finalize waits too).
  [[noreturn]] virtual void Abort(int code) = 0;
};

struct Api {
  int version;  // kApiVersion of the module's build
  // MPI_Init and MPI_COMM_WORLD with errors returned, not fatal; null and
  // *error when MPI cannot start.
  World* (*init)(std::string* error);
};

constexpr int kApiVersion = 3;
constexpr char kModuleName[] = "libtinygpt_mpi.so";
constexpr char kApiSymbol[] = "tinygpt_mpi_api";

}  // namespace tinygpt::mpi
