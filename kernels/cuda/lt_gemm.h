// The CUDA backend's matrix products through cuBLASLt: a plan (descriptor,
// layouts, algorithm) per shape, the algorithm timed among the heuristic's
// candidates on first use, and for inference one choice per row bucket
// (kernels/row_buckets.h). The bias is fused in the epilogue; training's
// weight gradients can take the bias gradient there too (BGRADB).
#pragma once
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/row_buckets.h"

namespace tinygpt::cuda {

#define TG_CUBLAS_CHECK(expr)                                                                  \
  do {                                                                                         \
    cublasStatus_t st_ = (expr);                                                               \
    if (st_ != CUBLAS_STATUS_SUCCESS) {                                                        \
      std::fprintf(stderr, "cuBLASLt error %d at %s:%d\n", static_cast<int>(st_), __FILE__, __LINE__); \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)

template <class T> constexpr cudaDataType_t CudaType();
template <> constexpr cudaDataType_t CudaType<__nv_bfloat16>() { return CUDA_R_16BF; }
template <> constexpr cudaDataType_t CudaType<__half>() { return CUDA_R_16F; }
template <> constexpr cudaDataType_t CudaType<float>() { return CUDA_R_32F; }

// One cuBLASLt product, column-major: D[m,n] = op(A)·op(B) (+ bias[m]) + beta·D,
// A stored k×m when transposed (else m×k), B stored n×k when transposed
// (else k×n). A and B are the backend's dtype; D is that dtype or fp32
// (weight gradients accumulate in fp32).
struct GemmShape {
  bool ta, tb;
  int m, n, k, lda, ldb, ldd;
  cudaDataType_t d_type;
  bool bias;
  bool bgradb = false;  // epilogue BGRADB: the bias pointer receives Σ over k of op(B)'s columns (fp32)
  bool operator<(const GemmShape& o) const {
    return std::tie(ta, tb, m, n, k, lda, ldb, ldd, d_type, bias, bgradb) <
           std::tie(o.ta, o.tb, o.m, o.n, o.k, o.lda, o.ldb, o.ldd, o.d_type, o.bias, o.bgradb);
  }
};

class LtGemm {
  static constexpr size_t kWorkspaceBytes = 32u << 20;
  static constexpr int kGemmCandidates = 16;  // heuristic candidates timed on first use (8 before)
  struct Plan {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
    bool has_algo = false;
    // Training GEMMs: the heuristic's candidates, timed on first use (TuneGemm).
    std::vector<cublasLtMatmulAlgo_t> candidates;
    bool tuned = false;
  };

 public:
  // dtype: A's and B's element type (the backend's), elem_bytes its size.
  LtGemm(cudaDataType_t dtype, size_t elem_bytes, cudaStream_t stream) : dtype_(dtype), elem_bytes_(elem_bytes), stream_(stream) {
    TG_CUBLAS_CHECK(cublasLtCreate(&lt_));
    TG_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
  }
  ~LtGemm() {
    for (auto& [key, plan] : gemms_) DestroyPlan(plan);
    cublasLtDestroy(lt_);
    cudaFree(workspace_);
  }
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // Algorithm choices made so far (each a heuristic query, most of them timed).
  long searches() const { return searches_; }
  // Whether cuBLASLt has an algorithm for the shape (a BGRADB epilogue may have none).
  bool HasAlgorithm(const GemmShape& g) { return PlanFor(g).has_algo; }

  // Training GEMMs: one plan per exact shape (a training run repeats a few
  // shapes), its candidates timed on first use (see TuneGemm).
  void Gemm(const GemmShape& g, const void* A, const void* B, void* D, float beta, const void* bias, const void* C = nullptr) {
    Plan& plan = PlanFor(g);
    if (bias) TG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    if (!plan.tuned) TuneGemm(g, plan, A, B, D, bias);
    const float alpha = 1.f;
    TG_CUBLAS_CHECK(cublasLtMatmul(lt_, plan.desc, &alpha, A, plan.a, B, plan.b, &beta, C ? C : D, plan.c, D, plan.c, &plan.algo,
                                   workspace_, kWorkspaceBytes, stream_));
  }

  // Inference GEMMs (D = op(A)·op(B) + bias, beta 0): serving steps take any
  // row count n up to --max-batch-tokens (prefill chunks, mixed batches), so
  // the algorithm is chosen once per row bucket (kernels/row_buckets.h): the
  // first call in a bucket asks the heuristic and times its candidates on
  // its own operands; later counts of the bucket get a plan with that
  // algorithm and no search. ModelRunner::Warmup makes every bucket's
  // choice before the server takes traffic.
  void InferenceGemm(const GemmShape& g, const void* A, const void* B, void* D, const void* bias) {
    auto it = gemms_.find(g);
    if (it == gemms_.end()) {
      GemmShape bucket = g;
      bucket.n = RowBucket(g.n);
      auto chosen = bucket_algos_.find(bucket);
      if (chosen == bucket_algos_.end()) {
        it = gemms_.emplace(g, MakeGemmPlan(g)).first;
        if (bias) TG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(it->second.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
        TuneGemm(g, it->second, A, B, D, bias);
        bucket_algos_.emplace(bucket, it->second.algo);
      } else {
        Plan plan = MakeGemmLayouts(g);
        plan.algo = chosen->second;
        plan.has_algo = plan.tuned = true;
        it = gemms_.emplace(g, std::move(plan)).first;
      }
    }
    Plan& plan = it->second;
    if (bias) TG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    const float alpha = 1.f, beta = 0.f;
    auto run = [&] {
      return cublasLtMatmul(lt_, plan.desc, &alpha, A, plan.a, B, plan.b, &beta, D, plan.c, D, plan.c, &plan.algo, workspace_,
                            kWorkspaceBytes, stream_);
    };
    if (run() == CUBLAS_STATUS_SUCCESS) return;
    // The bucket's algorithm does not take this count: the heuristic's own
    // choice for the exact shape (counted as a search).
    Plan own = MakeGemmPlan(g);
    std::swap(plan, own);
    DestroyPlan(own);
    if (bias) TG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    TG_CUBLAS_CHECK(run());
  }

 private:
  // D = op(A)·op(B) (+ bias) + beta·C, C = D unless given (same layout).
  Plan& PlanFor(const GemmShape& g) {
    auto it = gemms_.find(g);
    if (it == gemms_.end()) it = gemms_.emplace(g, MakeGemmPlan(g)).first;
    return it->second;
  }
  // The first call of a training GEMM shape times cuBLASLt's candidate
  // algorithms on the real operands and keeps the fastest: its first
  // heuristic choice ran the bench-125m step's 768-wide forward GEMMs at
  // about a third of the speed of the 4096-wide one. Candidates write into
  // a scratch output (beta 0), so an accumulating product (dw += ...) is
  // left untouched.
  void TuneGemm(const GemmShape& g, Plan& plan, const void* A, const void* B, void* D, const void* bias) {
    plan.tuned = true;
    if (plan.candidates.size() < 2) return;
    const size_t bytes = static_cast<size_t>(g.ldd) * g.n * (g.d_type == CUDA_R_32F ? 4 : elem_bytes_);
    void* out = nullptr;
    if (cudaMalloc(&out, bytes) != cudaSuccess) {  // no room to try: keep the heuristic's choice
      cudaGetLastError();
      return;
    }
    cudaEvent_t start, stop;
    TG_CUDA_CHECK(cudaEventCreate(&start));
    TG_CUDA_CHECK(cudaEventCreate(&stop));
    const float alpha = 1.f, zero = 0.f;
    float best = 1e30f;
    for (const cublasLtMatmulAlgo_t& algo : plan.candidates) {
      auto run = [&] {
        return cublasLtMatmul(lt_, plan.desc, &alpha, A, plan.a, B, plan.b, &zero, out, plan.c, out, plan.c, &algo, workspace_,
                              kWorkspaceBytes, stream_);
      };
      if (run() != CUBLAS_STATUS_SUCCESS) continue;  // warm-up; an algorithm that fails here is never chosen
      TG_CUDA_CHECK(cudaEventRecord(start, stream_));
      for (int i = 0; i < 3; ++i) TG_CUBLAS_CHECK(run());
      TG_CUDA_CHECK(cudaEventRecord(stop, stream_));
      TG_CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0;
      TG_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      if (ms < best) best = ms, plan.algo = algo;
    }
    TG_CUDA_CHECK(cudaEventDestroy(start));
    TG_CUDA_CHECK(cudaEventDestroy(stop));
    TG_CUDA_CHECK(cudaStreamSynchronize(stream_));
    TG_CUDA_CHECK(cudaFree(out));
  }

  // The descriptor and layouts of a shape, without an algorithm.
  Plan MakeGemmLayouts(const GemmShape& g) {
    const cudaDataType_t dt = dtype_;
    Plan plan;
    TG_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = g.ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    TG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    TG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    if (g.bias) {
      const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
      TG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
      TG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &dt, sizeof(dt)));
    }
    if (g.bgradb) {
      const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BGRADB;
      const cudaDataType_t ft = CUDA_R_32F;
      TG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
      TG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &ft, sizeof(ft)));
    }
    TG_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.a, dt, g.ta ? g.k : g.m, g.ta ? g.m : g.k, g.lda));
    TG_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.b, dt, g.tb ? g.n : g.k, g.tb ? g.k : g.n, g.ldb));
    TG_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.c, g.d_type, g.m, g.n, g.ldd));
    return plan;
  }
  static void DestroyPlan(Plan& plan) {
    cublasLtMatrixLayoutDestroy(plan.a);
    cublasLtMatrixLayoutDestroy(plan.b);
    cublasLtMatrixLayoutDestroy(plan.c);
    cublasLtMatmulDescDestroy(plan.desc);
  }

  // A shape's layouts and the heuristic's candidate algorithms (its first
  // choice in `algo`): one search.
  Plan MakeGemmPlan(const GemmShape& g) {
    Plan plan = MakeGemmLayouts(g);
    ++searches_;
    cublasLtMatmulPreference_t pref;
    TG_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = kWorkspaceBytes;
    TG_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    cublasLtMatmulHeuristicResult_t results[kGemmCandidates];
    int found = 0;
    if (cublasLtMatmulAlgoGetHeuristic(lt_, plan.desc, plan.a, plan.b, plan.c, plan.c, pref, kGemmCandidates, results, &found) ==
            CUBLAS_STATUS_SUCCESS && found > 0) {
      plan.algo = results[0].algo;
      plan.has_algo = true;
      for (int i = 0; i < found; ++i)
        if (results[i].state == CUBLAS_STATUS_SUCCESS) plan.candidates.push_back(results[i].algo);
    } else if (g.bgradb) {
      // No fused bias gradient for this shape: has_algo stays false and the caller falls back.
      std::fprintf(stderr, "cuBLASLt: no BGRADB algorithm for m=%d n=%d k=%d; the bias gradient takes a kernel of its own\n",
                   g.m, g.n, g.k);
    } else {
      std::fprintf(stderr, "cuBLASLt: no algorithm for %s GEMM m=%d n=%d k=%d\n", g.d_type == CUDA_R_32F ? "fp32-out" : "", g.m,
                   g.n, g.k);
      std::abort();
    }
    cublasLtMatmulPreferenceDestroy(pref);
    return plan;
  }

  cudaDataType_t dtype_;
  size_t elem_bytes_;
  cudaStream_t stream_;
  cublasLtHandle_t lt_ = nullptr;
  void* workspace_ = nullptr;
  std::map<GemmShape, Plan> gemms_;
  std::map<GemmShape, cublasLtMatmulAlgo_t> bucket_algos_;  // inference GEMMs: the algorithm of each row bucket
  long searches_ = 0;
};

}  // namespace tinygpt::cuda
