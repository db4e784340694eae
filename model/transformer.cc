#include "model/transformer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "kernels/cpu/cpu_backend.h"

namespace tinygpt {

Transformer::Transformer(const ModelConfig& cfg, Backend* backend)
    : cfg_(cfg), layout_(cfg), params_(layout_.total()), grads_(layout_.total()), acts_(cfg.n_layers) {
  if (!backend) {
    own_backend_ = CreateCpuBackend();
    backend = own_backend_.get();
  }
  backend_ = backend;
  on_host_ = backend_->name() == "cpu";
  esize_ = DTypeSize(backend_->dtype());
  if (!on_host_) {
    const size_t n = layout_.total();
    d_params_ = static_cast<float*>(Allocate(n * sizeof(float)));
    d_grads_ = static_cast<float*>(Allocate(n * sizeof(float)));
    d_compute_ = backend_->dtype() == DType::kF32 ? static_cast<void*>(d_params_) : Allocate(n * esize_);
    param_buffers_.swap(act_buffers_);  // Allocate() filled act_buffers_; these live as long as the model
  }
}

Transformer::~Transformer() {
  FreeActivations();
  for (Buffer& b : param_buffers_) backend_->Free(b.raw);
}

void* Transformer::Allocate(size_t bytes) {
  constexpr size_t kAlign = 64;
  Buffer b;
  b.raw = backend_->Alloc(bytes + kAlign);
  if (!b.raw) {
    std::fprintf(stderr, "tinygpt: out of %s memory allocating %zu bytes\n", backend_->name().c_str(), bytes);
    std::abort();
  }
  b.p = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(b.raw) + kAlign - 1) & ~(kAlign - 1));
  act_buffers_.push_back(b);
  return b.p;
}

void Transformer::FreeActivations() {
  for (Buffer& b : act_buffers_) backend_->Free(b.raw);
  act_buffers_.clear();
}

void Transformer::ParamsToDevice() {
  if (on_host_) return;
  backend_->CopyToDevice(d_params_, params_.data(), params_.size() * sizeof(float));
  backend_->CastFromFloats(d_params_, d_compute_, params_.size());
}

void Transformer::ParamsToHost() {
  if (!on_host_) backend_->CopyToHost(params_.data(), d_params_, params_.size() * sizeof(float));
}

void Transformer::GradsToHost() {
  if (!on_host_) backend_->CopyToHost(grads_.data(), d_grads_, grads_.size() * sizeof(float));
}

const void* Transformer::Compute(const float* master) const {
  if (!master) return nullptr;
  const size_t offset = master - d_params_;
  return static_cast<const char*>(d_compute_) + offset * esize_;
}

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
  ParamsToDevice();
}

void Transformer::ZeroGrad() {
  if (on_host_) d_grads_ = grads_.data();
  backend_->Zero(d_grads_, grads_.size() * sizeof(float));
}

void Transformer::Reserve(int T) {
  if (T <= capacity_) return;
  FreeActivations();
  capacity_ = T;
  const size_t d = cfg_.d_model, F = cfg_.ffn_hidden, t = T, e = esize_;
  // Activations in the backend's dtype, per-row statistics in fp32.
  auto act = [&](size_t elems) { return Allocate(elems * e); };
  auto f32 = [&](size_t elems) { return static_cast<float*>(Allocate(elems * sizeof(float))); };
  for (auto& a : acts_) {
    a.in = act(t * d); a.ln1 = act(t * d); a.ln1_mean = f32(t); a.ln1_rstd = f32(t);
    a.qkv = act(t * cfg_.qkv_dim()); a.att = act(t * d); a.lse = f32(t * cfg_.n_heads);
    a.mid = act(t * d); a.ln2 = act(t * d); a.ln2_mean = f32(t); a.ln2_rstd = f32(t);
    a.h12 = act(t * 2 * F); a.sw = act(t * F);
  }
  out_ = act(t * d); lnf_ = act(t * d); lnf_mean_ = f32(t); lnf_rstd_ = f32(t);
  logits_ = act(t * cfg_.vocab_size);
  // On a device the loss gradient overwrites the logits (llm.c's fused
  // classifier): at vocab 32000 a second [T, V] buffer would be the largest
  // allocation of the step. The CPU keeps both (logits() stays readable).
  dlogits_ = on_host_ ? act(t * cfg_.vocab_size) : logits_;
  dres_ = act(t * d); dln_ = act(t * d); dqkv_ = act(t * cfg_.qkv_dim()); datt_ = act(t * d); dh12_ = act(t * 2 * F);
  auto ints = [&](size_t n) { return static_cast<int32_t*>(Allocate(n * sizeof(int32_t))); };
  tokens_ = ints(t); targets_ = ints(t); positions_ = ints(t); cu_ = ints(t + 1); lens_ = ints(t);
}

