// A TinyGPT checkpoint: config + parameters, stored as safetensors with the
// seed's PyTorch tensor names and the config as JSON metadata.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"

namespace tinygpt {

inline constexpr const char* kConfigMetadataKey = "tinygpt.config";

struct Checkpoint {
  ModelConfig config;
  std::vector<float> params;  // ParamLayout(config) order
  std::map<std::string, std::string> metadata;  // every metadata entry of the file, the config's included
  // Bad weights let through by LoadOptions::allow_bad_weights, one line per tensor.
  std::vector<std::string> warnings;
  // From the `tinygpt.tokenizer` metadata; null when the checkpoint has none
  // (it then serves token ids only).
  std::shared_ptr<const Tokenizer> tokenizer;
};

// Weights of larger magnitude than this (after the file's dtype is converted
// to fp32) are refused like NaN and Inf: no trained TinyGPT weight comes near
// it, and one such value (a corrupt file, a diverged run) is finite enough to
// pass a NaN check yet overflows the activations into NaN logits.
inline constexpr float kMaxWeightMagnitude = 1e4f;

struct LoadOptions {
  // NaN, Inf or a magnitude above kMaxWeightMagnitude in a weight is an error
  // naming the tensor; with this set it is only a warning (e.g. to inspect a
  // diverged run). `--allow-bad-weights` on the command line.
  bool allow_bad_weights = false;
};

// Loads (memory-mapped) and validates the file, then the config and every
// tensor against it, before the parameter buffer is allocated: missing,
// unexpected or misshapen tensors, and config fields out of range, are
// errors naming the tensor or field; so is a tokenizer that does not parse or
// whose vocabulary is larger than the model's. Memory use is the parameter
// buffer (at most twice the file's tensor data, for F16/BF16) plus the parsed
// header.
absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& path, const LoadOptions& options = {});
// The same from bytes in memory; `name` prefixes the error messages.
absl::StatusOr<Checkpoint> ParseCheckpoint(std::string_view data, const std::string& name, const LoadOptions& options = {});
// Writes atomically (temporary file + rename), with the tokenizer (if any) and
// `extra_metadata` beside the config.
// `hook`: see WriteFileAtomically.
absl::Status SaveCheckpoint(const std::string& path, const ModelConfig& config, const float* params,
                            const Tokenizer* tokenizer = nullptr,
                            const std::map<std::string, std::string>& extra_metadata = {}, WritePointHook hook = nullptr);

}  // namespace tinygpt
