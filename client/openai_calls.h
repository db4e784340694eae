// The calls `tinygpt-client bench --api openai` drives: POST /v1/completions
// over HTTP/1.1 (Boost.Beast) on one io thread, on keep-alive connections
// reused from a pool, so the load generator costs little beside the server
// it measures (as the gRPC calls of client/bench_calls.h do). A stream is
// timed event by event as its Server-Sent Events arrive.
#pragma once
#include <memory>
#include <string>

#include "client/bench_calls.h"

namespace tinygpt::client {

class OpenAiCalls {
 public:
  // host and port of the HTTP API; `auth_token` (may be empty) goes out as
  // "Authorization: Bearer <token>"; every call ends within deadline_ms.
  OpenAiCalls(std::string host, std::string port, std::string auth_token, int deadline_ms);
  ~OpenAiCalls();  // waits for nothing: calls still running are abandoned

  // A blocking GET (for /v1/models before the run): the body, or the error.
  grpc::Status Get(const std::string& path, std::string* body);
  // Starts a completion with this JSON body (any thread). `done` runs once,
  // on the io thread. Stream bodies should ask for return_token_ids, so each
  // event's tokens can be counted.
  void Start(std::string body, bool stream, CallDone done);

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace tinygpt::client
