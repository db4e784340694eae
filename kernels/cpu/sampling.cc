#include "kernels/cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace tinygpt::cpu {

int SampleToken(const float* logits, int vocab, const SamplingParams& p) {
  if (p.temperature <= 0.f) return static_cast<int>(std::max_element(logits, logits + vocab) - logits);
  std::vector<int> idx(vocab);
  std::iota(idx.begin(), idx.end(), 0);
  // Descending by logit, ties by index, so the order is fully determined.
  auto by_logit = [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  const int k = (p.top_k > 0 && p.top_k < vocab) ? p.top_k : vocab;
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), by_logit);
  std::vector<double> prob(k);
  const double mx = logits[idx[0]];
  double sum = 0.0;
  for (int i = 0; i < k; ++i) sum += prob[i] = std::exp((logits[idx[i]] - mx) / p.temperature);
  int keep = k;
  if (p.top_p < 1.f) {
    double cum = 0.0;
    for (int i = 0; i < k; ++i) {
      cum += prob[i] / sum;
      if (cum >= p.top_p) { keep = i + 1; break; }
    }
  }
  double kept = 0.0;
  for (int i = 0; i < keep; ++i) kept += prob[i];
  const double target = p.uniform * kept;
  double cum = 0.0;
  for (int i = 0; i < keep; ++i) {
    cum += prob[i];
    if (target < cum) return idx[i];
  }
  return idx[keep - 1];
}

}  // namespace tinygpt::cpu
