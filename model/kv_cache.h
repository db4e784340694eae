// Paged KV cache bookkeeping: a pool of fixed-size blocks, reference counts,
// and automatic prefix caching. The memory itself is owned by ModelRunner
// (one K and one V array per layer, [num_blocks, block_size, n_kv_heads,
// head_dim], on the backend).
//
// Prefix caching (as vLLM's block pool does it): a block that a sequence has
// filled completely is identified by a hash chained over the token ids of its
// whole prefix, so equal hashes mean equal keys and values. A new sequence
// reuses every cached block of the longest cached prefix of its prompt and
// computes only the rest. Blocks are reference-counted; a cached block that
// no sequence references stays cached until the pool needs room, and is then
// evicted least recently used first. The chain stores each block's tokens as
// well, so a hash collision can never hand out wrong keys and values.
#pragma once
#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

namespace tinygpt {

inline int BlocksFor(int tokens, int block_size) { return (tokens + block_size - 1) / block_size; }

class KvCacheManager {
 public:
  KvCacheManager(int num_blocks, int block_size, bool prefix_caching);

  int num_blocks() const { return static_cast<int>(blocks_.size()); }
  int block_size() const { return block_size_; }
  bool prefix_caching() const { return prefix_caching_; }
  // Blocks a sequence can get now: never used, or cached and unreferenced.
  int num_free() const { return static_cast<int>(free_.size() + evictable_.size()); }
  int num_used() const { return num_blocks() - num_free(); }
  // Blocks holding a cached prefix (referenced or not).
  int num_cached() const { return static_cast<int>(by_hash_.size()); }

  // Appends the cached blocks of the longest cached prefix of tokens[0, n)
  // to `table` (taking a reference on each) and returns how many tokens they
  // hold. At most n-1 tokens match: the last token of a prompt is always
  // computed, since its logits give the first new token. `table` must be
  // empty; 0 without prefix caching.
  int MatchPrefix(const int32_t* tokens, int n, std::vector<int32_t>* table);
  // Appends `n` blocks to `table`; false (and no change) when too few are
  // free. Evicts unreferenced cached blocks, least recently used first, once
  // no never-used block is left.
  bool Allocate(int n, std::vector<int32_t>* table);
  // Registers the blocks of `table` that tokens[0, num_computed) fill
  // completely, from block *num_hashed on, as cached prefixes; advances
  // *num_hashed (per sequence, starting at 0, or at what MatchPrefix matched
  // divided by the block size). A prefix already cached in another block is
  // left as it is.
  void Commit(const std::vector<int32_t>& table, const int32_t* tokens, int num_computed, int* num_hashed);
  // Appends the first `k` blocks of `src` to `dst`, sharing them (one more
  // reference each): the prompt blocks of the samples of one request.
  void Share(const std::vector<int32_t>& src, int k, std::vector<int32_t>* dst);
  // Drops the table's references. Unreferenced blocks go back to the pool:
  // cached ones stay cached, queued for eviction with the table's last block
  // first (a prefix's head is the likeliest to be shared again).
  void Release(std::vector<int32_t>* table);

  // The block currently caching this chain hash, or -1 (tests).
  int CachedBlock(uint64_t hash) const {
    auto it = by_hash_.find(hash);
    return it == by_hash_.end() ? -1 : it->second;
  }
  // The chain hash of a block of tokens after a prefix whose hash is `parent`.
  static uint64_t ChainHash(uint64_t parent, const int32_t* tokens, int n);

 private:
  struct Block {
    int refs = 0;
    bool cached = false;
    uint64_t hash = 0;
    uint64_t parent = 0;          // the hash of the prefix before this block
    std::vector<int32_t> tokens;  // this block's tokens, checked on a match
    std::list<int32_t>::iterator lru;  // in evictable_ while cached and unreferenced
  };
  int32_t Take();
  bool Holds(const Block& b, uint64_t parent, const int32_t* tokens) const;

  const int block_size_;
  const bool prefix_caching_;
  std::vector<Block> blocks_;
  std::vector<int32_t> free_;        // never used, or evicted
  std::list<int32_t> evictable_;     // cached, unreferenced; front = least recently used
  std::unordered_map<uint64_t, int32_t> by_hash_;
};

}  // namespace tinygpt
