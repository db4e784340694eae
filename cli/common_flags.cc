#include "cli/common_flags.h"

#include "absl/flags/flag.h"
#include "common/log.h"

ABSL_FLAG(uint64_t, seed, 0, "random seed (training init and data; sampling)");
ABSL_FLAG(std::string, checkpoint, "tinygpt.safetensors", "checkpoint to load");
ABSL_FLAG(std::string, device, "auto", "auto | cpu | cuda | cuda:N (GPU N; a data-parallel rank takes the GPU of its local rank)");
ABSL_FLAG(std::string, dtype, "bf16", "CUDA weights/activations: bf16 | f16 (the CPU backend is f32)");
ABSL_FLAG(int, threads, 0, "CPU threads for the model's ops (0: OMP_NUM_THREADS, else one per core)");
ABSL_FLAG(int, minloglevel, 0, "log messages at or above this level only: 0 INFO, 1 WARNING, 2 ERROR (as absl/log's flag)");
ABSL_FLAG(bool, allow_bad_weights, false,
          "load a checkpoint whose weights hold NaN/Inf or magnitudes above 1e4, warning per tensor (refused otherwise)");
ABSL_FLAG(bool, allow_nonfinite_weights, false, "the former name of --allow-bad-weights (same effect)");

namespace tinygpt {
absl::StatusOr<std::unique_ptr<Backend>> BackendFromFlags() {
  return CreateBackend(absl::GetFlag(FLAGS_device), absl::GetFlag(FLAGS_dtype));
}

absl::StatusOr<Checkpoint> LoadCheckpointFromFlags(const std::string& path) {
  LoadOptions options;
  options.allow_bad_weights = absl::GetFlag(FLAGS_allow_bad_weights) || absl::GetFlag(FLAGS_allow_nonfinite_weights);
  auto ck = LoadCheckpoint(path, options);
  if (ck.ok())
    for (const std::string& w : ck->warnings) TINYGPT_LOG_WARNING << w;
  return ck;
}
}  // namespace tinygpt
