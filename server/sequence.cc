#include "server/sequence.h"

namespace tinygpt {

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kLength: return "length";
    case FinishReason::kStop: return "stop";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kNone: break;
  }
  return "none";
}

bool EventChannel::Emit(int index, int32_t token, const std::string& text, TokenLogprobs* logprobs, int stream_interval) {
  std::lock_guard<std::mutex> lock(mu_);
  SequenceEvents& p = pending_[index];
  p.tokens.push_back(token);
  p.text += text;
  if (logprobs) p.logprobs.push_back(std::move(*logprobs));
  if (!stream_) return false;  // a unary caller waits for the end only
  // The first token is never held back (time to first token); the reader
  // was told already if a due batch is still waiting for its Take.
  const bool first = !started_[index];
  started_[index] = true;
  if (due_ || !(first || static_cast<int>(p.tokens.size()) >= stream_interval)) return false;
  due_ = true;
  return true;
}

void EventChannel::Notify() {
  std::lock_guard<std::mutex> lock(listener_mu_);
  if (listener_) listener_();
}

void EventChannel::SetListener(std::function<void()> listener) {
  std::lock_guard<std::mutex> lock(listener_mu_);
  listener_ = std::move(listener);
}

void EventChannel::SetPromptLogprobs(std::vector<TokenLogprobs> lps) {
  std::lock_guard<std::mutex> lock(mu_);
  pending_[0].prompt_logprobs = std::move(lps);
}

bool EventChannel::Finish(int index, FinishReason reason, absl::Status status, const std::string& text) {
  std::lock_guard<std::mutex> lock(mu_);
  SequenceEvents& p = pending_[index];
  if (p.finished) return false;
  p.text += text;
  p.finished = true;
  p.reason = reason;
  p.status = std::move(status);
  const bool tell = --unfinished_ == 0 || stream_;
  if (tell) due_ = true;
  return tell;
}

void EventChannel::Take(std::vector<SequenceEvents>* out, bool* any) {
  out->resize(pending_.size());
  for (SequenceEvents& o : *out) {
    // Keep the vectors' capacity: the swaps below hand it to the engine's
    // next Emit, so neither side allocates per message once warm.
    o.tokens.clear();
    o.text.clear();
    o.logprobs.clear();
    o.prompt_logprobs.clear();
    // Nor an end a caller's vector kept from an earlier Take: a Take with
    // nothing due reports every sample unfinished, whatever the caller reads.
    o.finished = false;
    o.reason = FinishReason::kNone;
    o.status = absl::OkStatus();
  }
  std::lock_guard<std::mutex> lock(mu_);
  *any = due_;
  if (!due_) return;
  due_ = false;
  for (size_t i = 0; i < pending_.size(); ++i) {
    SequenceEvents& p = pending_[i];
    SequenceEvents& o = (*out)[i];
    o.tokens.swap(p.tokens);
    o.text.swap(p.text);
    o.logprobs.swap(p.logprobs);
    o.prompt_logprobs.swap(p.prompt_logprobs);
    o.finished = p.finished;
    o.reason = p.reason;
    o.status = p.status;
  }
}

}  // namespace tinygpt