void Transformer::UploadBatch(const PackedBatch& b) {
  const int T = static_cast<int>(b.tokens.size());
  num_seqs_ = static_cast<int>(b.cu_seqlens.size()) - 1;
  positions_host_.resize(T);
  lens_host_.resize(num_seqs_);
  max_len_ = 0;
  for (int s = 0; s < num_seqs_; ++s) {
    lens_host_[s] = b.cu_seqlens[s + 1] - b.cu_seqlens[s];
    max_len_ = std::max(max_len_, lens_host_[s]);
    for (int i = 0; i < lens_host_[s]; ++i) positions_host_[b.cu_seqlens[s] + i] = i;
  }
  backend_->CopyToDevice(tokens_, b.tokens.data(), T * sizeof(int32_t));
  if (!b.targets.empty()) backend_->CopyToDevice(targets_, b.targets.data(), T * sizeof(int32_t));
  backend_->CopyToDevice(positions_, positions_host_.data(), T * sizeof(int32_t));
  backend_->CopyToDevice(cu_, b.cu_seqlens.data(), b.cu_seqlens.size() * sizeof(int32_t));
  backend_->CopyToDevice(lens_, lens_host_.data(), num_seqs_ * sizeof(int32_t));
}

float Transformer::Forward(const PackedBatch& b, int* correct, float dloss_scale) {
  const int T = static_cast<int>(b.tokens.size()), d = cfg_.d_model, F = cfg_.ffn_hidden;
  if (on_host_) d_params_ = params_.data(), d_grads_ = grads_.data(), d_compute_ = params_.data();
  Reserve(T);
  last_T_ = T;
  UploadBatch(b);
  Backend& B = *backend_;
  const ModelParams P = layout_.bind(d_params_);  // fp32 masters; Compute() maps to what the ops read
  const AttentionDims dims{cfg_.n_heads, cfg_.n_kv_heads, cfg_.head_dim(), cfg_.alibi()};
  const AttentionBatch batch{num_seqs_, cu_, lens_, T, max_len_, max_len_};
  const int qkv_dim = cfg_.qkv_dim();

  void* x = acts_.empty() ? out_ : acts_[0].in;
  B.Embedding(tokens_, positions_, Compute(P.tok), Compute(P.pos), x, T, d);
  for (int l = 0; l < cfg_.n_layers; ++l) {
    LayerActs& a = acts_[l];
    const BlockParams& W = P.blocks[l];
    B.LayerNormTrain(a.in, Compute(W.n1_w), Compute(W.n1_b), a.ln1, a.ln1_mean, a.ln1_rstd, T, d, cfg_.norm_eps);
    B.LinearTrain(a.ln1, Compute(W.qkv_w), Compute(W.qkv_b), a.qkv, T, d, qkv_dim);
    B.AttentionTrain(dims, batch, a.qkv, a.att, a.lse);
    B.LinearResidualTrain(a.att, Compute(W.proj_w), Compute(W.proj_b), a.in, a.mid, T, d, d);  // mid = in + proj(att)
    B.LayerNormTrain(a.mid, Compute(W.n2_w), Compute(W.n2_b), a.ln2, a.ln2_mean, a.ln2_rstd, T, d, cfg_.norm_eps);
    B.LinearSwiGLUTrain(a.ln2, Compute(W.w12_w), Compute(W.w12_b), a.h12, a.sw, T, d, F);
    void* next = l + 1 < cfg_.n_layers ? acts_[l + 1].in : out_;
    B.LinearResidualTrain(a.sw, Compute(W.w3_w), Compute(W.w3_b), a.mid, next, T, F, d);  // next = mid + w3(sw)
  }
  B.LayerNormTrain(out_, Compute(P.nf_w), Compute(P.nf_b), lnf_, lnf_mean_, lnf_rstd_, T, d, cfg_.norm_eps);
  B.LinearTrain(lnf_, Compute(P.head_w), Compute(P.head_b), logits_, T, d, cfg_.vocab_size);
  if (b.targets.empty()) return 0.f;
  return B.CrossEntropy(logits_, targets_, dlogits_, T, cfg_.vocab_size, dloss_scale, correct);
}

