// KvCacheManager at the level of exact block ids: reference counts, prefix
// matches, eviction order, and the pool back to full after every path.
#include "model/kv_cache.h"

#include <gtest/gtest.h>

#include <numeric>

namespace tinygpt {
namespace {

std::vector<int32_t> Range(int from, int n) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), from);
  return v;
}

using Ids = std::vector<int32_t>;

TEST(KvCacheManager, AllocatesInOrderAndReleasesEverything) {
  KvCacheManager kv(4, 2, /*prefix_caching=*/false);
  Ids a, b;
  ASSERT_TRUE(kv.Allocate(3, &a));
  EXPECT_EQ(a, (Ids{0, 1, 2}));
  EXPECT_FALSE(kv.Allocate(2, &b));  // only one left: nothing taken
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(kv.num_free(), 1);
  const Ids tokens = Range(10, 6);
  int hashed = 0;
  kv.Commit(a, tokens.data(), 6, &hashed);  // no prefix caching: nothing cached
  EXPECT_EQ(kv.num_cached(), 0);
  EXPECT_EQ(kv.MatchPrefix(tokens.data(), 6, &b), 0);
  kv.Release(&a);
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(kv.num_free(), 4);
}

TEST(KvCacheManager, ReusesTheLongestCachedPrefixButNeverTheLastToken) {
  KvCacheManager kv(8, 4, true);
  const Ids prompt = Range(100, 10);  // 2 full blocks + 2 tokens
  Ids a;
  ASSERT_TRUE(kv.Allocate(3, &a));
  int hashed = 0;
  kv.Commit(a, prompt.data(), 10, &hashed);
  EXPECT_EQ(hashed, 2);
  EXPECT_EQ(kv.num_cached(), 2);
  EXPECT_EQ(kv.CachedBlock(KvCacheManager::ChainHash(0, prompt.data(), 4)), a[0]);

  // Same first 9 tokens, then different: both full blocks match.
  Ids b_tokens = prompt;
  b_tokens[9] = 7;
  Ids b;
  EXPECT_EQ(kv.MatchPrefix(b_tokens.data(), 10, &b), 8);
  EXPECT_EQ(b, (Ids{a[0], a[1]}));
  // Exactly 8 tokens: the 8th must be computed, so only one block matches.
  Ids c;
  EXPECT_EQ(kv.MatchPrefix(prompt.data(), 8, &c), 4);
  EXPECT_EQ(c, (Ids{a[0]}));
  // A different first block: no match, even though the second block's tokens are equal.
  Ids d_tokens = prompt;
  d_tokens[0] = 0;
  Ids d;
  EXPECT_EQ(kv.MatchPrefix(d_tokens.data(), 10, &d), 0);

  kv.Release(&a);
  kv.Release(&b);
  kv.Release(&c);
  EXPECT_EQ(kv.num_free(), 8);    // cached blocks count as free...
  EXPECT_EQ(kv.num_cached(), 2);  // ...and stay cached
  Ids e;
  EXPECT_EQ(kv.MatchPrefix(prompt.data(), 10, &e), 8);  // still there after everyone left
  kv.Release(&e);
}

TEST(KvCacheManager, EvictsLeastRecentlyUsedAndTailsFirst) {
  KvCacheManager kv(4, 2, true);
  const Ids p = Range(0, 4), q = Range(50, 4);
  Ids a, b;
  ASSERT_TRUE(kv.Allocate(2, &a));  // blocks 0, 1 for p
  ASSERT_TRUE(kv.Allocate(2, &b));  // blocks 2, 3 for q
  int ha = 0, hb = 0;
  kv.Commit(a, p.data(), 4, &ha);
  kv.Commit(b, q.data(), 4, &hb);
  kv.Release(&a);  // queued: 1 then 0 (tail first)
  kv.Release(&b);  // then 3, 2
  Ids c;
  ASSERT_TRUE(kv.Allocate(1, &c));
  EXPECT_EQ(c, (Ids{1}));  // p's tail went first
  EXPECT_EQ(kv.num_cached(), 3);
  Ids d;
  EXPECT_EQ(kv.MatchPrefix(p.data(), 5, &d), 2);  // p's head survives; its tail is gone
  EXPECT_EQ(d, (Ids{0}));
  Ids e;
  ASSERT_TRUE(kv.Allocate(2, &e));  // 0 is referenced again, so q's blocks go: 3 then 2
  EXPECT_EQ(e, (Ids{3, 2}));
  EXPECT_EQ(kv.num_cached(), 1);
  Ids f;
  EXPECT_FALSE(kv.Allocate(1, &f));
  kv.Release(&c);
  kv.Release(&d);
  kv.Release(&e);
  EXPECT_EQ(kv.num_free(), 4);
}

TEST(KvCacheManager, SharedBlocksFreeOnlyWithTheirLastReference) {
  KvCacheManager kv(4, 2, false);
  Ids parent, child;
  ASSERT_TRUE(kv.Allocate(3, &parent));
  kv.Share(parent, 2, &child);  // the prompt's two full blocks
  EXPECT_EQ(child, (Ids{0, 1}));
  ASSERT_TRUE(kv.Allocate(1, &child));
  EXPECT_EQ(child, (Ids{0, 1, 3}));
  kv.Release(&parent);
  EXPECT_EQ(kv.num_free(), 1);  // block 2 only
  kv.Release(&child);
  EXPECT_EQ(kv.num_free(), 4);
}

TEST(KvCacheManager, TwoSequencesComputingTheSamePrefixKeepOneCachedCopy) {
  KvCacheManager kv(6, 2, true);
  const Ids p = Range(5, 6);
  Ids a, b;
  ASSERT_TRUE(kv.Allocate(3, &a));
  ASSERT_TRUE(kv.Allocate(3, &b));
  int ha = 0, hb = 0;
  kv.Commit(a, p.data(), 6, &ha);
  kv.Commit(b, p.data(), 6, &hb);  // duplicates: not registered, but chained
  EXPECT_EQ(kv.num_cached(), 3);
  kv.Release(&b);
  EXPECT_EQ(kv.num_free(), 3);
  Ids c;
  EXPECT_EQ(kv.MatchPrefix(p.data(), 6, &c), 4);
  EXPECT_EQ(c, (Ids{a[0], a[1]}));
  kv.Release(&a);
  kv.Release(&c);
  EXPECT_EQ(kv.num_free(), 6);
}

}  // namespace
}  // namespace tinygpt
