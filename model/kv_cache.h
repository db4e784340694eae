// Paged KV cache bookkeeping: a pool of fixed-size blocks and a free list.
// The memory itself is owned by ModelRunner (one K and one V array per layer,
// [num_blocks, block_size, n_kv_heads, head_dim], on the backend).
#pragma once
#include <cstdint>
#include <vector>

namespace tinygpt {

class BlockAllocator {
 public:
  explicit BlockAllocator(int num_blocks) : num_blocks_(num_blocks) {
    free_.reserve(num_blocks);
    for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
  }
  int num_blocks() const { return num_blocks_; }
  int num_free() const { return static_cast<int>(free_.size()); }
  int num_used() const { return num_blocks_ - num_free(); }
  // Appends `n` blocks to `table`; false (and no change) when too few are free.
  bool Allocate(int n, std::vector<int32_t>* table) {
    if (n > num_free()) return false;
    for (int i = 0; i < n; ++i) {
      table->push_back(free_.back());
      free_.pop_back();
    }
    return true;
  }
  void Release(std::vector<int32_t>* table) {
    for (int32_t b : *table) free_.push_back(b);
    table->clear();
  }

 private:
  int num_blocks_;
  std::vector<int32_t> free_;
};

inline int BlocksFor(int tokens, int block_size) { return (tokens + block_size - 1) / block_size; }

}  // namespace tinygpt
