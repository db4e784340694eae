// `Authorization: Bearer <token>` checks, shared by the gRPC service and the
// HTTP front end.
#pragma once
#include <algorithm>
#include <string_view>

namespace tinygpt {

// Equal strings, in time that depends on their lengths only, so a caller
// cannot find the token byte by byte from response times.
inline bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  const size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= x ^ y;
  }
  // volatile: keep the compiler from turning the loop into an early exit.
  volatile unsigned char result = diff;
  return result == 0;
}

// Whether an authorization header's value is "Bearer <token>".
inline bool BearerTokenMatches(std::string_view header_value, std::string_view token) {
  constexpr std::string_view kPrefix = "Bearer ";
  return header_value.size() > kPrefix.size() && header_value.substr(0, kPrefix.size()) == kPrefix &&
         ConstantTimeEquals(header_value.substr(kPrefix.size()), token);
}

}  // namespace tinygpt
