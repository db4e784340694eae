#include "server/http/openai_response.h"

#include <algorithm>
#include <cctype>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/utf8.h"

namespace tinygpt::http {

using nlohmann::json;

namespace {

// Unicode characters in valid UTF-8 text (text_offset counts characters, as
// Python's len() does).
long Characters(const std::string& s) {
  return std::count_if(s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; });
}

// JSON has no -inf; OpenAI and vLLM send -9999 for a token of probability 0.
double Finite(float lp) { return std::max(static_cast<double>(lp), -9999.0); }

json NullOr(const std::string& s) { return s.empty() ? json(nullptr) : json(s); }

// The field an engine message names ("max_new_tokens: ..."), under its
// OpenAI name.
std::string ParamOf(const std::string& message) {
  const size_t colon = message.find(':');
  if (colon == std::string::npos || colon == 0) return "";
  const std::string field = message.substr(0, colon);
  for (char c : field)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '[' || c == ']')) return "";
  if (field == "max_new_tokens") return "max_tokens";
  if (field == "top_logprobs" || field == "prompt_logprobs") return "logprobs";
  if (field == "text" || field == "token_ids" || field.rfind("prompt", 0) == 0) return field.rfind("prompt[", 0) == 0 ? field : "prompt";
  if (field == "request" || field == "body") return "";
  return field;
}

}  // namespace

Response ErrorResponse(int status, const std::string& message, const std::string& type, const std::string& param,
                       const std::string& code) {
  Response r;
  r.status = status;
  r.body = Dump({{"error", {{"message", message}, {"type", type}, {"param", NullOr(param)}, {"code", NullOr(code)}}}});
  return r;
}

Response ErrorFromStatus(const grpc::Status& status) {
  // The engine's messages name the gRPC fields; the HTTP caller sent max_tokens.
  const std::string message = absl::StrReplaceAll(status.error_message(), {{"max_new_tokens", "max_tokens"}});
  switch (status.error_code()) {
    case grpc::INVALID_ARGUMENT: {
      const std::string param = ParamOf(status.error_message());
      return ErrorResponse(400, message, "invalid_request_error", param, "invalid_value");
    }
    case grpc::UNAUTHENTICATED: return ErrorResponse(401, message, "invalid_request_error", "", "invalid_api_key");
    case grpc::NOT_FOUND: return ErrorResponse(404, message, "invalid_request_error", "", "not_found");
    case grpc::RESOURCE_EXHAUSTED: return ErrorResponse(429, message, "rate_limit_error", "", "queue_full");
    case grpc::UNAVAILABLE: return ErrorResponse(503, message, "server_error", "", "unavailable");
    default: return ErrorResponse(500, message, "server_error");
  }
}

std::string TokenString(const Tokenizer* tokenizer, int32_t id) {
  if (!tokenizer) return absl::StrCat("token_id:", id);
  return SanitizeUtf8(tokenizer->TokenBytes(id));
}

json EmptyLogprobs() {
  return {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()}, {"text_offset", json::array()}};
}

void AppendLogprobs(const Tokenizer* tokenizer, const std::vector<int32_t>& tokens, const std::vector<TokenLogprobs>& lps,
                    bool first_null, int top, long* offset, json* out) {
  if (out->is_null()) *out = EmptyLogprobs();
  json& toks = (*out)["tokens"];
  json& token_lps = (*out)["token_logprobs"];
  json& tops = (*out)["top_logprobs"];
  json& offsets = (*out)["text_offset"];
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string text = TokenString(tokenizer, tokens[i]);
    toks.push_back(text);
    offsets.push_back(*offset);
    *offset += Characters(text);
    const long j = static_cast<long>(i) - (first_null ? 1 : 0);
    if (j < 0 || j >= static_cast<long>(lps.size())) {
      token_lps.push_back(nullptr);
      tops.push_back(nullptr);
      continue;
    }
    const TokenLogprobs& lp = lps[j];
    token_lps.push_back(Finite(lp.logprob));
    // The N most likely, then the chosen token if it is not among them. Two
    // tokens with the same text keep the first (the more likely).
    json t = json::object();
    for (int k = 0; k < top && k < static_cast<int>(lp.top.size()); ++k)
      t.emplace(TokenString(tokenizer, lp.top[k].first), Finite(lp.top[k].second));
    t.emplace(text, Finite(lp.logprob));
    tops.push_back(std::move(t));
  }
}

json FinishReasonJson(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    default: return nullptr;
  }
}

json ChoiceJson(int index, std::string text, json logprobs, json finish_reason) {
  return {{"index", index}, {"text", std::move(text)}, {"logprobs", std::move(logprobs)}, {"finish_reason", std::move(finish_reason)}};
}

json UsageJson(long prompt_tokens, long completion_tokens) {
  return {{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion_tokens}, {"total_tokens", prompt_tokens + completion_tokens}};
}

json CompletionJson(const CompletionMeta& m, json choices) {
  return {{"id", m.id}, {"object", "text_completion"}, {"created", m.created}, {"model", m.model}, {"choices", std::move(choices)}};
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string SseEvent(const json& j) { return absl::StrCat("data: ", Dump(j), "\n\n"); }

ChunkWriter::ChunkWriter(const CompletionMeta& m, bool include_usage) {
  json envelope = CompletionJson(m, json::array());
  envelope.erase("choices");
  if (include_usage) envelope["usage"] = nullptr;  // as OpenAI: null on every chunk but the last
  rest_ = Dump(envelope).substr(1);  // a non-empty object: "{...}"
}

std::string ChunkWriter::Event(const json& choice) const { return absl::StrCat("data: {\"choices\":[", Dump(choice), "],", rest_, "\n\n"); }

json ModelJson(const std::string& id, long created, int max_model_len) {
  return {{"id", id}, {"object", "model"}, {"created", created}, {"owned_by", "tinygpt"}, {"root", id}, {"max_model_len", max_model_len}};
}

}  // namespace tinygpt::http
