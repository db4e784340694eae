// TinyGPT hyper-parameters, their presets, and their JSON form (the
// `tinygpt.config` metadata entry of a checkpoint).
#pragma once
#include <string>

#include "absl/status/statusor.h"

namespace tinygpt {

enum class PosEncoding { kLearned, kAlibi };

struct ModelConfig {
  int vocab_size = 64;
  int d_model = 128;
  int n_layers = 3;
  int n_heads = 8;
  int n_kv_heads = 8;
  int ffn_hidden = 512;
  int max_seq_len = 64;
  PosEncoding pos_encoding = PosEncoding::kLearned;
  float norm_eps = 1e-5f;

  int head_dim() const { return d_model / n_heads; }
  // Width of the fused QKV projection: all query heads, then K heads, then V heads.
  int qkv_dim() const { return (n_heads + 2 * n_kv_heads) * head_dim(); }
  int kv_dim() const { return n_kv_heads * head_dim(); }
  bool alibi() const { return pos_encoding == PosEncoding::kAlibi; }
};

// Checks the relations between fields (divisibility, positivity).
absl::Status ValidateConfig(const ModelConfig& c);

// Presets: "seed" (the tutorial's TinyGPT) and "bench-125m".
absl::StatusOr<ModelConfig> PresetConfig(const std::string& name);

std::string ConfigToJson(const ModelConfig& c);
absl::StatusOr<ModelConfig> ConfigFromJson(const std::string& json);

}  // namespace tinygpt
