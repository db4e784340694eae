#include "model/logits_processing.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace tinygpt {

TokenLogprobs ComputeLogprobs(const float* logits, int vocab, int32_t token, int top) {
  const float mx = *std::max_element(logits, logits + vocab);
  double sum = 0.0;
  for (int i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  const double log_z = mx + std::log(sum);
  auto lp = [&](int32_t id) { return static_cast<float>(logits[id] - log_z); };
  TokenLogprobs out;
  out.logprob = lp(token);
  top = std::min(top, vocab);
  if (top > 0) {
    std::vector<int32_t> ids(vocab);
    std::iota(ids.begin(), ids.end(), 0);
    auto more_likely = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    std::partial_sort(ids.begin(), ids.begin() + top, ids.end(), more_likely);
    for (int i = 0; i < top; ++i) out.top.emplace_back(ids[i], lp(ids[i]));
  }
  return out;
}

}  // namespace tinygpt
