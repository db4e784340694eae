// The messages a call sends, built from its CallOutcome: the unary response,
// a stream's messages as tokens arrive, and a stream's last message.
#pragma once
#include "server/call_outcome.h"
#include "tinygpt.pb.h"

namespace tinygpt {

// The whole answer of a unary Generate call that ended OK.
void FillGenerateResponse(const CallOutcome& o, v1::GenerateResponse* resp);

// One stream message with sample `index`'s new tokens, text and logprobs
// (and the prompt's logprobs, once). With n > 1 a sample's end is marked on
// its last message; with n = 1 the end goes on the stream's last message
// (StreamSummary). False: nothing to send for these events.
bool StreamMessage(int index, const SequenceEvents& ev, const CallOutcome& o, bool several, v1::GenerateStreamResponse* m);

// A stream's last message: the usage, the timings and sample 0's end.
void StreamSummary(const CallOutcome& o, v1::GenerateStreamResponse* m);

}  // namespace tinygpt
