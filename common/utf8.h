// UTF-8 on the wire: proto3 `string` fields must hold valid UTF-8, so the
// server checks what it receives and turns the bytes of generated tokens into
// text with a streaming decoder. Ill-formed bytes become U+FFFD as Python's
// bytes.decode("utf-8", "replace") and the WHATWG decoder do (one U+FFFD per
// "maximal subpart"), so a stream decoded piece by piece gives exactly the
// text of the whole byte string decoded at once.
#pragma once
#include <string>
#include <string_view>

namespace tinygpt {

inline constexpr std::string_view kUtf8Replacement = "\xEF\xBF\xBD";  // U+FFFD

class Utf8Stream {
 public:
  // Appends the characters that `bytes` completes to *out. A trailing
  // sequence that is still a valid prefix is held back for the next call.
  void Push(std::string_view bytes, std::string* out) {
    for (size_t i = 0; i < bytes.size();) {
      const unsigned char b = static_cast<unsigned char>(bytes[i]);
      if (need_ == 0) {
        ++i;
        if (b < 0x80) out->push_back(static_cast<char>(b));
        else if (!Start(b)) Replace(out);
      } else if (b >= lo_ && b <= hi_) {
        ++i;
        held_[have_++] = static_cast<char>(b);
        lo_ = 0x80, hi_ = 0xBF;
        if (--need_ == 0) {
          out->append(held_, have_);
          have_ = 0;
        }
      } else {  // the held prefix is cut short: replace it, then read b afresh
        need_ = have_ = 0;
        Replace(out);
      }
    }
  }
  // Ends the stream: an incomplete held-back sequence becomes U+FFFD.
  void Finish(std::string* out) {
    if (need_ == 0) return;
    need_ = have_ = 0;
    Replace(out);
  }
  // Whether any byte so far was replaced (the input was not valid UTF-8).
  bool saw_invalid() const { return invalid_; }
  bool holding() const { return need_ > 0; }

 private:
  // Lead bytes and the range each allows for its second byte (Unicode Table 3-7).
  bool Start(unsigned char b) {
    if (b >= 0xC2 && b <= 0xDF) return Begin(b, 1, 0x80, 0xBF);
    if (b == 0xE0) return Begin(b, 2, 0xA0, 0xBF);
    if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) return Begin(b, 2, 0x80, 0xBF);
    if (b == 0xED) return Begin(b, 2, 0x80, 0x9F);  // no surrogates
    if (b == 0xF0) return Begin(b, 3, 0x90, 0xBF);
    if (b >= 0xF1 && b <= 0xF3) return Begin(b, 3, 0x80, 0xBF);
    if (b == 0xF4) return Begin(b, 3, 0x80, 0x8F);  // up to U+10FFFF
    return false;
  }
  bool Begin(unsigned char b, int need, unsigned char lo, unsigned char hi) {
    held_[0] = static_cast<char>(b);
    have_ = 1, need_ = need, lo_ = lo, hi_ = hi;
    return true;
  }
  void Replace(std::string* out) {
    out->append(kUtf8Replacement);
    invalid_ = true;
  }

  char held_[4];
  int have_ = 0, need_ = 0;
  unsigned char lo_ = 0x80, hi_ = 0xBF;
  bool invalid_ = false;
};

inline bool IsValidUtf8(std::string_view s) {
  Utf8Stream u;
  std::string sink;
  u.Push(s, &sink);
  return !u.saw_invalid() && !u.holding();
}

// The bytes as text, ill-formed parts replaced by U+FFFD.
inline std::string SanitizeUtf8(std::string_view s) {
  Utf8Stream u;
  std::string out;
  u.Push(s, &out);
  u.Finish(&out);
  return out;
}

}  // namespace tinygpt
