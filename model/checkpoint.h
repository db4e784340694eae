// A TinyGPT checkpoint: config + parameters, stored as safetensors with the
// seed's PyTorch tensor names and the config as JSON metadata.
#pragma once
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"

namespace tinygpt {

inline constexpr const char* kConfigMetadataKey = "tinygpt.config";

struct Checkpoint {
  ModelConfig config;
  std::vector<float> params;  // ParamLayout(config) order
};

// Loads and validates every tensor against the config: missing, unexpected or
// misshapen tensors are errors naming the tensor.
absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& path);
// Writes atomically (temporary file + rename).
absl::Status SaveCheckpoint(const std::string& path, const ModelConfig& config, const float* params);

}  // namespace tinygpt
