#include "server/engine.h"

#include <pthread.h>

#include <algorithm>
#include <cmath>

#include "common/log.h"
#include "absl/strings/str_cat.h"
#include "server/metrics.h"

namespace tinygpt {

Engine::Engine(ModelRunner* runner, const EngineOptions& opt, ServerMetrics* metrics)
    : runner_(runner), opt_(opt), metrics_(metrics),
      kv_(runner->options().num_kv_blocks, runner->options().block_size, opt.prefix_caching),
      block_size_(runner->options().block_size),
      waker_(opt.notify_threads > 0 ? opt.notify_threads : ChannelWaker::DefaultThreads()) {
  if (opt_.max_new_tokens_limit <= 0) opt_.max_new_tokens_limit = runner->config().max_seq_len;
  graphs_seen_ = runner_->graph_stats();
  shapes_seen_ = runner_->backend()->shape_counters();
  stats_.kv_blocks_total = kv_.num_blocks();
  stats_.kv_blocks_free = kv_.num_free();
  PublishGauges();
  thread_ = std::thread([this] { Loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  auto cut_off = [](const std::shared_ptr<Sequence>& s) {
    if (s->Finish(FinishReason::kCancelled, absl::UnavailableError(kShutdownMessage))) s->channel()->Notify();
  };
  for (auto& s : running_) cut_off(s);
  for (auto& s : waiting_) cut_off(s);
}

absl::StatusOr<SubmittedRequest> Engine::Submit(SequenceRequest req) {
  const ModelConfig& cfg = runner_->config();
  // max_new_tokens 0 with prompt_logprobs scores a prompt (what evaluation
  // harnesses ask for): only the prompt is computed, for its logprobs.
  GenerateOptions checked = req.options;
  if (checked.max_new_tokens == 0 && req.prompt_logprobs >= 0) checked.max_new_tokens = 1;
  if (auto s = ValidateGenerateRequest(cfg, req.prompt, checked); !s.ok()) return s;
  // Per-request work is bounded, so that one request cannot slow the engine
  // thread for everyone (INVALID_ARGUMENT naming the flag): stop strings
  // (matched on every token's text by an automaton built per sample, checked
  // first since they dominate a large request), then below n x
  // max_new_tokens and n x top_logprobs (each sample's tokens and logprobs
  // are computed, copied and sent).
  if (static_cast<long>(req.stop_strings.size()) > opt_.max_stop_strings)
    return absl::InvalidArgumentError(absl::StrCat("stop: ", req.stop_strings.size(), " stop strings, more than the server's limit of ",
                                                   opt_.max_stop_strings, " (--max-stop-strings)"));
  size_t stop_bytes = 0;
  for (const std::string& s : req.stop_strings) stop_bytes += s.size();
  if (stop_bytes > static_cast<size_t>(std::max(0, opt_.max_stop_bytes)))
    return absl::InvalidArgumentError(absl::StrCat("stop: ", stop_bytes, " bytes of stop strings, more than the server's limit of ",
                                                   opt_.max_stop_bytes, " (--max-stop-bytes)"));
  if (req.options.max_new_tokens > opt_.max_new_tokens_limit)
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens: ", req.options.max_new_tokens, " exceeds the server limit of ",
                                                   opt_.max_new_tokens_limit));
  if (!req.stop_strings.empty() && !opt_.tokenizer)
    return absl::InvalidArgumentError("stop: this model has no tokenizer, so it cannot match stop strings; use stop_token_ids");
  const Penalties& p = req.penalties;
  if (!(p.repetition > 0.f) || !std::isfinite(p.repetition))
    return absl::InvalidArgumentError("repetition_penalty: must be > 0 (1: none)");
  if (!(p.frequency >= -2.f && p.frequency <= 2.f)) return absl::InvalidArgumentError("frequency_penalty: must be in [-2, 2]");
  if (!(p.presence >= -2.f && p.presence <= 2.f)) return absl::InvalidArgumentError("presence_penalty: must be in [-2, 2]");
  if (req.top_logprobs < -1 || req.top_logprobs > kMaxTopLogprobs)
    return absl::InvalidArgumentError(absl::StrCat("top_logprobs: must be in [0, ", kMaxTopLogprobs, "]"));
  if (req.n < 1 || req.n > opt_.max_n)
    return absl::InvalidArgumentError(absl::StrCat("n: must be in [1, ", opt_.max_n, "] (the server's --max-n)"));
  // (n is in range here.)
  if (static_cast<long>(req.n) * req.options.max_new_tokens > opt_.max_total_new_tokens)
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens: n (", req.n, ") x max_new_tokens (", req.options.max_new_tokens,
                                                   ") = ", static_cast<long>(req.n) * req.options.max_new_tokens,
                                                   " tokens, more than the server's limit of ", opt_.max_total_new_tokens,
                                                   " per request (--max-total-new-tokens)"));
  if (req.top_logprobs > 0 && static_cast<long>(req.n) * req.top_logprobs > opt_.max_total_top_logprobs)
    return absl::InvalidArgumentError(absl::StrCat("top_logprobs: n (", req.n, ") x top_logprobs (", req.top_logprobs, ") = ",
                                                   static_cast<long>(req.n) * req.top_logprobs, ", more than the server's limit of ",
                                                   opt_.max_total_top_logprobs, " per request (--max-total-top-logprobs)"));
  // Looked up for every token: sorted, so a long list costs a binary search.
  std::sort(req.options.stop_ids.begin(), req.options.stop_ids.end());
  req.options.stop_ids.erase(std::unique(req.options.stop_ids.begin(), req.options.stop_ids.end()), req.options.stop_ids.end());
  const int need = BlocksFor(static_cast<int>(req.prompt.size()) + req.options.max_new_tokens, block_size_);
  if (need > kv_.num_blocks())
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens: prompt + max_new_tokens need ", need,
                                                   " KV blocks, more than the whole cache (", kv_.num_blocks(), ")"));
  const int n = req.n;
  const auto shared = std::make_shared<const SequenceRequest>(std::move(req));
  SubmittedRequest out;
  out.channel = std::make_shared<EventChannel>(n, shared->stream);
  for (int i = 0; i < n; ++i) out.samples.push_back(std::make_shared<Sequence>(shared, i, out.channel, opt_.tokenizer));
  // Samples 1..n-1 wait for sample 0's prompt and then share its blocks.
  for (int i = 1; i < n; ++i) {
    out.samples[i]->waits_for_prompt = true;
    out.samples[0]->siblings.push_back(out.samples[i]);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_ || stop_) return absl::UnavailableError("server is draining");
    if (static_cast<int>(waiting_.size()) + n > opt_.max_queue)
      return absl::ResourceExhaustedError(absl::StrCat("queue full (", opt_.max_queue, " waiting sequences)"));
    waiting_.insert(waiting_.end(), out.samples.begin(), out.samples.end());
    stats_.waiting = static_cast<int>(waiting_.size());
  }
  cv_.notify_all();
  return out;
}

