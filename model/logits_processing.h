// What a request can ask of a sampling row beyond temperature/top-k/top-p:
// penalties on tokens it has seen and log-probabilities. Both are worked out
// on the host from the row's fp32 logits (ModelRunner downloads only the rows
// that ask for them), then the row is sampled with the CPU backend's rule,
// which every backend's Sample follows, so a request's tokens do not depend
// on the backend's sampling kernel.
#pragma once
#include <cstdint>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace tinygpt {

struct Penalties {
  // CTRL / Hugging Face form, over tokens of the prompt and the output: a
  // positive logit is divided by it, a negative one multiplied. 1: none.
  float repetition = 1.f;
  // OpenAI form, over tokens of the output: logit -= frequency * count +
  // presence * (count > 0). 0: none.
  float frequency = 0.f;
  float presence = 0.f;
  bool active() const { return repetition != 1.f || frequency != 0.f || presence != 0.f; }
};

// The tokens a sequence has seen, kept up to date as it generates.
struct TokenHistory {
  std::unordered_set<int32_t> prompt;
  std::unordered_map<int32_t, int32_t> output_counts;
};

struct TokenLogprobs {
  float logprob = 0.f;  // of the sampled token
  std::vector<std::pair<int32_t, float>> top;  // the N most likely, most likely first (ties: lower id first)
};

// Extra work for one sampling row; null members: none of it.
struct SamplingExtras {
  Penalties penalties;
  const TokenHistory* history = nullptr;  // required when penalties are active
  int top_logprobs = -1;  // -1: no logprobs; 0: the sampled token's; N: and the N most likely
  bool wants_logprobs() const { return top_logprobs >= 0; }
};

// Applies the penalties to logits[0, vocab) in place.
void ApplyPenalties(const Penalties& p, const TokenHistory& history, float* logits, int vocab);

// log_softmax(logits) of `token` and of the `top` most likely tokens, in
// double precision sums (the logits are the raw model outputs: before
// penalties, temperature and truncation).
TokenLogprobs ComputeLogprobs(const float* logits, int vocab, int32_t token, int top);

}  // namespace tinygpt