void Transformer::Backward(const PackedBatch& b, const GradsReady& grads_ready) {
  const int T = static_cast<int>(b.tokens.size()), d = cfg_.d_model, F = cfg_.ffn_hidden;
  if (on_host_) d_params_ = params_.data(), d_grads_ = grads_.data(), d_compute_ = params_.data();
  Backend& B = *backend_;
  const ModelParams P = layout_.bind(d_params_);
  const ModelParams G = layout_.bind(d_grads_);
  const AttentionDims dims{cfg_.n_heads, cfg_.n_kv_heads, cfg_.head_dim(), cfg_.alibi()};
  const AttentionBatch batch{num_seqs_, cu_, lens_, T, max_len_, max_len_};
  const int qkv_dim = cfg_.qkv_dim();

  // dres holds d(loss)/d(residual stream) as we walk down the layers.
  // Linear and SwiGLU backwards write their input gradients; LayerNorm's
  // accumulate into dres (zeroed here); attention's writes dqkv.
  B.Zero(dres_, static_cast<size_t>(T) * d * esize_);
  B.LinearBackward(dlogits_, lnf_, Compute(P.head_w), dln_, G.head_w, G.head_b, T, d, cfg_.vocab_size);
  B.LayerNormBackward(dln_, out_, Compute(P.nf_w), lnf_mean_, lnf_rstd_, dres_, G.nf_w, G.nf_b, T, d);
  // The ranges grads_ready hears: each block's tensors are contiguous in the
  // layout, from its n1.weight, between the embeddings and the final norm
  // (model/params.cc), so G's pointers give their offsets.
  const size_t blocks_end = static_cast<size_t>(G.nf_w - d_grads_);
  auto block_begin = [&](int l) { return static_cast<size_t>(G.blocks[l].n1_w - d_grads_); };
  if (grads_ready) grads_ready(blocks_end, layout_.total() - blocks_end);
  for (int l = cfg_.n_layers - 1; l >= 0; --l) {
    LayerActs& a = acts_[l];
    const BlockParams& W = P.blocks[l];
    const BlockParams& GW = G.blocks[l];
    // Feed-forward: res_out = mid + w3(swiglu(w12(ln2(mid)))).
    B.LinearBackward(dres_, a.sw, Compute(W.w3_w), nullptr, GW.w3_w, GW.w3_b, T, F, d);
    B.SwiGLULinearBackwardInput(dres_, Compute(W.w3_w), a.h12, dh12_, T, F, d);
    B.LinearBackward(dh12_, a.ln2, Compute(W.w12_w), dln_, GW.w12_w, GW.w12_b, T, d, 2 * F);
    B.LayerNormBackward(dln_, a.mid, Compute(W.n2_w), a.ln2_mean, a.ln2_rstd, dres_, GW.n2_w, GW.n2_b, T, d);
    // Attention: mid = in + proj(attn(qkv(ln1(in)))).
    B.LinearBackward(dres_, a.att, Compute(W.proj_w), datt_, GW.proj_w, GW.proj_b, T, d, d);
    B.AttentionBackward(dims, batch, a.qkv, a.att, datt_, a.lse, dqkv_);
    B.LinearBackward(dqkv_, a.ln1, Compute(W.qkv_w), dln_, GW.qkv_w, GW.qkv_b, T, d, qkv_dim);
    B.LayerNormBackward(dln_, a.in, Compute(W.n1_w), a.ln1_mean, a.ln1_rstd, dres_, GW.n1_w, GW.n1_b, T, d);
    if (grads_ready) grads_ready(block_begin(l), (l + 1 < cfg_.n_layers ? block_begin(l + 1) : blocks_end) - block_begin(l));
  }
  B.EmbeddingBackward(dres_, tokens_, positions_, G.tok, G.pos, T, d);
  if (grads_ready) grads_ready(0, block_begin(0));
}

std::vector<float> Transformer::logits() const {
  std::vector<float> out(static_cast<size_t>(last_T_) * cfg_.vocab_size);
  if (!out.empty()) backend_->DownloadFloats(out.data(), logits_, out.size());
  return out;
}

}  // namespace tinygpt
