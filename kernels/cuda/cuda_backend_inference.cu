// The CUDA backend's serving ops (cuda_backend.cuh): linear layers and
// their fused norms and epilogues, paged attention, the decode step kernel,
// sampling.
#include "kernels/cuda/cuda_backend.cuh"

namespace tinygpt::cuda {

template <class T>
void CudaBackend<T>::Embedding(const int32_t* tokens, const int32_t* positions, const void* tok, const void* pos, void* out, int T_,
                               int C) {
  OpTimes::Scope timed(&op_times_, "embedding forward", stream_);
  if (T_ == 0) return;
  LaunchKernel(true, EmbeddingKernel<T>, T_, 128, 0, stream_, tokens, positions, P(tok), P(pos), P(out), C);
  TG_CUDA_LAUNCH_CHECK();
}

template <class T>
void CudaBackend<T>::LayerNorm(const void* x, const void* w, const void* b, void* y, int rows, int C, float eps) {
  OpTimes::Scope timed(&op_times_, "layernorm", stream_);
  if (rows == 0) return;
  // x is only read without kAdd.
  if (LayerNormVec<false>(const_cast<T*>(P(x)), nullptr, P(w), P(b), P(y), nullptr, nullptr, rows, C, eps)) return;
  LaunchKernel(true, LayerNormKernel<T>, (rows + 7) / 8, 256, 0, stream_, P(x), P(w), P(b), P(y), rows, C, eps);
}

template <class T>
void CudaBackend<T>::Linear(const void* x, const void* w, const void* b, void* y, int rows, int in, int out) {
  if (rows == 0) return;
  if constexpr (sizeof(T) == 2) {  // (no fp32 GEMV kernel is instantiated)
    if (GemvTakes(rows, in, x, w)) {
      OpTimes::Scope timed(&op_times_, out >= 16384 ? "linear (vocab, gemv)" : "linear (gemv)", stream_);
      LaunchGemv<T>(P(x), P(w), P(b), P(y), rows, in, out, stream_);
      return;
    }
    if (SkinnyGemmTakes(rows, in, out, x, w)) {
      OpTimes::Scope timed(&op_times_, "linear (skinny)", stream_);
      LaunchSkinnyGemm(dtype_ == DType::kBF16, x, w, b, y, rows, in, out, false, {}, stream_);
      return;
    }
  }
  OpTimes::Scope timed(&op_times_, out >= 16384 ? "linear (vocab)" : rows <= 512 ? "linear (rows <= 512)" : "linear (rows > 512)", stream_);
  // Row-major y[rows,out] = x[rows,in]·w[out,in]^T is, column-major,
  // y^T[out,rows] = (w viewed [in,out])^T · (x viewed [in,rows]).
  gemm_->InferenceGemm({true, false, out, rows, in, in, in, out, CudaType<T>(), b != nullptr}, w, x, y, b);
}

template <class T>
auto CudaBackend<T>::shape_counters() const -> ShapeCounters {
  ShapeCounters c = counters_;
  c.gemm_searches = gemm_->searches();
  return c;
}

template <class T>
std::vector<int> CudaBackend<T>::WarmupRowCounts(int max_rows) const { return RowBucketRepresentatives(max_rows); }
                                                 
