#include "model/config.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace tinygpt {

absl::Status ValidateConfig(const ModelConfig& c) {
  auto positive = [](const char* name, long v) -> absl::Status {
    if (v <= 0) return absl::InvalidArgumentError(absl::StrCat("config field ", name, " must be > 0, got ", v));
    return absl::OkStatus();
  };
  for (auto [name, v] : {std::pair<const char*, long>{"vocab_size", c.vocab_size},
                         {"d_model", c.d_model}, {"n_layers", c.n_layers},
                         {"n_heads", c.n_heads}, {"n_kv_heads", c.n_kv_heads},
                         {"ffn_hidden", c.ffn_hidden}, {"max_seq_len", c.max_seq_len}}) {
    if (auto s = positive(name, v); !s.ok()) return s;
  }
  if (c.d_model % c.n_heads != 0)
    return absl::InvalidArgumentError(absl::StrCat("config: d_model ", c.d_model, " is not divisible by n_heads ", c.n_heads));
  if (c.n_heads % c.n_kv_heads != 0)
    return absl::InvalidArgumentError(absl::StrCat("config: n_heads ", c.n_heads, " is not divisible by n_kv_heads ", c.n_kv_heads));
  if (!(c.norm_eps > 0.f)) return absl::InvalidArgumentError("config field norm_eps must be > 0");
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
  c.norm_eps = eps->get<float>();
  if (auto s = ValidateConfig(c); !s.ok()) return s;
  return c;
}

}  // namespace tinygpt
