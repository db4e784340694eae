#include "model/tokenizer.h"

#include <dlfcn.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/shared_module.h"
#include "model/sentencepiece_model.h"

namespace tinygpt {
namespace {

// The SentencePiece module, opened once (see model/sentencepiece_model.h).
absl::StatusOr<const spm::Api*> SentencePieceApi() {
  static const absl::StatusOr<const spm::Api*> api = []() -> absl::StatusOr<const spm::Api*> {
    std::string error;
    void* handle = OpenSharedModule(spm::kModuleName, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND, &error);
    if (!handle) return absl::UnavailableError(absl::StrCat("cannot load ", spm::kModuleName, ":", error));
    auto fn = reinterpret_cast<spm::ApiFn>(dlsym(handle, spm::kApiSymbol));
    if (!fn) return absl::InternalError(absl::StrCat(spm::kModuleName, " has no symbol ", spm::kApiSymbol));
    const spm::Api* a = fn();
    if (a->version != spm::kApiVersion)
      return absl::InternalError(absl::StrCat(spm::kModuleName, " has API version ", a->version, ", this build needs ",
                                              spm::kApiVersion));
    return a;
  }();
  return api;
}

class ByteTokenizer final : public Tokenizer {
 public:
  ByteTokenizer() {
    for (int b = 0; b < 256; ++b) bytes_[b] = std::string(1, static_cast<char>(b));
  }
  std::string type() const override { return "bytes"; }
  int vocab_size() const override { return 256; }
  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text) const override {
    return std::vector<int32_t>(reinterpret_cast<const unsigned char*>(text.data()),
                                reinterpret_cast<const unsigned char*>(text.data()) + text.size());
  }
  const std::string& TokenBytes(int32_t id) const override { return id >= 0 && id < 256 ? bytes_[id] : empty_; }
  std::string Decode(const std::vector<int32_t>& ids) const override { return DecodeContinuation(*this, ids); }
  std::string ToMetadata() const override { return nlohmann::json{{"type", "bytes"}}.dump(); }

 private:
  std::string bytes_[256];
  std::string empty_;
};

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(std::unique_ptr<spm::Model> m) : model_(std::move(m)) {
    bytes_.resize(model_->vocab_size());
    for (int id = 0; id < model_->vocab_size(); ++id) bytes_[id] = model_->TokenBytes(id);
  }
  std::string type() const override { return "sentencepiece"; }
  int vocab_size() const override { return model_->vocab_size(); }
  int eos_id() const override { return model_->eos_id(); }
  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text) const override {
    std::vector<int32_t> ids;
    std::string error;
    if (!model_->Encode(std::string(text), &ids, &error))
      return absl::InvalidArgumentError(absl::StrCat("tokenizer: cannot encode the text: ", error));
    return ids;
  }
  const std::string& TokenBytes(int32_t id) const override {
    return id >= 0 && id < static_cast<int32_t>(bytes_.size()) ? bytes_[id] : empty_;
  }
  std::string Decode(const std::vector<int32_t>& ids) const override { return model_->Decode(ids); }
  std::string ToMetadata() const override {
    return nlohmann::json{{"type", "sentencepiece"}, {"model", absl::Base64Escape(model_->Serialized())}}.dump();
  }

 private:
  std::unique_ptr<spm::Model> model_;
  std::vector<std::string> bytes_;
  std::string empty_;
};

}  // namespace

std::unique_ptr<Tokenizer> MakeByteTokenizer() { return std::make_unique<ByteTokenizer>(); }

absl::StatusOr<std::unique_ptr<Tokenizer>> SentencePieceFromSerialized(const std::string& proto) {
  auto api = SentencePieceApi();
  if (!api.ok()) return api.status();
  std::string error;
  std::unique_ptr<spm::Model> m((*api)->from_serialized(proto, &error));
  if (!m) return absl::InvalidArgumentError(absl::StrCat("not a SentencePiece model: ", error));
  return std::unique_ptr<Tokenizer>(std::make_unique<SentencePieceTokenizer>(std::move(m)));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open tokenizer ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  auto t = SentencePieceFromSerialized(ss.str());
  if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", t.status().message()));
  return t;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> TrainSentencePiece(absl::string_view text, int vocab_size, int threads) {
  // SentencePiece trains on sentences; a line of the corpus is one.
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) lines.emplace_back(line);
  if (lines.empty()) return absl::InvalidArgumentError("tokenizer: the corpus has no text to train on");
  auto api = SentencePieceApi();
  if (!api.ok()) return api.status();
  std::string error;
  const std::string proto = (*api)->train_bpe(lines, vocab_size, threads, &error);
  if (proto.empty()) return absl::InvalidArgumentError(absl::StrCat("tokenizer training failed: ", error));
  return SentencePieceFromSerialized(proto);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> TokenizerFromMetadata(const std::string& json) {
  auto bad = [](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("metadata ", kTokenizerMetadataKey, ": ", why));
  };
  nlohmann::json j = nlohmann::json::parse(json, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("type") || !j["type"].is_string())
    return bad("not a JSON object with a \"type\"");
  const std::string type = j["type"].get<std::string>();
  if (type == "bytes") return MakeByteTokenizer();
  if (type != "sentencepiece") return bad(absl::StrCat("unknown tokenizer type \"", type, "\" (bytes, sentencepiece)"));
  if (!j.contains("model") || !j["model"].is_string()) return bad("sentencepiece tokenizer without a \"model\"");
  std::string proto;
  if (!absl::Base64Unescape(j["model"].get<std::string>(), &proto)) return bad("the sentencepiece model is not valid base64");
  auto t = SentencePieceFromSerialized(proto);
  if (!t.ok()) return bad(t.status().message());
  return t;
}

std::string DecodeContinuation(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  Detokenizer d(&tok);
  std::string out;
  for (int32_t id : ids) out += d.Next(id);
  return out + d.Finish();
}

}  // namespace tinygpt
