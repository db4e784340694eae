// Generate and GenerateStream as gRPC callback reactors. A sync handler held a
// thread per call; a stream's woke for every step's tokens and again for
// every write it waited on: at 256 streams two thread switches per token per
// stream, which took more CPU than the model on the CPU and left the GPU idle
// half the time (and 2048 calls needed 2048 threads). Here the engine's
// channel calls the reactor from a waker thread (server/channel_waker.h) when
// tokens come or a sample ends, and the reactor takes them and starts a
// write; while a write is in flight tokens gather in the channel and
// go out in the next message, so a slow client gets fewer, larger messages
// instead of holding anything up. A unary call hears from its channel once,
// at the end, and writes its one response.
#include <deque>
#include <mutex>

#include "server/request_wire.h"
#include "server/responses.h"
#include "server/service.h"

namespace tinygpt {

class GenerationService::CallReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  CallReactor(GenerationService* service, grpc::CallbackServerContext* ctx, bool stream)
      : service_(service), ctx_(ctx), stream_(stream) {
    ++service_->in_flight_;
    if (grpc::Status s = service_->CheckAuth(*ctx_); !s.ok()) Refuse(std::move(s));
    else StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // No message: over the receive limit, none sent, or the client gave
      // up. Telling which may take a wait (server/no_message_waiter.h).
      const auto failed = std::chrono::system_clock::now();
      if (ctx_->IsCancelled()) return Refuse(NoMessageWaiter::StatusOf(*ctx_, /*cancelled=*/true, failed));
      service_->no_message_waiter_.Add(ctx_, failed, [this](grpc::Status s) { Refuse(std::move(s)); });
      return;
    }
    v1::GenerateRequest req;
    if (grpc::Status s = ParseGenerateRequest(request_, &req); !s.ok()) return Refuse(std::move(s));
    {
      std::lock_guard<std::mutex> lock(mu_);
      o_ = service_->Start(req, stream_);
      if (!o_.status.ok()) return EndLocked();
      // OnCancel may have come first, with nothing to cancel yet.
      if (ctx_->IsCancelled()) o_.Cancel(service_->engine_);
    }
    // Tokens that came before the listener are taken by the first pump.
    o_.submitted.channel->SetListener([this] { OnEvents(); });
    OnEvents();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) {  // the client is gone: stop generating for it
      write_failed_ = true;
      queue_.clear();
      o_.Cancel(service_->engine_);
    }
    PumpLocked();
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    // Client gone or deadline passed: the engine frees the samples within a
    // step and finishes them, which ends the call.
    if (!o_.submitted.samples.empty() && o_.unfinished > 0) o_.Cancel(service_->engine_);
  }

  void OnDone() override {
    // After this no listener call is running or will start (a waker thread
    // that called Finish from the listener has returned from it).
    if (o_.submitted.channel) o_.submitted.channel->SetListener(nullptr);
    // Refuse, from the no-message waiter's thread, lets go of mu_ before its
    // Finish; this makes sure of any other caller that finished under mu_.
    { std::lock_guard<std::mutex> lock(mu_); }
    --service_->in_flight_;
    delete this;
  }

 private:
  // New events in the channel (a waker thread, or the engine's destructor).
  void OnEvents() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!writing_ && !ended_) PumpLocked();
  }

  // Takes what the channel holds into messages and starts the next write;
  // once every sample has finished and everything is written, sends the last
  // message and then the status.
  void PumpLocked() {
    if (ended_) return;
    bool any = false;
    o_.submitted.channel->Take(&events_, &any);
    if (any)
      o_.Absorb(events_, service_->engine_, [&](int index, const SequenceEvents& ev) {
        if (write_failed_) return false;
        if (!stream_) return true;  // a unary call answers once, at the end
        v1::GenerateStreamResponse m;
        if (StreamMessage(index, ev, o_, /*several=*/o_.choices.size() > 1, &m)) queue_.push_back(Serialize(m));
        return true;
      });
    if (writing_) return;
    if (queue_.empty() && o_.unfinished == 0 && !settled_) {
      // A stream's last message, or a unary call's one response; a call
      // that fails sends none.
      settled_ = true;
      o_.Settle(*ctx_);
      if (o_.status.ok() && !write_failed_) {
        if (stream_) {
          v1::GenerateStreamResponse last;
          StreamSummary(o_, &last);
          queue_.push_back(Serialize(last));
        } else {
          v1::GenerateResponse resp;
          FillGenerateResponse(o_, &resp);
          queue_.push_back(Serialize(resp));
        }
      }
    }
    if (!queue_.empty()) {
      out_ = std::move(queue_.front());
      queue_.pop_front();
      writing_ = true;
      StartWrite(&out_);
      return;
    }
    if (settled_) EndLocked();
  }

  // Counts, logs and ends the call with o_'s status.
  void EndLocked() {
    ended_ = true;
    if (write_failed_ && o_.status.ok())
      o_.status = grpc::Status(grpc::CANCELLED, stream_ ? "stream closed by the client" : "client gone before the response was written");
    service_->Finish(o_);
    Finish(o_.status);
  }

  // A call refused before it reached the engine. Finish comes last: the
  // reactor may be gone once it has been called.
  void Refuse(grpc::Status status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ended_ = true;
    }
    service_->Refuse(status);
    Finish(status);
  }

  template <class Msg>
  static grpc::ByteBuffer Serialize(const Msg& m) {
    grpc::ByteBuffer bb;
    bool own = false;
    grpc::SerializationTraits<Msg>::Serialize(m, &bb, &own);
    return bb;
  }

  GenerationService* const service_;
  grpc::CallbackServerContext* const ctx_;
  const bool stream_;  // GenerateStream; else Generate
  grpc::ByteBuffer request_;
  std::mutex mu_;  // guards what follows; reactions, the waker and the engine thread all come here
  CallOutcome o_;
  std::vector<SequenceEvents> events_;  // reused by every Take
  bool writing_ = false;       // a write is in flight (one at a time)
  bool write_failed_ = false;  // the client went away
  bool settled_ = false;       // every sample finished and the final status is known
  bool ended_ = false;         // Finish was called
  std::deque<grpc::ByteBuffer> queue_;
  grpc::ByteBuffer out_;  // the message being written
};

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* GenerationService::NewCallReactor(grpc::CallbackServerContext* ctx,
                                                                                                bool stream) {
  return new CallReactor(this, ctx, stream);
}

}  // namespace tinygpt
