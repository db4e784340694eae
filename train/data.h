// Training data sources. Each produces packed batches (no padding): sequences
// back to back with cu_seqlens, as the attention op consumes them.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/tokenizer.h"
#include "model/transformer.h"

namespace tinygpt {

class DataSource {
 public:
  virtual ~DataSource() = default;
  // The batch for `step` depends only on (seed, step), so --resume continues
  // the exact stream.
  virtual PackedBatch Batch(uint64_t seed, long step) = 0;
};

// The tutorial's task: count upward modulo the vocabulary. Each of `batch`
// sequences is (start + 0..max_seq_len-1) % vocab; inputs drop the last token.
std::unique_ptr<DataSource> MakeCountTask(int vocab, int max_seq_len, int batch);

// Documents are the blank-line separated parts of the file.
absl::StatusOr<std::vector<std::string>> ReadDocuments(const std::string& path);

// A text corpus, tokenized once (progress on stderr unless quiet; each
// document ends with the tokenizer's end token when it has one). Each batch
// packs random chunks of up to max_seq_len tokens until batch*max_seq_len
// tokens are filled.
absl::StatusOr<std::unique_ptr<DataSource>> MakeTextData(const std::vector<std::string>& docs, const Tokenizer& tokenizer,
                                                         int max_seq_len, int batch, bool quiet = false);

}  // namespace tinygpt
