#include "train/data.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace tinygpt {
namespace {

std::mt19937_64 StepRng(uint64_t seed, long step) {
  std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), static_cast<uint32_t>(step),
                    static_cast<uint32_t>(static_cast<uint64_t>(step) >> 32)};
  return std::mt19937_64(seq);
}

class CountTask final : public DataSource {
 public:
  CountTask(int vocab, int len, int batch) : vocab_(vocab), len_(len), batch_(batch) {}
  PackedBatch Batch(uint64_t seed, long step) override {
    auto rng = StepRng(seed, step);
    std::uniform_int_distribution<int> start(0, vocab_ - 1);
    PackedBatch b;
    b.cu_seqlens.push_back(0);
    for (int s = 0; s < batch_; ++s) {
      const int s0 = start(rng);
      for (int i = 0; i + 1 < len_; ++i) {
        b.tokens.push_back((s0 + i) % vocab_);
        b.targets.push_back((s0 + i + 1) % vocab_);
      }
      b.cu_seqlens.push_back(static_cast<int32_t>(b.tokens.size()));
    }
    return b;
  }

 private:
  int vocab_, len_, batch_;
};

class TextData final : public DataSource {
 public:
  TextData(std::vector<std::vector<int32_t>> docs, int len, int batch) : docs_(std::move(docs)), len_(len), batch_(batch) {}
  PackedBatch Batch(uint64_t seed, long step) override {
    auto rng = StepRng(seed, step);
    std::uniform_int_distribution<size_t> pick(0, docs_.size() - 1);
    PackedBatch b;
    b.cu_seqlens.push_back(0);
    const size_t budget = static_cast<size_t>(batch_) * len_;
    while (b.tokens.size() < budget) {
      const std::vector<int32_t>& doc = docs_[pick(rng)];
      // A chunk of n+1 tokens gives n (input, target) pairs.
      const size_t n = std::min<size_t>({doc.size() - 1, static_cast<size_t>(len_), budget - b.tokens.size()});
      const size_t begin = std::uniform_int_distribution<size_t>(0, doc.size() - 1 - n)(rng);
      b.tokens.insert(b.tokens.end(), doc.begin() + begin, doc.begin() + begin + n);
      b.targets.insert(b.targets.end(), doc.begin() + begin + 1, doc.begin() + begin + n + 1);
      b.cu_seqlens.push_back(static_cast<int32_t>(b.tokens.size()));
    }
    return b;
  }

 private:
  std::vector<std::vector<int32_t>> docs_;
  int len_, batch_;
};

}  // namespace

std::unique_ptr<DataSource> MakeCountTask(int vocab, int max_seq_len, int batch) {
  return std::make_unique<CountTask>(vocab, max_seq_len, batch);
}

absl::StatusOr<std::vector<std::string>> ReadDocuments(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open data file ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  std::vector<std::string> docs;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find("\n\n", start);
    if (end == std::string::npos) end = text.size();
    if (end - start >= 2) docs.push_back(text.substr(start, end - start + (end < text.size() ? 1 : 0)));
    start = end + 2;
  }
  if (docs.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no document of at least 2 bytes"));
  return docs;
}

absl::StatusOr<std::unique_ptr<DataSource>> MakeTextData(const std::vector<std::string>& docs, const Tokenizer& tokenizer,
                                                         int max_seq_len, int batch, bool quiet) {
  size_t total_bytes = 0, done_bytes = 0, tokens = 0;
  for (const auto& d : docs) total_bytes += d.size();
  const auto t0 = std::chrono::steady_clock::now();
  auto last_report = t0;
  std::vector<std::vector<int32_t>> encoded;
  encoded.reserve(docs.size());
  for (const auto& d : docs) {
    auto ids = tokenizer.Encode(d);
    if (!ids.ok()) return ids.status();
    if (tokenizer.eos_id() >= 0) ids->push_back(tokenizer.eos_id());
    done_bytes += d.size();
    tokens += ids->size();
    if (ids->size() >= 2) encoded.push_back(std::move(*ids));
    const auto now = std::chrono::steady_clock::now();
    if (!quiet && now - last_report > std::chrono::milliseconds(500)) {
      std::fprintf(stderr, "tokenizing: %3.0f%% (%zu of %zu bytes, %zu tokens)\n", 100.0 * done_bytes / total_bytes, done_bytes,
                   total_bytes, tokens);
      last_report = now;
    }
  }
  if (encoded.empty()) return absl::InvalidArgumentError("the corpus has no document of at least 2 tokens");
  if (!quiet)
    std::fprintf(stderr, "tokenized %zu documents: %zu bytes -> %zu tokens (%.2f bytes/token) in %.1fs\n", encoded.size(),
                 total_bytes, tokens, static_cast<double>(total_bytes) / std::max<size_t>(1, tokens),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return std::unique_ptr<DataSource>(std::make_unique<TextData>(std::move(encoded), max_seq_len, batch));
}

}  // namespace tinygpt
