// Naive double-precision references for tests only: attention with the full
// score matrix materialized, and a small random-input helper.
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "kernels/attention_args.h"

namespace tinygpt::testing {

inline std::vector<float> RandomVector(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// bias(h, i_abs, j) is added to the scaled score of query position i_abs and
// key j; the reference masks j > i_abs itself.
using BiasFn = std::function<double(int h, int i_abs, int j)>;

// Packed queries/keys as in AttentionForward, each with its own row stride.
inline std::vector<double> NaiveAttention(const AttentionDims& d, const std::vector<int32_t>& cu_q,
                                          const std::vector<int32_t>& ctx, const float* q, long q_stride,
                                          const std::vector<int32_t>& cu_k, const float* k, const float* v,
                                          long kv_stride, const BiasFn& bias = nullptr) {
  const int D = d.head_dim, H = d.n_heads, G = d.group();
  const int total_q = cu_q.back();
  std::vector<double> out(static_cast<size_t>(total_q) * H * D, 0.0);
  for (size_t s = 0; s + 1 < cu_q.size(); ++s) {
    const int q_len = cu_q[s + 1] - cu_q[s], n_k = ctx[s], offset = n_k - q_len;
    for (int h = 0; h < H; ++h) {
      const int kvh = h / G;
      const double slope = d.alibi ? AlibiSlope(h, H) : 0.0;
      std::vector<double> scores(static_cast<size_t>(q_len) * n_k);  // the full matrix, on purpose
      for (int i = 0; i < q_len; ++i) {
        const float* qi = q + (cu_q[s] + i) * q_stride + h * D;
        const int pos = offset + i;
        double mx = -std::numeric_limits<double>::infinity();
        for (int j = 0; j < n_k; ++j) {
          double sc = -std::numeric_limits<double>::infinity();
          if (j <= pos) {
            const float* kj = k + (cu_k[s] + j) * kv_stride + kvh * D;
            double dot = 0;
            for (int e = 0; e < D; ++e) dot += static_cast<double>(qi[e]) * kj[e];
            sc = dot / std::sqrt(static_cast<double>(D)) + slope * (j - pos) + (bias ? bias(h, pos, j) : 0.0);
          }
          scores[static_cast<size_t>(i) * n_k + j] = sc;
          mx = std::max(mx, sc);
        }
        double sum = 0;
        for (int j = 0; j < n_k; ++j) sum += scores[i * n_k + j] = std::exp(scores[i * n_k + j] - mx);
        double* o = &out[(static_cast<size_t>(cu_q[s] + i) * H + h) * D];
        for (int j = 0; j < n_k; ++j) {
          const float* vj = v + (cu_k[s] + j) * kv_stride + kvh * D;
          for (int e = 0; e < D; ++e) o[e] += scores[i * n_k + j] / sum * vj[e];
        }
      }
    }
  }
  return out;
}

// Gradients of Σ dout ⊙ attention(q, k, v) for fused qkv rows (stride
// floats: n_heads query heads, then n_kv_heads key heads, then value heads),
// self-attention over each sequence; returned in the same fused layout.
inline std::vector<double> NaiveAttentionBackward(const AttentionDims& d, const std::vector<int32_t>& cu,
                                                  const float* qkv, long stride, const float* dout) {
  const int D = d.head_dim, H = d.n_heads, G = d.group();
  const long k_off = static_cast<long>(H) * D, v_off = k_off + static_cast<long>(d.n_kv_heads) * D;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> grad(static_cast<size_t>(cu.back()) * stride, 0.0);
  for (size_t s = 0; s + 1 < cu.size(); ++s) {
    const int n = cu[s + 1] - cu[s];
    for (int h = 0; h < H; ++h) {
      const int kvh = h / G;
      const double slope = d.alibi ? AlibiSlope(h, H) : 0.0;
      auto row = [&](int i) { return static_cast<long>(cu[s] + i) * stride; };
      for (int i = 0; i < n; ++i) {
        const float* qi = qkv + row(i) + h * D;
        const float* doi = dout + static_cast<long>(cu[s] + i) * H * D + h * D;
        std::vector<double> p(i + 1), dp(i + 1);  // keys 0..i: the row's scores, then probabilities
        double mx = -std::numeric_limits<double>::infinity(), sum = 0, pdp = 0;
        for (int j = 0; j <= i; ++j) {
          double dot = 0;
          for (int e = 0; e < D; ++e) dot += static_cast<double>(qi[e]) * qkv[row(j) + k_off + kvh * D + e];
          p[j] = dot * scale + slope * (j - i);
          mx = std::max(mx, p[j]);
        }
        for (int j = 0; j <= i; ++j) sum += p[j] = std::exp(p[j] - mx);
        for (int j = 0; j <= i; ++j) {
          p[j] /= sum;
          double dot = 0;
          for (int e = 0; e < D; ++e) dot += static_cast<double>(doi[e]) * qkv[row(j) + v_off + kvh * D + e];
          dp[j] = dot;
          pdp += p[j] * dot;
        }
        for (int j = 0; j <= i; ++j) {
          const double ds = p[j] * (dp[j] - pdp) * scale;
          for (int e = 0; e < D; ++e) {
            grad[row(i) + h * D + e] += ds * qkv[row(j) + k_off + kvh * D + e];
            grad[row(j) + k_off + kvh * D + e] += ds * qi[e];
            grad[row(j) + v_off + kvh * D + e] += p[j] * doi[e];
          }
        }
      }
    }
  }
  return grad;
}

// Max |a - b| / (max |b| + tiny): one relative error for a whole tensor.
template <class A, class B>
double RelError(const A& a, const B& b) {
  double diff = 0, ref = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    if (std::isnan(static_cast<double>(a[i]))) return std::numeric_limits<double>::infinity();
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    ref = std::max(ref, std::abs(static_cast<double>(b[i])));
  }
  return diff / (ref + 1e-30);
}

inline std::vector<int32_t> CuSeqlens(const std::vector<int>& lens) {
  std::vector<int32_t> cu{0};
  for (int l : lens) cu.push_back(cu.back() + l);
  return cu;
}

}  // namespace tinygpt::testing