void Engine::Cancel(const std::shared_ptr<Sequence>& seq) {
  seq->cancel_requested = true;
  cv_.notify_all();
}

void Engine::StartDrain() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
}

void Engine::CancelAll() {
  std::lock_guard<std::mutex> lock(mu_);
  // Waiting and running sequences are retired by the scheduler (it owns the
  // blocks); the flag tells it to cut off all of them on its next step.
  cancel_all_ = true;
  cv_.notify_all();
}

bool Engine::Idle() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_.running == 0 && waiting_.empty();
}

EngineStats Engine::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void Engine::Loop() {
  pthread_setname_np(pthread_self(), "tg-scheduler");  // per-thread CPU time in benchmarks (/proc/PID/task/*/comm)
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) break;
    }
    // Launch step N+1 while step N runs, then hand out step N's tokens.
    const bool launched = LaunchStep();
    if (static_cast<int>(in_flight_.size()) > (launched ? 1 : 0)) CollectStep();
    if (launched || !in_flight_.empty()) continue;
    PublishGauges();
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::milliseconds(20), [&] { return stop_ || cancel_all_ || !waiting_.empty(); });
  }
  CollectAll();
}

void Engine::Retire(const std::shared_ptr<Sequence>& seq, FinishReason reason, absl::Status status) {
  // Its blocks may still be written by a launched step; the device runs
  // steps in order, so whoever gets them next writes after that.
  kv_.Release(&seq->block_table);
  seq->retired = true;
  running_.erase(std::remove(running_.begin(), running_.end(), seq), running_.end());
  // Samples still waiting for this one's prompt compute it themselves.
  for (auto& sib : seq->siblings) sib->waits_for_prompt = false;
  seq->siblings.clear();
  // The call hears of it from the waker thread (its last message and log
  // line are not the scheduler's work); every caller ends with WakeCalls.
  if (seq->Finish(reason, std::move(status), seq->detokenizer ? seq->detokenizer->Finish() : std::string()))
    waker_.Add(seq->channel());
}

