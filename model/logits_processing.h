// What a request can ask of a sampling row beyond temperature/top-k/top-p:
// penalties on tokens it has seen and log-probabilities. ModelRunner hands
// the penalties to the backend (Backend::ApplyPenalties, before sampling, on
// the device) and works out the log-probabilities on the host from the raw
// logits of the rows that ask for them.
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

// log_softmax(logits) of `token` and of the `top` most likely tokens, in
// double precision sums (the logits are the raw model outputs: before
// penalties, temperature and truncation).
TokenLogprobs ComputeLogprobs(const float* logits, int vocab, int32_t token, int top);

}  // namespace tinygpt
