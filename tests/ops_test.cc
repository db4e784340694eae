// Dense CPU ops against double-precision references, and every backward
// against central finite differences.
#include <gtest/gtest.h>

#include <cstdio>
#include <functional>

#include "kernels/cpu/blas_core.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/linear_rows.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/sampling.h"
#include "tests/support/reference.h"

namespace tinygpt {
namespace {

using testing::RandomVector;
using testing::RelError;

// Checks analytic gradient `grad` of loss() w.r.t. `x` at random coordinates.
void ExpectFiniteDifferences(std::vector<float>& x, const std::vector<float>& grad, const std::function<double()>& loss,
                             float h = 1e-2f, double tol = 2e-2) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 40; ++trial) {
    const size_t i = rng() % x.size();
    const float orig = x[i];
    x[i] = orig + h;
    const double up = loss();
    x[i] = orig - h;
    const double down = loss();
    x[i] = orig;
    const double fd = (up - down) / (2 * h);
    ASSERT_NEAR(grad[i], fd, tol * (std::abs(fd) + 0.1)) << "coordinate " << i;
  }
}

double Dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

// y = x·w^T + b in double.
std::vector<double> ReferenceLinear(const std::vector<float>& x, const std::vector<float>& w, const float* b, int T, int in,
                                    int out) {
  std::vector<double> y(static_cast<size_t>(T) * out);
  for (int t = 0; t < T; ++t)
    for (int o = 0; o < out; ++o) {
      double s = b ? b[o] : 0.0;
      for (int i = 0; i < in; ++i) s += static_cast<double>(x[t * in + i]) * w[o * in + i];
      y[static_cast<size_t>(t) * out + o] = s;
    }
  return y;
}

TEST(Linear, ForwardMatchesReference) {
  for (auto [T, in, out] : {std::tuple{1, 7, 5}, {7, 129, 33}, {129, 64, 200}}) {
    auto x = RandomVector(T * in, 1), w = RandomVector(out * in, 2), b = RandomVector(out, 3);
    std::vector<float> y(T * out, NAN);
    cpu::LinearForward(x.data(), w.data(), b.data(), y.data(), T, in, out);
    EXPECT_LT(RelError(y, ReferenceLinear(x, w, b.data(), T, in, out)), 1e-5);
  }
}

// dx, dw and db of larger shapes than finite differences can afford: several
// row blocks and panels, narrow panels on both sides (in and out not multiples of 16).
TEST(Linear, BackwardMatchesReference) {
  for (auto [T, in, out] : {std::tuple{67, 128, 48}, {130, 40, 129}, {9, 17, 300}}) {
    auto x = RandomVector(T * in, 1), w = RandomVector(out * in, 2), dy = RandomVector(T * out, 3);
    std::vector<float> dx(T * in, NAN), dw = RandomVector(out * in, 4), db = RandomVector(out, 5);
    const std::vector<float> dw0 = dw, db0 = db;  // accumulated into
    cpu::LinearBackward(dy.data(), x.data(), w.data(), dx.data(), dw.data(), db.data(), T, in, out);
    std::vector<double> ref_dx(T * in, 0.0), ref_dw(dw0.begin(), dw0.end()), ref_db(db0.begin(), db0.end());
    for (int t = 0; t < T; ++t)
      for (int o = 0; o < out; ++o) {
        const double g = dy[t * out + o];
        ref_db[o] += g;
        for (int i = 0; i < in; ++i) {
          ref_dx[t * in + i] += g * w[o * in + i];
          ref_dw[o * in + i] += g * x[t * in + i];
        }
      }
    EXPECT_LT(RelError(dx, ref_dx), 1e-5) << T << "x" << in << "->" << out;
    EXPECT_LT(RelError(dw, ref_dw), 1e-5) << T << "x" << in << "->" << out;
    EXPECT_LT(RelError(db, ref_db), 1e-5) << T << "x" << in << "->" << out;
  }
}

