// The body of POST /v1/completions (OpenAI's legacy completions API, with
// vLLM's common extensions) read into engine requests. Every field is
// type-checked here and named in the error; values the engine also checks
// (token ids, lengths, penalties, n) are left to it, so that both APIs apply
// one set of limits.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "tinygpt.pb.h"

namespace tinygpt::http {

inline constexpr int kMaxLegacyLogprobs = 5;  // OpenAI's limit for `logprobs`

struct CompletionRequest {
  std::string model;  // empty: not given
  // One engine request per prompt, each with n samples.
  std::vector<v1::GenerateRequest> prompts;
  int n = 1;
  int logprobs = -1;  // -1: none; 0..5: the chosen token's and the N most likely
  bool echo = false;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool return_token_ids = false;  // vLLM's extension: each choice's token ids
};

// INVALID_ARGUMENT with a message that starts with the field's name
// ("temperature: must be a number in [0, 2]") for anything OpenAI's API
// refuses or tinygpt does not do (suffix, logit_bias, best_of != n).
// Unknown fields are ignored, as vLLM does.
absl::StatusOr<CompletionRequest> ParseCompletionRequest(std::string_view body);

}  // namespace tinygpt::http
