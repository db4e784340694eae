// Byte-level tokenizer: token id = byte value. Models trained with --data use
// vocab_size 256; ids ≥ 256 (or any id a smaller vocabulary can hold) decode
// through their low byte only when printable text is asked for.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace tinygpt {

inline std::vector<int32_t> EncodeBytes(const std::string& text) {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (unsigned char c : text) ids.push_back(c);
  return ids;
}

inline std::string DecodeBytes(const std::vector<int32_t>& ids) {
  std::string s;
  s.reserve(ids.size());
  for (int32_t id : ids) s.push_back(static_cast<char>(id & 0xff));
  return s;
}

}  // namespace tinygpt