TEST(Linear, BackwardMatchesFiniteDifferences) {
  const int T = 7, in = 9, out = 5;
  auto x = RandomVector(T * in, 1), w = RandomVector(out * in, 2), b = RandomVector(out, 3), g = RandomVector(T * out, 4);
  auto loss = [&] {
    std::vector<float> y(T * out);
    cpu::LinearForward(x.data(), w.data(), b.data(), y.data(), T, in, out);
    return Dot(y, g);
  };
  std::vector<float> dx(T * in, NAN), dw(out * in, 0.f), db(out, 0.f);  // dx is written, dw/db accumulated
  cpu::LinearBackward(g.data(), x.data(), w.data(), dx.data(), dw.data(), db.data(), T, in, out);
  ExpectFiniteDifferences(x, dx, loss);
  ExpectFiniteDifferences(w, dw, loss);
  ExpectFiniteDifferences(b, db, loss);
}

TEST(LayerNorm, ForwardMatchesReferenceAndBackwardMatchesFiniteDifferences) {
  const int T = 7, C = 33;
  auto x = RandomVector(T * C, 1, 2.f), w = RandomVector(C, 2), b = RandomVector(C, 3), g = RandomVector(T * C, 4);
  std::vector<float> y(T * C, NAN), mean(T), rstd(T);
  cpu::LayerNormForward(x.data(), w.data(), b.data(), y.data(), mean.data(), rstd.data(), T, C, 1e-5f);
  std::vector<double> ref(T * C);
  for (int t = 0; t < T; ++t) {
    double m = 0, v = 0;
    for (int i = 0; i < C; ++i) m += x[t * C + i];
    m /= C;
    for (int i = 0; i < C; ++i) v += (x[t * C + i] - m) * (x[t * C + i] - m);
    v /= C;
    for (int i = 0; i < C; ++i) ref[t * C + i] = (x[t * C + i] - m) / std::sqrt(v + 1e-5) * w[i] + b[i];
  }
  EXPECT_LT(RelError(y, ref), 1e-5);
  auto loss = [&] {
    std::vector<float> yy(T * C);
    cpu::LayerNormForward(x.data(), w.data(), b.data(), yy.data(), nullptr, nullptr, T, C, 1e-5f);
    return Dot(yy, g);
  };
  std::vector<float> dx(T * C, 0.f), dw(C, 0.f), db(C, 0.f);
  cpu::LayerNormBackward(g.data(), x.data(), w.data(), mean.data(), rstd.data(), dx.data(), dw.data(), db.data(), T, C);
  ExpectFiniteDifferences(x, dx, loss);
  ExpectFiniteDifferences(w, dw, loss);
  ExpectFiniteDifferences(b, db, loss);
}

// The fused op gives exactly the two ops' results, across its row blocks.
TEST(SwiGLU, FusedLinearEqualsLinearThenSwiGLU) {
  for (auto [T, in, F] : {std::tuple{1, 16, 8}, {7, 33, 40}, {500, 128, 512}}) {
    auto x = RandomVector(T * in, 1), w = RandomVector(2 * F * in, 2), b = RandomVector(2 * F, 3);
    std::vector<float> h(T * 2 * F, NAN), out(T * F, NAN), ref_h(T * 2 * F), ref_out(T * F);
    cpu::LinearSwiGLUForward(x.data(), w.data(), b.data(), h.data(), out.data(), T, in, F);
    cpu::LinearForward(x.data(), w.data(), b.data(), ref_h.data(), T, in, 2 * F);
    cpu::SwiGLUForward(ref_h.data(), ref_out.data(), T, F);
    EXPECT_EQ(h, ref_h) << T << "x" << in << "->" << F;
    EXPECT_EQ(out, ref_out) << T << "x" << in << "->" << F;
  }
}

TEST(SwiGLU, FusedLinearBackwardEqualsLinearThenSwiGLUBackward) {
  for (auto [T, F, out] : {std::tuple{1, 8, 16}, {7, 40, 33}, {500, 512, 128}}) {
    auto dy = RandomVector(T * out, 1), w = RandomVector(out * F, 2), h = RandomVector(T * 2 * F, 3), x = RandomVector(T * F, 4);
    std::vector<float> dh(T * 2 * F, NAN), dsw(T * F), ref_dh(T * 2 * F), dw(out * F, 0.f);
    cpu::SwiGLULinearBackwardInput(dy.data(), w.data(), h.data(), dh.data(), T, F, out);
    cpu::LinearBackward(dy.data(), x.data(), w.data(), dsw.data(), dw.data(), nullptr, T, F, out);
    cpu::SwiGLUBackward(dsw.data(), h.data(), ref_dh.data(), T, F);
    EXPECT_EQ(dh, ref_dh) << T << "x" << out << "->" << F;
  }
}

