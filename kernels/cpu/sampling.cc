#include "kernels/cpu/sampling.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <numeric>
#include <vector>

namespace tinygpt::cpu {

int SampleToken(const float* logits, int vocab, const SamplingParams& p) {
  // NaN compares false with everything, so max_element and the thresholds
  // below would quietly pick some token from such a row: flag it instead.
  for (int i = 0; i < vocab; ++i)
    if (!std::isfinite(logits[i])) return kNonFiniteLogits;
  if (p.temperature <= 0.f) return static_cast<int>(std::max_element(logits, logits + vocab) - logits);
  // The kept set is every token whose logit reaches a threshold: the k-th
  // largest logit (top-k), then the logit at which the most likely tokens
  // reach top_p of the top-k mass (top-p). Ties at a threshold are kept.
  std::vector<float> sorted(logits, logits + vocab);
  std::sort(sorted.begin(), sorted.end(), std::greater<float>());
  const double mx = sorted[0];
  auto prob = [&](float v) { return std::exp((v - mx) / p.temperature); };
  float threshold = sorted.back();
  if (p.top_k > 0 && p.top_k < vocab) threshold = sorted[p.top_k - 1];
  if (p.top_p < 1.f) {
    double z = 0.0;
    for (float v : sorted) if (v >= threshold) z += prob(v);
    double cum = 0.0;
    for (float v : sorted) {
      cum += prob(v);
      if (cum >= p.top_p * z) { threshold = std::max(threshold, v); break; }
    }
  }
  // Inverse CDF over the kept tokens in index order (as the GPU does).
  double total = 0.0;
  for (int i = 0; i < vocab; ++i) if (logits[i] >= threshold) total += prob(logits[i]);
  double left = p.uniform * total;
  int last = 0;
  for (int i = 0; i < vocab; ++i) {
    if (logits[i] < threshold) continue;
    last = i;
    left -= prob(logits[i]);
    if (left < 0.0) break;
  }
  return last;
}

void ApplyPenalties(const float* logits, float* out, int rows, int vocab, const PenaltyRow* row_params,
                    const PenaltyEntry* entries) {
  for (int r = 0; r < rows; ++r) {
    const float* in = logits + static_cast<long>(r) * vocab;
    float* o = out + static_cast<long>(r) * vocab;
    if (o != in) std::copy(in, in + vocab, o);
    const PenaltyRow& p = row_params[r];
    for (int32_t e = p.begin; e < p.end; ++e) {
      const PenaltyEntry& t = entries[e];
      if (t.token < 0 || t.token >= vocab) continue;
      const float raw = o[t.token];
      float v = raw;
      if (p.repetition != 1.f) v = v > 0.f ? v / p.repetition : v * p.repetition;
      if (t.output_count > 0) v -= p.frequency * static_cast<float>(t.output_count) + p.presence;
      // A large repetition penalty must not overflow a finite logit into the
      // infinity that sampling reports as the model's fault (kNonFiniteLogits).
      if (std::isfinite(raw)) v = std::clamp(v, -FLT_MAX, FLT_MAX);
      o[t.token] = v;
    }
  }
}

}  // namespace tinygpt::cpu
