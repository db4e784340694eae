// The CUDA backend module (libtinygpt_cuda.so), opened with dlopen by
// kernels/backend_registry.cc. Weights, activations and the KV cache are bf16
// or fp16; accumulation, LayerNorm statistics and softmax are fp32. GEMMs go
// through cuBLASLt with the bias fused in its epilogue; attention, sampling
// and the small fused ops are this folder's kernels.
#include <cublasLt.h>

#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/attention_launch.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/elementwise_kernels.cuh"
#include "kernels/cuda/sampling_kernel.cuh"

namespace tinygpt::cuda {
namespace {

#define TG_CUBLAS_CHECK(expr)                                                                  \
  do {                                                                                         \
    cublasStatus_t st_ = (expr);                                                               \
    if (st_ != CUBLAS_STATUS_SUCCESS) {                                                        \
      std::fprintf(stderr, "cuBLASLt error %d at %s:%d\n", static_cast<int>(st_), __FILE__, __LINE__); \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)

int Blocks(long n, int threads) { return static_cast<int>(std::min<long>((n + threads - 1) / threads, 65535L * 8)); }

template <class T>
class CudaBackend final : public Backend {
 public:
  CudaBackend(DType dtype, int device) : dtype_(dtype) {
    TG_CUDA_CHECK(cudaSetDevice(device));
    cudaDeviceProp prop;
    TG_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    device_name_ = prop.name;
    num_sms_ = prop.multiProcessorCount;
    TG_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    TG_CUBLAS_CHECK(cublasLtCreate(&lt_));
    TG_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
    TG_CUDA_CHECK(cudaMalloc(&d_params_, sizeof(SamplingParams) * kMaxSampleRows));
    TG_CUDA_CHECK(cudaMalloc(&d_tokens_, sizeof(int32_t) * kMaxSampleRows));
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    for (auto& [key, plan] : plans_) {
      cublasLtMatmulDescDestroy(plan.desc);
      cublasLtMatrixLayoutDestroy(plan.a);
      cublasLtMatrixLayoutDestroy(plan.b);
      cublasLtMatrixLayoutDestroy(plan.c);
    }
    cublasLtDestroy(lt_);
    cudaFree(workspace_);
    cudaFree(d_params_);
    cudaFree(d_tokens_);
    if (split_workspace_) cudaFree(split_workspace_);
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return "cuda"; }
  std::string device_name() const override { return device_name_; }
  DType dtype() const override { return dtype_; }
  absl::Status SupportsModel(int head_dim) const override {
    if (head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128) return absl::OkStatus();
    return absl::InvalidArgumentError("CUDA backend: head_dim " + std::to_string(head_dim) +
                                      " is not supported (16, 32, 64, 128)");
  }

  void* Alloc(size_t bytes) override {
    void* p = nullptr;
    if (cudaMalloc(&p, std::max<size_t>(bytes, 16)) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free allocation error
      return nullptr;
    }
    TG_CUDA_CHECK(cudaMemsetAsync(p, 0, std::max<size_t>(bytes, 16), stream_));
    return p;
  }
  size_t AvailableBytes() const override {
    size_t free_bytes = 0, total = 0;
    TG_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
    return free_bytes;
  }
  void Free(void* p) override {
    cudaStreamSynchronize(stream_);
    cudaFree(p);
  }
  void CopyToDevice(void* dst, const void* src, size_t bytes) override {
    TG_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  }
  void CopyToHost(void* dst, const void* src, size_t bytes) override {
    TG_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    TG_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void UploadFloats(void* dst, const float* src, size_t n) override {
    std::vector<T> tmp(n);
    for (size_t i = 0; i < n; ++i) tmp[i] = T(src[i]);
    // On our stream (non-blocking, so unordered with the legacy default
    // stream): after the Alloc's memset, before any use.
    TG_CUDA_CHECK(cudaMemcpyAsync(dst, tmp.data(), n * sizeof(T), cudaMemcpyHostToDevice, stream_));
    TG_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void DownloadFloats(float* dst, const void* src, size_t n) override {
    std::vector<T> tmp(n);
    CopyToHost(tmp.data(), src, n * sizeof(T));
    for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(tmp[i]);
  }

  void Embedding(const int32_t* tokens, const int32_t* positions, const void* tok, const void* pos, void* out, int T_,
                 int C) override {
    if (T_ == 0) return;
    EmbeddingKernel<T><<<T_, 128, 0, stream_>>>(tokens, positions, P(tok), P(pos), P(out), C);
    TG_CUDA_LAUNCH_CHECK();
  }
  void LayerNorm(const void* x, const void* w, const void* b, void* y, int rows, int C, float eps) override {
    if (rows == 0) return;
    LayerNormKernel<T><<<(rows + 7) / 8, 256, 0, stream_>>>(P(x), P(w), P(b), P(y), rows, C, eps);
    TG_CUDA_LAUNCH_CHECK();
  }
  void Linear(const void* x, const void* w, const void* b, void* y, int rows, int in, int out) override {
    if (rows == 0) return;
    // Row-major y[rows,out] = x[rows,in]·w[out,in]^T is, column-major,
    // y^T[out,rows] = (w viewed [in,out])^T · (x viewed [in,rows]).
    Plan& plan = GetPlan(rows, in, out, b != nullptr);
    if (b) TG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b, sizeof(b)));
    const float alpha = 1.f, beta = 0.f;
    TG_CUBLAS_CHECK(cublasLtMatmul(lt_, plan.desc, &alpha, w, plan.a, x, plan.b, &beta, y, plan.c, y, plan.c,
                                   plan.has_algo ? &plan.algo : nullptr, workspace_, kWorkspaceBytes, stream_));
  }
  void AddInPlace(void* x, const void* y, size_t n) override {
    if (n == 0) return;
    AddKernel<T><<<Blocks(n, 256), 256, 0, stream_>>>(P(x), P(y), static_cast<long>(n));
    TG_CUDA_LAUNCH_CHECK();
  }
  void SwiGLU(const void* h, void* out, int rows, int F) override {
    if (rows == 0) return;
    SwiGLUKernel<T><<<Blocks(static_cast<long>(rows) * F, 256), 256, 0, stream_>>>(P(h), P(out), rows, F);
    TG_CUDA_LAUNCH_CHECK();
  }
  void GatherRows(const void* src, const int32_t* rows, void* dst, int n, int C) override {
    if (n == 0) return;
    GatherRowsKernel<T><<<n, 128, 0, stream_>>>(P(src), rows, P(dst), C);
    TG_CUDA_LAUNCH_CHECK();
  }
  void KvAppend(const void* qkv, int T_, const int32_t* slots, const AttentionDims& d, void* k_cache, void* v_cache) override {
    if (T_ == 0) return;
    const long stride = static_cast<long>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim;
    KvAppendKernel<T><<<T_, 128, 0, stream_>>>(P(qkv), stride, slots, d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim,
                                                P(k_cache), P(v_cache));
    TG_CUDA_LAUNCH_CHECK();
  }
  void PagedAttention(const AttentionDims& d, const AttentionBatch& batch, const void* qkv, const PagedKv& kv, void* out) override {
    const AttentionPlan plan = PlanPagedAttention(dtype_ == DType::kBF16, d, batch, num_sms_);
    const size_t need = plan.partial_floats * sizeof(float);
    if (need > split_bytes_) {
      if (split_workspace_) TG_CUDA_CHECK(cudaFree(split_workspace_));
      TG_CUDA_CHECK(cudaMalloc(&split_workspace_, need));
      split_bytes_ = need;
    }
    LaunchPagedAttention(dtype_ == DType::kBF16, plan, d, batch, qkv, static_cast<long>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim, kv,
                         out, static_cast<float*>(split_workspace_), stream_);
  }
  void Sample(const void* logits, int rows, int vocab, const SamplingParams* params, int32_t* tokens) override {
    for (int r0 = 0; r0 < rows; r0 += kMaxSampleRows) {
      const int n = std::min(kMaxSampleRows, rows - r0);
      TG_CUDA_CHECK(cudaMemcpyAsync(d_params_, params + r0, sizeof(SamplingParams) * n, cudaMemcpyHostToDevice, stream_));
      SampleKernel<T><<<n, kSampleThreads, 0, stream_>>>(P(logits) + static_cast<long>(r0) * vocab, vocab, d_params_, d_tokens_);
      TG_CUDA_LAUNCH_CHECK();
      CopyToHost(tokens + r0, d_tokens_, sizeof(int32_t) * n);
    }
  }
  void Synchronize() override { TG_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

 private:
  static constexpr size_t kWorkspaceBytes = 32u << 20;
  static constexpr int kMaxSampleRows = 1024;
  struct Plan {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
    bool has_algo = false;
  };

  static const T* P(const void* p) { return static_cast<const T*>(p); }
  static T* P(void* p) { return static_cast<T*>(p); }

  Plan& GetPlan(int rows, int in, int out, bool bias) {
    const auto key = std::make_tuple(rows, in, out, bias);
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
    const cudaDataType_t dt = dtype_ == DType::kBF16 ? CUDA_R_16BF : CUDA_R_16F;
    Plan plan;
    TG_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t trans = CUBLAS_OP_T, no = CUBLAS_OP_N;
    TG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans, sizeof(trans)));
    TG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &no, sizeof(no)));
    if (bias) {
      const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
      TG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
      TG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &dt, sizeof(dt)));
    }
    TG_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.a, dt, in, out, in));    // w as [in, out], transposed
    TG_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.b, dt, in, rows, in));   // x as [in, rows]
    TG_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.c, dt, out, rows, out)); // y as [out, rows]
    cublasLtMatmulPreference_t pref;
    TG_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = kWorkspaceBytes;
    TG_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    cublasLtMatmulHeuristicResult_t result;
    int found = 0;
    if (cublasLtMatmulAlgoGetHeuristic(lt_, plan.desc, plan.a, plan.b, plan.c, plan.c, pref, 1, &result, &found) ==
            CUBLAS_STATUS_SUCCESS && found > 0) {
      plan.algo = result.algo;
      plan.has_algo = true;
    }
    cublasLtMatmulPreferenceDestroy(pref);
    return plans_.emplace(key, plan).first->second;
  }

  DType dtype_;
  std::string device_name_;
  int num_sms_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  void* workspace_ = nullptr;
  SamplingParams* d_params_ = nullptr;
  int32_t* d_tokens_ = nullptr;
  void* split_workspace_ = nullptr;
  size_t split_bytes_ = 0;
  std::map<std::tuple<int, int, int, bool>, Plan> plans_;
};

}  // namespace
}  // namespace tinygpt::cuda

// The module's one entry point (see kernels/backend.h).
extern "C" __attribute__((visibility("default"))) tinygpt::Backend* tinygpt_create_cuda_backend(const char* dtype, char* error,
                                                                                                size_t error_len) {
  auto fail = [&](const std::string& msg) -> tinygpt::Backend* {
    std::snprintf(error, error_len, "%s", msg.c_str());
    return nullptr;
  };
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0)
    return fail(std::string("no CUDA device (") + (err != cudaSuccess ? cudaGetErrorString(err) : "none found") + ")");
  const std::string d = dtype ? dtype : "bf16";
  if (d == "bf16") return new tinygpt::cuda::CudaBackend<__nv_bfloat16>(tinygpt::DType::kBF16, 0);
  if (d == "f16" || d == "fp16") return new tinygpt::cuda::CudaBackend<__half>(tinygpt::DType::kF16, 0);
  return fail("unsupported dtype '" + d + "' (bf16, f16)");
}
