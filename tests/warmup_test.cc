// The serving warm-up (ModelRunner::Warmup): it must reach every row bucket
// and every decode graph the scheduler can ask for, so that no request pays
// for a GEMM algorithm search or a graph capture, and it must leave the KV
// cache blocks of real sequences alone. The CPU backend makes no per-shape
// choices, so a recording backend plays the CUDA backend's part: it asks for
// the same row buckets and pretends to capture graphs.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>
#include <utility>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/row_buckets.h"
#include "model/runner.h"
#include "model/transformer.h"
#include "tests/support/forwarding_backend.h"

namespace tinygpt {
namespace {

TEST(RowBuckets, EveryCountHasOneBucketAndTheRepresentativesReachThemAll) {
  for (int rows = 1; rows <= 20000; ++rows) {
    const int b = RowBucket(rows);
    ASSERT_GE(b, rows);
    ASSERT_EQ(RowBucket(b), b) << rows;
    ASSERT_LE(b - rows, std::max(7, rows / 4)) << rows;  // a bucket's counts are alike
  }
  for (int max_rows : {1, 7, 8, 9, 64, 65, 300, 512, 2049, 8192, 10000}) {
    const std::vector<int> reps = RowBucketRepresentatives(max_rows);
    std::set<int> want, got;
    for (int rows = 1; rows <= max_rows; ++rows) want.insert(RowBucket(rows));
    for (size_t i = 0; i < reps.size(); ++i) {
      EXPECT_LE(reps[i], max_rows);
      if (i) EXPECT_LT(reps[i - 1], reps[i]);
      got.insert(RowBucket(reps[i]));
    }
    EXPECT_EQ(got, want) << "max_rows " << max_rows;
    EXPECT_EQ(reps.size(), want.size());
  }
}

// The CPU backend, with the CUDA backend's row buckets and, optionally,
// graph capture that records nothing (a warm-up only captures).
class RecordingBackend final : public testing::ForwardingBackend {
 public:
  explicit RecordingBackend(bool fake_graphs) : ForwardingBackend(CreateCpuBackend()), fake_graphs_(fake_graphs) {}

  std::vector<int> WarmupRowCounts(int max_rows) const override { return RowBucketRepresentatives(max_rows); }
  void Linear(const void* x, const void* w, const void* b, void* y, int T, int in, int out) override {
    if (!capturing_) buckets_[{in, out}].insert(RowBucket(T));
    inner_->Linear(x, w, b, y, T, in, out);
  }
  void LinearSwiGLU(const void* x, const void* w, const void* b, void* h, void* out, int T, int in, int F) override {
    if (!capturing_) buckets_[{in, 2 * F}].insert(RowBucket(T));
    inner_->LinearSwiGLU(x, w, b, h, out, T, in, F);
  }
  bool SupportsGraphs() const override { return fake_graphs_; }
  bool BeginCapture() override { return capturing_ = fake_graphs_; }
  void* EndCapture() override {
    capturing_ = false;
    return &graphs_[++captures_];  // a distinct non-null handle per graph
  }
  void LaunchGraph(void*) override { ++replays_; }
  void DestroyGraph(void*) override {}

  // Row buckets each linear layer (in, out) ran at, outside captures.
  std::map<std::pair<int, int>, std::set<int>> buckets_;
  int captures_ = 0, replays_ = 0;

