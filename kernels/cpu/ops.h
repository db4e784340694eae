// The CPU backend's ops, forward and backward, in fp32. They are the
// reference every other backend is tested against, and the ops training uses.
// Matrices are row-major; linear weights use nn.Linear's [out, in] layout.
// Backward functions ACCUMULATE into parameter gradients. Input gradients:
// LinearBackward and SwiGLUBackward WRITE theirs; LayerNorm, attention and
// embedding backwards accumulate (their dx sums several paths).
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/attention_args.h"

namespace tinygpt::cpu {

// y[T,out] = x[T,in] · w[out,in]^T + b   (b may be null)
void LinearForward(const float* x, const float* w, const float* b, float* y, int T, int in, int out);
// The same product from a weight packed once (inference packs at upload): it
// reads the weight as PackLinearWeight wrote it (out·in floats, panels of 16
// outputs stored k-major), not in nn.Linear's layout. Each row's result is
// independent of T (see linear_rows.cc), so batching never changes outputs.
void PackLinearWeight(const float* w, float* packed, int in, int out);
// The same layout for w^T, the weight of the linear map from `out` features
// back to `in` (LinearBackward's dx = dy·w).
void PackLinearWeightTransposed(const float* w, float* packed, int in, int out);
void LinearForwardRowInvariant(const float* x, const float* w_packed, const float* b, float* y, int T, int in, int out);
// dx = dy·w, dw += dy^T·x, db += Σ_rows dy   (dx, db may be null)
void LinearBackward(const float* dy, const float* x, const float* w, float* dx, float* dw, float* db, int T, int in, int out);

// y = (x - mean) * rstd * w + b, per row of C; saves mean/rstd for backward if non-null.
void LayerNormForward(const float* x, const float* w, const float* b, float* y, float* mean, float* rstd, int T, int C, float eps);
void LayerNormBackward(const float* dy, const float* x, const float* w, const float* mean, const float* rstd,
                       float* dx, float* dw, float* db, int T, int C);

// out[t] = tok[tokens[t]] + pos[positions[t]]   (pos null under ALiBi)
void EmbeddingForward(const int32_t* tokens, const int32_t* positions, const float* tok, const float* pos, float* out, int T, int C);
void EmbeddingBackward(const float* dout, const int32_t* tokens, const int32_t* positions, float* dtok, float* dpos, int T, int C);

// h[T, 2F] → out[T, F] = silu(h[:, :F]) * h[:, F:]
void SwiGLUForward(const float* h, float* out, int T, int F);
// h = x·w^T + b (w: [2F, in]), then out = swiglu(h): the same results as
// LinearForward then SwiGLUForward, a block of rows at a time so that SwiGLU
// reads h from cache (h is the largest activation of a training step).
void LinearSwiGLUForward(const float* x, const float* w, const float* b, float* h, float* out, int T, int in, int F);
// dh = d(out)/dh · dout (written, as LinearBackward's dx).
void SwiGLUBackward(const float* dout, const float* h, float* dh, int T, int F);
// dh for y = swiglu(h)·w^T (w: [out, F]) from dy: LinearBackward's dx then
// SwiGLUBackward, the same results, a block of rows at a time so that
// d(swiglu) never goes to memory. (The weight gradients: LinearBackward with dx null.)
void SwiGLULinearBackwardInput(const float* dy, const float* w, const float* h, float* dh, int T, int F, int out);

void AddInPlace(float* x, const float* y, size_t n);
void Zero(float* x, size_t n);
void Scale(float* x, size_t n, float a);
// Σ x², in double; the same bits whatever the thread count.
double SumOfSquares(const float* x, size_t n);

// Mean cross-entropy over T rows; writes dlogits = (softmax - onehot) / T if
// non-null and counts argmax hits in *correct if non-null.
float CrossEntropy(const float* logits, const int32_t* targets, float* dlogits, int T, int V, int* correct);

// One AdamW update of n parameters (step counts from 1).
void AdamW(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1, float beta2, float eps,
           float weight_decay, long step);

// Memory-efficient attention over packed queries (see attention_args.h).
// q: rows of q_stride floats holding n_heads*head_dim; out: rows of o_stride.
// lse (optional): [total_q, n_heads] log-sum-exp of the scaled scores, for backward.
// Computed key tile by key tile with an online softmax: no score matrix is stored.
void AttentionForward(const AttentionDims& dims, const AttentionBatch& batch, const float* q, long q_stride,
                      const PackedKv& kv, float* out, long o_stride, float* lse);
void PagedAttentionForward(const AttentionDims& dims, const AttentionBatch& batch, const float* q, long q_stride,
                           const PagedKv& kv, float* out, long o_stride);
// Backward of AttentionForward (packed kv with ctx_len == q_len). dq/dk/dv are
// ACCUMULATED with their own row strides (they may point into one fused dqkv).
void AttentionBackward(const AttentionDims& dims, const AttentionBatch& batch, const float* q, long q_stride,
                       const PackedKv& kv, const float* out, long o_stride, const float* dout, const float* lse,
                       float* dq, float* dk, float* dv, long dqkv_stride);

// Copies the new K/V rows (from fused qkv rows) into paged cache slots.
void KvAppend(const float* qkv, long qkv_stride, int T, const int32_t* slot_mapping, const AttentionDims& dims,
              float* k_cache, float* v_cache);

}  // namespace tinygpt::cpu
