// A TinyGPT checkpoint: config + parameters, stored as safetensors with the
// seed's PyTorch tensor names and the config as JSON metadata.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/tokenizer.h"

namespace tinygpt {

inline constexpr const char* kConfigMetadataKey = "tinygpt.config";

struct Checkpoint {
  ModelConfig config;
  std::vector<float> params;  // ParamLayout(config) order
  // From the `tinygpt.tokenizer` metadata; null when the checkpoint has none
  // (it then serves token ids only).
  std::shared_ptr<const Tokenizer> tokenizer;
};

// Loads and validates every tensor against the config: missing, unexpected or
// misshapen tensors are errors naming the tensor; so is a tokenizer that does
// not parse or whose vocabulary is larger than the model's.
absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& path);
// Writes atomically (temporary file + rename).
absl::Status SaveCheckpoint(const std::string& path, const ModelConfig& config, const float* params,
                            const Tokenizer* tokenizer = nullptr);

}  // namespace tinygpt
