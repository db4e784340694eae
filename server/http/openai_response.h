// The JSON that the OpenAI front end sends: completions (whole and as
// Server-Sent Event chunks), the legacy logprobs object, the model list and
// error bodies, all built with nlohmann-json.
#pragma once
#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/logits_processing.h"
#include "model/tokenizer.h"
#include "server/http/http_server.h"
#include "server/sequence.h"

namespace tinygpt::http {

// {"error": {"message", "type", "param", "code"}} with its HTTP status;
// empty param or code are null.
Response ErrorResponse(int status, const std::string& message, const std::string& type, const std::string& param = "",
                       const std::string& code = "");
// An engine or service status as OpenAI's error: INVALID_ARGUMENT 400 (the
// field its message starts with, under its OpenAI name, as `param`),
// UNAUTHENTICATED 401, NOT_FOUND 404, RESOURCE_EXHAUSTED 429 (queue full),
// UNAVAILABLE 503 (draining), anything else 500.
Response ErrorFromStatus(const grpc::Status& status);

// A token as the legacy logprobs list it: its text (U+FFFD for bytes that are
// not a whole character), or "token_id:N" for a model without a tokenizer
// (vLLM's --return-tokens-as-token-ids form).
std::string TokenString(const Tokenizer* tokenizer, int32_t id);

// Appends tokens to a legacy logprobs object {tokens, token_logprobs,
// top_logprobs, text_offset}. `lps[i]` belongs to tokens[i + first_null]:
// with first_null (an echoed prompt) the first token has no logprob (null).
// top_logprobs hold the `top` most likely tokens and the chosen one.
// *offset (characters) runs on across calls for one choice.
void AppendLogprobs(const Tokenizer* tokenizer, const std::vector<int32_t>& tokens, const std::vector<TokenLogprobs>& lps,
                    bool first_null, int top, long* offset, nlohmann::json* out);
nlohmann::json EmptyLogprobs();

// "stop" or "length"; null while a choice goes on (or was cut off).
nlohmann::json FinishReasonJson(FinishReason reason);

struct CompletionMeta {
  std::string id;  // "cmpl-..."
  long created = 0;  // Unix seconds
  std::string model;
};

nlohmann::json ChoiceJson(int index, std::string text, nlohmann::json logprobs, nlohmann::json finish_reason);
nlohmann::json UsageJson(long prompt_tokens, long completion_tokens);
// A text_completion object (a whole response, or one stream chunk).
nlohmann::json CompletionJson(const CompletionMeta& m, nlohmann::json choices);
// One Server-Sent Event: "data: {json}\n\n".
std::string SseEvent(const nlohmann::json& j);

// The stream chunks of one completion, which differ only in their choice:
// the other fields are dumped once, and each chunk is that dump with the
// choice's dump put in (every byte of it nlohmann's), which halves the JSON
// work per token of a stream.
class ChunkWriter {
 public:
  // include_usage: every chunk carries "usage": null (the last one, made by
  // CompletionJson, has the usage).
  ChunkWriter(const CompletionMeta& m, bool include_usage);
  // "data: {...a text_completion chunk with this one choice...}\n\n"
  std::string Event(const nlohmann::json& choice) const;

 private:
  std::string rest_;  // the envelope's dump without its opening brace
};
inline constexpr const char* kSseDone = "data: [DONE]\n\n";
// JSON text (invalid UTF-8, which should never reach here, replaced).
std::string Dump(const nlohmann::json& j);

nlohmann::json ModelJson(const std::string& id, long created, int max_model_len);

}  // namespace tinygpt::http
