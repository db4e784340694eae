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

void Sequence::Emit(int32_t token, const std::string& text) {
  std::lock_guard<std::mutex> lock(mu_);
  pending_.tokens.push_back(token);
  pending_.text += text;
  if (request.stream) cv_.notify_all();  // a unary caller waits for the end only
}

void Sequence::Finish(FinishReason reason, absl::Status status, const std::string& text) {
  std::lock_guard<std::mutex> lock(mu_);
  pending_.text += text;
  pending_.finished = true;
  pending_.reason = reason;
  pending_.status = std::move(status);
  cv_.notify_all();
}

SequenceEvents Sequence::Wait(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return (request.stream && !pending_.tokens.empty()) || pending_.finished; });
  SequenceEvents out;
  out.tokens.swap(pending_.tokens);
  out.text.swap(pending_.text);
  out.finished = pending_.finished;
  out.reason = pending_.reason;
  out.status = pending_.status;
  return out;
}

}  // namespace tinygpt
