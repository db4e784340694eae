#include "kernels/cpu/cpu_backend.h"

#include <cblas.h>
#include <omp.h>

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
};

}  // namespace

std::unique_ptr<Backend> CreateCpuBackend() { return std::make_unique<CpuBackend>(); }

void SetCpuThreads(int n) {
  if (n > 0) omp_set_num_threads(n);
}

std::string CpuBlasCoreName() { return openblas_get_corename(); }

}  // namespace tinygpt
