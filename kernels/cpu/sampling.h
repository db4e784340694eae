#pragma once
#include "kernels/sampling_args.h"

namespace tinygpt::cpu {
// Picks a token from one row of logits: greedy at temperature 0, else softmax
// at the temperature, restricted to the top_k most likely and then to the
// smallest set whose mass reaches top_p, sampled by inverse CDF at `uniform`.
// kNonFiniteLogits when the row holds a NaN or an infinity.
int SampleToken(const float* logits, int vocab, const SamplingParams& p);
// out = logits with each row's penalties applied to its seen tokens: the
// repetition penalty divides a positive logit and multiplies a negative one
// (once per token), then logit -= frequency * output_count + presence when
// output_count > 0. Rows without penalties are copied. out may be logits.
void ApplyPenalties(const float* logits, float* out, int rows, int vocab, const PenaltyRow* row_params,
                    const PenaltyEntry* entries);
}  // namespace tinygpt::cpu
