// Stop strings, matched on the generated text as it grows, by an Aho-Corasick
// automaton over the strings' bytes: each new byte of text is one transition
// (plus failure links, amortized O(1) per byte over the text), so a token
// costs O(its bytes) whatever the number or length of the stop strings. The
// previous matcher searched a tail of the text for every string, every token:
// 10,000 stop strings cost the engine thread a third of its throughput.
// Memory: one node per distinct prefix of the strings (at most their total
// bytes + 1), each with its outgoing edges.
#pragma once
#include <algorithm>
#include <cstdint>
#include <deque>
#include <string>
#include <utility>
#include <vector>

namespace tinygpt {

class StopStringMatcher {
 public:
  explicit StopStringMatcher(const std::vector<std::string>& stops) {
    nodes_.emplace_back();  // the root: nothing matched
    for (const std::string& s : stops) {
      if (s.empty()) continue;  // an empty stop string never ends anything
      int at = 0;
      for (unsigned char c : s) {
        int next = Child(at, c);
        if (next < 0) {
          next = static_cast<int>(nodes_.size());
          nodes_.emplace_back();
          auto& e = nodes_[at].edges;
          e.insert(std::lower_bound(e.begin(), e.end(), std::make_pair(c, 0)), {c, next});
        }
        at = next;
      }
      nodes_[at].terminal = true;
    }
    // Failure links, breadth first: the longest proper suffix of a node's
    // string that is also a prefix of some stop string; a node is terminal
    // when any suffix of its string is a whole stop string.
    std::deque<int> queue;
    for (const auto& [c, child] : nodes_[0].edges) queue.push_back(child);
    while (!queue.empty()) {
      const int n = queue.front();
      queue.pop_front();
      for (const auto& [c, child] : nodes_[n].edges) {
        int f = nodes_[n].fail;
        while (f != 0 && Child(f, c) < 0) f = nodes_[f].fail;
        const int to = Child(f, c);
        nodes_[child].fail = to >= 0 && to != child ? to : 0;
        nodes_[child].terminal = nodes_[child].terminal || nodes_[nodes_[child].fail].terminal;
        queue.push_back(child);
      }
    }
  }
  bool empty() const { return nodes_.size() == 1; }
  size_t nodes() const { return nodes_.size(); }
  // Appends `text`; true once any stop string occurs in the text so far.
  bool Push(const std::string& text) {
    if (empty()) return false;
    for (unsigned char c : text) {
      int next;
      while ((next = Child(state_, c)) < 0 && state_ != 0) state_ = nodes_[state_].fail;
      state_ = next < 0 ? 0 : next;
      if (nodes_[state_].terminal) return true;
    }
    return false;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int>> edges;  // sorted by byte
    int fail = 0;
    bool terminal = false;
  };
  int Child(int n, unsigned char c) const {
    const auto& e = nodes_[n].edges;
    auto it = std::lower_bound(e.begin(), e.end(), std::make_pair(c, 0));
    return it != e.end() && it->first == c ? it->second : -1;
  }
  std::vector<Node> nodes_;
  int state_ = 0;  // the node of the longest suffix of the text so far that is a prefix of a stop string
};

}  // namespace tinygpt