TEST(SwiGLU, ForwardMatchesReferenceAndBackwardMatchesFiniteDifferences) {
  const int T = 7, F = 129;
  auto h = RandomVector(T * 2 * F, 1, 2.f), g = RandomVector(T * F, 2);
  std::vector<float> out(T * F, NAN);
  cpu::SwiGLUForward(h.data(), out.data(), T, F);
  std::vector<double> ref(T * F);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < F; ++i) {
      const double a = h[t * 2 * F + i], b = h[t * 2 * F + F + i];
      ref[t * F + i] = a / (1 + std::exp(-a)) * b;
    }
  EXPECT_LT(RelError(out, ref), 1e-6);
  auto loss = [&] {
    std::vector<float> o(T * F);
    cpu::SwiGLUForward(h.data(), o.data(), T, F);
    return Dot(o, g);
  };
  std::vector<float> dh(h.size(), NAN);  // written, not accumulated into
  cpu::SwiGLUBackward(g.data(), h.data(), dh.data(), T, F);
  ExpectFiniteDifferences(h, dh, loss);
}

TEST(Embedding, ForwardAndBackward) {
  const int T = 7, C = 5, V = 11, P = 9;
  auto tok = RandomVector(V * C, 1), pos = RandomVector(P * C, 2), g = RandomVector(T * C, 3);
  std::vector<int32_t> tokens{3, 3, 0, 10, 5, 3, 1}, positions{0, 1, 2, 3, 0, 1, 8};
  auto loss = [&] {
    std::vector<float> o(T * C);
    cpu::EmbeddingForward(tokens.data(), positions.data(), tok.data(), pos.data(), o.data(), T, C);
    return Dot(o, g);
  };
  std::vector<float> out(T * C);
  cpu::EmbeddingForward(tokens.data(), positions.data(), tok.data(), pos.data(), out.data(), T, C);
  EXPECT_EQ(out[3 * C + 2], tok[10 * C + 2] + pos[3 * C + 2]);
  std::vector<float> dtok(tok.size(), 0.f), dpos(pos.size(), 0.f);
  cpu::EmbeddingBackward(g.data(), tokens.data(), positions.data(), dtok.data(), dpos.data(), T, C);
  ExpectFiniteDifferences(tok, dtok, loss);
  ExpectFiniteDifferences(pos, dpos, loss);
}

TEST(CrossEntropy, LossAndGradient) {
  const int T = 7, V = 13;
  auto logits = RandomVector(T * V, 1, 3.f);
  std::vector<int32_t> targets{0, 12, 5, 5, 1, 7, 3};
  std::vector<float> dlogits(T * V);
  int correct = -1;
  const float loss = cpu::CrossEntropy(logits.data(), targets.data(), dlogits.data(), T, V, &correct);
  double ref = 0;
  int hits = 0;
  for (int t = 0; t < T; ++t) {
    double mx = -1e30, s = 0;
    int arg = 0;
    for (int i = 0; i < V; ++i)
      if (logits[t * V + i] > mx) mx = logits[t * V + i], arg = i;
    for (int i = 0; i < V; ++i) s += std::exp(logits[t * V + i] - mx);
    ref += (mx + std::log(s) - logits[t * V + targets[t]]) / T;
    hits += arg == targets[t];
  }
  EXPECT_NEAR(loss, ref, 1e-5);
  EXPECT_EQ(correct, hits);
  ExpectFiniteDifferences(logits, dlogits, [&] { return cpu::CrossEntropy(logits.data(), targets.data(), nullptr, T, V, nullptr); });
}

TEST(AdamW, OneStepMatchesClosedForm) {
  std::vector<float> p{1.f, -2.f}, g{0.5f, -0.25f}, m(2, 0.f), v(2, 0.f);
  cpu::AdamW(p.data(), g.data(), m.data(), v.data(), 2, 0.1f, 0.9f, 0.999f, 1e-8f, 0.01f, 1);
  // Step 1: m̂ = g, v̂ = g², so the update is lr·(sign(g) + wd·p).
  EXPECT_NEAR(p[0], 1.f - 0.1f * (1.f + 0.01f * 1.f), 1e-6);
  EXPECT_NEAR(p[1], -2.f - 0.1f * (-1.f + 0.01f * -2.f), 1e-6);
}

