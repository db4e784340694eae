#include "kernels/cpu/cpu_backend.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/sampling.h"

namespace tinygpt {
namespace {

const float* F(const void* p) { return static_cast<const float*>(p); }
float* F(void* p) { return static_cast<float*>(p); }

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  std::string device_name() const override { return "cpu"; }
  DType dtype() const override { return DType::kF32; }
  absl::Status SupportsModel(int) const override { return absl::OkStatus(); }

  void* Alloc(size_t bytes) override { return std::calloc(bytes ? bytes : 1, 1); }
  size_t AvailableBytes() const override {
    // MemAvailable from /proc/meminfo (kB), the kernel's estimate for new allocations.
    std::ifstream f("/proc/meminfo");
    std::string key, unit;
    size_t kb = 0;
    while (f >> key >> kb >> unit)
      if (key == "MemAvailable:") return kb * 1024;
    return 0;
  }
  void Free(void* p) override { std::free(p); }
  void CopyToDevice(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void CopyToHost(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void UploadFloats(void* dst, const float* src, size_t n) override { std::memcpy(dst, src, n * sizeof(float)); }
  void DownloadFloats(float* dst, const void* src, size_t n) override { std::memcpy(dst, src, n * sizeof(float)); }
  void UploadLinearWeight(void* dst, const float* src, int out, int in) override {
    cpu::PackLinearWeight(src, F(dst), in, out);
  }

  void Embedding(const int32_t* tokens, const int32_t* positions, const void* tok, const void* pos, void* out, int T,
                 int C) override {
    cpu::EmbeddingForward(tokens, positions, F(tok), F(pos), F(out), T, C);
  }
  void LayerNorm(const void* x, const void* w, const void* b, void* y, int T, int C, float eps) override {
    cpu::LayerNormForward(F(x), F(w), F(b), F(y), nullptr, nullptr, T, C, eps);
  }
  void Linear(const void* x, const void* w, const void* b, void* y, int T, int in, int out) override {
    cpu::LinearForwardRowInvariant(F(x), F(w), F(b), F(y), T, in, out);
  }
  void AddInPlace(void* x, const void* y, size_t n) override { cpu::AddInPlace(F(x), F(y), n); }
  void SwiGLU(const void* h, void* out, int T, int F_) override { cpu::SwiGLUForward(F(h), F(out), T, F_); }
  void GatherRows(const void* src, const int32_t* rows, void* dst, int n, int C) override {
    for (int i = 0; i < n; ++i) std::memcpy(F(dst) + static_cast<long>(i) * C, F(src) + static_cast<long>(rows[i]) * C, sizeof(float) * C);
  }
  void KvAppend(const void* qkv, int T, const int32_t* slots, const AttentionDims& d, void* k_cache, void* v_cache) override {
    const long stride = static_cast<long>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim;
    cpu::KvAppend(F(qkv), stride, T, slots, d, F(k_cache), F(v_cache));
  }
  void PagedAttention(const AttentionDims& d, const AttentionBatch& batch, const void* qkv, const PagedKv& kv,
                      void* out) override {
    const long stride = static_cast<long>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim;
    cpu::PagedAttentionForward(d, batch, F(qkv), stride, kv, F(out), static_cast<long>(d.n_heads) * d.head_dim);
  }
  void Sample(const void* logits, int rows, int vocab, const SamplingParams* params, int32_t* tokens) override {
    for (int r = 0; r < rows; ++r) tokens[r] = cpu::SampleToken(F(logits) + static_cast<long>(r) * vocab, vocab, params[r]);
  }
  void ApplyPenalties(const void* logits, void* out, int rows, int vocab, const PenaltyRow* row_params,
                      const PenaltyEntry* entries) override {
    cpu::ApplyPenalties(F(logits), F(out), rows, vocab, row_params, entries);
  }
  void FillPendingTokens(int32_t* tokens, int n, const int32_t* sampled) override {
    for (int i = 0; i < n; ++i)
      if (tokens[i] < 0) tokens[i] = std::max(sampled[-tokens[i] - 1], 0);  // kNonFiniteLogits: see sampling_args.h
  }
  void HostToFloats(const void* src, float* dst, size_t n) override { std::memcpy(dst, src, n * sizeof(float)); }

  // Training: the fp32 ops of kernels/cpu/ops.h as they are (the compute copy
  // of the weights is the fp32 master itself, so nothing is converted).
  absl::Status SupportsTraining(int) const override { return absl::OkStatus(); }
  void Zero(void* p, size_t bytes) override {
    if (bytes % sizeof(float) == 0) cpu::Zero(F(p), bytes / sizeof(float));
    else std::memset(p, 0, bytes);
  }
  void CastFromFloats(const float* src, void* dst, size_t n) override {
    if (src != dst) std::memcpy(dst, src, n * sizeof(float));
  }
  void LinearTrain(const void* x, const void* w, const void* b, void* y, int T, int in, int out) override {
    cpu::LinearForward(F(x), F(w), F(b), F(y), T, in, out);
  }
  void LinearSwiGLUTrain(const void* x, const void* w, const void* b, void* h, void* out, int T, int in, int F_) override {
    cpu::LinearSwiGLUForward(F(x), F(w), F(b), F(h), F(out), T, in, F_);
  }
  void LinearBackward(const void* dy, const void* x, const void* w, void* dx, float* dw, float* db, int T, int in,
                      int out) override {
    cpu::LinearBackward(F(dy), F(x), F(w), F(dx), dw, db, T, in, out);
  }
  void SwiGLULinearBackwardInput(const void* dy, const void* w, const void* h, void* dh, int T, int F_, int out) override {
    cpu::SwiGLULinearBackwardInput(F(dy), F(w), F(h), F(dh), T, F_, out);
  }
  void LayerNormTrain(const void* x, const void* w, const void* b, void* y, float* mean, float* rstd, int T, int C,
                      float eps) override {
    cpu::LayerNormForward(F(x), F(w), F(b), F(y), mean, rstd, T, C, eps);
  }
  void LayerNormBackward(const void* dy, const void* x, const void* w, const float* mean, const float* rstd, void* dx,
                         float* dw, float* db, int T, int C) override {
    cpu::LayerNormBackward(F(dy), F(x), F(w), mean, rstd, F(dx), dw, db, T, C);
  }
  void EmbeddingBackward(const void* dout, const int32_t* tokens, const int32_t* positions, float* dtok, float* dpos, int T,
                         int C) override {
    cpu::EmbeddingBackward(F(dout), tokens, positions, dtok, dpos, T, C);
  }
  void AttentionTrain(const AttentionDims& d, const AttentionBatch& batch, const void* qkv, void* out, float* lse) override {
    const long stride = static_cast<long>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim;
    const float* q = F(qkv);
    const PackedKv kv{q + d.n_heads * d.head_dim, q + (d.n_heads + d.n_kv_heads) * d.head_dim, stride, batch.cu_q};
    cpu::AttentionForward(d, batch, q, stride, kv, F(out), static_cast<long>(d.n_heads) * d.head_dim, lse);
  }
  void AttentionBackward(const AttentionDims& d, const AttentionBatch& batch, const void* qkv, const void* out,
                         const void* dout, const float* lse, void* dqkv) override {
    const long stride = static_cast<long>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim;
    const int k_off = d.n_heads * d.head_dim, v_off = k_off + d.n_kv_heads * d.head_dim;
    const float* q = F(qkv);
    const PackedKv kv{q + k_off, q + v_off, stride, batch.cu_q};
    // cpu::AttentionBackward accumulates; this op writes.
    cpu::Zero(F(dqkv), static_cast<size_t>(batch.total_q) * stride);
    cpu::AttentionBackward(d, batch, q, stride, kv, F(out), static_cast<long>(d.n_heads) * d.head_dim, F(dout), lse, F(dqkv),
                           F(dqkv) + k_off, F(dqkv) + v_off, stride);
  }
  float CrossEntropy(const void* logits, const int32_t* targets, void* dlogits, int T, int V, float dloss_scale,
                     int* correct) override {
    const float loss = cpu::CrossEntropy(F(logits), targets, F(dlogits), T, V, correct);
    if (dlogits && dloss_scale != 1.0f) cpu::Scale(F(dlogits), static_cast<size_t>(T) * V, dloss_scale);
    return loss;
  }
  double SumOfSquares(const float* g, size_t n) override { return cpu::SumOfSquares(g, n); }
  void AdamW(float* p, float* g, float* m, float* v, size_t n, float lr, float beta1, float beta2, float eps,
             float weight_decay, long step, float grad_scale, void* p_compute) override {
    if (grad_scale != 1.0f) cpu::Scale(g, n, grad_scale);
    cpu::AdamW(p, g, m, v, n, lr, beta1, beta2, eps, weight_decay, step);
    if (p_compute && p_compute != p) std::memcpy(p_compute, p, n * sizeof(float));
  }
};

}  // namespace

std::unique_ptr<Backend> CreateCpuBackend() { return std::make_unique<CpuBackend>(); }

void SetCpuThreads(int n) {
  if (n > 0) omp_set_num_threads(n);
}

std::string CpuBlasCoreName() { return openblas_get_corename(); }

}  // namespace tinygpt
