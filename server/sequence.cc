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

bool EventChannel::Emit(int index, int32_t token, const std::string& text, TokenLogprobs* logprobs) {
  std::lock_guard<std::mutex> lock(mu_);
  SequenceEvents& p = pending_[index];
  p.tokens.push_back(token);
  p.text += text;
  if (logprobs) p.logprobs.push_back(std::move(*logprobs));
  fresh_ = true;
  return stream_;  // a unary caller waits for the end only
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
  fresh_ = true;
  return --unfinished_ == 0 || stream_;
}

std::vector<SequenceEvents> EventChannel::Take(bool* any) {
  std::lock_guard<std::mutex> lock(mu_);
  *any = fresh_;
  fresh_ = false;
  std::vector<SequenceEvents> out(pending_.size());
  for (size_t i = 0; i < pending_.size(); ++i) {
    SequenceEvents& p = pending_[i];
    out[i].tokens.swap(p.tokens);
    out[i].text.swap(p.text);
    out[i].logprobs.swap(p.logprobs);
    out[i].prompt_logprobs.swap(p.prompt_logprobs);
    out[i].finished = p.finished;
    out[i].reason = p.reason;
    out[i].status = p.status;
  }
  return out;
}

}  // namespace tinygpt
