// The continuous batcher. One scheduler thread runs steps; each step packs the
// next token of every running sequence and chunks of waiting prompts (chunked
// prefill) into ONE ModelRunner::Step, i.e. one forward pass and one
// block-diagonal causal attention call over the paged KV cache.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "model/kv_cache.h"
#include "model/runner.h"
#include "server/channel_waker.h"
#include "server/sequence.h"

namespace tinygpt {

class ServerMetrics;

// The status of a request cut off by shutdown, so a client can tell it from a
// finished one (the tokens it got are a prefix, not the answer).
inline constexpr const char* kShutdownMessage = "server shut down before the request finished";

struct EngineOptions {
  int max_queue = 256;        // waiting sequences beyond which Submit refuses
  int max_new_tokens_limit = 0;  // 0: the model context
  // The checkpoint's tokenizer (output text, stop strings, end token); null:
  // token ids only.
  const Tokenizer* tokenizer = nullptr;
  // Reuse the KV blocks of cached prompt prefixes (model/kv_cache.h).
  bool prefix_caching = true;
  int max_n = 16;  // samples per request
  // Bounds on the work one request may ask for (INVALID_ARGUMENT beyond):
  // stop strings (their number and total bytes), tokens over all samples
  // (n x max_new_tokens), and top logprobs over all samples (n x top_logprobs).
  int max_stop_strings = 16;
  int max_stop_bytes = 4096;
  int max_total_new_tokens = 8192;
  int max_total_top_logprobs = 80;
  // The checkpoint's name (its path), for the log line that reports
  // non-finite logits.
  std::string model_name;
  // Threads that tell calls of new tokens (server/channel_waker.h); 0: one
  // per 4 cores, 1 to 4.
  int notify_threads = 0;
  // Tokens a stream's message gathers (after its first token, which goes at
  // once); 0: automatic, from the number of streams in the step
  // (StreamIntervalFor).
  int stream_interval = 0;
  // Test hook: sleep this long in every step, so tests can act mid-request.
  std::chrono::microseconds debug_step_delay{0};
};

inline constexpr int kMaxTopLogprobs = 20;

// The automatic stream interval: one token per message below 64 streams in
// a step, then one token more per message for every kStreamsPerMessageToken
// streams, at most kMaxAutoStreamInterval. Every message costs the server,
// gRPC and the client a fixed amount of host time whatever it holds (on the
// H200 host, 256 streams at one token per message: about 16 us of the
// server's threads and 19 us of the client's per message, and streaming ran
// at 0.68x unary; at this interval, 0.98x: docs/benchmarks.md), so at
// hundreds of streams one token per message costs more host time than the
// step that made it, while a person reading the stream does not see 8
// tokens of 1 ms each arrive together.
inline constexpr int kStreamsPerMessageToken = 32;
inline constexpr int kMaxAutoStreamInterval = 16;
inline int StreamIntervalFor(int streams) {
  return std::clamp(streams / kStreamsPerMessageToken, 1, kMaxAutoStreamInterval);
}

struct EngineStats {
  int running = 0, waiting = 0;
  int kv_blocks_total = 0, kv_blocks_free = 0, kv_blocks_cached = 0;
  long preemptions = 0;
};

class Engine {
 public:
  Engine(ModelRunner* runner, const EngineOptions& opt, ServerMetrics* metrics);
  ~Engine();

  // Validates and queues a request's n samples. INVALID_ARGUMENT for bad
  // fields, RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE while
  // draining.
  absl::StatusOr<SubmittedRequest> Submit(SequenceRequest req);
  // Asks the scheduler to drop the sequence; its blocks are freed next step.
  void Cancel(const std::shared_ptr<Sequence>& seq);
  // Refuses new requests from now on; in-flight ones go on.
  void StartDrain();
  // Cuts off everything still queued or running (the drain deadline passed):
  // each ends with UNAVAILABLE kShutdownMessage, unless its client had already
  // cancelled it. Returns at once; the scheduler retires them on its next step.
  void CancelAll();
  bool Idle() const;
  EngineStats Stats() const;
  const ModelRunner& runner() const { return *runner_; }
  const EngineOptions& options() const { return opt_; }

 private:
  void Loop();
  // Plans the next step and launches it; false when there was nothing to do.
  bool LaunchStep();
  // Drops cancelled sequences (waiting or running) and frees their blocks.
  void RetireCancelled();
  // Waits for the oldest launched step and hands out its tokens.
  void CollectStep();
  void CollectAll() {
    while (!in_flight_.empty()) CollectStep();
  }
  void Preempt(std::shared_ptr<Sequence> victim);
  void Retire(const std::shared_ptr<Sequence>& seq, FinishReason reason, absl::Status status = absl::OkStatus());
  // Whether the sequence ends with this token (stop id, end token, or a stop
  // string completed by `text`, the text the token added).
  bool StopsOn(Sequence& seq, int32_t token, const std::string& text) const;
  // Hands a request's other samples the prompt blocks `first` computed.
  void SharePrompt(Sequence& first);
  // Takes back the blocks held by waiting sequences; false when none held any.
  bool ReleaseWaitingBlocks();
  void PublishGauges();
  void WakeCalls();  // publish the gauges, then tell the calls what the scheduler did

  ModelRunner* runner_;
  EngineOptions opt_;
  ServerMetrics* metrics_;
  KvCacheManager kv_;
  const int block_size_;

  mutable std::mutex mu_;  // guards waiting_, draining_, stop_, and stats_
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Sequence>> waiting_;
  bool draining_ = false, stop_ = false, cancel_all_ = false;
  EngineStats stats_;

  std::vector<std::shared_ptr<Sequence>> running_;  // scheduler thread only
  // Launched steps not yet collected (at most ModelRunner::kMaxInFlight):
  // while the device runs one, the scheduler plans and launches the next and
  // hands out the tokens of the one before.
  struct LaunchedStep {
    std::vector<std::shared_ptr<Sequence>> seqs;
    std::vector<int> sample_row;  // its sampling row, or -1
    Clock::time_point launched;
    double launch_seconds = 0;  // the Launch call itself (the whole step on the CPU backend)
    int tokens = 0;
  };
  std::deque<LaunchedStep> in_flight_;
  // Reused every step (no allocation on the hot path once warm).
  std::vector<SeqStep> plan_steps_;
  std::vector<std::shared_ptr<Sequence>> plan_seqs_;
  StepResult result_;
  // What the runner and backend had done when the engine started (a
  // warm-up's captures and searches are not serving's).
  GraphStats graphs_seen_;
  Backend::ShapeCounters shapes_seen_;
  ChannelWaker waker_;  // tells calls of their tokens and ends, off this thread
  long admitted_counter_ = 0;
  bool nonfinite_logged_ = false;  // the first non-finite logits are logged; the rest only counted
  std::thread thread_;
};

}  // namespace tinygpt