void Engine::Preempt(std::shared_ptr<Sequence> victim) {
  // Drop its cache and requeue it at the front; it will be recomputed from
  // its prompt and the tokens it already produced (its RNG stream continues,
  // so its output is unchanged).
  kv_.Release(&victim->block_table);
  victim->num_computed = 0;
  victim->num_hashed_blocks = 0;
  running_.erase(std::remove(running_.begin(), running_.end(), victim), running_.end());
  {
    std::lock_guard<std::mutex> lock(mu_);
    waiting_.push_front(victim);
    ++stats_.preemptions;
  }
  if (metrics_) metrics_->OnPreemption();
  LOG(INFO) << "preempted request " << victim->request.id << " (" << victim->tokens.size() << " tokens to recompute)";
}

bool Engine::StopsOn(Sequence& seq, int32_t token, const std::string& text) const {
  const auto& ids = seq.request.options.stop_ids;
  if (std::binary_search(ids.begin(), ids.end(), token)) return true;  // sorted by Submit
  if (opt_.tokenizer && token == opt_.tokenizer->eos_id() && !seq.request.ignore_eos) return true;
  return seq.stop_strings.Push(text);
}

void Engine::RetireCancelled() {
  std::vector<std::shared_ptr<Sequence>> cancelled;
  bool cancel_all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancel_all = cancel_all_;
    cancel_all_ = false;
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      if ((*it)->cancel_requested || cancel_all) {
        cancelled.push_back(*it);
        it = waiting_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& s : running_)
    if (s->cancel_requested || cancel_all) cancelled.push_back(s);
  // A client's own cancel ends OK here (the service reports CANCELLED or
  // DEADLINE_EXCEEDED); one cut off by shutdown ends UNAVAILABLE.
  for (auto& s : cancelled)
    Retire(s, FinishReason::kCancelled,
           cancel_all && !s->cancel_requested ? absl::UnavailableError(kShutdownMessage) : absl::OkStatus());
  if (!cancelled.empty()) WakeCalls();
}