// The CPU backend's training entry points (kernels/backend.h) are the ops
// above plus two scalings, for fp16 loss scaling and clipping on any backend:
// the loss gradient comes out multiplied by dloss_scale, and AdamW with a
// grad scale equals AdamW on gradients scaled first.
TEST(CpuBackendTraining, LossScaleAndGradScale) {
  auto b = CreateCpuBackend();
  const int T = 9, V = 37;
  std::vector<float> logits = RandomVector(T * V, 4, 3.f), d1(T * V), d2(T * V);
  std::vector<int32_t> targets(T);
  for (int t = 0; t < T; ++t) targets[t] = (t * 7) % V;
  const float l1 = b->CrossEntropy(logits.data(), targets.data(), d1.data(), T, V, 1.f, nullptr);
  const float l2 = b->CrossEntropy(logits.data(), targets.data(), d2.data(), T, V, 512.f, nullptr);
  EXPECT_EQ(l1, l2);
  for (int i = 0; i < T * V; ++i) EXPECT_NEAR(d2[i], 512.f * d1[i], 1e-6f * 512.f) << i;

  const size_t n = 1000;
  std::vector<float> p1 = RandomVector(n, 5), g = RandomVector(n, 6), m1 = RandomVector(n, 7, 0.1f), v1(n, 0.01f);
  std::vector<float> p2 = p1, m2 = m1, v2 = v1, g2 = g;
  for (auto& x : g2) x *= 0.25f;
  b->AdamW(p1.data(), g.data(), m1.data(), v1.data(), n, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f, 3, 0.25f, nullptr);
  cpu::AdamW(p2.data(), g2.data(), m2.data(), v2.data(), n, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f, 3);
  EXPECT_EQ(p1, p2);
  EXPECT_EQ(m1, m2);
  EXPECT_EQ(v1, v2);
}

TEST(Sampling, GreedyTopKTopP) {
  const std::vector<float> logits{0.1f, 3.0f, 2.9f, -1.f, 0.f};
  EXPECT_EQ(cpu::SampleToken(logits.data(), 5, {0.f, 0, 1.f, 0.7f}), 1);
  // top_k = 2 never leaves {1, 2}, whatever the draw.
  for (float u = 0.f; u < 1.f; u += 0.05f) {
    const int t = cpu::SampleToken(logits.data(), 5, {1.f, 2, 1.f, u});
    EXPECT_TRUE(t == 1 || t == 2);
  }
  // A tiny nucleus keeps only the most likely token.
  EXPECT_EQ(cpu::SampleToken(logits.data(), 5, {1.f, 0, 0.1f, 0.99f}), 1);
  // Inverse CDF: frequencies follow the softmax.
  int counts[5] = {0};
  for (int i = 0; i < 10000; ++i) counts[cpu::SampleToken(logits.data(), 5, {1.f, 0, 1.f, (i + 0.5f) / 10000})]++;
  double z = 0;
  for (float l : logits) z += std::exp(l);
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(counts[i] / 10000.0, std::exp(logits[i]) / z, 2e-3);
}

}  // namespace
}  // namespace tinygpt

