#include "model/transformer.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "kernels/cpu/ops.h"

namespace tinygpt {

Transformer::Transformer(const ModelConfig& cfg)
    : cfg_(cfg), layout_(cfg), params_(layout_.total()), grads_(layout_.total()), acts_(cfg.n_layers) {}

void Transformer::InitParams(uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (const auto& t : layout_.tensors()) {
    float* p = params_.data() + t.offset;
    const size_t n = t.numel();
    const bool is_bias = t.name.size() > 5 && t.name.compare(t.name.size() - 5, 5, ".bias") == 0;
    const bool is_norm = t.name.find("n1.") != std::string::npos || t.name.find("n2.") != std::string::npos ||
                         t.name.rfind("nf.", 0) == 0;
    if (is_norm) {
      std::fill(p, p + n, is_bias ? 0.f : 1.f);
    } else if (t.name == "tok.weight" || t.name == "pos.weight") {
      std::normal_distribution<float> dist(0.f, 1.f);
      for (size_t i = 0; i < n; ++i) p[i] = dist(rng);
    } else {
      // nn.Linear: weight and bias ~ U(-1/sqrt(in), 1/sqrt(in)).
      const ParamTensor* w = is_bias ? layout_.find(t.name.substr(0, t.name.size() - 5) + ".weight") : &t;
      const float bound = 1.0f / std::sqrt(static_cast<float>(w->shape[1]));
      std::uniform_real_distribution<float> dist(-bound, bound);
      for (size_t i = 0; i < n; ++i) p[i] = dist(rng);
    }
  }
}

void Transformer::ZeroGrad() { cpu::Zero(grads_.data(), grads_.size()); }

void Transformer::Reserve(int T) {
  if (T <= capacity_) return;
  capacity_ = T;
  const long d = cfg_.d_model, F = cfg_.ffn_hidden;
  for (auto& a : acts_) {
    a.in.resize(T * d); a.ln1.resize(T * d); a.ln1_mean.resize(T); a.ln1_rstd.resize(T);
    a.qkv.resize(T * cfg_.qkv_dim()); a.att.resize(T * d); a.lse.resize(static_cast<long>(T) * cfg_.n_heads);
    a.mid.resize(T * d); a.ln2.resize(T * d); a.ln2_mean.resize(T); a.ln2_rstd.resize(T);
    a.h12.resize(T * 2 * F); a.sw.resize(T * F);
  }
  out_.resize(T * d); lnf_.resize(T * d); lnf_mean_.resize(T); lnf_rstd_.resize(T);
  logits_.resize(static_cast<long>(T) * cfg_.vocab_size); dlogits_.resize(logits_.size());
  dres_.resize(T * d); dln_.resize(T * d); dqkv_.resize(T * cfg_.qkv_dim()); datt_.resize(T * d);
  dh12_.resize(T * 2 * F);
}

float Transformer::Forward(const PackedBatch& b, int* correct) {
  const int T = static_cast<int>(b.tokens.size()), d = cfg_.d_model, F = cfg_.ffn_hidden;
  Reserve(T);
  logits_.resize(static_cast<long>(T) * cfg_.vocab_size);
  const ModelParams P = layout_.bind(params_.data());
  const int num_seqs = static_cast<int>(b.cu_seqlens.size()) - 1;
  positions_.resize(T);
  cu_ = b.cu_seqlens;
  std::vector<int32_t> lens(num_seqs);
  for (int s = 0; s < num_seqs; ++s) {
    lens[s] = b.cu_seqlens[s + 1] - b.cu_seqlens[s];
    for (int i = 0; i < lens[s]; ++i) positions_[b.cu_seqlens[s] + i] = i;
  }
  const AttentionDims dims{cfg_.n_heads, cfg_.n_kv_heads, cfg_.head_dim(), cfg_.alibi()};
  const AttentionBatch batch{num_seqs, cu_.data(), lens.data(), T};
  const long qkv_dim = cfg_.qkv_dim();

  float* x = acts_.empty() ? out_.data() : acts_[0].in.data();
  cpu::EmbeddingForward(b.tokens.data(), positions_.data(), P.tok, P.pos, x, T, d);
  for (int l = 0; l < cfg_.n_layers; ++l) {
    LayerActs& a = acts_[l];
    const BlockParams& W = P.blocks[l];
    cpu::LayerNormForward(a.in.data(), W.n1_w, W.n1_b, a.ln1.data(), a.ln1_mean.data(), a.ln1_rstd.data(), T, d, cfg_.norm_eps);
    cpu::LinearForward(a.ln1.data(), W.qkv_w, W.qkv_b, a.qkv.data(), T, d, qkv_dim);
    const float* q = a.qkv.data();
    const PackedKv kv{q + cfg_.n_heads * dims.head_dim, q + (cfg_.n_heads + cfg_.n_kv_heads) * dims.head_dim, qkv_dim, cu_.data()};
    cpu::AttentionForward(dims, batch, q, qkv_dim, kv, a.att.data(), d, a.lse.data());
    cpu::LinearForward(a.att.data(), W.proj_w, W.proj_b, a.mid.data(), T, d, d);
    cpu::AddInPlace(a.mid.data(), a.in.data(), static_cast<size_t>(T) * d);
    cpu::LayerNormForward(a.mid.data(), W.n2_w, W.n2_b, a.ln2.data(), a.ln2_mean.data(), a.ln2_rstd.data(), T, d, cfg_.norm_eps);
    cpu::LinearSwiGLUForward(a.ln2.data(), W.w12_w, W.w12_b, a.h12.data(), a.sw.data(), T, d, F);
    float* next = l + 1 < cfg_.n_layers ? acts_[l + 1].in.data() : out_.data();
    cpu::LinearForward(a.sw.data(), W.w3_w, W.w3_b, next, T, F, d);
    cpu::AddInPlace(next, a.mid.data(), static_cast<size_t>(T) * d);
  }
  cpu::LayerNormForward(out_.data(), P.nf_w, P.nf_b, lnf_.data(), lnf_mean_.data(), lnf_rstd_.data(), T, d, cfg_.norm_eps);
  cpu::LinearForward(lnf_.data(), P.head_w, P.head_b, logits_.data(), T, d, cfg_.vocab_size);
  if (b.targets.empty()) return 0.f;
  return cpu::CrossEntropy(logits_.data(), b.targets.data(), dlogits_.data(), T, cfg_.vocab_size, correct);
}

void Transformer::Backward(const PackedBatch& b) {
  const int T = static_cast<int>(b.tokens.size()), d = cfg_.d_model, F = cfg_.ffn_hidden;
  const long Td = static_cast<long>(T) * d;
  const ModelParams P = layout_.bind(params_.data());
  const ModelParams G = layout_.bind(grads_.data());
  const int num_seqs = static_cast<int>(b.cu_seqlens.size()) - 1;
  std::vector<int32_t> lens(num_seqs);
  for (int s = 0; s < num_seqs; ++s) lens[s] = b.cu_seqlens[s + 1] - b.cu_seqlens[s];
  const AttentionDims dims{cfg_.n_heads, cfg_.n_kv_heads, cfg_.head_dim(), cfg_.alibi()};
  const AttentionBatch batch{num_seqs, cu_.data(), lens.data(), T};
  const long qkv_dim = cfg_.qkv_dim();
  const int k_off = cfg_.n_heads * dims.head_dim, v_off = k_off + cfg_.kv_dim();

  // dres holds d(loss)/d(residual stream) as we walk down the layers.
  // Linear and SwiGLU backwards write their input gradients; LayerNorm's and
  // attention's accumulate, into dres (zeroed here) and dqkv (per layer).
  cpu::Zero(dres_.data(), Td);
  cpu::LinearBackward(dlogits_.data(), lnf_.data(), P.head_w, dln_.data(), G.head_w, G.head_b, T, d, cfg_.vocab_size);
  cpu::LayerNormBackward(dln_.data(), out_.data(), P.nf_w, lnf_mean_.data(), lnf_rstd_.data(), dres_.data(), G.nf_w, G.nf_b, T, d);
  for (int l = cfg_.n_layers - 1; l >= 0; --l) {
    LayerActs& a = acts_[l];
    const BlockParams& W = P.blocks[l];
    const BlockParams& GW = G.blocks[l];
    // Feed-forward: res_out = mid + w3(swiglu(w12(ln2(mid)))).
    cpu::LinearBackward(dres_.data(), a.sw.data(), W.w3_w, nullptr, GW.w3_w, GW.w3_b, T, F, d);
    cpu::SwiGLULinearBackwardInput(dres_.data(), W.w3_w, a.h12.data(), dh12_.data(), T, F, d);
    cpu::LinearBackward(dh12_.data(), a.ln2.data(), W.w12_w, dln_.data(), GW.w12_w, GW.w12_b, T, d, 2 * F);
    cpu::LayerNormBackward(dln_.data(), a.mid.data(), W.n2_w, a.ln2_mean.data(), a.ln2_rstd.data(), dres_.data(), GW.n2_w, GW.n2_b, T, d);
    // Attention: mid = in + proj(attn(qkv(ln1(in)))).
    cpu::LinearBackward(dres_.data(), a.att.data(), W.proj_w, datt_.data(), GW.proj_w, GW.proj_b, T, d, d);
    cpu::Zero(dqkv_.data(), static_cast<size_t>(T) * qkv_dim);
    const float* q = a.qkv.data();
    const PackedKv kv{q + k_off, q + v_off, qkv_dim, cu_.data()};
    cpu::AttentionBackward(dims, batch, q, qkv_dim, kv, a.att.data(), d, datt_.data(), a.lse.data(), dqkv_.data(),
                           dqkv_.data() + k_off, dqkv_.data() + v_off, qkv_dim);
    cpu::LinearBackward(dqkv_.data(), a.ln1.data(), W.qkv_w, dln_.data(), GW.qkv_w, GW.qkv_b, T, d, qkv_dim);
    cpu::LayerNormBackward(dln_.data(), a.in.data(), W.n1_w, a.ln1_mean.data(), a.ln1_rstd.data(), dres_.data(), GW.n1_w, GW.n1_b, T, d);
  }
  cpu::EmbeddingBackward(dres_.data(), b.tokens.data(), positions_.data(), G.tok, G.pos, T, d);
}

}  // namespace tinygpt