bool Engine::LaunchStep() {
  RetireCancelled();
  // A penalized sequence whose last token is still on the device needs it in
  // its token counts first: collect before planning.
  for (auto& s : running_)
    if (s->unreceived > 0 && s->extras.penalties.active()) {
      CollectAll();
      break;
    }

  // Plan the step: running sequences first, oldest first, then admit
  // waiting ones while the token, sequence and block budgets allow.
  const RunnerOptions& ro = runner_->options();
  std::vector<SeqStep>& steps = plan_steps_;
  std::vector<std::shared_ptr<Sequence>>& in_step = plan_seqs_;
replan:
  steps.clear();
  in_step.clear();
  int token_budget = ro.max_batch_tokens;
  std::sort(running_.begin(), running_.end(), [](auto& a, auto& b) { return a->admitted_order < b->admitted_order; });
  auto plan = [&](const std::shared_ptr<Sequence>& s) -> bool {
    if (static_cast<int>(steps.size()) >= ro.max_seqs || token_budget == 0) return false;
    SeqStep st;
    if (s->unreceived > 0) {
      // Decode from the token the step in flight is sampling, unless that
      // token is its last.
      if (s->num_generated() + s->unreceived >= s->request.options.max_new_tokens) return true;
      st.num_tokens = 1;
      st.pending_row = s->pending_row;
    } else {
      st.num_tokens = std::min(static_cast<int>(s->tokens.size()) - s->num_computed, token_budget);
      if (st.num_tokens <= 0) return true;
      st.tokens = s->tokens.data() + s->num_computed;
    }
    const int need = BlocksFor(s->num_computed + st.num_tokens, block_size_) - static_cast<int>(s->block_table.size());
    if (need > 0 && !kv_.Allocate(need, &s->block_table)) return false;
    st.start_pos = s->num_computed;
    st.block_table = &s->block_table;
    st.sample = s->unreceived > 0 || s->num_computed + st.num_tokens == static_cast<int>(s->tokens.size());
    const GenerateOptions& o = s->request.options;
    st.sampling = SamplingParams{o.temperature, o.top_k, o.top_p, 0.f};
    if (s->extras.penalties.active() || s->extras.wants_logprobs()) st.extras = &s->extras;
    // The prompt's logprobs: sample 0 computes every prompt position.
    const int prompt_len = static_cast<int>(s->request.prompt.size());
    if (s->request.prompt_logprobs >= 0 && s->index == 0 && s->num_generated() == 0 && st.pending_row < 0 &&
        st.start_pos + 1 < prompt_len) {
      st.prompt_logprobs = &s->prompt_logprobs;
      st.prompt_len = prompt_len;
      st.prompt_top = s->request.prompt_logprobs;
    }
    steps.push_back(st);
    in_step.push_back(s);
    token_budget -= st.num_tokens;
    return true;
  };
  for (size_t i = 0; i < running_.size();) {
    auto s = running_[i];
    if (plan(s)) { ++i; continue; }
    if (token_budget == 0 || static_cast<int>(steps.size()) >= ro.max_seqs) break;
    // Out of blocks. Preemption drops a sequence's cache, so it waits until
    // no step is in flight (none then holds a token of it); then plan again.
    if (!in_flight_.empty()) {
      CollectAll();
      RetireCancelled();
      goto replan;
    }
    // Preempt the most recently admitted sequence (maybe s).
    auto victim = running_.back();
    Preempt(victim);
    if (victim == s) break;
  }
  while (token_budget > 0 && static_cast<int>(steps.size()) < ro.max_seqs) {
    std::shared_ptr<Sequence> s;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (waiting_.empty()) break;
      s = waiting_.front();
    }
    if (s->waits_for_prompt) break;  // first-come first-served: the queue waits with it
    // Start from the longest cached prefix of its tokens (a preempted
    // sequence's generated tokens included), unless it holds blocks already
    // (a sample handed its request's prompt).
    int cached = -1;
    if (s->block_table.empty() && s->request.prompt_logprobs >= 0) {
      s->num_computed = s->num_hashed_blocks = 0;  // every prompt position is computed for its logprobs
    } else if (s->block_table.empty()) {
      cached = kv_.MatchPrefix(s->tokens.data(), static_cast<int>(s->tokens.size()), &s->block_table);
      s->num_computed = cached;
      s->num_hashed_blocks = cached / block_size_;
    }
    const size_t planned = steps.size();
    if (!plan(s) || steps.size() == planned) {  // not enough free blocks: it waits, holding none
      kv_.Release(&s->block_table);
      s->num_computed = s->num_hashed_blocks = 0;
      // Nothing runs and the queue's head cannot start: samples waiting with
      // their request's shared prompt blocks must not starve it. They give
      // the blocks back (and compute the prompt themselves later).
      if (running_.empty() && steps.empty() && ReleaseWaitingBlocks()) continue;
      break;
    }
    if (metrics_ && kv_.prefix_caching() && cached >= 0)
      metrics_->OnPrefixCacheQuery(static_cast<int>(s->tokens.size()), cached);
    {
      std::lock_guard<std::mutex> lock(mu_);
      waiting_.pop_front();
    }
    s->admitted_order = admitted_counter_++;
    running_.push_back(s);
  }
  if (steps.empty()) return false;

  // One forward pass for all of them. Each sampling row takes the next draw
  // of its own sequence's RNG.
  const auto t0 = Clock::now();
  for (size_t i = 0; i < steps.size(); ++i) {
    if (!in_step[i]->scheduled_once) {
      in_step[i]->scheduled_once = true;
      in_step[i]->first_scheduled = t0;
    }
    if (steps[i].sample) steps[i].sampling.uniform = in_step[i]->rng.NextUniform();
  }
  const absl::Status status = runner_->Launch(steps);
  const double launch_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!status.ok()) {
    LOG(ERROR) << "step failed: " << status;
    for (auto& s : in_step) Retire(s, FinishReason::kCancelled, status);
    WakeCalls();
    return true;
  }
  LaunchedStep launched;
  launched.launched = t0;
  launched.launch_seconds = launch_seconds;
  int row = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    Sequence& s = *in_step[i];
    s.num_computed += steps[i].num_tokens;
    // Full blocks whose tokens are known join the prefix cache now, not when
    // the step's result comes back: the device runs steps in order, so a
    // later step that reuses them reads them after this one wrote them, and
    // the step planned while this one runs can already share the prompt.
    kv_.Commit(s.block_table, s.tokens.data(), std::min<int>(s.num_computed, static_cast<int>(s.tokens.size())),
               &s.num_hashed_blocks);
    launched.tokens += steps[i].num_tokens;
    launched.sample_row.push_back(steps[i].sample ? row : -1);
    if (steps[i].sample) {
      s.pending_row = row++;
      ++s.unreceived;
    }
  }
  launched.seqs = in_step;
  in_flight_.push_back(std::move(launched));
  return true;
}

