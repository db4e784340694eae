// The interface of libtinygpt_sentencepiece.so, a shared module that wraps the
// SentencePiece library. Debian's libsentencepiece carries its own copy of
// protobuf-lite (3.14) with exported symbols; linked into a process that also
// loads libprotobuf (gRPC's), the two copies interpose and the process crashes
// while starting. So the wrapper is opened with dlopen(RTLD_LOCAL |
// RTLD_DEEPBIND) only when a tokenizer is needed, and talks through the
// virtual interface below (no symbol lookups across the boundary but one
// factory). SentencePiece's header also declares its own absl::string_view,
// which clashes with Abseil's, another reason to keep it out of our headers.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace tinygpt::spm {

class Model {
 public:
  virtual ~Model() = default;
  virtual int vocab_size() const = 0;
  virtual int eos_id() const = 0;  // -1 when the model has none
  virtual bool Encode(const std::string& text, std::vector<int32_t>* ids, std::string* error) const = 0;
  virtual std::string Decode(const std::vector<int32_t>& ids) const = 0;  // SentencePiece's own decoding
  // What id stands for inside a text: the piece with U+2581 as a space, a
  // byte-fallback piece as its byte, the unknown piece as SentencePiece's
  // unk_surface, control and unused pieces as nothing.
  virtual std::string TokenBytes(int32_t id) const = 0;
  virtual std::string Serialized() const = 0;
};

struct Api {
  int version;  // kApiVersion of the module's build
  // Parses a serialized ModelProto (the bytes of a .model file); null and
  // *error set when it is not one.
  Model* (*from_serialized)(const std::string& proto, std::string* error);
  // Trains a BPE model with byte fallback on the sentences (lines of the
  // corpus). The normalizer is the identity and whitespace is kept, so
  // Decode(Encode(text)) == text for every UTF-8 text. Returns the serialized
  // model, or an empty string and *error.
  std::string (*train_bpe)(const std::vector<std::string>& sentences, int vocab_size, int threads, std::string* error);
};

inline constexpr int kApiVersion = 1;
inline constexpr const char* kModuleName = "libtinygpt_sentencepiece.so";
inline constexpr const char* kApiSymbol = "tinygpt_sentencepiece_api";
using ApiFn = const Api* (*)();

}  // namespace tinygpt::spm
