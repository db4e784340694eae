// The calls `tinygpt-client bench` drives, over gRPC's callback API: no thread
// per call, so that the load generator's own cost (a thread switch per
// streamed message with blocking reads) stays small beside the server's it
// measures. Each call reports once, from a gRPC thread, and deletes itself.
#pragma once
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <vector>

#include "tinygpt.grpc.pb.h"

namespace tinygpt::client {

// What one bench call saw.
struct CallResult {
  grpc::Status status;
  long tokens = 0;
  double ttft_s = -1;              // first tokens, from the client's side (unary: the server's timing)
  std::vector<double> itl_s;       // per token, between messages (unary: the server's average)
  double e2e_s = 0;
};
using CallDone = std::function<void(const CallResult&)>;
using PrepareContext = std::function<void(grpc::ClientContext*)>;  // deadline, auth

// A GenerateStream call that times each message as it arrives.
class StreamCall final : public grpc::ClientReadReactor<v1::GenerateStreamResponse> {
 public:
  static void Start(v1::Generation::Stub* stub, const v1::GenerateRequest& req, const PrepareContext& prepare, CallDone done) {
    auto* call = new StreamCall(std::move(done));
    prepare(&call->ctx_);
    stub->async()->GenerateStream(&call->ctx_, &req, call);
    call->StartRead(&call->msg_);
    call->StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The stream ended. Before its last message, that is the server's
      // error (already received; cancelling now changes nothing) or a
      // response that did not parse, after which the call could wait for a
      // server that never ends it: cancel.
      if (!saw_last_) {
        cancelled_ = true;
        ctx_.TryCancel();
      }
      return;
    }
    saw_last_ = msg_.finish_reason() != v1::FINISH_REASON_UNSPECIFIED;
    if (msg_.token_ids_size() > 0) {
      const auto now = Clock::now();
      if (r_.ttft_s < 0) r_.ttft_s = Seconds(now - t0_);
      else r_.itl_s.push_back(Seconds(now - prev_) / msg_.token_ids_size());
      prev_ = now;
      r_.tokens += msg_.token_ids_size();
    }
    StartRead(&msg_);
  }

  void OnDone(const grpc::Status& s) override {
    r_.status = s;
    if (!saw_last_ && s.ok()) r_.status = grpc::Status(grpc::StatusCode::INTERNAL, "the stream ended without its last message");
    else if (!saw_last_ && cancelled_ && s.error_code() == grpc::StatusCode::CANCELLED)
      r_.status = grpc::Status(grpc::StatusCode::INTERNAL, "the stream broke off before its last message (a response that did not parse?)");
    r_.e2e_s = Seconds(Clock::now() - t0_);
    // Gone before the report: the last report lets Bench() return.
    CallDone done = std::move(done_);
    const CallResult r = std::move(r_);
    delete this;
    done(r);
  }

 private:
  using Clock = std::chrono::steady_clock;
  static double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
  explicit StreamCall(CallDone done) : done_(std::move(done)) {}

  CallDone done_;
  grpc::ClientContext ctx_;
  v1::GenerateStreamResponse msg_;
  bool saw_last_ = false;
  bool cancelled_ = false;  // by OnReadDone, after the stream ended early
  const Clock::time_point t0_ = Clock::now();
  Clock::time_point prev_ = t0_;
  CallResult r_;
};

// A unary Generate call; its TTFT and inter-token times are the server's.
class UnaryCall {
 public:
  static void Start(v1::Generation::Stub* stub, const v1::GenerateRequest& req, const PrepareContext& prepare, CallDone done) {
    auto* call = new UnaryCall(std::move(done));
    prepare(&call->ctx_);
    stub->async()->Generate(&call->ctx_, &req, &call->resp_, [call](grpc::Status s) { call->OnDone(s); });
  }

 private:
  using Clock = std::chrono::steady_clock;
  explicit UnaryCall(CallDone done) : done_(std::move(done)) {}
  void OnDone(const grpc::Status& s) {
    CallResult r;
    r.status = s;
    r.e2e_s = std::chrono::duration<double>(Clock::now() - t0_).count();
    const auto& t = resp_.timings();
    const int n = resp_.token_ids_size();
    r.tokens = n;
    r.ttft_s = t.time_to_first_token_seconds();
    if (n > 1) r.itl_s.assign(n - 1, (t.total_seconds() - t.time_to_first_token_seconds()) / (n - 1));
    CallDone done = std::move(done_);
    delete this;  // before the report, which may let Bench() return
    done(r);
  }

  CallDone done_;
  grpc::ClientContext ctx_;
  v1::GenerateResponse resp_;
  const Clock::time_point t0_ = Clock::now();
};

}  // namespace tinygpt::client
