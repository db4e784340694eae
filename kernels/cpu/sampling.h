#pragma once
#include "kernels/sampling_args.h"

namespace tinygpt::cpu {
// Picks a token from one row of logits: greedy at temperature 0, else softmax
// at the temperature, restricted to the top_k most likely and then to the
// smallest set whose mass reaches top_p, sampled by inverse CDF at `uniform`.
int SampleToken(const float* logits, int vocab, const SamplingParams& p);
}  // namespace tinygpt::cpu
