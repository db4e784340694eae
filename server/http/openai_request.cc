#include "server/http/openai_request.h"

#include <climits>
#include <cmath>
#include <nlohmann/json.hpp>
#include <random>

#include "absl/strings/str_cat.h"

namespace tinygpt::http {
namespace {

using nlohmann::json;

absl::Status Bad(const std::string& field, const std::string& what) { return absl::InvalidArgumentError(absl::StrCat(field, ": ", what)); }

// The field, or null when absent (absent and null mean the same in OpenAI's API).
const json& Field(const json& body, const char* name) {
  static const json kNull;
  auto it = body.find(name);
  return it == body.end() ? kNull : *it;
}

absl::Status GetBool(const json& body, const char* name, bool* out) {
  const json& v = Field(body, name);
  if (v.is_null()) return absl::OkStatus();
  if (!v.is_boolean()) return Bad(name, "must be true or false");
  *out = v.get<bool>();
  return absl::OkStatus();
}

absl::Status GetInt(const json& body, const char* name, long lo, long hi, long* out) {
  const json& v = Field(body, name);
  if (v.is_null()) return absl::OkStatus();
  // Booleans are not numbers here; an integer too large for int64 is.
  if (!v.is_number_integer()) return Bad(name, absl::StrCat("must be an integer in [", lo, ", ", hi, "]"));
  if (v.is_number_unsigned() ? v.get<uint64_t>() > static_cast<uint64_t>(hi) : (v.get<int64_t>() < lo || v.get<int64_t>() > hi))
    return Bad(name, absl::StrCat("must be an integer in [", lo, ", ", hi, "]"));
  *out = v.get<long>();
  return absl::OkStatus();
}

// A finite number (JSON has no NaN; 1e999 parses as infinity).
absl::Status GetNumber(const json& body, const char* name, double lo, double hi, bool lo_open, double* out) {
  const json& v = Field(body, name);
  if (v.is_null()) return absl::OkStatus();
  const std::string range = absl::StrCat(lo_open ? "(" : "[", lo, ", ", hi, "]");
  if (!v.is_number()) return Bad(name, "must be a number in " + range);
  const double d = v.get<double>();
  if (!std::isfinite(d) || d > hi || d < lo || (lo_open && d == lo)) return Bad(name, "must be a number in " + range);
  *out = d;
  return absl::OkStatus();
}

absl::Status GetTokenIds(const json& list, const std::string& field, v1::TokenIds* out) {
  for (size_t i = 0; i < list.size(); ++i) {
    const json& t = list[i];
    bool ok = false;
    if (t.is_number_unsigned()) ok = t.get<uint64_t>() <= INT_MAX;
    else if (t.is_number_integer()) ok = t.get<int64_t>() >= INT_MIN && t.get<int64_t>() <= INT_MAX;
    if (!ok) return Bad(absl::StrCat(field, "[", i, "]"), "a token id must be an integer");
    out->add_ids(static_cast<int32_t>(t.get<int64_t>()));
  }
  return absl::OkStatus();
}

// `prompt`: a string, a list of strings, a list of token ids, or a list of
// such lists; one engine request each.
absl::Status GetPrompts(const json& body, std::vector<v1::GenerateRequest>* out) {
  const json& p = Field(body, "prompt");
  const char* kForms = "must be a string, a list of strings, a list of token ids or a list of lists of token ids";
  if (p.is_string()) {
    out->emplace_back().set_text(p.get<std::string>());
    return absl::OkStatus();
  }
  if (!p.is_array() || p.empty()) return Bad("prompt", p.is_array() ? "must not be an empty list" : kForms);
  if (p[0].is_number()) {
    auto& r = out->emplace_back();
    return GetTokenIds(p, "prompt", r.mutable_token_ids());
  }
  for (size_t i = 0; i < p.size(); ++i) {
    auto& r = out->emplace_back();
    if (p[i].is_string()) {
      if (!p[0].is_string()) return Bad("prompt", absl::StrCat(kForms, ", not a mix"));
      r.set_text(p[i].get<std::string>());
    } else if (p[i].is_array() && !p[0].is_string()) {
      if (auto s = GetTokenIds(p[i], absl::StrCat("prompt[", i, "]"), r.mutable_token_ids()); !s.ok()) return s;
    } else {
      return Bad("prompt", absl::StrCat(kForms, p[0].is_string() || p[0].is_array() ? ", not a mix" : ""));
    }
  }
  return absl::OkStatus();
}

absl::Status GetStops(const json& body, std::vector<std::string>* out) {
  const json& v = Field(body, "stop");
  if (v.is_null()) return absl::OkStatus();
  if (v.is_string()) {
    out->push_back(v.get<std::string>());
    return absl::OkStatus();
  }
  if (!v.is_array()) return Bad("stop", "must be a string or a list of strings");
  for (const json& s : v) {
    if (!s.is_string()) return Bad("stop", "must be a string or a list of strings");
    out->push_back(s.get<std::string>());
  }
  return absl::OkStatus();
}

// A seed for a request that gives none: OpenAI samples differently each time.
uint64_t FreshSeed() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return rng();
}

}  // namespace

