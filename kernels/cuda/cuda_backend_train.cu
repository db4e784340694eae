// The CUDA backend's training ops (cuda_backend.cuh): forward and backward
// of each layer, the loss, the optimizer, and the data-parallel sums (NCCL).
#include "kernels/cuda/cuda_backend.cuh"

namespace tinygpt::cuda {

template <class T>
void CudaBackend<T>::Zero(void* p, size_t bytes) {
  OpTimes::Scope timed(&op_times_, "zero", stream_);
  if (bytes) TG_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
}

template <class T>
void CudaBackend<T>::CastFromFloats(const float* src, void* dst, size_t n) {
  if (n == 0 || static_cast<const void*>(src) == dst) return;
  CastFromFloatKernel<T><<<Blocks(n, 256), 256, 0, stream_>>>(src, P(dst), static_cast<long>(n));
  TG_CUDA_LAUNCH_CHECK();
}

template <class T>
void CudaBackend<T>::LinearTrain(const void* x, const void* w, const void* b, void* y, int rows, int in, int out) {
  OpTimes::Scope timed(&op_times_, out >= 16384 ? "linear forward (vocab)" : "linear forward", stream_);
  // y^T[out, rows] = w^T... in column-major terms: (w stored in×out)^T · (x stored in×rows).
  if (rows) gemm_->Gemm({true, false, out, rows, in, in, in, out, CudaType<T>(), b != nullptr}, w, x, y, 0.f, b);
}

template <class T>
void CudaBackend<T>::LinearSwiGLUTrain(const void* x, const void* w, const void* b, void* h, void* out, int rows, int in, int F) {
  OpTimes::Scope timed(&op_times_, "linear+swiglu forward", stream_);
  if (rows == 0) return;
  gemm_->Gemm({true, false, 2 * F, rows, in, in, in, 2 * F, CudaType<T>(), b != nullptr}, w, x, h, 0.f, b);
  LaunchSwiGLU(h, out, rows, F, false);  // no programmatic launch in training (common.cuh)
}

template <class T>
void CudaBackend<T>::LinearResidualTrain(const void* x, const void* w, const void* b, const void* residual, void* y, int rows, int in,
                                         int out) {
  OpTimes::Scope timed(&op_times_, "linear+residual forward", stream_);
  if (rows) gemm_->Gemm({true, false, out, rows, in, in, in, out, CudaType<T>(), b != nullptr}, w, x, y, 1.f, b, residual);
}

template <class T>
void CudaBackend<T>::LinearBackward(const void* dy, const void* x, const void* w, void* dx, float* dw, float* db, int rows, int in,
                                    int out) {
  OpTimes::Scope timed(&op_times_, out >= 16384 ? "linear backward (vocab)" : "linear backward", stream_);
  if (rows == 0) return;
  // dx[rows, in] = dy·w: column-major dx^T[in, rows] = (w stored in×out) · (dy stored out×rows).
  if (dx) gemm_->Gemm({false, false, in, rows, out, in, out, in, CudaType<T>(), false}, w, dy, dx, 0.f, nullptr);
  // dw[out, in] += dy^T·x: column-major dw^T[in, out] = (x stored in×rows) · (dy stored out×rows)^T, fp32.
  // With db, cuBLASLt's BGRADB epilogue sums dy over the rows (op(B)'s k
  // dimension) in the same pass into an fp32 scratch vector, added into db
  // after (the epilogue writes; db accumulates). Where cuBLASLt has no such
  // algorithm (or TINYGPT_CUDA_NO_BGRADB is set), a kernel of its own reads dy again.
  const GemmShape plain{false, true, in, out, rows, in, out, in, CUDA_R_32F, false};
  GemmShape fused = plain;
  fused.bgradb = true;
  if (db && use_bgradb_ && BgradbFaster(plain, fused, x, dy, rows, out)) {
    gemm_->Gemm(fused, x, dy, dw, 1.f, bias_scratch_.p);
    AddFloatsKernel<<<Blocks(out, 256), 256, 0, stream_>>>(db, bias_scratch_.p, out);
    TG_CUDA_LAUNCH_CHECK();
    return;
  }
  gemm_->Gemm(plain, x, dy, dw, 1.f, nullptr);
  if (db) BiasGrad(dy, db, rows, out);
}

template <class T>
void CudaBackend<T>::BiasGrad(const void* dy, float* db, int rows, int out) {
  // Row slices enough for ~8 blocks per SM, of at least 256 rows each.
  const int col_blocks = (out + 63) / 64;
  const dim3 grid(col_blocks, std::max(1, std::min(rows / 256, 8 * num_sms_ / col_blocks + 1)));
  BiasGradKernel<T><<<grid, dim3(32, 8), 0, stream_>>>(P(dy), db, rows, out);
  TG_CUDA_LAUNCH_CHECK();
}

template <class T>
bool CudaBackend<T>::BgradbFaster(const GemmShape& plain, const GemmShape& fused, const void* x, const void* dy, int rows, int out) {
  const auto key = std::make_tuple(plain.m, plain.n, plain.k);
  auto it = bgradb_choice_.find(key);
  if (it != bgradb_choice_.end()) return it->second;
  bool faster = false;
  if (gemm_->HasAlgorithm(fused)) {
    if (static_cast<size_t>(out) > bias_scratch_.floats) bias_scratch_.Grow(out, stream_);
    float *d = nullptr, *db = nullptr;
    const size_t d_bytes = static_cast<size_t>(plain.ldd) * plain.n * sizeof(float);
    if (cudaMalloc(&d, d_bytes) == cudaSuccess && cudaMalloc(&db, out * sizeof(float)) == cudaSuccess) {
      auto run_plain = [&] {
        gemm_->Gemm(plain, x, dy, d, 0.f, nullptr);
        BiasGrad(dy, db, rows, out);
      };
      auto run_fused = [&] {
        gemm_->Gemm(fused, x, dy, d, 0.f, bias_scratch_.p);
        AddFloatsKernel<<<Blocks(out, 256), 256, 0, stream_>>>(db, bias_scratch_.p, out);
        TG_CUDA_LAUNCH_CHECK();
      };
      cudaEvent_t start, stop;
      TG_CUDA_CHECK(cudaEventCreate(&start));
      TG_CUDA_CHECK(cudaEventCreate(&stop));
      auto time = [&](const auto& fn) {
        fn();  // warm-up (and the GEMM's own algorithm timing on first use)
        TG_CUDA_CHECK(cudaEventRecord(start, stream_));
        for (int i = 0; i < 3; ++i) fn();
        TG_CUDA_CHECK(cudaEventRecord(stop, stream_));
        TG_CUDA_CHECK(cudaEventSynchronize(stop));
        float ms = 0;
        TG_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
        return ms;
      };
      const float t_plain = time(run_plain), t_fused = time(run_fused);
      faster = t_fused < t_plain;
      if (std::getenv("TINYGPT_CUDA_OP_TIMES"))
        std::fprintf(stderr, "bias gradient m=%d n=%d k=%d: BGRADB GEMM %.3f ms, GEMM + kernel %.3f ms (x3): %s\n", plain.m,
                     plain.n, plain.k, t_fused, t_plain, faster ? "BGRADB" : "kernel");
      TG_CUDA_CHECK(cudaEventDestroy(start));
      TG_CUDA_CHECK(cudaEventDestroy(stop));
    } else {
      cudaGetLastError();  // no room to try: the kernel
    }
    TG_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (d) cudaFree(d);
    if (db) cudaFree(db);
  }
  bgradb_choice_[key] = faster;
  return faster;
}

template <class T>
void CudaBackend<T>::SwiGLULinearBackwardInput(const void* dy, const void* w, const void* h, void* dh, int rows, int F, int out) {
  OpTimes::Scope timed(&op_times_, "swiglu+linear backward dh", stream_);
  if (rows == 0) return;
  // d(swiglu) = dy·w [rows, F] into scratch, then through SwiGLU's derivative.
  T* dsw = static_cast<T*>(Scratch(static_cast<size_t>(rows) * F * sizeof(T)));
  gemm_->Gemm({false, false, F, rows, out, F, out, F, CudaType<T>(), false}, w, dy, dsw, 0.f, nullptr);
  if (F % (16 / sizeof(T)) == 0 && Aligned16(dsw, h, dh))
    SwiGLUBackwardVecKernel<T><<<std::min(rows, 64 * num_sms_), VecThreads(F), 0, stream_>>>(dsw, P(h), P(dh), rows, F);
  else
    SwiGLUBackwardKernel<T><<<Blocks(static_cast<long>(rows) * F, 256), 256, 0, stream_>>>(dsw, P(h), P(dh), rows, F);
  TG_CUDA_LAUNCH_CHECK();
}

template <class T>
void CudaBackend<T>::LayerNormTrain(const void* x, const void* w, const void* b, void* y, float* mean, float* rstd, int rows, int C,
                                    float eps) {
  OpTimes::Scope timed(&op_times_, "layernorm forward", stream_);
  if (rows == 0) return;
  if (LayerNormVec<false>(const_cast<T*>(P(x)), nullptr, P(w), P(b), P(y), mean, rstd, rows, C, eps)) return;
  LayerNormTrainKernel<T><<<(rows + 7) / 8, 256, 0, stream_>>>(P(x), P(w), P(b), P(y), mean, rstd, rows, C, eps);
  TG_CUDA_LAUNCH_CHECK();
}

template <class T>
void CudaBackend<T>::LayerNormBackward(const void* dy, const void* x, const void* w, const float* mean, const float* rstd, void* dx,
                                       float* dw, float* db, int rows, int C) {
  OpTimes::Scope timed(&op_times_, "layernorm backward", stream_);
  if (rows == 0) return;
  // One pass (dx, dw, db) with 16-byte loads when the row splits into at
  // most 8 vectors per lane; else the two-kernel form below.
  constexpr int V = 16 / sizeof(T);
  const int chunks = (C / V + 31) / 32;
  if (C % V == 0 && chunks <= 8 && Aligned16(dy, x, w, dx)) {
    auto launch = [&](auto kernel) {
      constexpr int kWarps = kLayerNormBackwardThreads / 32;
      const int blocks = std::max(1, std::min((rows + kWarps - 1) / kWarps, num_sms_));
      const size_t smem = 2 * static_cast<size_t>(C) * sizeof(float);
      if (smem > 48 * 1024) TG_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
      kernel<<<blocks, kLayerNormBackwardThreads, smem, stream_>>>(P(dy), P(x), P(w), mean, rstd, P(dx), dw, db, rows, C);
      TG_CUDA_LAUNCH_CHECK();
    };
    switch (chunks) {
      case 1: return launch(LayerNormBackwardVecKernel<T, 1>);
      case 2: return launch(LayerNormBackwardVecKernel<T, 2>);
      case 3: return launch(LayerNormBackwardVecKernel<T, 3>);
      case 4: return launch(LayerNormBackwardVecKernel<T, 4>);
      case 5: case 6: return launch(LayerNormBackwardVecKernel<T, 6>);
      default: return launch(LayerNormBackwardVecKernel<T, 8>);
    }
  }
  LayerNormBackwardDxKernel<T><<<(rows + 7) / 8, 256, 0, stream_>>>(P(dy), P(x), P(w), mean, rstd, P(dx), rows, C);
  TG_CUDA_LAUNCH_CHECK();
  // Row slices enough for ~8 blocks per SM, of at least 256 rows each.
  const int col_blocks = (C + 31) / 32;
  const dim3 grid(col_blocks, std::max(1, std::min(rows / 256, 8 * num_sms_ / col_blocks + 1)));
  LayerNormBackwardDwDbKernel<T><<<grid, dim3(32, 8), 0, stream_>>>(P(dy), P(x), mean, rstd, dw, db, rows, C);
  TG_CUDA_LAUNCH_CHECK();
}

template <class T>
void CudaBackend<T>::EmbeddingBackward(const void* dout, const int32_t* tokens, const int32_t* positions, float* dtok, float* dpos,
                                       int rows, int C) {
  OpTimes::Scope timed(&op_times_, "embedding backward", stream_);
  if (rows == 0) return;
  EmbeddingBackwardKernel<T><<<rows, 128, 0, stream_>>>(P(dout), tokens, positions, dtok, dpos, C);
  TG_CUDA_LAUNCH_CHECK();
}

template <class T>
void CudaBackend<T>::AttentionTrain(const AttentionDims& d, const AttentionBatch& batch, const void* qkv, void* out, float* lse) {
  OpTimes::Scope timed(&op_times_, "attention forward", stream_);
  LaunchTrainAttentionForward<T>(d, batch, P(qkv), P(out), lse, stream_);
}

template <class T>
void CudaBackend<T>::AttentionBackward(const AttentionDims& d, const AttentionBatch& batch, const void* qkv, const void* out,
                                       const void* dout, const float* lse, void* dqkv) {
  OpTimes::Scope timed(&op_times_, "attention backward", stream_);
  float* delta = static_cast<float*>(Scratch(static_cast<size_t>(batch.total_q) * d.n_heads * sizeof(float)));
  LaunchTrainAttentionBackward<T>(d, batch, P(qkv), P(out), P(dout), lse, delta, P(dqkv), stream_);
}

template <class T>
float CudaBackend<T>::CrossEntropy(const void* logits, const int32_t* targets, void* dlogits, int rows, int V, float dloss_scale,
                                   int* correct) {
  OpTimes::Scope timed(&op_times_, "cross-entropy", stream_);
  if (rows == 0) return 0.f;
  if (rows > ce_rows_) {
    TG_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (ce_loss_) TG_CUDA_CHECK(cudaFree(ce_loss_));
    if (ce_hit_) TG_CUDA_CHECK(cudaFree(ce_hit_));
    TG_CUDA_CHECK(cudaMalloc(&ce_loss_, rows * sizeof(float)));
    TG_CUDA_CHECK(cudaMalloc(&ce_hit_, rows * sizeof(int32_t)));
    ce_rows_ = rows;
  }
  if (V % (16 / sizeof(T)) == 0 && Aligned16(logits, dlogits))
    CrossEntropyVecKernel<T><<<rows, 256, 0, stream_>>>(P(logits), targets, P(dlogits), V, dloss_scale / rows, ce_loss_, ce_hit_);
  else
    CrossEntropyKernel<T><<<rows, 256, 0, stream_>>>(P(logits), targets, P(dlogits), V, dloss_scale / rows, ce_loss_, ce_hit_);
  TG_CUDA_LAUNCH_CHECK();
  // The per-row results come back once per step and are summed on the host
  // in double (T floats: tens of microseconds at 64K rows).
  std::vector<float> loss(rows);
  std::vector<int32_t> hit(rows);
  CopyToHost(loss.data(), ce_loss_, rows * sizeof(float));
  CopyToHost(hit.data(), ce_hit_, rows * sizeof(int32_t));
  double total = 0;
  int hits = 0;
  for (int r = 0; r < rows; ++r) total += loss[r], hits += hit[r];
  if (correct) *correct = hits;
  return static_cast<float>(total / rows);
}

template <class T>
double CudaBackend<T>::SumOfSquares(const float* g, size_t n) {
  OpTimes::Scope timed(&op_times_, "sum of squares", stream_);
  constexpr int kBlocks = 1024;
  if (!sumsq_) TG_CUDA_CHECK(cudaMalloc(&sumsq_, kBlocks * sizeof(double)));
  SumSquaresKernel<<<kBlocks, 256, 0, stream_>>>(g, static_cast<long>(n), sumsq_);
  TG_CUDA_LAUNCH_CHECK();
  double partial[kBlocks];
  CopyToHost(partial, sumsq_, sizeof(partial));
  double total = 0;
  for (double s : partial) total += s;
  return total;
}

template <class T>
void CudaBackend<T>::AdamW(float* p, float* g, float* m, float* v, size_t n, float lr, float beta1, float beta2, float eps,
                           float weight_decay, long step, float grad_scale, void* p_compute) {
  OpTimes::Scope timed(&op_times_, "adamw", stream_);
  if (n == 0) return;
  const float bc1 = 1.0f - std::pow(beta1, static_cast<float>(step));
  const float bc2 = 1.0f - std::pow(beta2, static_cast<float>(step));
  const bool compute_aligned = reinterpret_cast<uintptr_t>(p_compute) % (4 * sizeof(T)) == 0;
  if (n % 4 == 0 && Aligned16(p, g, m, v) && compute_aligned)
    AdamWVecKernel<T><<<Blocks(n / 4, 256), 256, 0, stream_>>>(p, g, m, v, static_cast<long>(n / 4), lr, beta1, beta2, eps,
                                                               weight_decay, bc1, bc2, grad_scale, P(p_compute));
  else
    AdamWKernel<T><<<Blocks(n, 256), 256, 0, stream_>>>(p, g, m, v, static_cast<long>(n), lr, beta1, beta2, eps, weight_decay,
                                                        bc1, bc2, grad_scale, P(p_compute));
  TG_CUDA_LAUNCH_CHECK();
}

template <class T>
absl::StatusOr<std::string> CudaBackend<T>::NewCollectiveId() { return NcclCollective::NewId(); }
                                                            
                                                            template <class T>
                                                            absl::Status CudaBackend<T>::JoinCollective(const std::string& id, int rank, int world_size, absl::Duration timeout,
                                                            const std::function<absl::Status()>& check) {
  auto c = NcclCollective::Join(id, rank, world_size, stream_, timeout, check);
  if (!c.ok()) return c.status();
  collective_ = std::move(*c);
  return absl::OkStatus();
}

template <class T>
absl::Status CudaBackend<T>::AllReduceSum(float* data, size_t n) {
  if (!collective_) return absl::FailedPreconditionError("CUDA backend: AllReduceSum before JoinCollective");
  return collective_->AllReduceSum(data, n);
}

template <class T>
absl::Status CudaBackend<T>::WaitCollectives(absl::Duration timeout, const std::function<absl::Status()>& check) {
  return collective_ ? collective_->Wait(timeout, check) : absl::OkStatus();
}

// The three precisions' classes (each .cu file instantiates the members it defines).
template class CudaBackend<__nv_bfloat16>;
template class CudaBackend<__half>;
template class CudaBackend<float>;

}  // namespace tinygpt::cuda
