// The tinygpt.v1.Generation gRPC service: turns RPCs into engine sequences
// and the engine's tokens back into responses.
#pragma once
#include <atomic>
#include <string>

#include "server/engine.h"
#include "server/metrics.h"
#include "tinygpt.grpc.pb.h"

namespace tinygpt {

struct ServiceOptions {
  size_t max_request_bytes = 64 * 1024;
  std::string checkpoint;
  std::string config_json;
  const Tokenizer* tokenizer = nullptr;  // null: token ids only
};

class GenerationService final : public v1::Generation::Service {
 public:
  GenerationService(Engine* engine, ServerMetrics* metrics, ServiceOptions opt)
      : engine_(engine), metrics_(metrics), opt_(std::move(opt)) {}

  grpc::Status Generate(grpc::ServerContext* ctx, const v1::GenerateRequest* req, v1::GenerateResponse* resp) override;
  grpc::Status GenerateStream(grpc::ServerContext* ctx, const v1::GenerateRequest* req,
                              grpc::ServerWriter<v1::GenerateStreamResponse>* writer) override;
  grpc::Status GetModelInfo(grpc::ServerContext* ctx, const v1::GetModelInfoRequest* req, v1::ModelInfo* info) override;
  // Generate/GenerateStream calls not yet returned (for draining).
  int in_flight() const { return in_flight_.load(); }

 private:
  struct Outcome;
  // Validates, submits and waits for the sequence, calling on_output with each
  // batch of new tokens and text (return false to cancel, e.g. a failed
  // stream write).
  template <class OnOutput>
  Outcome Run(grpc::ServerContext* ctx, const v1::GenerateRequest& req, bool stream, OnOutput on_output);
  template <class Msg>
  static void FillSummary(const Outcome& o, Msg* m);
  // Metrics and the one log line of a finished call.
  void Finish(const Outcome& o);

  Engine* engine_;
  ServerMetrics* metrics_;
  ServiceOptions opt_;
  std::atomic<int> in_flight_{0};
};

// Maps the request's fields onto an engine request, encoding a text prompt
// with `tokenizer` (INVALID_ARGUMENT without one, or for text that is not
// UTF-8). Values are validated by the engine. The request id is made up when
// empty.
absl::StatusOr<SequenceRequest> ToSequenceRequest(const v1::GenerateRequest& req, size_t max_request_bytes, bool stream,
                                                  const Tokenizer* tokenizer);

}  // namespace tinygpt
