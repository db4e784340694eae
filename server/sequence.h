// One generation request as the engine tracks it, and the channel through
// which the engine hands its tokens to the RPC thread that waits on it.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "model/generate.h"
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
  bool stream = false;  // the caller wants each token as it comes
};

// What the RPC thread reads: new tokens as they come, then the end.
struct SequenceEvents {
  std::vector<int32_t> tokens;
  std::string text;  // their text: whole UTF-8 characters only (see Detokenizer)
  bool finished = false;
  FinishReason reason = FinishReason::kNone;
  absl::Status status;  // non-OK if the engine failed the request
};

class Sequence {
 public:
  // tokenizer: null when the model serves token ids only.
  Sequence(SequenceRequest req, const Tokenizer* tokenizer)
      : request(std::move(req)), rng(request.options.seed), stop_strings(request.stop_strings) {
    if (tokenizer) detokenizer = std::make_unique<Detokenizer>(tokenizer);
    tokens = request.prompt;
    arrival = Clock::now();
  }

  // --- Engine side (scheduler thread only, except where noted) ---
  SequenceRequest request;
  SequenceRng rng;
  std::vector<int32_t> tokens;  // prompt + generated so far
  std::unique_ptr<Detokenizer> detokenizer;  // null without a tokenizer
  StopStringMatcher stop_strings;
  int num_computed = 0;         // tokens whose K/V are in the cache
  int num_hashed_blocks = 0;    // leading blocks registered with the prefix cache
  std::vector<int32_t> block_table;
  long admitted_order = -1;     // for preemption: the latest admitted goes first
  int num_generated() const { return static_cast<int>(tokens.size() - request.prompt.size()); }
  Clock::time_point arrival, first_scheduled, first_token, last_token;
  bool scheduled_once = false;
  std::atomic<bool> cancel_requested{false};  // set by any thread

  // Publishes a new token with the text it completes, or the end with the
  // last text held back (engine thread).
  void Emit(int32_t token, const std::string& text);
  void Finish(FinishReason reason, absl::Status status = absl::OkStatus(), const std::string& text = "");

  // --- RPC side ---
  // Waits up to `timeout` for events and returns what arrived since the last
  // call: new tokens (streaming requests) or the end.
  SequenceEvents Wait(std::chrono::milliseconds timeout);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  SequenceEvents pending_;
};

}  // namespace tinygpt
