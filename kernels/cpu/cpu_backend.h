#pragma once
#include <memory>

#include "kernels/backend.h"

namespace tinygpt {
// The fp32 CPU backend: the reference, and the default where no GPU is found.
std::unique_ptr<Backend> CreateCpuBackend();
}  // namespace tinygpt
