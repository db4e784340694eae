// One generation request as the engine tracks it: n sequences (the request's
// samples, n = 1 unless asked for more), and the channel through which the
// engine hands their tokens to the call that serves them (the call's reactor,
// which the channel calls: server/call_reactor.cc).
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "model/generate.h"
#include "model/logits_processing.h"
#include "model/tokenizer.h"
#include "server/stop_strings.h"

namespace tinygpt {

using Clock = std::chrono::steady_clock;

enum class FinishReason { kNone, kLength, kStop, kCancelled };
const char* FinishReasonName(FinishReason r);

struct SequenceRequest {
  std::string id;
  std::vector<int32_t> prompt;
  GenerateOptions options;             // sampling, max_new_tokens, stop ids
  std::vector<std::string> stop_strings;  // matched on the output text (needs a tokenizer)
  bool ignore_eos = false;  // keep going past the tokenizer's end token
  Penalties penalties;
  int top_logprobs = -1;    // -1: no logprobs; 0: the sampled token's; N: and the N most likely
  int prompt_logprobs = -1;  // -1: none; N: each prompt token's (after the first) and the N most likely
  int n = 1;                // samples; sample i draws from the RNG stream of seed + i
  bool stream = false;      // the caller wants each token as it comes
};

// What the call reads of one sample: new tokens as they come, then the end.
struct SequenceEvents {
  std::vector<int32_t> tokens;
  std::string text;  // their text: whole UTF-8 characters only (see Detokenizer)
  std::vector<TokenLogprobs> logprobs;  // one per token when asked for
  std::vector<TokenLogprobs> prompt_logprobs;  // once, with sample 0's first token, when asked for
  bool finished = false;
  FinishReason reason = FinishReason::kNone;
  absl::Status status;  // non-OK if the engine failed the request
};

// The events of a request's n samples, from the engine thread to the call
// that serves them (server/call_reactor.cc).
class EventChannel {
 public:
  EventChannel(int n, bool stream) : pending_(n), started_(n, false), unfinished_(n), stream_(stream) {}
  // Queues a token; true when the reader wants it now: then call Notify(),
  // which the engine does from its waker thread (server/channel_waker.h). A
  // stream wants a sample's first token at once, later ones once
  // `stream_interval` of them have gathered (fewer, fuller messages when
  // many streams share the host: --stream-interval); a unary reader wants
  // only the end.
  bool Emit(int index, int32_t token, const std::string& text, TokenLogprobs* logprobs, int stream_interval = 1);
  // Hands over the prompt's logprobs (before the first Emit of sample 0).
  void SetPromptLogprobs(std::vector<TokenLogprobs> lps);
  // Records a sample's end (and the text held back); true when the reader
  // needs telling (any sample of a stream, the last of a unary request),
  // as for Emit.
  bool Finish(int index, FinishReason reason, absl::Status status, const std::string& text);
  // Tells the reader that events are there: calls the listener, if set.
  void Notify();
  // Moves into `out` (one entry per sample) what is due since the last call:
  // new tokens (streaming requests) and ends. `any` says whether anything was
  // due; tokens that are not due yet (fewer than the stream interval) stay
  // for a later call. `out` is reused, so a caller that keeps it allocates
  // nothing per message.
  void Take(std::vector<SequenceEvents>* out, bool* any);
  // The reader's callback for Notify. It should take the events and return
  // soon. Events from before it was set are the reader's to take. Setting
  // null returns once a call in progress has returned, so the listener's
  // owner may then go away.
  void SetListener(std::function<void()> listener);

 private:
  std::mutex listener_mu_;  // held while the listener runs
  std::function<void()> listener_;
  std::mutex mu_;  // guards what follows
  std::vector<SequenceEvents> pending_;
  std::vector<bool> started_;  // a sample's first token has been queued
  int unfinished_;
  bool due_ = false;  // the reader was (or is being) told: Take hands out what is queued
  const bool stream_;
};

class Sequence {
 public:
  // tokenizer: null when the model serves token ids only. `index` is the
  // sample's place among the request's n.
  Sequence(std::shared_ptr<const SequenceRequest> req, int index, std::shared_ptr<EventChannel> channel,
           const Tokenizer* tokenizer)
      : request_owner_(std::move(req)), request(*request_owner_), index(index),
        rng(request.options.seed + static_cast<uint64_t>(index)), stop_strings(request.stop_strings), channel_(std::move(channel)) {
    if (tokenizer) detokenizer = std::make_unique<Detokenizer>(tokenizer);
    tokens = request.prompt;
    arrival = Clock::now();
    extras.penalties = request.penalties;
    extras.top_logprobs = request.top_logprobs;
    if (request.penalties.active()) {
      history.prompt.insert(request.prompt.begin(), request.prompt.end());
      extras.history = &history;
    }
  }

  // --- Engine side (scheduler thread only, except where noted) ---
 private:
  std::shared_ptr<const SequenceRequest> request_owner_;  // shared by the request's samples

 public:
  const SequenceRequest& request;
  const int index;
  SequenceRng rng;
  std::vector<int32_t> tokens;  // prompt + generated so far
  std::unique_ptr<Detokenizer> detokenizer;  // null without a tokenizer
  StopStringMatcher stop_strings;
  TokenHistory history;      // for penalties
  std::vector<TokenLogprobs> prompt_logprobs;  // filled as the prompt is computed (sample 0, when asked for)
  SamplingExtras extras;     // penalties and logprobs of its sampling rows
  int num_computed = 0;         // tokens whose K/V are in the cache or being written by a launched step
  // Samples launched and not yet collected (0 or 1): while 1, the sequence's
  // next token is the one row `pending_row` of the last launched step samples.
  int unreceived = 0;
  int pending_row = -1;
  bool retired = false;         // finished; results still in flight are dropped
  int num_hashed_blocks = 0;    // leading blocks registered with the prefix cache
  std::vector<int32_t> block_table;
  long admitted_order = -1;     // for preemption: the latest admitted goes first
  // Samples 1..n-1 wait for sample 0 to compute the prompt, then share its
  // full blocks; sample 0 lists them here until it does.
  std::vector<std::shared_ptr<Sequence>> siblings;
  bool waits_for_prompt = false;  // a sibling not yet handed the prompt's blocks
  int num_generated() const { return static_cast<int>(tokens.size() - request.prompt.size()); }
  Clock::time_point arrival, first_scheduled, first_token, last_token;
  bool scheduled_once = false;
  std::atomic<bool> cancel_requested{false};  // set by any thread

  // Publishes a new token with the text it completes (and its logprobs), or
  // the end with the last text held back (engine thread).
  // Returns whether the reader needs telling (see EventChannel::Emit).
  bool Emit(int32_t token, const std::string& text, TokenLogprobs* logprobs, int stream_interval = 1) {
    if (extras.history) ++history.output_counts[token];
    return channel_->Emit(index, token, text, logprobs, stream_interval);
  }
  const std::shared_ptr<EventChannel>& channel() const { return channel_; }
  // Returns whether the reader needs telling (see EventChannel::Finish).
  bool Finish(FinishReason reason, absl::Status status = absl::OkStatus(), const std::string& text = "") {
    return channel_->Finish(index, reason, std::move(status), text);
  }

 private:
  std::shared_ptr<EventChannel> channel_;
};

// A submitted request: its samples and the channel they report through.
struct SubmittedRequest {
  std::vector<std::shared_ptr<Sequence>> samples;
  std::shared_ptr<EventChannel> channel;
};

}  // namespace tinygpt
