// Stop strings, matched on the generated text as it grows: each new piece of
// text is searched together with the few bytes before it that a match could
// have started in, so a step costs O(new text + longest stop string), never a
// re-scan of the whole output.
#pragma once
#include <algorithm>
#include <string>
#include <vector>

namespace tinygpt {

class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
    stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
    for (const auto& s : stops_) keep_ = std::max(keep_, s.size() - 1);
  }
  bool empty() const { return stops_.empty(); }
  // Appends `text`; true once any stop string occurs in the text so far.
  bool Push(const std::string& text) {
    if (stops_.empty() || text.empty()) return false;
    tail_ += text;
    for (const auto& s : stops_)
      if (tail_.find(s) != std::string::npos) return true;
    if (tail_.size() > keep_) tail_.erase(0, tail_.size() - keep_);
    return false;
  }

 private:
  std::vector<std::string> stops_;
  size_t keep_ = 0;   // a match that ends in new text starts at most this many bytes before it
  std::string tail_;  // the last keep_ bytes of the text
};

}  // namespace tinygpt
