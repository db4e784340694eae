// Per-sequence sampling controls handed to a backend's Sample op. The random
// draw `uniform` comes from the sequence's own RNG on the host, so a backend
// turns logits into a token id deterministically and batching never changes a
// sequence's samples.
#pragma once
#include <cstdint>

namespace tinygpt {

// What a backend's Sample op writes instead of a token for a row whose logits
// hold a NaN or an infinity (a bad checkpoint, an fp16 overflow, a kernel
// bug): the flag travels in the sampled-ids buffer that each step copies back
// anyway, so detecting it costs no extra copy or sync. Negative, so that no
// caller can mistake it for a token; FillPendingTokens turns it into token 0
// for a decode step launched before the flag was seen (its result is dropped).
inline constexpr int32_t kNonFiniteLogits = -1;

struct SamplingParams {
  float temperature = 0.f;  // 0: greedy (argmax, lowest index on ties)
  int top_k = 0;            // 0: no limit
  float top_p = 1.f;        // nucleus mass in (0, 1]
  float uniform = 0.f;      // a draw from U[0, 1)
};

// Penalties of one logits row (the forms of model/logits_processing.h): the
// tokens the row's sequence has seen are entries [begin, end) of a list shared
// by the step's rows. A row without penalties has repetition 1, frequency and
// presence 0 (and may have no entries).
struct PenaltyRow {
  float repetition = 1.f;
  float frequency = 0.f;
  float presence = 0.f;
  int32_t begin = 0, end = 0;
};
// A token seen in the prompt or the output, with its count in the output.
struct PenaltyEntry {
  int32_t token = 0;
  int32_t output_count = 0;
};

}  // namespace tinygpt
