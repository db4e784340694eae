#include "train/data.h"

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
  TextData(std::vector<std::string> docs, int len, int batch) : docs_(std::move(docs)), len_(len), batch_(batch) {}
  PackedBatch Batch(uint64_t seed, long step) override {
    auto rng = StepRng(seed, step);
    std::uniform_int_distribution<size_t> pick(0, docs_.size() - 1);
    PackedBatch b;
    b.cu_seqlens.push_back(0);
    const size_t budget = static_cast<size_t>(batch_) * len_;
    while (b.tokens.size() < budget) {
      const std::string& doc = docs_[pick(rng)];
      // A chunk of n+1 bytes gives n (input, target) pairs.
      const size_t n = std::min<size_t>({doc.size() - 1, static_cast<size_t>(len_), budget - b.tokens.size()});
      const size_t begin = std::uniform_int_distribution<size_t>(0, doc.size() - 1 - n)(rng);
      for (size_t i = 0; i < n; ++i) {
        b.tokens.push_back(static_cast<unsigned char>(doc[begin + i]));
        b.targets.push_back(static_cast<unsigned char>(doc[begin + i + 1]));
      }
      b.cu_seqlens.push_back(static_cast<int32_t>(b.tokens.size()));
    }
    return b;
  }

 private:
  std::vector<std::string> docs_;
  int len_, batch_;
};

}  // namespace

std::unique_ptr<DataSource> MakeCountTask(int vocab, int max_seq_len, int batch) {
  return std::make_unique<CountTask>(vocab, max_seq_len, batch);
}

absl::StatusOr<std::unique_ptr<DataSource>> MakeTextData(const std::string& path, int max_seq_len, int batch) {
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
  return std::unique_ptr<DataSource>(std::make_unique<TextData>(std::move(docs), max_seq_len, batch));
}

}  // namespace tinygpt
