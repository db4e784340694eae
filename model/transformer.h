// TinyGPT forward and backward over a packed batch, in the style of llm.c:
// parameters and gradients in one buffer each, activations kept per layer for
// the backward pass. Every op goes through a Backend (kernels/backend.h): the
// CPU backend (fp32, the reference) or the CUDA module, where the weights the
// ops read are a bf16/fp16 compute copy of fp32 master weights and parameter
// gradients are fp32. Training and parity tests use this.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "kernels/backend.h"
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
  // Runs on `backend` (not owned; it must outlive the model), or on a CPU
  // backend of its own when null.
  explicit Transformer(const ModelConfig& cfg, Backend* backend = nullptr);
  ~Transformer();
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  const ModelConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  Backend* backend() const { return backend_; }
  // Host views of the fp32 parameters and gradients. On the CPU backend they
  // ARE the buffers the ops use. On a device, ParamsToDevice() after changing
  // params() and ParamsToHost() / GradsToHost() before reading them.
  std::vector<float>& params() { return params_; }
  std::vector<float>& grads() { return grads_; }
  void ParamsToDevice();
  void ParamsToHost();
  void GradsToHost();
  // The backend's fp32 master parameters and gradients (total() floats each),
  // and the dtype() compute copy the ops read (the masters themselves when
  // dtype() is fp32). The optimizer updates these.
  float* device_params() { return d_params_; }
  float* device_grads() { return d_grads_; }
  void* compute_params() { return d_compute_; }

  // Initializes parameters like PyTorch's defaults (uniform ±1/sqrt(fan_in)
  // for linears, N(0,1) embeddings, LayerNorm 1/0), from `seed`, on the host
  // and on the device.
  void InitParams(uint64_t seed);

  // Runs the forward pass; fills the logits ([T, vocab]). Returns the mean
  // cross-entropy when targets are given (else 0) and the argmax hits. The
  // loss gradient is kept for Backward, multiplied by dloss_scale (fp16 loss
  // scaling). On a device the logits buffer then holds that gradient.
  float Forward(const PackedBatch& batch, int* correct = nullptr, float dloss_scale = 1.0f);
  // Accumulates parameter gradients of the last Forward's loss into the
  // backend's gradient buffer (grads() on the CPU).
  // grads_ready, when given, hears each range of device_grads() as soon as
  // the ops that write it are enqueued: the head and final norm, each block
  // from the last to the first, then the embeddings (offsets and counts in
  // floats; together they cover every gradient once). Data-parallel
  // training starts summing a range there while the rest runs.
  using GradsReady = std::function<void(size_t offset, size_t count)>;
  void Backward(const PackedBatch& batch, const GradsReady& grads_ready = nullptr);
  void ZeroGrad();
  // The last Forward's logits (fp32 copy on the host).
  std::vector<float> logits() const;

 private:
  // Backend memory, cache-line aligned (malloc's large blocks start 16 bytes
  // past a page; 64-byte rows of a 16-float head are then one line each).
  struct Buffer {
    void* raw = nullptr;
    void* p = nullptr;
  };
  struct LayerActs {
    void *in, *ln1, *qkv, *att, *mid, *ln2, *h12, *sw;
    float *ln1_mean, *ln1_rstd, *lse, *ln2_mean, *ln2_rstd;
  };
  void* Allocate(size_t bytes);
  void Reserve(int T);
  void FreeActivations();
  void UploadBatch(const PackedBatch& b);
  // The compute copy's pointer for a tensor bound on the fp32 masters.
  const void* Compute(const float* master) const;

  ModelConfig cfg_;
  ParamLayout layout_;
  std::unique_ptr<Backend> own_backend_;
  Backend* backend_;
  bool on_host_;     // the backend's memory is host memory (CPU backend)
  size_t esize_;     // bytes per activation element (backend dtype)
  std::vector<float> params_, grads_;
  float* d_params_ = nullptr;
  float* d_grads_ = nullptr;
  void* d_compute_ = nullptr;
  std::vector<Buffer> param_buffers_, act_buffers_;

  int capacity_ = 0, last_T_ = 0;
  std::vector<int32_t> positions_host_, lens_host_;
  int32_t *tokens_ = nullptr, *targets_ = nullptr, *positions_ = nullptr, *cu_ = nullptr, *lens_ = nullptr;
  int num_seqs_ = 0, max_len_ = 0;
  std::vector<LayerActs> acts_;
  void *out_ = nullptr, *lnf_ = nullptr, *logits_ = nullptr, *dlogits_ = nullptr;
  float *lnf_mean_ = nullptr, *lnf_rstd_ = nullptr;
  // Backward scratch.
  void *dres_ = nullptr, *dln_ = nullptr, *dqkv_ = nullptr, *datt_ = nullptr, *dh12_ = nullptr;
};

}  // namespace tinygpt
