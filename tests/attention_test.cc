// The CPU attention op against the naive double-precision reference, and the
// properties the server relies on: block-diagonal isolation, GQA, ALiBi,
// offset queries over a (paged) context, and the backward pass.
#include <gtest/gtest.h>

#include "kernels/cpu/ops.h"
#include "tests/support/reference.h"

namespace tinygpt {
namespace {

using testing::CuSeqlens;
using testing::NaiveAttention;
using testing::RandomVector;
using testing::RelError;

struct Case {
  std::vector<int> lens;
  int H, Hkv, D;
  bool alibi;
};

// Fused qkv rows of [H + 2*Hkv, D], as the model produces them.
struct Qkv {
  AttentionDims dims;
  std::vector<int32_t> cu;
  std::vector<float> qkv;
  long stride;
  Qkv(const Case& c, uint64_t seed) : dims{c.H, c.Hkv, c.D, c.alibi}, cu(CuSeqlens(c.lens)) {
    stride = static_cast<long>(c.H + 2 * c.Hkv) * c.D;
    qkv = RandomVector(cu.back() * stride, seed);
  }
  int T() const { return cu.back(); }
  const float* q() const { return qkv.data(); }
  const float* k() const { return qkv.data() + dims.n_heads * dims.head_dim; }
  const float* v() const { return k() + dims.n_kv_heads * dims.head_dim; }
  std::vector<int32_t> lens() const {
    std::vector<int32_t> l;
    for (size_t s = 0; s + 1 < cu.size(); ++s) l.push_back(cu[s + 1] - cu[s]);
    return l;
  }
  std::vector<float> Forward(std::vector<float>* lse = nullptr) const {
    const auto l = lens();
    std::vector<float> out(static_cast<size_t>(T()) * dims.n_heads * dims.head_dim, NAN);  // poisoned
    if (lse) lse->assign(static_cast<size_t>(T()) * dims.n_heads, NAN);
    const AttentionBatch batch{static_cast<int>(l.size()), cu.data(), l.data(), T()};
    cpu::AttentionForward(dims, batch, q(), stride, PackedKv{k(), v(), stride, cu.data()}, out.data(),
                          dims.n_heads * dims.head_dim, lse ? lse->data() : nullptr);
    return out;
  }
  // d(Σ dout ⊙ Forward())/d(qkv), in the fused qkv layout.
  std::vector<float> Backward(const std::vector<float>& dout) const {
    std::vector<float> lse;
    const auto out = Forward(&lse);
    std::vector<float> dqkv(qkv.size(), 0.f);
    const auto l = lens();
    const AttentionBatch batch{static_cast<int>(l.size()), cu.data(), l.data(), T()};
    const int k_off = dims.n_heads * dims.head_dim, v_off = k_off + dims.n_kv_heads * dims.head_dim;
    cpu::AttentionBackward(dims, batch, q(), stride, PackedKv{k(), v(), stride, cu.data()}, out.data(),
                           dims.n_heads * dims.head_dim, dout.data(), lse.data(), dqkv.data(), dqkv.data() + k_off,
                           dqkv.data() + v_off, stride);
    return dqkv;
  }
};

// GoogleTest prints a failing case's parameter with this (instead of its raw bytes).
void PrintTo(const Case& c, std::ostream* os) {
  *os << "{sequence lengths {";
  for (size_t i = 0; i < c.lens.size(); ++i) *os << (i ? ", " : "") << c.lens[i];
  *os << "}, " << c.H << " query heads, " << c.Hkv << " KV heads, head dim " << c.D << (c.alibi ? ", ALiBi" : ", no ALiBi")
      << "}";
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  std::string name = "len";
  for (int l : info.param.lens) name += "_" + std::to_string(l);
  return name + "_H" + std::to_string(info.param.H) + "_kv" + std::to_string(info.param.Hkv) + "_D" +
         std::to_string(info.param.D) + (info.param.alibi ? "_alibi" : "");
}

class AttentionCases : public ::testing::TestWithParam<Case> {};
// Finite differences cost a forward per probe: small shapes only.
class AttentionGradCases : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionCases, MatchesNaiveReference) {
  const Case& c = GetParam();
  Qkv x(c, 1);
  const auto out = x.Forward();
  const auto ref = NaiveAttention(x.dims, x.cu, x.lens(), x.q(), x.stride, x.cu, x.k(), x.v(), x.stride);
  EXPECT_LT(RelError(out, ref), 2e-6);
}

TEST_P(AttentionGradCases, BackwardMatchesFiniteDifferences) {
  const Case& c = GetParam();
  Qkv x(c, 2);
  const int width = c.H * c.D;
  const auto w = RandomVector(static_cast<size_t>(x.T()) * width, 3);  // loss = Σ w ⊙ out
  auto loss = [&](Qkv& y) {
    const auto out = y.Forward();
    double s = 0;
    for (size_t i = 0; i < out.size(); ++i) s += static_cast<double>(w[i]) * out[i];
    return s;
  };
  const std::vector<float> dqkv = x.Backward(w);
  std::mt19937 rng(4);
  double max_err = 0;
  for (int trial = 0; trial < 60; ++trial) {
    const size_t i = rng() % x.qkv.size();
    const float h = 1e-2f, orig = x.qkv[i];
    x.qkv[i] = orig + h;
    const double up = loss(x);
    x.qkv[i] = orig - h;
    const double down = loss(x);
    x.qkv[i] = orig;
    const double fd = (up - down) / (2 * h);
    max_err = std::max(max_err, std::abs(fd - dqkv[i]) / (std::abs(fd) + 1e-1));
  }
  EXPECT_LT(max_err, 2e-2);
}

// Over sequences longer than a key tile and a query block, so every path of
// the tiled backward (several tiles, GQA groups, ALiBi, odd head dims) runs.
TEST_P(AttentionCases, BackwardMatchesNaiveReference) {
  const Case& c = GetParam();
  Qkv x(c, 5);
  const int width = c.H * c.D;
  const auto dout = RandomVector(static_cast<size_t>(x.T()) * width, 6);
  const std::vector<float> dqkv = x.Backward(dout);
  const auto ref = testing::NaiveAttentionBackward(x.dims, x.cu, x.qkv.data(), x.stride, dout.data());
  EXPECT_LT(RelError(dqkv, ref), 2e-5);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionCases,
    ::testing::Values(Case{{1}, 4, 4, 16, false}, Case{{7}, 4, 2, 16, false}, Case{{129}, 8, 8, 16, false},
                      Case{{37, 120, 8, 200}, 8, 8, 64, false}, Case{{37, 120, 8, 200}, 8, 2, 64, true},
                      Case{{1, 7, 129}, 8, 1, 32, true}, Case{{5, 9}, 4, 1, 8, true}, Case{{3, 1, 6}, 4, 2, 8, false},
                      Case{{300}, 4, 4, 128, false}, Case{{5, 70}, 4, 2, 12, true}),
    CaseName);

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionGradCases,
                         ::testing::Values(Case{{1}, 4, 4, 16, false}, Case{{7}, 4, 2, 16, false}, Case{{5, 9}, 4, 1, 8, true},
                                           Case{{3, 1, 6}, 4, 2, 8, false}, Case{{20, 13}, 4, 2, 16, true},
                                           Case{{9, 4}, 2, 1, 12, false}),
                         CaseName);

