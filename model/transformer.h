// TinyGPT forward and backward over a packed batch on the CPU backend, in the
// style of llm.c: parameters and gradients in one buffer each, activations
// kept per layer for the backward pass (cache-line aligned, see
// common/aligned_vector.h). Training and parity tests use this.
#pragma once
#include <cstdint>
#include <vector>

#include "common/aligned_vector.h"
#include "model/config.h"
#include "model/params.h"

namespace tinygpt {

// Sequences packed back to back: tokens[cu_seqlens[s] .. cu_seqlens[s+1]).
struct PackedBatch {
  std::vector<int32_t> tokens;
  std::vector<int32_t> targets;  // next token of each position (training only)
  std::vector<int32_t> cu_seqlens;
};

class Transformer {
 public:
  explicit Transformer(const ModelConfig& cfg);
  const ModelConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  std::vector<float>& params() { return params_; }
  std::vector<float>& grads() { return grads_; }

  // Initializes parameters like PyTorch's defaults (uniform ±1/sqrt(fan_in)
  // for linears, N(0,1) embeddings, LayerNorm 1/0), from `seed`.
  void InitParams(uint64_t seed);

  // Runs the forward pass; fills logits() ([T, vocab]). Returns the mean
  // cross-entropy when targets are given (else 0) and the argmax hits.
  float Forward(const PackedBatch& batch, int* correct = nullptr);
  // Accumulates parameter gradients of the last Forward's loss into grads().
  void Backward(const PackedBatch& batch);
  void ZeroGrad();
  const std::vector<float>& logits() const { return logits_; }

 private:
  struct LayerActs {
    AlignedVector<float> in, ln1, ln1_mean, ln1_rstd, qkv, att, lse, mid, ln2, ln2_mean, ln2_rstd, h12, sw;
  };
  void Reserve(int T);

  ModelConfig cfg_;
  ParamLayout layout_;
  std::vector<float> params_, grads_;
  int capacity_ = 0;
  std::vector<int32_t> positions_, cu_;
  std::vector<LayerActs> acts_;
  AlignedVector<float> out_, lnf_, lnf_mean_, lnf_rstd_;
  std::vector<float> logits_, dlogits_;
  // Backward scratch.
  AlignedVector<float> dres_, dln_, dqkv_, datt_, dh12_;
};

}  // namespace tinygpt
