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

// Upper bounds on the fields. They are far above any model tinygpt serves or
// trains, and keep every size derived from a config (parameter counts, KV
// cache rows, the layout's tensor list) well inside 64 bits and int32 token
// ids, so that a checkpoint's config can be checked before anything is sized
// from it.
struct ConfigLimits {
  static constexpr int kMaxVocabSize = 1 << 21;
  static constexpr int kMaxDModel = 1 << 15;
  static constexpr int kMaxLayers = 512;
  static constexpr int kMaxFfnHidden = 1 << 17;
  static constexpr int kMaxSeqLen = 1 << 17;
};

// Checks each field's range (positive, at most its ConfigLimits bound, a
// finite norm_eps in (0, 1)) and the relations between fields (divisibility).
absl::Status ValidateConfig(const ModelConfig& c);

// Presets: "seed" (the tutorial's TinyGPT) and "bench-125m".
absl::StatusOr<ModelConfig> PresetConfig(const std::string& name);

std::string ConfigToJson(const ModelConfig& c);
absl::StatusOr<ModelConfig> ConfigFromJson(const std::string& json);

}  // namespace tinygpt
