// The OpenAI-compatible HTTP API, as the handler of an http::Server:
// POST /v1/completions (server/http/completion_call.h), GET /v1/models and
// /v1/models/{id}, GET /health, and OpenAI error bodies for everything else
// (POST /v1/chat/completions: the model has no chat template).
#pragma once
#include <atomic>
#include <memory>
#include <string>

#include "server/http/http_server.h"
#include "server/service.h"

namespace tinygpt::http {

struct OpenAiOptions {
  std::string model_name;  // --served-model-name
  std::string auth_token;  // non-empty: /v1/* needs "Authorization: Bearer <token>"
  const Tokenizer* tokenizer = nullptr;
  int max_model_len = 0;
  int vocab_size = 0;
};

class OpenAiApi {
 public:
  OpenAiApi(GenerationService* service, Engine* engine, OpenAiOptions options);
  void Handle(const std::shared_ptr<Exchange>& x);
  Handler handler() {
    return [this](std::shared_ptr<Exchange> x) { Handle(x); };
  }
  // From now on /health says 503 (the engine refuses new requests itself).
  void BeginDrain() { draining_ = true; }
  // Completions not yet ended (for draining).
  int in_flight() const { return in_flight_.load(); }

 private:
  void Completions(const std::shared_ptr<Exchange>& x);
  // Counts and logs a completion refused before it reached the engine.
  void Refuse(const std::shared_ptr<Exchange>& x, const grpc::Status& status, Response response);
  std::string NewId();

  GenerationService* const service_;
  Engine* const engine_;
  const OpenAiOptions opt_;
  const long created_;  // the model's "created": when the server started
  std::atomic<bool> draining_{false};
  std::atomic<int> in_flight_{0};
  std::atomic<long> counter_{0};
  const uint64_t id_salt_;  // ids differ across restarts
};

// The OpenAI error body for the http::Server's own errors (413, 431, 400).
Response OpenAiServerError(int status, const std::string& message);

}  // namespace tinygpt::http
