// Per-sequence sampling controls handed to a backend's Sample op. The random
// draw `uniform` comes from the sequence's own RNG on the host, so a backend
// turns logits into a token id deterministically and batching never changes a
// sequence's samples.
#pragma once

namespace tinygpt {

struct SamplingParams {
  float temperature = 0.f;  // 0: greedy (argmax, lowest index on ties)
  int top_k = 0;            // 0: no limit
  float top_p = 1.f;        // nucleus mass in (0, 1]
  float uniform = 0.f;      // a draw from U[0, 1)
};

}  // namespace tinygpt
