// Single-request generation over a ModelRunner: prefill the prompt, then one
// token at a time through the KV cache. `tinygpt generate` uses it; the server
// has its own scheduler that batches many sequences.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/runner.h"

namespace tinygpt {

struct GenerateOptions {
  int max_new_tokens = 16;
  float temperature = 0.f;
  int top_k = 0;
  float top_p = 1.f;
  uint64_t seed = 0;
  std::vector<int32_t> stop_ids;  // generation ends after emitting one of these
};

struct GenerateResult {
  std::vector<int32_t> output_ids;
  std::string finish_reason;  // "length" or "stop"
};

// Checks a prompt and limits against the model; shared with the server.
absl::Status ValidateGenerateRequest(const ModelConfig& cfg, const std::vector<int32_t>& prompt, const GenerateOptions& o);

// INTERNAL "the model produced non-finite logits at position N": the logits
// that were to give the token at `position` (0-based, the prompt's tokens
// first) held a NaN or an infinity. Never an answer with status OK: such
// output is garbage (see kNonFiniteLogits).
absl::Status NonFiniteLogitsError(int position);

// Fails with NonFiniteLogitsError when the model's logits are not finite.
absl::StatusOr<GenerateResult> Generate(ModelRunner& runner, const std::vector<int32_t>& prompt, const GenerateOptions& o);

// The RNG stream of a sequence: one uniform draw per generated token.
class SequenceRng {
 public:
  explicit SequenceRng(uint64_t seed) : state_(seed ^ 0x9e3779b97f4a7c15ull) {}
  float NextUniform() {  // splitmix64 → [0, 1)
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return static_cast<float>(z >> 40) / static_cast<float>(1ull << 24);
  }

 private:
  uint64_t state_;
};

}  // namespace tinygpt
