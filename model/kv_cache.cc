#include "model/kv_cache.h"

#include <algorithm>

namespace tinygpt {

KvCacheManager::KvCacheManager(int num_blocks, int block_size, bool prefix_caching)
    : block_size_(block_size), prefix_caching_(prefix_caching), blocks_(num_blocks) {
  free_.reserve(num_blocks);
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);  // block 0 is handed out first
}

uint64_t KvCacheManager::ChainHash(uint64_t parent, const int32_t* tokens, int n) {
  // FNV-1a over the parent hash and the token ids, then a splitmix64 finish.
  uint64_t h = 0xcbf29ce484222325ull ^ parent;
  auto mix = [&](uint64_t v) {
    for (int i = 0; i < 8; ++i, v >>= 8) h = (h ^ (v & 0xff)) * 0x100000001b3ull;
  };
  mix(static_cast<uint64_t>(n));
  for (int i = 0; i < n; ++i) mix(static_cast<uint32_t>(tokens[i]));
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
  return h ^ (h >> 31);
}

bool KvCacheManager::Holds(const Block& b, uint64_t parent, const int32_t* tokens) const {
  return b.cached && b.parent == parent && std::equal(b.tokens.begin(), b.tokens.end(), tokens);
}

int KvCacheManager::MatchPrefix(const int32_t* tokens, int n, std::vector<int32_t>* table) {
  if (!prefix_caching_) return 0;
  uint64_t parent = 0;
  int matched = 0;
  for (int start = 0; start + block_size_ <= n - 1; start += block_size_) {
    const uint64_t h = ChainHash(parent, tokens + start, block_size_);
    auto it = by_hash_.find(h);
    if (it == by_hash_.end()) break;
    Block& b = blocks_[it->second];
    if (!Holds(b, parent, tokens + start)) break;
    if (b.refs++ == 0) evictable_.erase(b.lru);
    table->push_back(it->second);
    parent = h;
    matched += block_size_;
  }
  return matched;
}

int32_t KvCacheManager::Take() {
  int32_t id;
  if (!free_.empty()) {
    id = free_.back();
    free_.pop_back();
  } else {  // evict the least recently used cached block
    id = evictable_.front();
    evictable_.pop_front();
    Block& b = blocks_[id];
    by_hash_.erase(b.hash);
    b.cached = false;
    b.tokens.clear();
  }
  blocks_[id].refs = 1;
  return id;
}

bool KvCacheManager::Allocate(int n, std::vector<int32_t>* table) {
  if (n > num_free()) return false;
  for (int i = 0; i < n; ++i) table->push_back(Take());
  return true;
}

void KvCacheManager::Commit(const std::vector<int32_t>& table, const int32_t* tokens, int num_computed, int* num_hashed) {
  if (!prefix_caching_) return;
  const int full = std::min<int>(num_computed / block_size_, static_cast<int>(table.size()));
  for (int i = *num_hashed; i < full; ++i) {
    const int32_t* blk = tokens + static_cast<size_t>(i) * block_size_;
    const uint64_t parent = i == 0 ? 0 : blocks_[table[i - 1]].hash;
    const uint64_t h = ChainHash(parent, blk, block_size_);
    Block& b = blocks_[table[i]];
    if (b.cached) continue;  // shared from the cache: already registered
    // The chain needs this block's hash even when another block already
    // caches the same prefix (two sequences computed it at once): the
    // later blocks of this sequence chain from it.
    b.hash = h;
    b.parent = parent;
    if (by_hash_.count(h)) continue;
    b.cached = true;
    b.tokens.assign(blk, blk + block_size_);
    by_hash_[h] = table[i];
  }
  *num_hashed = std::max(*num_hashed, full);
}

void KvCacheManager::Share(const std::vector<int32_t>& src, int k, std::vector<int32_t>* dst) {
  for (int i = 0; i < k; ++i) {
    ++blocks_[src[i]].refs;
    dst->push_back(src[i]);
  }
}

void KvCacheManager::Release(std::vector<int32_t>* table) {
  for (auto it = table->rbegin(); it != table->rend(); ++it) {
    Block& b = blocks_[*it];
    if (--b.refs > 0) continue;
    if (b.cached) {
      b.lru = evictable_.insert(evictable_.end(), *it);
    } else {
      b.hash = b.parent = 0;
      free_.push_back(*it);
    }
  }
  table->clear();
}

}  // namespace tinygpt
