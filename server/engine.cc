#include "server/engine.h"

#include <algorithm>

#include "common/log.h"
#include "absl/strings/str_cat.h"
#include "server/metrics.h"

namespace tinygpt {

Engine::Engine(ModelRunner* runner, const EngineOptions& opt, ServerMetrics* metrics)
    : runner_(runner), opt_(opt), metrics_(metrics),
      kv_(runner->options().num_kv_blocks, runner->options().block_size, opt.prefix_caching),
      block_size_(runner->options().block_size) {
  if (opt_.max_new_tokens_limit <= 0) opt_.max_new_tokens_limit = runner->config().max_seq_len;
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
  for (auto& s : running_) s->Finish(FinishReason::kCancelled, absl::UnavailableError(kShutdownMessage));
  for (auto& s : waiting_) s->Finish(FinishReason::kCancelled, absl::UnavailableError(kShutdownMessage));
}

absl::StatusOr<std::shared_ptr<Sequence>> Engine::Submit(SequenceRequest req) {
  const ModelConfig& cfg = runner_->config();
  if (auto s = ValidateGenerateRequest(cfg, req.prompt, req.options); !s.ok()) return s;
  if (req.options.max_new_tokens > opt_.max_new_tokens_limit)
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens: ", req.options.max_new_tokens, " exceeds the server limit of ",
                                                   opt_.max_new_tokens_limit));
  if (!req.stop_strings.empty() && !opt_.tokenizer)
    return absl::InvalidArgumentError("stop: this model has no tokenizer, so it cannot match stop strings; use stop_token_ids");
  const int need = BlocksFor(static_cast<int>(req.prompt.size()) + req.options.max_new_tokens, block_size_);
  if (need > kv_.num_blocks())
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens: prompt + max_new_tokens need ", need,
                                                   " KV blocks, more than the whole cache (", kv_.num_blocks(), ")"));
  auto seq = std::make_shared<Sequence>(std::move(req), opt_.tokenizer);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_ || stop_) return absl::UnavailableError("server is draining");
    if (static_cast<int>(waiting_.size()) >= opt_.max_queue)
      return absl::ResourceExhaustedError(absl::StrCat("queue full (", opt_.max_queue, " waiting requests)"));
    waiting_.push_back(seq);
    stats_.waiting = static_cast<int>(waiting_.size());
  }
  cv_.notify_all();
  return seq;
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
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
    }
    if (RunStep()) continue;
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::milliseconds(20), [&] { return stop_ || cancel_all_ || !waiting_.empty(); });
  }
}

void Engine::Retire(const std::shared_ptr<Sequence>& seq, FinishReason reason, absl::Status status) {
  kv_.Release(&seq->block_table);
  running_.erase(std::remove(running_.begin(), running_.end(), seq), running_.end());
  seq->Finish(reason, std::move(status), seq->detokenizer ? seq->detokenizer->Finish() : std::string());
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
  if (std::find(ids.begin(), ids.end(), token) != ids.end()) return true;
  if (opt_.tokenizer && token == opt_.tokenizer->eos_id() && !seq.request.ignore_eos) return true;
  return seq.stop_strings.Push(text);
}