absl::StatusOr<CompletionRequest> ParseCompletionRequest(std::string_view text) {
  // nlohmann checks UTF-8 while parsing; strings in `body` are valid.
  json body = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return absl::InvalidArgumentError("body: not valid JSON");
  if (!body.is_object()) return absl::InvalidArgumentError("body: must be a JSON object");
  CompletionRequest c;
  const json& model = Field(body, "model");
  if (!model.is_null() && !model.is_string()) return Bad("model", "must be a string");
  if (model.is_string()) c.model = model.get<std::string>();
  if (Field(body, "prompt").is_null()) return Bad("prompt", "is required");
  if (auto s = GetPrompts(body, &c.prompts); !s.ok()) return s;

  long max_tokens = 16, n = 1, logprobs = -1, top_k = 0, best_of = -1;
  double temperature = 1, top_p = 1, presence = 0, frequency = 0, repetition = 1;
  bool ignore_eos = false;
  std::vector<std::string> stops;
  if (auto s = GetInt(body, "max_tokens", 0, INT_MAX, &max_tokens); !s.ok()) return s;
  if (auto s = GetInt(body, "n", 1, INT_MAX, &n); !s.ok()) return s;
  if (auto s = GetInt(body, "best_of", 1, INT_MAX, &best_of); !s.ok()) return s;
  if (best_of >= 0 && best_of != n) return Bad("best_of", "only best_of = n is supported");
  if (auto s = GetInt(body, "logprobs", 0, kMaxLegacyLogprobs, &logprobs); !s.ok()) return s;
  // vLLM's top_k: -1 or 0 is off.
  if (auto s = GetInt(body, "top_k", -1, INT_MAX, &top_k); !s.ok()) return s;
  if (auto s = GetNumber(body, "temperature", 0, 2, false, &temperature); !s.ok()) return s;
  if (auto s = GetNumber(body, "top_p", 0, 1, true, &top_p); !s.ok()) return s;
  if (auto s = GetNumber(body, "presence_penalty", -2, 2, false, &presence); !s.ok()) return s;
  if (auto s = GetNumber(body, "frequency_penalty", -2, 2, false, &frequency); !s.ok()) return s;
  if (auto s = GetNumber(body, "repetition_penalty", 0, 1e6, true, &repetition); !s.ok()) return s;
  if (auto s = GetBool(body, "echo", &c.echo); !s.ok()) return s;
  if (auto s = GetBool(body, "stream", &c.stream); !s.ok()) return s;
  if (auto s = GetBool(body, "ignore_eos", &ignore_eos); !s.ok()) return s;
  if (auto s = GetBool(body, "return_token_ids", &c.return_token_ids); !s.ok()) return s;
  if (auto s = GetStops(body, &stops); !s.ok()) return s;
  const json& options = Field(body, "stream_options");
  if (!options.is_null()) {
    if (!options.is_object()) return Bad("stream_options", "must be an object");
    if (!c.stream) return Bad("stream_options", "is only allowed with stream: true");
    if (auto s = GetBool(options, "include_usage", &c.include_usage); !s.ok()) return Bad("stream_options.include_usage", "must be true or false");
  }
  const json& user = Field(body, "user");
  if (!user.is_null() && !user.is_string()) return Bad("user", "must be a string");
  const json& suffix = Field(body, "suffix");
  if (!suffix.is_null() && !(suffix.is_string() && suffix.get<std::string>().empty()))
    return Bad("suffix", "is not supported (the model does no insertion)");
  const json& bias = Field(body, "logit_bias");
  if (!bias.is_null() && !(bias.is_object() && bias.empty())) return Bad("logit_bias", "is not supported");
  uint64_t seed = 0;
  const json& seed_field = Field(body, "seed");
  if (seed_field.is_null()) seed = FreshSeed();
  else if (!seed_field.is_number_integer()) return Bad("seed", "must be an integer");
  else seed = seed_field.is_number_unsigned() ? seed_field.get<uint64_t>() : static_cast<uint64_t>(seed_field.get<int64_t>());

  c.n = static_cast<int>(n);
  c.logprobs = static_cast<int>(logprobs);
  for (auto& r : c.prompts) {
    r.set_max_new_tokens(static_cast<int>(max_tokens));
    r.set_temperature(static_cast<float>(temperature));
    r.set_top_k(top_k < 0 ? 0 : static_cast<int>(top_k));
    r.mutable_top_p()->set_value(static_cast<float>(top_p));
    r.set_seed(seed);
    for (const auto& s : stops) r.add_stop(s);
    r.set_ignore_eos(ignore_eos);
    if (repetition != 1) r.mutable_repetition_penalty()->set_value(static_cast<float>(repetition));
    r.set_presence_penalty(static_cast<float>(presence));
    r.set_frequency_penalty(static_cast<float>(frequency));
    r.set_n(c.n);
    if (c.logprobs >= 0) {
      r.set_logprobs(true);
      r.set_top_logprobs(c.logprobs);
    }
    // Echo with logprobs: the prompt tokens' too. max_tokens 0 runs as a
    // scoring request, which computes them whether or not they are asked for
    // (the response shows them only for echo with logprobs).
    if (c.echo && c.logprobs >= 0) r.mutable_prompt_logprobs()->set_value(c.logprobs);
    else if (max_tokens == 0) r.mutable_prompt_logprobs()->set_value(0);
  }
  return c;
}

}  // namespace tinygpt::http
