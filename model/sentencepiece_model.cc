// libtinygpt_sentencepiece.so: see sentencepiece_model.h for why this is a
// separate module.
#include "model/sentencepiece_model.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <memory>
#include <unordered_map>

namespace tinygpt::spm {
namespace {

class SentencePieceModel final : public Model {
 public:
  bool Load(const std::string& proto, std::string* error) {
    const auto status = sp_.LoadFromSerializedProto(proto);
    if (!status.ok()) {
      *error = status.ToString();
      return false;
    }
    const int n = sp_.GetPieceSize();
    if (n <= 0) {
      *error = "the model has no pieces";
      return false;
    }
    // The unknown piece decodes to the trainer's unk_surface (" \u2047 " by
    // default), which only decoding it shows (ModelProto's header is private).
    const std::string unk_surface = sp_.unk_id() >= 0 ? sp_.DecodeIds({sp_.unk_id()}) : std::string();
    token_bytes_.resize(n);
    for (int id = 0; id < n; ++id) {
      std::string& out = token_bytes_[id];
      const std::string& piece = sp_.IdToPiece(id);
      if (sp_.IsControl(id) || sp_.IsUnused(id)) continue;
      if (sp_.IsUnknown(id)) {
        out = unk_surface;
      } else if (sp_.IsByte(id)) {  // "<0xAB>"
        out.push_back(static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
      } else {
        for (size_t i = 0; i < piece.size();) {
          if (piece.compare(i, 3, "\xE2\x96\x81") == 0) {  // U+2581, SentencePiece's visible space
            out.push_back(' ');
            i += 3;
          } else {
            out.push_back(piece[i++]);
          }
        }
      }
    }
    return true;
  }

  int vocab_size() const override { return sp_.GetPieceSize(); }
  int eos_id() const override { return sp_.eos_id(); }
  bool Encode(const std::string& text, std::vector<int32_t>* ids, std::string* error) const override {
    std::vector<int> out;
    const auto status = sp_.Encode(text, &out);
    if (!status.ok()) {
      *error = status.ToString();
      return false;
    }
    ids->assign(out.begin(), out.end());
    return true;
  }
  std::string Decode(const std::vector<int32_t>& ids) const override {
    return sp_.DecodeIds(std::vector<int>(ids.begin(), ids.end()));
  }
  std::string TokenBytes(int32_t id) const override {
    return id >= 0 && id < static_cast<int32_t>(token_bytes_.size()) ? token_bytes_[id] : std::string();
  }
  std::string Serialized() const override { return sp_.serialized_model_proto(); }

 private:
  sentencepiece::SentencePieceProcessor sp_;
  std::vector<std::string> token_bytes_;
};

Model* FromSerialized(const std::string& proto, std::string* error) {
  auto m = std::make_unique<SentencePieceModel>();
  if (!m->Load(proto, error)) return nullptr;
  return m.release();
}

class Sentences : public sentencepiece::SentenceIterator {
 public:
  explicit Sentences(const std::vector<std::string>& s) : s_(s) {}
  bool done() const override { return i_ >= s_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return s_[i_]; }
  sentencepiece::util::Status status() const override { return sentencepiece::util::Status(); }

 private:
  const std::vector<std::string>& s_;
  size_t i_ = 0;
};

std::string TrainBpe(const std::vector<std::string>& sentences, int vocab_size, int threads, std::string* error) {
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(vocab_size)},
      {"byte_fallback", "true"},  // any byte sequence stays encodable: no <unk>
      {"character_coverage", "0.9995"},
      {"normalization_rule_name", "identity"},  // text comes back as it went in
      {"remove_extra_whitespaces", "false"},
      {"split_digits", "true"},
      {"max_sentence_length", "16384"},
      {"num_threads", std::to_string(threads > 0 ? threads : 1)},
      {"minloglevel", "1"},  // warnings only: tinygpt prints its own progress
  };
  Sentences it(sentences);
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &it, &model);
  if (!status.ok()) {
    *error = status.ToString();
    return {};
  }
  return model;
}

constexpr Api kApi = {kApiVersion, &FromSerialized, &TrainBpe};

}  // namespace
}  // namespace tinygpt::spm

extern "C" __attribute__((visibility("default"))) const tinygpt::spm::Api* tinygpt_sentencepiece_api() {
  return &tinygpt::spm::kApi;
}
