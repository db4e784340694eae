// The op interface the model calls, implemented by each backend (CPU here,
// CUDA in a dlopen'ed module). Buffers are backend memory holding elements of
// the backend's dtype(); int32 index arrays are backend memory as well.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/attention_args.h"
#include "kernels/sampling_args.h"

namespace tinygpt {

enum class DType { kF32, kF16, kBF16 };
const char* DTypeName(DType t);
size_t DTypeSize(DType t);
absl::StatusOr<DType> ParseDType(const std::string& name);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;         // "cpu" or "cuda"
  virtual std::string device_name() const = 0;  // e.g. the GPU's name
  virtual DType dtype() const = 0;              // weights, activations and KV cache

  // Rejects model shapes the backend has no kernels for (e.g. head dims).
  virtual absl::Status SupportsModel(int head_dim) const = 0;

  virtual void* Alloc(size_t bytes) = 0;  // null when out of memory
  // Memory the backend could still allocate (host RAM or free device memory),
  // for sizing the KV cache by a fraction.
  virtual size_t AvailableBytes() const = 0;
  virtual void Free(void* p) = 0;
  virtual void CopyToDevice(void* dst, const void* src, size_t bytes) = 0;
  virtual void CopyToHost(void* dst, const void* src, size_t bytes) = 0;
  // Converts n fp32 values to dtype() on the way in / out.
  virtual void UploadFloats(void* dst, const float* src, size_t n) = 0;
  virtual void DownloadFloats(float* dst, const void* src, size_t n) = 0;
  // Uploads a linear weight given in nn.Linear's [out, in] layout into the
  // layout this backend's Linear reads (out·in elements of dtype()). The
  // default keeps [out, in]; the CPU backend packs it for its GEMM kernel.
  virtual void UploadLinearWeight(void* dst, const float* src, int out, int in) {
    UploadFloats(dst, src, static_cast<size_t>(out) * in);
  }

  virtual void Embedding(const int32_t* tokens, const int32_t* positions, const void* tok, const void* pos, void* out,
                         int T, int C) = 0;
  virtual void LayerNorm(const void* x, const void* w, const void* b, void* y, int T, int C, float eps) = 0;
  // y[T,out] = x[T,in] · w[out,in]^T + b, w as UploadLinearWeight stored it
  virtual void Linear(const void* x, const void* w, const void* b, void* y, int T, int in, int out) = 0;
  virtual void AddInPlace(void* x, const void* y, size_t n) = 0;
  virtual void SwiGLU(const void* h, void* out, int T, int F) = 0;
  // dst[i] = src[rows[i]] for n rows of C elements.
  virtual void GatherRows(const void* src, const int32_t* rows, void* dst, int n, int C) = 0;
  // Writes each token's K and V (from its fused qkv row) into its cache slot.
  virtual void KvAppend(const void* qkv, int T, const int32_t* slot_mapping, const AttentionDims& dims, void* k_cache,
                        void* v_cache) = 0;
  // Block-diagonal causal attention with offset over the paged cache; the
  // queries are the first n_heads*head_dim columns of the fused qkv rows.
  virtual void PagedAttention(const AttentionDims& dims, const AttentionBatch& batch, const void* qkv, const PagedKv& kv,
                              void* out) = 0;
  // One token per logits row; params and tokens are host memory.
  virtual void Sample(const void* logits, int rows, int vocab, const SamplingParams* params, int32_t* tokens) = 0;
  virtual void Synchronize() {}
};

// device: "auto" (CUDA when a GPU is found, else CPU), "cpu" or "cuda".
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const std::string& device, const std::string& dtype);

// The CUDA module exports this symbol (extern "C"); see kernels/cuda/.
using CreateCudaBackendFn = Backend* (*)(const char* dtype, char* error, size_t error_len);
inline constexpr const char* kCudaModuleName = "libtinygpt_cuda.so";
inline constexpr const char* kCudaFactorySymbol = "tinygpt_create_cuda_backend";

}  // namespace tinygpt
