// What one Generate or GenerateStream call has become so far: the engine's
// samples, their tokens, text and logprobs as they arrive, and the status.
// The call reactor (server/call_reactor.cc) folds the engine's events into
// one of these and builds its messages from it (server/responses.h).
#pragma once
#include <grpcpp/grpcpp.h>

#include <string>
#include <vector>

#include "server/engine.h"
#include "server/no_message_waiter.h"
#include "server/sequence.h"

namespace tinygpt {

inline grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

inline double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// What became of one sample.
struct ChoiceOutcome {
  std::vector<int32_t> tokens;
  std::string text;
  std::vector<TokenLogprobs> logprobs;
  FinishReason reason = FinishReason::kNone;
};

struct CallOutcome {
  SubmittedRequest submitted;  // no samples when refused before submission
  std::string id;
  int prompt_tokens = 0;
  std::vector<int32_t> prompt;                 // kept only when prompt logprobs are asked for
  std::vector<TokenLogprobs> prompt_logprobs;  // sample 0's, when asked for
  std::vector<ChoiceOutcome> choices;
  int unfinished = 0;        // samples the engine has not finished
  bool cancel_sent = false;  // the engine was told to cancel the samples
  grpc::Status status;
  Clock::time_point start = Clock::now();
  const char* api = "grpc";  // the API it came through, for the metrics ("grpc" or "openai")

  int generated() const {
    int n = 0;
    for (const auto& c : choices) n += static_cast<int>(c.tokens.size());
    return n;
  }
  const Sequence* first() const { return submitted.samples.empty() ? nullptr : submitted.samples[0].get(); }

  // Folds one batch of the channel's events in (EventChannel::Take) and
  // calls on_output(index, events) for each sample with new tokens, text or
  // its end; on_output returns false when the client is gone, which cancels
  // the samples (the engine then finishes them). Nothing is reported after a
  // cancel.
  template <class OnOutput>
  void Absorb(std::vector<SequenceEvents>& events, Engine* engine, OnOutput on_output) {
    for (size_t i = 0; i < events.size() && i < choices.size(); ++i) {
      SequenceEvents& ev = events[i];
      ChoiceOutcome& c = choices[i];
      if (c.reason != FinishReason::kNone) continue;  // reported already
      c.tokens.insert(c.tokens.end(), ev.tokens.begin(), ev.tokens.end());
      c.text += ev.text;
      c.logprobs.insert(c.logprobs.end(), ev.logprobs.begin(), ev.logprobs.end());
      if (!ev.prompt_logprobs.empty()) prompt_logprobs = ev.prompt_logprobs;
      if (ev.finished) {
        c.reason = ev.reason;
        --unfinished;
        if (!ev.status.ok() && status.ok()) {
          status = ToGrpc(ev.status);
          // The call has failed (e.g. one sample's logits were not finite):
          // its other samples need not run on.
          if (unfinished > 0) Cancel(engine);
        }
      }
      if ((!ev.tokens.empty() || !ev.text.empty() || ev.finished) && !cancel_sent && !on_output(static_cast<int>(i), ev) &&
          unfinished > 0)
        Cancel(engine);
    }
  }

  // Asks the engine to finish the samples (client gone, deadline passed).
  void Cancel(Engine* engine) {
    if (cancel_sent) return;
    for (auto& s : submitted.samples) engine->Cancel(s);
    cancel_sent = true;
  }

  // Once every sample has finished: a call its client cancelled, or whose
  // deadline passed, ends CANCELLED or DEADLINE_EXCEEDED, whatever the engine
  // reported. A cancel within kDeadlineSlack of the server's copy of the
  // deadline is the client's deadline (server/no_message_waiter.h): a queued
  // call whose deadline passed was logged "cancelled by the client" when the
  // engine retired it before the server's copy ran out.
  void Settle(const grpc::ServerContextBase& ctx) {
    if (!status.ok() || !(cancel_sent || ctx.IsCancelled())) return;
    status = NearDeadline(ctx, std::chrono::system_clock::now()) ? grpc::Status(grpc::DEADLINE_EXCEEDED, "deadline exceeded")
                                                                : grpc::Status(grpc::CANCELLED, "cancelled by the client");
  }
};

}  // namespace tinygpt
