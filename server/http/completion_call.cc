#include "server/http/completion_call.h"

#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace tinygpt::http {
namespace {

using nlohmann::json;

class CompletionCall final : public std::enable_shared_from_this<CompletionCall> {
 public:
  CompletionCall(const CompletionContext& ctx, std::shared_ptr<Exchange> x, CompletionRequest req, CompletionMeta meta)
      : ctx_(ctx), x_(std::move(x)), req_(std::move(req)), meta_(std::move(meta)), chunks_(meta_, req_.include_usage) {
    ++*ctx_.in_flight;
  }
  ~CompletionCall() { --*ctx_.in_flight; }

  void Begin() {
    const int prompts = static_cast<int>(req_.prompts.size());
    std::vector<std::shared_ptr<EventChannel>> channels;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int k = 0; k < prompts; ++k) {
        v1::GenerateRequest& r = req_.prompts[k];
        r.set_request_id(prompts > 1 ? absl::StrCat(meta_.id, "-", k) : meta_.id);
        echo_.push_back(req_.echo ? EchoText(r) : std::string());
        CallOutcome o = ctx_.service->Start(r, req_.stream);
        o.api = "openai";
        if (!o.status.ok()) {
          // Refused (bad field, queue full, draining): counted like any
          // request; the prompts submitted before it are cancelled.
          ctx_.service->Finish(o);
          error_ = o.status;
          break;
        }
        channels.push_back(o.submitted.channel);
        outcomes_.push_back(std::move(o));
      }
      choices_.resize(outcomes_.size() * req_.n);
      if (!error_.ok()) {
        for (auto& o : outcomes_) o.Cancel(ctx_.engine);
        x_->Reply(ErrorFromStatus(error_));
        response_done_ = true;
      } else if (req_.stream) {
        Response head;
        head.content_type = "text/event-stream";
        head.headers = {{"Cache-Control", "no-cache"}};
        x_->BeginStream(std::move(head));
        // The header at once, so the client knows the request was taken.
        writing_ = true;
        x_->Write("", false, [self = shared_from_this()](bool ok) { self->OnWritten(ok); });
      }
      if (outcomes_.empty()) return;
      self_ = shared_from_this();  // until every sample has ended and the response is out
    }
    x_->OnGone([self = shared_from_this()] { self->OnGone(); });
    std::weak_ptr<CompletionCall> weak = shared_from_this();
    // A listener only borrows the call: the channel outlives it.
    for (auto& ch : channels)
      ch->SetListener([weak] {
        if (auto c = weak.lock()) c->OnEvents();
      });
    OnEvents();  // events from before the listeners
  }

 private:
  void OnEvents() {
    std::shared_ptr<CompletionCall> release;
    std::lock_guard<std::mutex> lock(mu_);
    PumpLocked(&release);
  }

  void OnWritten(bool ok) {
    std::shared_ptr<CompletionCall> release;
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) GoneLocked();
    else if (last_written_) response_done_ = true;
    PumpLocked(&release);
  }

  void OnGone() {
    std::shared_ptr<CompletionCall> release;
    std::lock_guard<std::mutex> lock(mu_);
    GoneLocked();
    PumpLocked(&release);
  }

  void GoneLocked() {
    gone_ = true;
    for (auto& o : outcomes_) o.Cancel(ctx_.engine);
  }

  // The prompt's text, which echo puts before the completion.
  std::string EchoText(const v1::GenerateRequest& r) const {
    if (r.has_token_ids()) {
      if (!ctx_.tokenizer) return "";
      return DecodeContinuation(*ctx_.tokenizer, std::vector<int32_t>(r.token_ids().ids().begin(), r.token_ids().ids().end()));
    }
    return r.text();
  }

  // Takes the channels' events into the outcomes (and, streaming, into SSE
  // chunks) and sends what there is; once every sample has ended and the
  // response is out (or the client gone), records each prompt, as the gRPC
  // reactor does after its last write. *release then takes the call's hold
  // on itself.
  void PumpLocked(std::shared_ptr<CompletionCall>* release) {
    for (size_t k = 0; k < outcomes_.size(); ++k) {
      CallOutcome& o = outcomes_[k];
      bool any = false;
      o.submitted.channel->Take(&events_, &any);
      if (any)
        o.Absorb(events_, ctx_.engine, [&](int i, const SequenceEvents& ev) {
          if (gone_) return false;
          if (req_.stream && error_.ok()) pending_ += StreamChunk(static_cast<int>(k), i, ev);
          return true;
        });
      // An engine failure (not our own cancel) fails the whole request.
      if (!o.status.ok() && error_.ok()) {
        error_ = o.status;
        for (auto& other : outcomes_) other.Cancel(ctx_.engine);
      }
    }
    bool all_finished = true;
    for (const auto& o : outcomes_) all_finished = all_finished && o.unfinished == 0;
    if (!gone_ && !response_done_) {
      if (req_.stream) SendStreamLocked(all_finished);
      else if (all_finished) {
        Response r = error_.ok() ? Response{200, "application/json", Dump(WholeResponse()), {}} : ErrorFromStatus(error_);
        x_->Reply(std::move(r));
        response_done_ = true;
      }
    }
    if (!all_finished || !(response_done_ || gone_) || writing_ || recorded_) return;
    recorded_ = true;
    for (auto& o : outcomes_) {
      if (o.status.ok() && (o.cancel_sent || gone_))
        o.status = grpc::Status(grpc::CANCELLED, gone_ ? "client went away before the response was complete"
                                                       : "cancelled: another prompt of the request failed");
      ctx_.service->Finish(o);
    }
    *release = std::move(self_);
  }

  void SendStreamLocked(bool all_finished) {
    if (writing_) return;
    bool last = false;
    if (all_finished) {
      last = true;
      if (!error_.ok()) pending_ += SseEvent(json::parse(ErrorFromStatus(error_).body));
      else if (req_.include_usage) {
        json usage = CompletionJson(meta_, json::array());
        usage["usage"] = Usage();
        pending_ += SseEvent(usage);
      }
      pending_ += kSseDone;
    }
    if (pending_.empty()) return;
    writing_ = true;
    last_written_ = last;
    std::string data = std::move(pending_);
    pending_.clear();
    x_->Write(std::move(data), last, [self = shared_from_this()](bool ok) { self->OnWritten(ok); });
  }

  // Per choice: whether its first piece (with the echoed prompt) went out,
  // and where its logprobs' text_offset has got to.
  struct ChoiceState {
    bool started = false;
    long offset = 0;
  };

  // The echoed prompt (once) and its logprobs, when asked for.
  void AddEcho(int k, std::string* text, json* logprobs, long* offset) const {
    if (!req_.echo) return;
    *text += echo_[k];
    const CallOutcome& o = outcomes_[k];
    if (req_.logprobs >= 0) AppendLogprobs(ctx_.tokenizer, o.prompt, o.prompt_logprobs, /*first_null=*/true, req_.logprobs, offset, logprobs);
  }

  std::string StreamChunk(int k, int i, const SequenceEvents& ev) {
    ChoiceState& cs = choices_[k * req_.n + i];
    std::string text;
    json logprobs;
    if (!cs.started) {
      cs.started = true;
      AddEcho(k, &text, &logprobs, &cs.offset);
    }
    text += ev.text;
    if (req_.logprobs >= 0) AppendLogprobs(ctx_.tokenizer, ev.tokens, ev.logprobs, false, req_.logprobs, &cs.offset, &logprobs);
    const json finish = ev.finished ? FinishReasonJson(ev.reason) : json();
    // Nothing new, or a sample cut off (its error ends the stream).
    if (text.empty() && ev.tokens.empty() && finish.is_null()) return "";
    json choice = ChoiceJson(k * req_.n + i, std::move(text), std::move(logprobs), finish);
    if (req_.return_token_ids) choice["token_ids"] = ev.tokens;
    return chunks_.Event(choice);
  }

  json WholeResponse() const {
    json choices = json::array();
    for (size_t k = 0; k < outcomes_.size(); ++k) {
      for (size_t i = 0; i < outcomes_[k].choices.size(); ++i) {
        const ChoiceOutcome& c = outcomes_[k].choices[i];
        std::string text;
        json logprobs;
        long offset = 0;
        AddEcho(static_cast<int>(k), &text, &logprobs, &offset);
        text += c.text;
        if (req_.logprobs >= 0) AppendLogprobs(ctx_.tokenizer, c.tokens, c.logprobs, false, req_.logprobs, &offset, &logprobs);
        json choice = ChoiceJson(static_cast<int>(k * req_.n + i), std::move(text), std::move(logprobs), FinishReasonJson(c.reason));
        if (req_.return_token_ids) choice["token_ids"] = c.tokens;
        choices.push_back(std::move(choice));
      }
    }
    json resp = CompletionJson(meta_, std::move(choices));
    resp["usage"] = Usage();
    return resp;
  }

  // The prompts' tokens once each (whatever n), and every sample's tokens.
  json Usage() const {
    long prompt = 0, completion = 0;
    for (const auto& o : outcomes_) {
      prompt += o.prompt_tokens;
      completion += o.generated();
    }
    return UsageJson(prompt, completion);
  }

  const CompletionContext ctx_;
  const std::shared_ptr<Exchange> x_;
  CompletionRequest req_;
  const CompletionMeta meta_;
  const ChunkWriter chunks_;
  std::mutex mu_;  // guards what follows: waker threads, io threads and Begin all come here
  std::vector<CallOutcome> outcomes_;  // one per prompt
  std::vector<std::string> echo_;      // each prompt's text, when echoed
  bool recorded_ = false;              // every prompt counted and logged
  std::vector<ChoiceState> choices_;   // prompt k's sample i at k * n + i
  grpc::Status error_;                 // the request's failure, if any
  std::string pending_;                // SSE bytes not yet handed to a write
  std::vector<SequenceEvents> events_;  // reused by every Take
  bool writing_ = false;               // a write is in flight (one at a time)
  bool last_written_ = false;          // that write ends the response
  bool response_done_ = false;         // the whole response is written (or handed over)
  bool gone_ = false;                  // the client went away
  std::shared_ptr<CompletionCall> self_;
};

}  // namespace

void StartCompletion(const CompletionContext& ctx, std::shared_ptr<Exchange> x, CompletionRequest req, CompletionMeta meta) {
  std::make_shared<CompletionCall>(ctx, std::move(x), std::move(req), std::move(meta))->Begin();
}

}  // namespace tinygpt::http
