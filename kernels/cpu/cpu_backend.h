#pragma once
#include <memory>
#include <string>

#include "kernels/backend.h"

namespace tinygpt {
// The fp32 CPU backend: the reference, and the default where no GPU is found.
std::unique_ptr<Backend> CreateCpuBackend();
// Threads the CPU ops use (OpenMP's team size); n <= 0 keeps OpenMP's default
// (OMP_NUM_THREADS, else one per core this process may run on).
void SetCpuThreads(int n);
// The OpenBLAS kernel family picked for this CPU (e.g. "SkylakeX", "Haswell";
// OPENBLAS_CORETYPE overrides it): a wrong guess on an unknown CPU model costs
// training several times its speed, so benchmarks report it.
std::string CpuBlasCoreName();
}  // namespace tinygpt