bool Engine::RunStep() {
  // 1. Drop cancelled sequences, waiting or running, and free their blocks.
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

  // 2. Plan the step: running sequences first, oldest first, then admit
  //    waiting ones while the token, sequence and block budgets allow.
  const RunnerOptions& ro = runner_->options();
  int token_budget = ro.max_batch_tokens;
  std::vector<SeqStep> steps;
  std::vector<std::shared_ptr<Sequence>> in_step;
  std::sort(running_.begin(), running_.end(), [](auto& a, auto& b) { return a->admitted_order < b->admitted_order; });
  auto plan = [&](const std::shared_ptr<Sequence>& s) -> bool {
    const int pending = static_cast<int>(s->tokens.size()) - s->num_computed;
    const int chunk = std::min(pending, token_budget);
    if (chunk <= 0 || static_cast<int>(steps.size()) >= ro.max_seqs) return false;
    const int need = BlocksFor(s->num_computed + chunk, block_size_) - static_cast<int>(s->block_table.size());
    if (need > 0 && !kv_.Allocate(need, &s->block_table)) return false;
    SeqStep st;
    st.tokens = s->tokens.data() + s->num_computed;
    st.num_tokens = chunk;
    st.start_pos = s->num_computed;
    st.block_table = &s->block_table;
    st.sample = s->num_computed + chunk == static_cast<int>(s->tokens.size());
    const GenerateOptions& o = s->request.options;
    st.sampling = SamplingParams{o.temperature, o.top_k, o.top_p, 0.f};
    steps.push_back(st);
    in_step.push_back(s);
    token_budget -= chunk;
    return true;
  };
  for (size_t i = 0; i < running_.size();) {
    auto s = running_[i];
    if (plan(s)) { ++i; continue; }
    if (token_budget == 0 || static_cast<int>(steps.size()) >= ro.max_seqs) break;
    // Out of blocks: preempt the most recently admitted sequence (maybe s).
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
    // Start from the longest cached prefix of its tokens (a preempted
    // sequence's generated tokens included).
    const int cached = kv_.MatchPrefix(s->tokens.data(), static_cast<int>(s->tokens.size()), &s->block_table);
    s->num_computed = cached;
    s->num_hashed_blocks = cached / block_size_;
    if (!plan(s)) {  // not enough free blocks: it waits, holding none
      kv_.Release(&s->block_table);
      s->num_computed = s->num_hashed_blocks = 0;
      break;
    }
    if (metrics_ && kv_.prefix_caching()) metrics_->OnPrefixCacheQuery(static_cast<int>(s->tokens.size()), cached);
    {
      std::lock_guard<std::mutex> lock(mu_);
      waiting_.pop_front();
    }
    s->admitted_order = admitted_counter_++;
    running_.push_back(s);
  }
  if (steps.empty()) {
    PublishGauges();
    return false;
  }

  // 3. One forward pass for all of them. Each sampling row takes the next
  //    draw of its own sequence's RNG.
  const auto t0 = Clock::now();
  for (size_t i = 0; i < steps.size(); ++i) {
    if (!in_step[i]->scheduled_once) {
      in_step[i]->scheduled_once = true;
      in_step[i]->first_scheduled = t0;
    }
    if (steps[i].sample) steps[i].sampling.uniform = in_step[i]->rng.NextUniform();
  }
  std::vector<int32_t> sampled;
  const absl::Status status = runner_->Step(steps, &sampled);
  if (opt_.debug_step_delay.count() > 0) std::this_thread::sleep_for(opt_.debug_step_delay);
  const auto t1 = Clock::now();
  int step_tokens = 0;
  for (auto& st : steps) step_tokens += st.num_tokens;
  if (metrics_) metrics_->OnStep(std::chrono::duration<double>(t1 - t0).count(), step_tokens);
  if (!status.ok()) {
    LOG(ERROR) << "step failed: " << status;
    for (auto& s : in_step) Retire(s, FinishReason::kCancelled, status);
    PublishGauges();
    return true;
  }

  // 4. Hand out the tokens; retire finished sequences at once.
  size_t k = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    auto& s = in_step[i];
    s->num_computed += steps[i].num_tokens;
    kv_.Commit(s->block_table, s->tokens.data(), s->num_computed, &s->num_hashed_blocks);
    if (!steps[i].sample) continue;
    const int32_t token = sampled[k++];
    s->tokens.push_back(token);
    if (s->num_generated() == 1) {
      s->first_token = t1;
    } else if (metrics_) {
      metrics_->OnInterTokenLatency(std::chrono::duration<double>(t1 - s->last_token).count());
    }
    s->last_token = t1;
    const std::string text = s->detokenizer ? s->detokenizer->Next(token) : std::string();
    s->Emit(token, text);
    if (StopsOn(*s, token, text)) Retire(s, FinishReason::kStop);
    else if (s->num_generated() >= s->request.options.max_new_tokens) Retire(s, FinishReason::kLength);
  }
  PublishGauges();
  return true;
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
