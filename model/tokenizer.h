// Tokenizers: text ↔ token ids. A checkpoint carries its tokenizer under the
// safetensors metadata key `tinygpt.tokenizer`, so one file serves text; a
// checkpoint without one (e.g. the counting task) takes and gives token ids
// only. Two kinds exist: "bytes" (id = byte value, vocab 256) and
// "sentencepiece" (a serialized SentencePiece model: BPE or unigram, byte
// fallback, e.g. one `tinygpt train --tokenizer-vocab N` trained or a
// Llama-style tokenizer.model).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/utf8.h"

namespace tinygpt {

inline constexpr const char* kTokenizerMetadataKey = "tinygpt.tokenizer";

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string type() const = 0;  // "bytes" | "sentencepiece"
  virtual int vocab_size() const = 0;
  virtual int eos_id() const { return -1; }  // -1: none
  // Text → ids. No BOS/EOS is added (training packs text the same way).
  virtual absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text) const = 0;
  // The bytes `id` adds when it continues a text (SentencePiece's "▁" is a
  // space, a byte-fallback piece its byte); not valid UTF-8 on its own in
  // general. Empty for ids outside the vocabulary and for control tokens.
  virtual const std::string& TokenBytes(int32_t id) const = 0;
  // The whole ids as one text, exactly as the tokenizer's own library decodes
  // it (SentencePiece drops a leading space at the start of a text).
  virtual std::string Decode(const std::vector<int32_t>& ids) const = 0;
  // The JSON stored under kTokenizerMetadataKey.
  virtual std::string ToMetadata() const = 0;
};

std::unique_ptr<Tokenizer> MakeByteTokenizer();
// From a serialized SentencePiece ModelProto (the bytes of a .model file).
absl::StatusOr<std::unique_ptr<Tokenizer>> SentencePieceFromSerialized(const std::string& proto);
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceFile(const std::string& path);
// Trains a SentencePiece BPE model (byte fallback on, text kept verbatim) on
// the lines of `text`.
absl::StatusOr<std::unique_ptr<Tokenizer>> TrainSentencePiece(absl::string_view text, int vocab_size, int threads);
// Parses the metadata form; a corrupt or unknown tokenizer is an error.
absl::StatusOr<std::unique_ptr<Tokenizer>> TokenizerFromMetadata(const std::string& json);

// Turns generated ids into text as they come. Each token's bytes pass through
// a UTF-8 stream decoder, so a character split over several tokens is held
// back until the token that completes it and ill-formed bytes become U+FFFD:
// the pieces always concatenate to DecodeContinuation(all ids).
class Detokenizer {
 public:
  explicit Detokenizer(const Tokenizer* tokenizer) : tok_(tokenizer) {}
  // The text completed by `id` (often empty for a partial character).
  std::string Next(int32_t id) {
    std::string out;
    utf8_.Push(tok_->TokenBytes(id), &out);
    return out;
  }
  // Ends the output: bytes of an unfinished character become U+FFFD.
  std::string Finish() {
    std::string out;
    utf8_.Finish(&out);
    return out;
  }

 private:
  const Tokenizer* tok_;
  Utf8Stream utf8_;
};

// The text of generated ids that continue a prompt: their bytes in order,
// decoded as UTF-8 with U+FFFD for ill-formed parts. (Unlike Decode, a
// leading "▁" stays a space: the output continues the prompt's text.)
std::string DecodeContinuation(const Tokenizer& tok, const std::vector<int32_t>& ids);

}  // namespace tinygpt
