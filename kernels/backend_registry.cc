// Picks a backend. The CUDA backend is a separate shared module opened with
// dlopen, so the CPU build and the server never link CUDA libraries (cuBLASLt's
// large static TLS would otherwise break civetweb's threads, see DEVELOPERS.md).
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/shared_module.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"

namespace tinygpt {

const char* DTypeName(DType t) {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
  }
  return "?";
}

size_t DTypeSize(DType t) { return t == DType::kF32 ? 4 : 2; }

absl::StatusOr<DType> ParseDType(const std::string& name) {
  if (name == "f32" || name == "fp32") return DType::kF32;
  if (name == "f16" || name == "fp16") return DType::kF16;
  if (name == "bf16") return DType::kBF16;
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", name, "' (f32, f16, bf16)"));
}

namespace {

absl::StatusOr<std::unique_ptr<Backend>> OpenCudaModule(const std::string& dtype, int device) {
  std::string errors;
  void* handle = OpenSharedModule(kCudaModuleName, RTLD_NOW | RTLD_LOCAL, &errors);
  if (handle) {
    auto create = reinterpret_cast<CreateCudaBackendFn>(dlsym(handle, kCudaFactorySymbol));
    if (!create) return absl::InternalError(absl::StrCat(kCudaModuleName, " has no symbol ", kCudaFactorySymbol));
    char error[512] = {0};
    Backend* b = create(dtype.c_str(), device, error, sizeof(error));
    if (!b) return absl::UnavailableError(absl::StrCat("CUDA backend: ", error));
    return std::unique_ptr<Backend>(b);
  }
  return absl::UnavailableError(absl::StrCat("cannot load the CUDA module ", kCudaModuleName, ":", errors));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const std::string& device, const std::string& dtype) {
  if (device == "cpu") return CreateCpuBackend();
  if (device == "cuda") return OpenCudaModule(dtype, 0);
  int index = -1;
  if (absl::StartsWith(device, "cuda:") && absl::SimpleAtoi(device.substr(5), &index) && index >= 0) return OpenCudaModule(dtype, index);
  if (device == "auto") {
    auto cuda = OpenCudaModule(dtype, 0);
    if (cuda.ok()) return cuda;
    return CreateCpuBackend();
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown device '", device, "' (auto, cpu, cuda, cuda:N)"));
}

}  // namespace tinygpt