void Engine::CollectStep() {
  LaunchedStep step = std::move(in_flight_.front());
  in_flight_.pop_front();
  const auto wait0 = Clock::now();
  const absl::Status status = runner_->Collect(&result_);
  if (opt_.debug_step_delay.count() > 0) std::this_thread::sleep_for(opt_.debug_step_delay);
  const auto t1 = Clock::now();
  if (metrics_) {
    // The step's host-side time: its launch (all of it on the CPU backend)
    // and the wait for its result; on a GPU the device time is reported.
    const GraphStats g = runner_->graph_stats();
    metrics_->OnStep(step.launch_seconds + std::chrono::duration<double>(t1 - wait0).count(), step.tokens, result_.device_seconds,
                     result_.graph);
    metrics_->OnGraphCaptures(g.captured - graphs_seen_.captured, g.capture_seconds - graphs_seen_.capture_seconds);
    graphs_seen_ = g;
    const Backend::ShapeCounters c = runner_->backend()->shape_counters();
    metrics_->OnShapeSearches(c.gemm_searches - shapes_seen_.gemm_searches, c.workspace_growths - shapes_seen_.workspace_growths);
    shapes_seen_ = c;
  }
  if (!status.ok()) {
    LOG(ERROR) << "collecting a step failed: " << status;
    for (auto& s : step.seqs)
      if (!s->retired) Retire(s, FinishReason::kCancelled, status);
    WakeCalls();
    return;
  }
  // Hand out the tokens; retire finished sequences at once.
  int streams = 0;
  for (const auto& s : step.seqs) streams += s->request.stream && !s->retired;
  const int interval = opt_.stream_interval > 0 ? opt_.stream_interval : StreamIntervalFor(streams);
  for (size_t i = 0; i < step.seqs.size(); ++i) {
    auto& s = step.seqs[i];
    const int row = step.sample_row[i];
    if (row >= 0) --s->unreceived;
    if (s->retired) continue;  // cancelled, or stopped while this step was in flight
    if (row < 0) continue;
    const int32_t token = result_.sampled[row];
    if (token == kNonFiniteLogits) {
      // Garbage must not reach the client as an answer: this sample ends
      // INTERNAL (its siblings compute the prompt themselves, and fail or not
      // on their own); the rest of the batch goes on. Logged once, since a bad
      // checkpoint does this to every request.
      const int position = static_cast<int>(s->tokens.size());
      if (metrics_) metrics_->OnNonFiniteLogits();
      if (!nonfinite_logged_) {
        nonfinite_logged_ = true;
        LOG(ERROR) << "the model " << (opt_.model_name.empty() ? "" : opt_.model_name + " ")
                   << "produced non-finite logits (request " << s->request.id << ", position " << position
                   << "): such samples end INTERNAL and are counted in tinygpt_nonfinite_logits_total; logged once";
      }
      Retire(s, FinishReason::kCancelled, NonFiniteLogitsError(position));
      continue;
    }
    if (!s->siblings.empty()) SharePrompt(*s);
    if (s->request.options.max_new_tokens == 0) {  // a scoring request: the prompt's logprobs, no token
      if (s->request.prompt_logprobs >= 0 && s->index == 0) {
        s->prompt_logprobs.resize(std::max<size_t>(s->request.prompt.size(), 1) - 1);
        s->channel()->SetPromptLogprobs(std::move(s->prompt_logprobs));
      }
      Retire(s, FinishReason::kLength);
      continue;
    }
    TokenLogprobs* lp = s->extras.wants_logprobs() ? &result_.logprobs[row] : nullptr;
    s->tokens.push_back(token);
    if (s->num_generated() == 1) {
      s->first_token = t1;
      if (s->request.prompt_logprobs >= 0 && s->index == 0) {
        s->prompt_logprobs.resize(std::max<size_t>(s->request.prompt.size(), 1) - 1);
        s->channel()->SetPromptLogprobs(std::move(s->prompt_logprobs));
      }
    } else if (metrics_) {
      metrics_->OnInterTokenLatency(std::chrono::duration<double>(t1 - s->last_token).count());
    }
    s->last_token = t1;
    // The block this token completes is in the cache once a launched step
    // computes it (the token's own K/V come with the step that reads it).
    kv_.Commit(s->block_table, s->tokens.data(), std::min<int>(s->num_computed, static_cast<int>(s->tokens.size())),
               &s->num_hashed_blocks);
    const std::string text = s->detokenizer ? s->detokenizer->Next(token) : std::string();
    if (s->Emit(token, text, lp, interval)) waker_.Add(s->channel());
    if (StopsOn(*s, token, text)) Retire(s, FinishReason::kStop);
    else if (s->num_generated() >= s->request.options.max_new_tokens) Retire(s, FinishReason::kLength);
  }
  WakeCalls();
}

