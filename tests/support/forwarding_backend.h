// A Backend that passes every op to another one: tests derive from it and
// override the few ops they watch or change (a recorded row count, a fake
// graph capture, an injected fault) while the inner backend computes.
// TransformerLayers is not forwarded: its default runs the layers op by op
// through this class, so that the overrides see every op.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"

namespace tinygpt::testing {

class ForwardingBackend : public Backend {
 public:
  explicit ForwardingBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}
  Backend& inner() { return *inner_; }

  // clang-format off
  std::string name() const override { return inner_->name(); }
  std::string device_name() const override { return inner_->device_name(); }
  DType dtype() const override { return inner_->dtype(); }
  absl::Status SupportsModel(int head_dim) const override { return inner_->SupportsModel(head_dim); }
  void* Alloc(size_t bytes) override { return inner_->Alloc(bytes); }
  size_t AvailableBytes() const override { return inner_->AvailableBytes(); }
  void Free(void* p) override { inner_->Free(p); }
  void CopyToDevice(void* dst, const void* src, size_t bytes) override { inner_->CopyToDevice(dst, src, bytes); }
  void CopyToHost(void* dst, const void* src, size_t bytes) override { inner_->CopyToHost(dst, src, bytes); }
  void UploadFloats(void* dst, const float* src, size_t n) override { inner_->UploadFloats(dst, src, n); }
  void DownloadFloats(float* dst, const void* src, size_t n) override { inner_->DownloadFloats(dst, src, n); }
  void UploadLinearWeight(void* dst, const float* src, int out, int in) override { inner_->UploadLinearWeight(dst, src, out, in); }
  void Embedding(const int32_t* tokens, const int32_t* positions, const void* tok, const void* pos, void* out, int T, int C) override { inner_->Embedding(tokens, positions, tok, pos, out, T, C); }
  void LayerNorm(const void* x, const void* w, const void* b, void* y, int T, int C, float eps) override { inner_->LayerNorm(x, w, b, y, T, C, eps); }
  void Linear(const void* x, const void* w, const void* b, void* y, int T, int in, int out) override { inner_->Linear(x, w, b, y, T, in, out); }
  void AddInPlace(void* x, const void* y, size_t n) override { inner_->AddInPlace(x, y, n); }
  void AddLayerNorm(void* x, const void* r, const void* w, const void* b, void* y, int T, int C, float eps) override { inner_->AddLayerNorm(x, r, w, b, y, T, C, eps); }
  void SwiGLU(const void* h, void* out, int T, int F) override { inner_->SwiGLU(h, out, T, F); }
  void LinearSwiGLU(const void* x, const void* w, const void* b, void* h, void* out, int T, int in, int F) override { inner_->LinearSwiGLU(x, w, b, h, out, T, in, F); }
  bool FusesNormIntoLinear(int T, int C) const override { return inner_->FusesNormIntoLinear(T, C); }
  void NormLinearKvAppend(const void* x, const void* norm_w, const void* norm_b, float eps, void* ln, const void* w, const void* b,
                          void* qkv, int T, int in, int qkv_dim, const int32_t* slot_mapping, const AttentionDims& dims, void* k_cache,
                          void* v_cache) override {
    inner_->NormLinearKvAppend(x, norm_w, norm_b, eps, ln, w, b, qkv, T, in, qkv_dim, slot_mapping, dims, k_cache, v_cache);
  }
  void NormLinearSwiGLU(const void* x, const void* norm_w, const void* norm_b, float eps, void* ln, const void* w, const void* b,
                        void* h, void* out, int T, int in, int F) override {
    inner_->NormLinearSwiGLU(x, norm_w, norm_b, eps, ln, w, b, h, out, T, in, F);
  }
  void LinearAddInPlace(const void* x, const void* w, const void* b, void* y, void* residual, int T, int in, int out) override {
    inner_->LinearAddInPlace(x, w, b, y, residual, T, in, out);
  }
  void GatherRows(const void* src, const int32_t* rows, void* dst, int n, int C) override { inner_->GatherRows(src, rows, dst, n, C); }
  void KvAppend(const void* qkv, int T, const int32_t* slot_mapping, const AttentionDims& dims, void* k_cache, void* v_cache) override { inner_->KvAppend(qkv, T, slot_mapping, dims, k_cache, v_cache); }
  void PagedAttention(const AttentionDims& dims, const AttentionBatch& batch, const void* qkv, const PagedKv& kv, void* out) override { inner_->PagedAttention(dims, batch, qkv, kv, out); }
  void Sample(const void* logits, int rows, int vocab, const SamplingParams* params, int32_t* tokens) override { inner_->Sample(logits, rows, vocab, params, tokens); }
  void ApplyPenalties(const void* logits, void* out, int rows, int vocab, const PenaltyRow* row_params, const PenaltyEntry* entries) override { inner_->ApplyPenalties(logits, out, rows, vocab, row_params, entries); }
  void FillPendingTokens(int32_t* tokens, int n, const int32_t* sampled) override { inner_->FillPendingTokens(tokens, n, sampled); }
  void Synchronize() override { inner_->Synchronize(); }
  void* AllocHost(size_t bytes) override { return inner_->AllocHost(bytes); }
  void FreeHost(void* p) override { inner_->FreeHost(p); }
  void CopyToHostAsync(void* dst, const void* src, size_t bytes) override { inner_->CopyToHostAsync(dst, src, bytes); }
  void HostToFloats(const void* src, float* dst, size_t n) override { inner_->HostToFloats(src, dst, n); }
  void* CreateEvent() override { return inner_->CreateEvent(); }
  void DestroyEvent(void* p) override { inner_->DestroyEvent(p); }
  void RecordEvent(void* p) override { inner_->RecordEvent(p); }
  void WaitEvent(void* p) override { inner_->WaitEvent(p); }
  double EventSeconds(void* start, void* end) override { return inner_->EventSeconds(start, end); }
  bool SupportsGraphs() const override { return inner_->SupportsGraphs(); }
  bool BeginCapture() override { return inner_->BeginCapture(); }
  void* EndCapture() override { return inner_->EndCapture(); }
  void LaunchGraph(void* p) override { inner_->LaunchGraph(p); }
  void DestroyGraph(void* p) override { inner_->DestroyGraph(p); }
  ShapeCounters shape_counters() const override { return inner_->shape_counters(); }
  std::vector<int> WarmupRowCounts(int max_rows) const override { return inner_->WarmupRowCounts(max_rows); }
  absl::Status SupportsTraining(int head_dim) const override { return inner_->SupportsTraining(head_dim); }
  void Zero(void* p, size_t bytes) override { inner_->Zero(p, bytes); }
  void CastFromFloats(const float* src, void* dst, size_t n) override { inner_->CastFromFloats(src, dst, n); }
  void LinearTrain(const void* x, const void* w, const void* b, void* y, int T, int in, int out) override { inner_->LinearTrain(x, w, b, y, T, in, out); }
  void LinearResidualTrain(const void* x, const void* w, const void* b, const void* residual, void* y, int T, int in, int out) override { inner_->LinearResidualTrain(x, w, b, residual, y, T, in, out); }
  void LinearSwiGLUTrain(const void* x, const void* w, const void* b, void* h, void* out, int T, int in, int F) override { inner_->LinearSwiGLUTrain(x, w, b, h, out, T, in, F); }
  void LinearBackward(const void* dy, const void* x, const void* w, void* dx, float* dw, float* db, int T, int in, int out) override { inner_->LinearBackward(dy, x, w, dx, dw, db, T, in, out); }
  void SwiGLULinearBackwardInput(const void* dy, const void* w, const void* h, void* dh, int T, int F, int out) override { inner_->SwiGLULinearBackwardInput(dy, w, h, dh, T, F, out); }
  void LayerNormTrain(const void* x, const void* w, const void* b, void* y, float* mean, float* rstd, int T, int C, float eps) override { inner_->LayerNormTrain(x, w, b, y, mean, rstd, T, C, eps); }
  void LayerNormBackward(const void* dy, const void* x, const void* w, const float* mean, const float* rstd, void* dx, float* dw, float* db, int T, int C) override { inner_->LayerNormBackward(dy, x, w, mean, rstd, dx, dw, db, T, C); }
  void EmbeddingBackward(const void* dout, const int32_t* tokens, const int32_t* positions, float* dtok, float* dpos, int T, int C) override { inner_->EmbeddingBackward(dout, tokens, positions, dtok, dpos, T, C); }
  void AttentionTrain(const AttentionDims& dims, const AttentionBatch& batch, const void* qkv, void* out, float* lse) override { inner_->AttentionTrain(dims, batch, qkv, out, lse); }
  void AttentionBackward(const AttentionDims& dims, const AttentionBatch& batch, const void* qkv, const void* out, const void* dout, const float* lse, void* dqkv) override { inner_->AttentionBackward(dims, batch, qkv, out, dout, lse, dqkv); }
  float CrossEntropy(const void* logits, const int32_t* targets, void* dlogits, int T, int V, float dloss_scale, int* correct) override { return inner_->CrossEntropy(logits, targets, dlogits, T, V, dloss_scale, correct); }
  double SumOfSquares(const float* g, size_t n) override { return inner_->SumOfSquares(g, n); }
  void AdamW(float* p, float* g, float* m, float* v, size_t n, float lr, float beta1, float beta2, float eps, float weight_decay, long step, float grad_scale, void* p_compute) override { inner_->AdamW(p, g, m, v, n, lr, beta1, beta2, eps, weight_decay, step, grad_scale, p_compute); }
  // clang-format on

 protected:
  std::unique_ptr<Backend> inner_;
};

}  // namespace tinygpt::testing
