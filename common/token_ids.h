// "1,2,3" → {1, 2, 3} for the --prompt-ids style flags.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace tinygpt {

// Appends the comma-separated integers of `text` to `ids`; false on a non-integer.
inline bool ParseTokenIds(const std::string& text, std::vector<int32_t>* ids) {
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int v;
    if (!absl::SimpleAtoi(part, &v)) return false;
    ids->push_back(v);
  }
  return true;
}

}  // namespace tinygpt
