// One POST /v1/completions in flight: its prompts' engine requests (through
// GenerationService, so both APIs validate, count and log alike), and the
// response, whole or as Server-Sent Events. Like the gRPC reactor
// (server/call_reactor.cc), the engine's channels call it from a waker thread;
// it builds the JSON there and starts a write, and tokens that come while a
// write is in flight go out together in the next one, so a slow reader gets
// fewer, larger writes and never holds the scheduler. A client that goes away
// cancels every sample (their KV blocks come back at the next step).
#pragma once
#include <atomic>
#include <memory>

#include "model/tokenizer.h"
#include "server/http/http_server.h"
#include "server/http/openai_request.h"
#include "server/http/openai_response.h"
#include "server/service.h"

namespace tinygpt::http {

struct CompletionContext {
  GenerationService* service;
  Engine* engine;
  const Tokenizer* tokenizer;  // null: token ids only
  std::atomic<int>* in_flight;  // calls not yet ended, for draining
};

// Submits the request's prompts and answers `x` once they finish (or as they
// go, for a stream). A prompt refused by the engine gets its error response
// at once (the others submitted before it are cancelled).
void StartCompletion(const CompletionContext& ctx, std::shared_ptr<Exchange> x, CompletionRequest req, CompletionMeta meta);

}  // namespace tinygpt::http
