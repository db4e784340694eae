// The tinygpt.v1.Generation gRPC service: turns RPCs into engine sequences
// and the engine's tokens back into responses.
#pragma once
#include <atomic>
#include <string>

#include "server/call_outcome.h"
#include "server/engine.h"
#include "server/metrics.h"
#include "server/no_message_waiter.h"
#include "tinygpt.grpc.pb.h"

namespace tinygpt {

struct ServiceOptions {
  size_t max_request_bytes = 64 * 1024;
  std::string checkpoint;
  std::string config_json;
  const Tokenizer* tokenizer = nullptr;  // null: token ids only
  // Non-empty: every Generation call must carry `authorization: Bearer <token>`
  // metadata (UNAUTHENTICATED otherwise). Health and reflection stay open.
  std::string auth_token;
  bool log_requests = true;  // one INFO line per finished Generate/GenerateStream call
};

// What became of the requests the server held when it began to drain.
struct DrainCounts {
  int finished = 0;  // ended on their own (any status but the cut-off one)
  int cut_off = 0;   // ended UNAVAILABLE by the drain deadline
  int refused = 0;   // arrived after the drain began (UNAVAILABLE at once)
};

class GenerationService final : public v1::Generation::Service {
 public:
  // Generate and GenerateStream are callback reactors (server/call_reactor.cc)
  // that read their request themselves (server/request_wire.h), so bad and
  // oversized requests are counted too; a call holds no thread while the
  // engine works on it.
  GenerationService(Engine* engine, ServerMetrics* metrics, ServiceOptions opt);

  // Served by a raw callback (see the constructor), which calls ModelInfoFor.
  grpc::Status GetModelInfo(grpc::ServerContext* ctx, const v1::GetModelInfoRequest* req, v1::ModelInfo* info) override;
  // Generate/GenerateStream calls not yet ended (for draining).
  int in_flight() const { return in_flight_.load(); }
  // From now on, finished calls are tallied into drain_counts().
  void BeginDrain() { draining_ = true; }
  DrainCounts drain_counts() const { return {drain_finished_.load(), drain_cut_off_.load(), drain_refused_.load()}; }

  // Also the OpenAI front end's way in (server/http/), so that both APIs
  // validate, count, log and drain alike.
  // Validates and submits the request; o.status says why not.
  CallOutcome Start(const v1::GenerateRequest& req, bool stream);
  // Metrics and the one log line of a finished call.
  void Finish(const CallOutcome& o);

 private:
  class CallReactor;  // server/call_reactor.cc
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* NewCallReactor(grpc::CallbackServerContext* ctx, bool stream);
  // The model, limits and engine state (UNAUTHENTICATED without the token).
  grpc::Status ModelInfoFor(const grpc::ServerContextBase& ctx, v1::ModelInfo* info);
  // UNAUTHENTICATED unless the call carries the bearer token (when one is set).
  grpc::Status CheckAuth(const grpc::ServerContextBase& ctx) const;
  // Counts and logs a call refused before it reached the engine.
  grpc::Status Refuse(grpc::Status status);

  Engine* engine_;
  ServerMetrics* metrics_;
  ServiceOptions opt_;
  std::atomic<int> in_flight_{0};
  std::atomic<bool> draining_{false};
  std::atomic<int> drain_finished_{0}, drain_cut_off_{0}, drain_refused_{0};
  NoMessageWaiter no_message_waiter_;
};

// Maps the request's fields onto an engine request, encoding a text prompt
// with `tokenizer` (INVALID_ARGUMENT without one, or for text that is not
// UTF-8). Values are validated by the engine. The request id is made up when
// empty.
absl::StatusOr<SequenceRequest> ToSequenceRequest(const v1::GenerateRequest& req, size_t max_request_bytes, bool stream,
                                                  const Tokenizer* tokenizer);

}  // namespace tinygpt
