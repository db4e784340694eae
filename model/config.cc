#include "model/config.h"

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace tinygpt {

absl::Status ValidateConfig(const ModelConfig& c) {
  struct Field {
    const char* name;
    long value, max;
  };
  // n_heads and n_kv_heads divide d_model, so its limit bounds them too.
  for (const Field& f : {Field{"vocab_size", c.vocab_size, ConfigLimits::kMaxVocabSize},
                         Field{"d_model", c.d_model, ConfigLimits::kMaxDModel},
                         Field{"n_layers", c.n_layers, ConfigLimits::kMaxLayers},
                         Field{"n_heads", c.n_heads, ConfigLimits::kMaxDModel},
                         Field{"n_kv_heads", c.n_kv_heads, ConfigLimits::kMaxDModel},
                         Field{"ffn_hidden", c.ffn_hidden, ConfigLimits::kMaxFfnHidden},
                         Field{"max_seq_len", c.max_seq_len, ConfigLimits::kMaxSeqLen}}) {
    if (f.value <= 0) return absl::InvalidArgumentError(absl::StrCat("config field ", f.name, " must be > 0, got ", f.value));
    if (f.value > f.max)
      return absl::InvalidArgumentError(absl::StrCat("config field ", f.name, " is ", f.value, ", above the limit of ", f.max));
  }
  if (c.d_model % c.n_heads != 0)
    return absl::InvalidArgumentError(absl::StrCat("config: d_model ", c.d_model, " is not divisible by n_heads ", c.n_heads));
  if (c.n_heads % c.n_kv_heads != 0)
    return absl::InvalidArgumentError(absl::StrCat("config: n_heads ", c.n_heads, " is not divisible by n_kv_heads ", c.n_kv_heads));
  if (!(c.norm_eps > 0.f && c.norm_eps < 1.f))
    return absl::InvalidArgumentError(absl::StrCat("config field norm_eps must be in (0, 1), got ", c.norm_eps));
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> PresetConfig(const std::string& name) {
  ModelConfig c;
  if (name == "seed") return c;  // the defaults are the tutorial's TinyGPT
  if (name == "bench-125m") {
    c.vocab_size = 32000; c.d_model = 768; c.n_layers = 12; c.n_heads = 12; c.n_kv_heads = 4;
    c.ffn_hidden = 2048; c.max_seq_len = 2048;
    return c;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown preset '", name, "' (known: seed, bench-125m)"));
}

std::string ConfigToJson(const ModelConfig& c) {
  nlohmann::json j = {
      {"vocab_size", c.vocab_size}, {"d_model", c.d_model}, {"n_layers", c.n_layers},
      {"n_heads", c.n_heads}, {"n_kv_heads", c.n_kv_heads}, {"ffn_hidden", c.ffn_hidden},
      {"max_seq_len", c.max_seq_len},
      {"pos_encoding", c.alibi() ? "alibi" : "learned"}, {"norm_eps", c.norm_eps}};
  return j.dump();
}

absl::StatusOr<ModelConfig> ConfigFromJson(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError("config: tinygpt.config is not a JSON object");
  ModelConfig c;
  auto get_int = [&](const char* key, int& out) -> absl::Status {
    auto it = j.find(key);
    if (it == j.end()) return absl::InvalidArgumentError(absl::StrCat("config: missing field ", key));
    if (!it->is_number_integer()) return absl::InvalidArgumentError(absl::StrCat("config: field ", key, " must be an integer"));
    // Range-checked before narrowing: get<int>() would wrap 2^32 + 64 to 64.
    const bool negative = it->is_number_unsigned() ? false : it->get<int64_t>() < 0;
    if (negative || it->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int>::max()))
      return absl::InvalidArgumentError(absl::StrCat("config field ", key, " is ", it->dump(), ", outside [1, 2^31)"));
    out = it->get<int>();
    return absl::OkStatus();
  };
  for (auto [key, dst] : {std::pair<const char*, int*>{"vocab_size", &c.vocab_size}, {"d_model", &c.d_model},
                          {"n_layers", &c.n_layers}, {"n_heads", &c.n_heads}, {"n_kv_heads", &c.n_kv_heads},
                          {"ffn_hidden", &c.ffn_hidden}, {"max_seq_len", &c.max_seq_len}}) {
    if (auto s = get_int(key, *dst); !s.ok()) return s;
  }
  auto pe = j.find("pos_encoding");
  if (pe == j.end() || !pe->is_string()) return absl::InvalidArgumentError("config: field pos_encoding must be \"learned\" or \"alibi\"");
  if (*pe == "learned") c.pos_encoding = PosEncoding::kLearned;
  else if (*pe == "alibi") c.pos_encoding = PosEncoding::kAlibi;
  else return absl::InvalidArgumentError(absl::StrCat("config: field pos_encoding must be \"learned\" or \"alibi\", got ", pe->dump()));
  auto eps = j.find("norm_eps");
  if (eps == j.end() || !eps->is_number()) return absl::InvalidArgumentError("config: field norm_eps must be a number");
  const double eps_value = eps->get<double>();  // range-checked as a double: a float cast of 1e300 is undefined
  if (!(eps_value > 0.0 && eps_value < 1.0))
    return absl::InvalidArgumentError(absl::StrCat("config field norm_eps must be in (0, 1), got ", eps->dump()));
  c.norm_eps = static_cast<float>(eps_value);
  if (auto s = ValidateConfig(c); !s.ok()) return s;
  return c;
}

}  // namespace tinygpt