                                                 template <class T>
                                                 void CudaBackend<T>::AddInPlace(void* x, const void* y, size_t n) {
  OpTimes::Scope timed(&op_times_, "residual add", stream_);
  if (n == 0) return;
  LaunchKernel(true, AddKernel<T>, Blocks(n, 256), 256, 0, stream_, P(x), P(y), static_cast<long>(n));
}

template <class T>
void CudaBackend<T>::AddLayerNorm(void* x, const void* r, const void* w, const void* b, void* y, int rows, int C, float eps) {
  if (rows == 0) return;
  {
    OpTimes::Scope timed(&op_times_, "add+layernorm", stream_);
    if (LayerNormVec<true>(P(x), P(r), P(w), P(b), P(y), nullptr, nullptr, rows, C, eps)) return;
  }
  Backend::AddLayerNorm(x, r, w, b, y, rows, C, eps);  // widths the vector kernel does not take: add, then norm
}

template <class T>
void CudaBackend<T>::LinearSwiGLU(const void* x, const void* w, const void* b, void* h, void* out, int rows, int in, int F) {
  if constexpr (sizeof(T) == 2) {
    if (rows > 0 && GemvTakes(rows, in, x, w)) {
      OpTimes::Scope timed(&op_times_, "linear+swiglu (gemv)", stream_);
      LaunchGemv<T, GemvEpilogue::kSwiGLU>(P(x), P(w), P(b), P(out), rows, in, F, stream_);
      return;
    }
    if (rows > 0 && SkinnyGemmTakes(rows, in, 2 * F, x, w)) {
      OpTimes::Scope timed(&op_times_, "linear+swiglu (skinny)", stream_);
      LaunchSkinnyGemm(dtype_ == DType::kBF16, x, w, b, out, rows, in, F, true, {}, stream_);
      return;
    }
  }
  Linear(x, w, b, h, rows, in, 2 * F);
  SwiGLU(h, out, rows, F);
}

template <class T>
void CudaBackend<T>::SwiGLU(const void* h, void* out, int rows, int F) {
  OpTimes::Scope timed(&op_times_, "swiglu forward", stream_);
  if (rows == 0) return;
  LaunchSwiGLU(h, out, rows, F, true);
}

template <class T>
void CudaBackend<T>::GatherRows(const void* src, const int32_t* rows, void* dst, int n, int C) {
  OpTimes::Scope timed(&op_times_, "gather rows", stream_);
  if (n == 0) return;
  LaunchKernel(true, GatherRowsKernel<T>, n, 128, 0, stream_, P(src), rows, P(dst), C);
}

template <class T>
void CudaBackend<T>::KvAppend(const void* qkv, int T_, const int32_t* slots, const AttentionDims& d, void* k_cache, void* v_cache) {
  OpTimes::Scope timed(&op_times_, "kv append", stream_);
  if (T_ == 0) return;
  const long stride = static_cast<long>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim;
  if (sizeof(T) == 2 && d.head_dim % 8 == 0 && Aligned16(qkv, k_cache, v_cache)) {
    LaunchKernel(true, KvAppendVecKernel<T>, (T_ + 3) / 4, 128, 0, stream_, P(qkv), stride, slots, T_, d.n_heads * d.head_dim,
                 d.n_kv_heads * d.head_dim, P(k_cache), P(v_cache));
    return;
  }
  LaunchKernel(true, KvAppendKernel<T>, T_, 128, 0, stream_, P(qkv), stride, slots, d.n_heads * d.head_dim,
               d.n_kv_heads * d.head_dim, P(k_cache), P(v_cache));
}

template <class T>
void CudaBackend<T>::LinearKvAppend(const void* x, const void* w, const void* b, void* qkv, int rows, int in, int qkv_dim, const int32_t* slots,
                                    const AttentionDims& d, void* k_cache, void* v_cache) {
  if constexpr (sizeof(T) == 2) {
    if (rows > 0 && GemvTakes(rows, in, x, w) && FusedKvAppend()) {
      OpTimes::Scope timed(&op_times_, "linear+kv append (gemv)", stream_);
      GemvKvAppend<T> kv{slots, d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim, P(k_cache), P(v_cache)};
      LaunchGemv<T>(P(x), P(w), P(b), P(qkv), rows, in, qkv_dim, stream_, kv);
      return;
    }
    if (rows > 0 && SkinnyGemmTakes(rows, in, qkv_dim, x, w) && FusedKvAppend()) {
      OpTimes::Scope timed(&op_times_, "linear+kv append (skinny)", stream_);
      const SkinnyKvAppend kv{slots, d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim, k_cache, v_cache};
      LaunchSkinnyGemm(dtype_ == DType::kBF16, x, w, b, qkv, rows, in, qkv_dim, false, kv, stream_);
      return;
    }
  }
  Backend::LinearKvAppend(x, w, b, qkv, rows, in, qkv_dim, slots, d, k_cache, v_cache);
}

template <class T>
bool CudaBackend<T>::FusesNormIntoLinear(int rows, int C) const {
  static const bool on = EnvOn("TINYGPT_FUSED_NORM");
  static const long max_rows = std::min<long>(GemvMaxRows(), EnvLong("TINYGPT_FUSED_NORM_MAX_ROWS", 4));
  return on && sizeof(T) == 2 && rows >= 1 && rows <= max_rows && C % 8 == 0 && C <= kGemvNormMaxIn &&
         static_cast<size_t>(rows + 2) * C * sizeof(T) <= static_cast<size_t>(kGemvNormMaxBytes);
}

template <class T>
void CudaBackend<T>::NormLinearKvAppend(const void* x, const void* norm_w, const void* norm_b, float eps, void* ln, const void* w, const void* b,
                                        void* qkv, int rows, int in, int qkv_dim, const int32_t* slots, const AttentionDims& d, void* k_cache,
                                        void* v_cache) {
  if constexpr (sizeof(T) == 2) {
    if (FusesNormIntoLinear(rows, in) && GemvTakes(rows, in, x, w) && Aligned16(norm_w, norm_b) && FusedKvAppend()) {
      OpTimes::Scope timed(&op_times_, "norm+linear+kv append (gemv)", stream_);
      GemvKvAppend<T> kv{slots, d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim, P(k_cache), P(v_cache)};
      LaunchGemv<T>(P(x), P(w), P(b), P(qkv), rows, in, qkv_dim, stream_, kv, GemvNorm<T>{P(norm_w), P(norm_b), eps});
      return;
    }
  }
  Backend::NormLinearKvAppend(x, norm_w, norm_b, eps, ln, w, b, qkv, rows, in, qkv_dim, slots, d, k_cache, v_cache);
}

template <class T>
void CudaBackend<T>::NormLinearSwiGLU(const void* x, const void* norm_w, const void* norm_b, float eps, void* ln, const void* w, const void* b,
                                      void* h, void* out, int rows, int in, int F) {
  if constexpr (sizeof(T) == 2) {
    if (FusesNormIntoLinear(rows, in) && GemvTakes(rows, in, x, w) && Aligned16(norm_w, norm_b)) {
      OpTimes::Scope timed(&op_times_, "norm+linear+swiglu (gemv)", stream_);
      LaunchGemv<T, GemvEpilogue::kSwiGLU>(P(x), P(w), P(b), P(out), rows, in, F, stream_, {}, GemvNorm<T>{P(norm_w), P(norm_b), eps});
      return;
    }
  }
  Backend::NormLinearSwiGLU(x, norm_w, norm_b, eps, ln, w, b, h, out, rows, in, F);
}

template <class T>
void CudaBackend<T>::LinearAddInPlace(const void* x, const void* w, const void* b, void* y, void* residual, int rows, int in, int out) {
  if constexpr (sizeof(T) == 2) {
    if (rows > 0 && GemvTakes(rows, in, x, w)) {
      OpTimes::Scope timed(&op_times_, "linear+residual (gemv)", stream_);
      LaunchGemv<T, GemvEpilogue::kAddInPlace>(P(x), P(w), P(b), P(residual), rows, in, out, stream_);
      return;
    }
  }
  Backend::LinearAddInPlace(x, w, b, y, residual, rows, in, out);
}

template <class T>
void CudaBackend<T>::TransformerLayers(const LayersArgs& a) {
  if constexpr (sizeof(T) == 2) {
    if (RunDecodeStepKernel(a)) return;
  }
  Backend::TransformerLayers(a);
}

template <class T>
void CudaBackend<T>::PagedAttention(const AttentionDims& d, const AttentionBatch& batch, const void* qkv, const PagedKv& kv, void* out) {
  OpTimes::Scope timed(&op_times_, batch.max_q_len == 1 ? "paged attention (decode)" : "paged attention (prefill)", stream_);
  if constexpr (std::is_same_v<T, float>) {
    // fp32 is a training precision (--precision fp32); the factory's callers
    // that serve (ModelRunner) ask for bf16 or f16.
    std::fprintf(stderr, "CUDA backend: paged attention has no fp32 kernel (serve with --dtype bf16 or f16)\n");
    std::abort();
  }
  const AttentionPlan plan = PlanPagedAttention(dtype_ == DType::kBF16, d, batch, num_sms_);
  GrowSplitWorkspace(plan.partial_floats * sizeof(float));
  GrowSplitCounters(plan.split_counters);
  LaunchPagedAttention(dtype_ == DType::kBF16, plan, d, batch, qkv, static_cast<long>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim, kv,
                       out, static_cast<float*>(split_workspace_), static_cast<int*>(split_counters_), stream_);
}

template <class T>
void CudaBackend<T>::Sample(const void* logits, int rows, int vocab, const SamplingParams* params, int32_t* tokens) {
  OpTimes::Scope timed(&op_times_, "sample", stream_);
  if (rows == 0) return;
  LaunchKernel(true, SampleKernel<T>, rows, kSampleThreads, 0, stream_, P(logits), vocab, params, tokens);
}

template <class T>
void CudaBackend<T>::ApplyPenalties(const void* logits, void* out, int rows, int vocab, const PenaltyRow* row_params,
                                    const PenaltyEntry* entries) {
  if (rows == 0) return;
  LaunchKernel(true, ApplyPenaltiesKernel<T>, rows, 256, 0, stream_, P(logits), P(out), vocab, row_params, entries);
}

template <class T>
void CudaBackend<T>::FillPendingTokens(int32_t* tokens, int n, const int32_t* sampled) {
  OpTimes::Scope timed(&op_times_, "fill pending tokens", stream_);
  if (n == 0) return;
  LaunchKernel(true, FillPendingTokensKernel, (n + 255) / 256, 256, 0, stream_, tokens, n, sampled);
}

template <class T>
void CudaBackend<T>::LaunchSwiGLU(const void* h, void* out, int rows, int F, bool pdl) {
  if (F % (16 / sizeof(T)) == 0 && Aligned16(h, out)) {
    LaunchKernel(pdl, SwiGLUVecKernel<T>, std::min(rows, 64 * num_sms_), VecThreads(F), 0, stream_, P(h), P(out), rows, F);
    return;
  }
  LaunchKernel(pdl, SwiGLUKernel<T>, Blocks(static_cast<long>(rows) * F, 256), 256, 0, stream_, P(h), P(out), rows, F);
}

template <class T>
bool CudaBackend<T>::RunDecodeStepKernel(const LayersArgs& a) {
  static const bool on = EnvLong("TINYGPT_DECODE_STEP_KERNEL", 0) == 1;
  const AttentionBatch& bt = a.batch;
  if (!on || a.T != bt.num_seqs || bt.total_q != a.T || bt.max_q_len != 1 || a.n_layers < 1 ||
      !Aligned16(a.x, a.qkv, a.att, a.sw))
    return false;
  for (int l = 0; l < a.n_layers; ++l) {
    const LayerWeights& w = a.layers[l];
    if (!Aligned16(w.norm1_w, w.norm1_b, w.qkv_w, w.proj_w, w.norm2_w, w.norm2_b, w.w12_w, w.w3_w, w.k_cache, w.v_cache))
      return false;
  }
  const auto key = std::make_tuple(a.T, a.d_model, a.ffn_hidden, bt.max_ctx_len, a.dims.n_heads, a.dims.n_kv_heads,
                                   a.dims.head_dim, a.dims.alibi);
  auto it = step_plans_.find(key);
  if (it == step_plans_.end()) {
    it = step_plans_.emplace(key, PlanDecodeStep(dtype_ == DType::kBF16, a.dims, a.T, a.d_model, a.ffn_hidden, bt.max_ctx_len, num_sms_))
             .first;
    if (!it->second.ok && std::strcmp(it->second.why, "rows") != 0)
      std::fprintf(stderr, "CUDA backend: decode steps of %d rows run op by op (the step kernel's %s)\n", a.T, it->second.why);
  }
  const DecodeStepPlan& plan = it->second;
  if (!plan.ok) return false;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  TG_CUDA_CHECK(cudaStreamIsCapturing(stream_, &capture));
  const bool capturing = capture != cudaStreamCaptureStatusNone;
  // The layers' pointers, as a device table (one per distinct model; made
  // outside captures, which cannot copy from pageable memory).
  const void* table = nullptr;
  const size_t table_bytes = static_cast<size_t>(a.n_layers) * sizeof(LayerWeights);
  for (const auto& [host, dev] : layer_tables_)
    if (host.size() == static_cast<size_t>(a.n_layers) && std::memcmp(host.data(), a.layers, table_bytes) == 0) table = dev;
  if (!table || !step_barrier_) {
    if (capturing) return false;
    if (!step_barrier_) {
      TG_CUDA_CHECK(cudaMalloc(&step_barrier_, 16));
      TG_CUDA_CHECK(cudaMemsetAsync(step_barrier_, 0, 16, stream_));
    }
    if (!table) {
      void* dev = nullptr;
      TG_CUDA_CHECK(cudaMalloc(&dev, table_bytes));
      TG_CUDA_CHECK(cudaMemcpyAsync(dev, a.layers, table_bytes, cudaMemcpyHostToDevice, stream_));
      TG_CUDA_CHECK(cudaStreamSynchronize(stream_));
      layer_tables_.emplace_back(std::vector<LayerWeights>(a.layers, a.layers + a.n_layers), dev);
      table = dev;
    }
  }
  // Buffers grow outside captures only: a captured memset of new counters
  // would zero them at the graph's replays, not before an eager launch.
  if (capturing && !SplitBuffersHold(plan.partial_floats * sizeof(float), plan.split_counters)) return false;
  GrowSplitWorkspace(plan.partial_floats * sizeof(float));
  GrowSplitCounters(plan.split_counters);
  OpTimes::Scope timed(&op_times_, "decode step kernel", stream_);
  DecodeStepArgs s;
  s.layers = table;
  s.n_layers = a.n_layers;
  s.rows = a.T;
  s.d = a.d_model;
  s.F = a.ffn_hidden;
  s.eps = a.norm_eps;
  s.dims = a.dims;
  s.batch = bt;
  s.kv = PagedKv{nullptr, nullptr, a.block_size, a.block_tables, a.max_blocks_per_seq};
  s.slots = a.slots;
  s.x = a.x;
  s.qkv = a.qkv;
  s.att = a.att;
  s.sw = a.sw;
  s.partial = static_cast<float*>(split_workspace_);
  s.split_counters = static_cast<int*>(split_counters_);
  s.barrier = step_barrier_;
  // TINYGPT_STEP_TRACE=1: the 100th uncaptured step of each row count
  // prints where the kernel's time went (SummarizeDecodeStepTrace).
  static const bool trace = EnvLong("TINYGPT_STEP_TRACE", 0) == 1;
  const bool traced = trace && !capturing && ++step_traces_[a.T] == 100;
  if (traced) {
    const size_t words = DecodeStepTraceWords(plan, a.n_layers);
    TG_CUDA_CHECK(cudaMalloc(&s.trace, words * sizeof(unsigned long long)));
    LaunchDecodeStep(dtype_ == DType::kBF16, plan, s, stream_);
    std::vector<unsigned long long> host(words);
    TG_CUDA_CHECK(cudaMemcpyAsync(host.data(), s.trace, words * sizeof(unsigned long long), cudaMemcpyDeviceToHost, stream_));
    TG_CUDA_CHECK(cudaStreamSynchronize(stream_));
    TG_CUDA_CHECK(cudaFree(s.trace));
    std::fprintf(stderr, "%d rows: %s", a.T,
                 SummarizeDecodeStepTrace(plan, a.n_layers, bt.num_seqs * a.dims.n_kv_heads * plan.num_splits, host.data()).c_str());
    return true;
  }
  LaunchDecodeStep(dtype_ == DType::kBF16, plan, s, stream_);
  return true;
}

// The three precisions' classes (each .cu file instantiates the members it defines).
template class CudaBackend<__nv_bfloat16>;
template class CudaBackend<__half>;
template class CudaBackend<float>;

}  // namespace tinygpt::cuda