bool Engine::ReleaseWaitingBlocks() {
  std::lock_guard<std::mutex> lock(mu_);
  bool released = false;
  for (auto& w : waiting_) {
    if (w->block_table.empty()) continue;
    kv_.Release(&w->block_table);
    w->num_computed = w->num_hashed_blocks = 0;
    released = true;
  }
  return released;
}

void Engine::SharePrompt(Sequence& first) {
  // Its prompt is computed: the other samples take its full prompt blocks
  // (all but a partial last block, which each computes itself along with the
  // prompt's last token, whose logits give its own first sample).
  const int k = std::min<int>((static_cast<int>(first.request.prompt.size()) - 1) / block_size_,
                              static_cast<int>(first.block_table.size()));
  for (auto& sib : first.siblings) {
    if (!sib->block_table.empty()) continue;
    kv_.Share(first.block_table, k, &sib->block_table);
    sib->num_computed = k * block_size_;
    sib->num_hashed_blocks = std::min(first.num_hashed_blocks, k);
    sib->waits_for_prompt = false;
  }
  first.siblings.clear();
}

void Engine::WakeCalls() {
  // Gauges first: a client that hears its call has ended must find its KV
  // blocks free and itself no longer running (GetModelInfo, /metrics).
  PublishGauges();
  waker_.Flush();
}

void Engine::PublishGauges() {
  int running = static_cast<int>(running_.size()), waiting;
  {
    std::lock_guard<std::mutex> lock(mu_);
    waiting = static_cast<int>(waiting_.size());
    stats_.running = running;
    stats_.waiting = waiting;
    stats_.kv_blocks_free = kv_.num_free();
    stats_.kv_blocks_cached = kv_.num_cached();
  }
  if (metrics_) metrics_->SetGauges(running, waiting, kv_.num_used(), kv_.num_blocks(), kv_.num_cached());
}

}  // namespace tinygpt