TEST(Attention, PackedEqualsPerSequence) {
  const Case c{{37, 120, 8, 200}, 8, 2, 32, false};
  Qkv packed(c, 5);
  const auto all = packed.Forward();
  const int width = c.H * c.D;
  for (size_t s = 0; s < c.lens.size(); ++s) {
    Qkv one(Case{{c.lens[s]}, c.H, c.Hkv, c.D, c.alibi}, 0);
    std::copy(packed.qkv.begin() + packed.cu[s] * packed.stride, packed.qkv.begin() + packed.cu[s + 1] * packed.stride,
              one.qkv.begin());
    const auto alone = one.Forward();
    for (int i = 0; i < c.lens[s] * width; ++i) ASSERT_EQ(alone[i], all[packed.cu[s] * width + i]) << "sequence " << s;
  }
}

TEST(Attention, PerturbingOneSequenceLeavesOthersUnchanged) {
  const Case c{{37, 120, 8, 200}, 8, 4, 16, true};
  Qkv x(c, 6);
  const auto before = x.Forward();
  for (long i = x.cu[1] * x.stride; i < x.cu[2] * x.stride; ++i) x.qkv[i] += 1.0f;  // sequence 1 only
  const auto after = x.Forward();
  const int width = c.H * c.D;
  for (int t = 0; t < x.T(); ++t) {
    const bool in_seq1 = t >= x.cu[1] && t < x.cu[2];
    bool same = true;
    for (int e = 0; e < width; ++e) same &= before[t * width + e] == after[t * width + e];
    EXPECT_EQ(same, !in_seq1) << "token " << t;
  }
}

TEST(Attention, CausalFutureDoesNotLeak) {
  Qkv x(Case{{50}, 4, 4, 16, false}, 7);
  const auto before = x.Forward();
  for (long i = 30 * x.stride; i < 50 * x.stride; ++i) x.qkv[i] -= 0.5f;  // tokens 30..49
  const auto after = x.Forward();
  for (int i = 0; i < 30 * 4 * 16; ++i) ASSERT_EQ(before[i], after[i]);
}