 private:
  const bool fake_graphs_;
  bool capturing_ = false;
  std::map<int, char> graphs_;
};

ModelConfig WarmupConfig() {
  ModelConfig c;
  c.vocab_size = 37; c.d_model = 16; c.n_layers = 2; c.n_heads = 4; c.n_kv_heads = 2;
  c.ffn_hidden = 24; c.max_seq_len = 300;  // two context buckets: 256 and 300
  return c;
}

RunnerOptions WarmupOptions() {
  RunnerOptions o;
  o.block_size = 16; o.num_kv_blocks = 64; o.max_batch_tokens = 700; o.max_seqs = 40;  // steps longer than one sequence
  o.max_graph_batch = 40;
  return o;
}

TEST(Warmup, ReachesEveryRowBucketAndEveryDecodeGraph) {
  const ModelConfig c = WarmupConfig();
  Transformer m(c);
  m.InitParams(7);
  const Checkpoint ck{c, m.params()};
  RecordingBackend backend(/*fake_graphs=*/true);
  const RunnerOptions o = WarmupOptions();
  auto runner = ModelRunner::Create(&backend, ck, o);
  ASSERT_TRUE(runner.ok()) << runner.status();
  auto report = (*runner)->Warmup();
  ASSERT_TRUE(report.ok()) << report.status();

  // Graph buckets for 40 sequences: 1, 2, 4, 8, 16, 24, 32, 40; two context
  // buckets; with and without penalties.
  EXPECT_EQ(report->graphs, 8 * 2 * 2);
  EXPECT_EQ(backend.captures_, report->graphs);
  EXPECT_EQ(backend.replays_, 0);
  EXPECT_GT(report->steps, report->graphs);

  // Every step the scheduler can plan has at most max_batch_tokens rows in
  // its layers and at most max_seqs rows in the vocabulary projection.
  const int d = c.d_model, qkv = c.qkv_dim(), F = c.ffn_hidden;
  for (auto shape : std::vector<std::pair<int, int>>{{d, qkv}, {d, d}, {d, 2 * F}, {F, d}}) {
    const std::set<int>& seen = backend.buckets_[shape];
    for (int rows = 1; rows <= o.max_batch_tokens; ++rows)
      ASSERT_TRUE(seen.count(RowBucket(rows))) << "linear " << shape.first << "->" << shape.second << ": no warm-up at "
                                                 << rows << " rows (bucket " << RowBucket(rows) << ")";
  }
  const std::set<int>& head = backend.buckets_[{d, c.vocab_size}];
  for (int rows = 1; rows <= o.max_seqs; ++rows)
    ASSERT_TRUE(head.count(RowBucket(rows))) << "vocabulary projection: no warm-up at " << rows << " rows";
}

// Warm-up steps write only the scratch block: a sequence's logits after a
// warm-up equal those of a runner that never warmed up.
TEST(Warmup, LeavesRealSequencesUntouched) {
  const ModelConfig c = WarmupConfig();
  Transformer m(c);
  m.InitParams(9);
  const Checkpoint ck{c, m.params()};
  const RunnerOptions o = WarmupOptions();
  std::mt19937 rng(5);
  std::vector<int32_t> prompt(40);
  for (auto& t : prompt) t = rng() % c.vocab_size;
  const std::vector<int32_t> table{5, 1, 63, 12};  // covers 64 positions

  auto logits_of = [&](bool warm, std::vector<float>* out) {
    RecordingBackend backend(/*fake_graphs=*/false);
    auto runner = ModelRunner::Create(&backend, ck, o);
    ASSERT_TRUE(runner.ok()) << runner.status();
    if (warm) ASSERT_TRUE((*runner)->Warmup().ok());
    std::vector<float> logits;
    std::vector<int32_t> sampled;
    // The prompt in two chunks around a warm-up-sized step of another sequence.
    ASSERT_TRUE((*runner)->Step({SeqStep{prompt.data(), 30, 0, &table, false}}, &sampled).ok());
    if (warm) ASSERT_TRUE((*runner)->Warmup().ok());
    ASSERT_TRUE((*runner)->Step({SeqStep{prompt.data() + 30, 10, 30, &table, true}}, &sampled, &logits).ok());
    *out = logits;
  };
  std::vector<float> cold, warm;
  logits_of(false, &cold);
  logits_of(true, &warm);
  ASSERT_EQ(cold.size(), static_cast<size_t>(c.vocab_size));
  EXPECT_EQ(cold, warm);
}

}  // namespace
}  // namespace tinygpt
