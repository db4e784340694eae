#include "cli/common_flags.h"

#include "absl/flags/flag.h"

ABSL_FLAG(uint64_t, seed, 0, "random seed (training init and data; sampling)");
ABSL_FLAG(std::string, checkpoint, "tinygpt.safetensors", "checkpoint to load");
ABSL_FLAG(std::string, device, "auto", "auto | cpu | cuda");
ABSL_FLAG(std::string, dtype, "bf16", "CUDA weights/activations: bf16 | f16 (the CPU backend is f32)");
ABSL_FLAG(int, threads, 0, "CPU threads for the model's ops (0: OMP_NUM_THREADS, else one per core)");

namespace tinygpt {
absl::StatusOr<std::unique_ptr<Backend>> BackendFromFlags() {
  return CreateBackend(absl::GetFlag(FLAGS_device), absl::GetFlag(FLAGS_dtype));
}
}  // namespace tinygpt