TEST(Attention, GqaEqualsMhaWithRepeatedKvHeads) {
  const Case gqa{{37, 120, 8}, 8, 2, 16, false}, mha{{37, 120, 8}, 8, 8, 16, false};
  Qkv g(gqa, 8), m(mha, 0);
  for (int t = 0; t < g.T(); ++t) {
    const float* src = g.qkv.data() + t * g.stride;
    float* dst = m.qkv.data() + t * m.stride;
    std::copy(src, src + 8 * 16, dst);  // queries
    for (int h = 0; h < 8; ++h) {       // KV head h/4 repeated for query head h
      std::copy(src + 8 * 16 + (h / 4) * 16, src + 8 * 16 + (h / 4 + 1) * 16, dst + 8 * 16 + h * 16);
      std::copy(src + 10 * 16 + (h / 4) * 16, src + 10 * 16 + (h / 4 + 1) * 16, dst + 16 * 16 + h * 16);
    }
  }
  EXPECT_LT(RelError(g.Forward(), m.Forward()), 1e-6);
}

TEST(Attention, AlibiEqualsExplicitAdditiveBias) {
  Case c{{37, 64}, 8, 8, 16, true};
  Qkv x(c, 9);
  const auto out = x.Forward();
  AttentionDims plain = x.dims;
  plain.alibi = false;
  // The tutorial's bias: slope_h · min(j - i, 0), added before the softmax.
  auto bias = [](int h, int i, int j) { return std::pow(std::pow(2.0, -8.0 / 8), h + 1) * std::min(j - i, 0); };
  const auto ref = NaiveAttention(plain, x.cu, x.lens(), x.q(), x.stride, x.cu, x.k(), x.v(), x.stride, bias);
  EXPECT_LT(RelError(out, ref), 2e-6);
}

// New tokens at an offset into a cached context, read through a shuffled block
// table, give the same rows as full causal attention over the whole sequence.
TEST(Attention, OffsetQueriesOverPagedContextEqualFullAttention) {
  for (int block_size : {16, 32}) {
    for (bool alibi : {false, true}) {
      const std::vector<int> ctx_lens{37, 120, 8, 200};
      const std::vector<int> q_lens{3, 1, 8, 17};  // the last q_len tokens of each are "new"
      const Case full_case{ctx_lens, 8, 2, 32, alibi};
      Qkv full(full_case, 10);
      const auto ref = full.Forward();
      const AttentionDims& d = full.dims;
      const int kv_dim = d.n_kv_heads * d.head_dim, width = d.n_heads * d.head_dim;
      const int max_blocks = (200 + block_size - 1) / block_size;
      const int num_blocks = max_blocks * 4;
      std::vector<int32_t> perm(num_blocks);
      for (int i = 0; i < num_blocks; ++i) perm[i] = (i * 3 + 5) % num_blocks;  // 3 is coprime with 52 and 28: a permutation
      std::vector<float> kc(static_cast<size_t>(num_blocks) * block_size * kv_dim, NAN), vc(kc.size(), NAN);
      std::vector<int32_t> tables(4 * max_blocks, -1), cu_q{0}, ctx;
      std::vector<float> q;
      for (int s = 0; s < 4; ++s) {
        for (int b = 0; b < max_blocks; ++b) tables[s * max_blocks + b] = perm[s * max_blocks + b];
        std::vector<int32_t> slots;
        for (int j = 0; j < ctx_lens[s]; ++j) slots.push_back(tables[s * max_blocks + j / block_size] * block_size + j % block_size);
        cpu::KvAppend(full.qkv.data() + full.cu[s] * full.stride, full.stride, ctx_lens[s], slots.data(), d, kc.data(), vc.data());
        for (int i = ctx_lens[s] - q_lens[s]; i < ctx_lens[s]; ++i)
          q.insert(q.end(), full.qkv.begin() + (full.cu[s] + i) * full.stride, full.qkv.begin() + (full.cu[s] + i) * full.stride + width);
        cu_q.push_back(cu_q.back() + q_lens[s]);
        ctx.push_back(ctx_lens[s]);
      }
      std::vector<float> out(static_cast<size_t>(cu_q.back()) * width, NAN);
      const AttentionBatch batch{4, cu_q.data(), ctx.data(), cu_q.back()};
      cpu::PagedAttentionForward(d, batch, q.data(), width, PagedKv{kc.data(), vc.data(), block_size, tables.data(), max_blocks},
                                 out.data(), width);
      for (int s = 0; s < 4; ++s)
        for (int i = 0; i < q_lens[s]; ++i)
          for (int e = 0; e < width; ++e)
            // Bit-identical: a row's output may not depend on how its sequence was chunked.
            ASSERT_EQ(out[(cu_q[s] + i) * width + e], ref[(full.cu[s] + ctx_lens[s] - q_lens[s] + i) * width + e])
                << "block " << block_size << " seq " << s << " query " << i;
    }
  }
}

}  // namespace
}  // namespace tinygpt
