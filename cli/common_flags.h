// Flags shared by several subcommands.
#pragma once
#include <cstdint>
#include <string>
#include <memory>

#include "absl/flags/declare.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/checkpoint.h"

ABSL_DECLARE_FLAG(uint64_t, seed);
ABSL_DECLARE_FLAG(std::string, checkpoint);
ABSL_DECLARE_FLAG(std::string, device);
ABSL_DECLARE_FLAG(std::string, dtype);
ABSL_DECLARE_FLAG(int, threads);
ABSL_DECLARE_FLAG(int, minloglevel);
ABSL_DECLARE_FLAG(bool, allow_bad_weights);
ABSL_DECLARE_FLAG(bool, allow_nonfinite_weights);

namespace tinygpt {
// The backend --device and --dtype ask for.
absl::StatusOr<std::unique_ptr<Backend>> BackendFromFlags();
// LoadCheckpoint with --allow-bad-weights (or its old name --allow-nonfinite-weights); logs the warnings it lets through.
absl::StatusOr<Checkpoint> LoadCheckpointFromFlags(const std::string& path);
}  // namespace tinygpt
