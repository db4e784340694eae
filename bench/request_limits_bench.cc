// What one request at the serve limits costs the engine thread per token
// (issue 19): stop-string matching (the Aho-Corasick matcher of
// server/stop_strings.h beside the former matcher, which searched a tail of
// the text for every string every token) and the host's logprobs work per
// sampled row (model/logits_processing.h). Prints markdown tables.
// usage: tinygpt_request_limits_bench [--tokens=200000]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "model/logits_processing.h"
#include "server/stop_strings.h"

namespace {

using Clock = std::chrono::steady_clock;

// The matcher before issue 19, kept here to compare against.
class LinearStopMatcher {
 public:
  explicit LinearStopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
    for (const auto& s : stops_) keep_ = std::max(keep_, s.size() - 1);
  }
  bool Push(const std::string& text) {
    tail_ += text;
    for (const auto& s : stops_)
      if (tail_.find(s) != std::string::npos) return true;
    if (tail_.size() > keep_) tail_.erase(0, tail_.size() - keep_);
    return false;
  }

 private:
  std::vector<std::string> stops_;
  size_t keep_ = 0;
  std::string tail_;
};

struct Case {
  const char* name;
  std::vector<std::string> stops;
  std::vector<std::string> tokens;  // the text, token by token; no stop string occurs in it
};

// Token texts of 1 to 6 bytes (SentencePiece pieces average 3 to 4) drawn
// from `alphabet`.
std::vector<std::string> Tokens(std::mt19937& rng, const std::string& alphabet, int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    std::string t;
    const int len = 1 + static_cast<int>(rng() % 6);
    for (int j = 0; j < len; ++j) t += alphabet[rng() % alphabet.size()];
    out.push_back(t);
  }
  return out;
}

template <class Matcher>
void Run(const Case& c, const char* matcher, int reps) {
  // Build cost: once per sample.
  const auto b0 = Clock::now();
  for (int i = 0; i < reps; ++i) {
    Matcher m(c.stops);
    (void)m;
  }
  const double build_us = std::chrono::duration<double>(Clock::now() - b0).count() * 1e6 / reps;
  // The mean over the whole text without per-token clocks, then each token
  // timed on its own (a clock read is about 20 ns of it) for the tail.
  bool matched = false;
  Matcher m(c.stops);
  const auto t0 = Clock::now();
  for (const std::string& t : c.tokens) matched |= m.Push(t);
  const double per = std::chrono::duration<double>(Clock::now() - t0).count() / c.tokens.size();
  Matcher timed(c.stops);
  std::vector<double> each;
  each.reserve(c.tokens.size());
  for (const std::string& t : c.tokens) {
    const auto a = Clock::now();
    matched |= timed.Push(t);
    each.push_back(std::chrono::duration<double>(Clock::now() - a).count());
  }
  std::sort(each.begin(), each.end());
  const double p99 = each[each.size() * 99 / 100], p9999 = each[each.size() * 9999 / 10000];
  size_t bytes = 0;
  for (const auto& s : c.stops) bytes += s.size();
  std::printf("| %s | %s | %zu | %zu | %.3f | %.3f | %.2f | %.1f |%s\n", c.name, matcher, c.stops.size(), bytes, per * 1e6, p99 * 1e6,
              p9999 * 1e6, build_us, matched ? " (matched: the case is wrong)" : "");
}

}  // namespace

int main(int argc, char** argv) {
  int n_tokens = 200000;
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], "--tokens=", 9) == 0) n_tokens = std::atoi(argv[i] + 9);
  std::mt19937 rng(19);
  std::vector<Case> cases;
  {  // The issue's request: 10,000 stop strings of 4 bytes, none in the text.
    // Three bytes of the text's alphabet then one it lacks: distinct, and
    // each a path through the automaton that the text walks.
    const std::string alphabet = "abcdefghijklmnopqrstu ";
    Case c{"issue: 10000 x 4 B", {}, Tokens(rng, alphabet, n_tokens)};
    for (int i = 0; i < 10000; ++i)
      c.stops.push_back(std::string{alphabet[i % 22], alphabet[i / 22 % 22], alphabet[i / 484 % 22], 'z'});
    cases.push_back(c);
  }
  {  // At the limits, typical: 16 strings of a few bytes over the text's own alphabet.
    Case c{"limits: 16 short", {}, Tokens(rng, "abcdefgh \n", n_tokens)};
    for (int i = 0; i < 16; ++i) c.stops.push_back(std::string("\n\n") + static_cast<char>('a' + i % 8) + "x");
    cases.push_back(c);
  }
  {  // At the limits, adversarial: 16 strings of 256 B (4 KiB) that all share
     // a 255-byte prefix the text keeps almost completing: the deepest
     // automaton, and the longest failure walks.
    Case c{"limits: 16 x 256 B, adversarial", {}, {}};
    for (int i = 0; i < 16; ++i) c.stops.push_back(std::string(255, 'a') + static_cast<char>('b' + i));
    std::string text;
    while (static_cast<int>(c.tokens.size()) < n_tokens) {
      // 'a' runs of random length (up to 400), broken by a byte no string has.
      const int run = 1 + static_cast<int>(rng() % 400);
      text = std::string(run, 'a') + "#";
      for (size_t at = 0; at < text.size(); at += 4) c.tokens.push_back(text.substr(at, 4));
    }
    cases.push_back(c);
  }
  std::printf("stop strings, one sample, %d tokens of text\n\n", n_tokens);
  std::printf("| case | matcher | strings | bytes | us per token (mean) | p99, us | p99.99, us | build per sample, us |\n"
              "|---|---|---|---|---|---|---|---|\n");
  for (const Case& c : cases) {
    Run<tinygpt::StopStringMatcher>(c, "Aho-Corasick (now)", 20);
    Case shorter = c;  // the former matcher is slow on the issue's case: fewer tokens
    if (c.stops.size() > 100) shorter.tokens.resize(std::min<size_t>(c.tokens.size(), 2000));
    Run<LinearStopMatcher>(shorter, "linear (before)", 3);
  }

  std::printf("\nlogprobs, host work per sampled row that asks for them (log-softmax in double, then the top N)\n\n");
  std::printf("| vocab | top_logprobs | us per row |\n|---|---|---|\n");
  for (int V : {64, 32000}) {
    std::vector<float> logits(V);
    std::normal_distribution<float> d(0.f, 3.f);
    for (auto& x : logits) x = d(rng);
    for (int top : {0, 5, 20}) {
      const int reps = V > 1000 ? 200 : 20000;
      const auto t0 = Clock::now();
      float sink = 0;
      for (int i = 0; i < reps; ++i) sink += tinygpt::ComputeLogprobs(logits.data(), V, i % V, top).logprob;
      const double us = std::chrono::duration<double>(Clock::now() - t0).count() * 1e6 / reps;
      std::printf("| %d | %d | %.2f |%s\n", V, top, us, sink == 12345.f ? " " : "");
    }
  }
  return 0;
}