namespace tinygpt {
namespace {

// Each row's output is bitwise the same whatever the number of rows in the
// call, on every vector ISA the CPU has, and the ISAs agree bit for bit.
TEST(Linear, RowInvariantKernelIsBatchInvariant) {
  // Shapes cover full 16-output panels, a narrow last panel, in < 16 and odd
  // in; T = 67 runs the threaded path (row blocks of 24, 6-row tiles and a
  // 1-row remainder); the parts run 1- to 7-row tiles on the serial path.
  std::vector<cpu::RowsIsa> isas;
  for (auto isa : {cpu::RowsIsa::kAvx2, cpu::RowsIsa::kAvx512})
    if (cpu::RowsIsaSupported(isa)) isas.push_back(isa);
  const cpu::RowsIsa default_isa = cpu::CurrentRowsIsa();
  if (isas.size() < 2) std::printf("note: only AVX2 on this CPU; the AVX-512 tiles were not run\n");
  for (auto [in, out] : {std::pair{128, 1024}, {512, 128}, {13, 7}, {129, 33}, {64, 200}}) {
    const int T = 67;
    auto x = RandomVector(T * in, 1), w = RandomVector(out * in, 2), b = RandomVector(out, 3);
    std::vector<float> packed(out * in), first_isa;
    cpu::PackLinearWeight(w.data(), packed.data(), in, out);
    for (cpu::RowsIsa isa : isas) {
      SCOPED_TRACE(cpu::RowsIsaName(isa));
      cpu::SetRowsIsa(isa);
      std::vector<float> all(T * out, NAN);
      cpu::LinearForwardRowInvariant(x.data(), packed.data(), b.data(), all.data(), T, in, out);
      EXPECT_LT(RelError(all, ReferenceLinear(x, w, b.data(), T, in, out)), 1e-5) << in << "->" << out;
      for (int t0 : {0, 5, 60, 66})
        for (int M : {1, 2, 3, 4, 5, 6, 7}) {
          if (t0 + M > T) continue;
          std::vector<float> part(M * out, NAN);
          cpu::LinearForwardRowInvariant(x.data() + t0 * in, packed.data(), b.data(), part.data(), M, in, out);
          for (int i = 0; i < M * out; ++i) ASSERT_EQ(part[i], all[t0 * out + i]) << "rows " << t0 << "+" << M;
        }
      if (first_isa.empty())
        first_isa = all;
      else
        for (int i = 0; i < T * out; ++i) ASSERT_EQ(all[i], first_isa[i]) << "AVX2 and AVX-512 differ at " << i;
      // Without a bias: the same products.
      std::vector<float> nobias(T * out, NAN);
      cpu::LinearForwardRowInvariant(x.data(), packed.data(), nullptr, nobias.data(), T, in, out);
      EXPECT_LT(RelError(nobias, ReferenceLinear(x, w, nullptr, T, in, out)), 1e-5) << in << "->" << out << " no bias";
    }
  }
  cpu::SetRowsIsa(default_isa);
}

}  // namespace
}  // namespace tinygpt

#include "kernels/cpu/vec_math.h"

namespace tinygpt {
namespace {

TEST(VecMath, ExpMatchesLibmAndIgnoresPosition) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> dist(-87.f, 87.f);
  std::vector<float> x(1003);
  for (auto& v : x) v = dist(rng);
  x[0] = -INFINITY;
  x[1] = 0.f;
  x[2] = -100.f;  // underflows to (nearly) zero
  std::vector<float> y = x;
  cpu::ExpInPlace(y.data(), static_cast<int>(y.size()));
  EXPECT_EQ(y[0], 0.f);
  EXPECT_EQ(y[1], 1.f);
  EXPECT_LT(y[2], 1e-37f);
  for (size_t i = 3; i < x.size(); ++i) ASSERT_NEAR(y[i], std::exp(static_cast<double>(x[i])), 3e-7 * std::exp(static_cast<double>(x[i]))) << x[i];
  // The same value gives the same result wherever it sits (vector body or tail).
  for (int offset : {1, 5, 7}) {
    std::vector<float> z(x.begin() + offset, x.begin() + offset + 13);
    cpu::ExpInPlace(z.data(), 13);
    for (int i = 0; i < 13; ++i) ASSERT_EQ(z[i], y[offset + i]);
  }
}

TEST(BlasCore, GenericFallbackIsReplacedByTheBestKernelsTheCpuRuns) {
  EXPECT_EQ(cpu::BlasCoreOverride("Prescott", true, true, true), "Cooperlake");
  EXPECT_EQ(cpu::BlasCoreOverride("Prescott", false, true, true), "SkylakeX");
  EXPECT_EQ(cpu::BlasCoreOverride("Nehalem", false, false, true), "Haswell");
  EXPECT_EQ(cpu::BlasCoreOverride("Prescott", false, false, false), "");  // nothing better to run
  EXPECT_EQ(cpu::BlasCoreOverride("Cooperlake", true, true, true), "");   // a real pick stays
  EXPECT_EQ(cpu::BlasCoreOverride("Zen", false, false, true), "");
}

}  // namespace
}  // namespace tinygpt
