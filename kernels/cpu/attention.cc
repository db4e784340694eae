// Memory-efficient attention on the CPU: each (sequence, KV head) task walks
// the keys tile by tile with an online softmax (running max m, running sum l,
// rescaled accumulator), so no score matrix is ever stored. All query heads of
// a GQA group run in the same task and share its K/V rows in cache. The
// vector helpers the tiles use are in attention_tiles.h.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/cpu/attention_tiles.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/vec_math.h"

namespace tinygpt::cpu {
namespace {

using namespace attention_tiles;  // the tile helpers serve this file alone

// Calls fn(std::integral_constant<int, D>) for the head dims with their own
// instantiation, fn(std::integral_constant<int, 0>) otherwise.
template <class Fn>
void WithHeadDim(int D, Fn&& fn) {
  switch (D) {
    case 16: return fn(std::integral_constant<int, 16>());
    case 32: return fn(std::integral_constant<int, 32>());
    case 64: return fn(std::integral_constant<int, 64>());
    case 128: return fn(std::integral_constant<int, 128>());
    default: return fn(std::integral_constant<int, 0>());
  }
}

// Key/value row locators: sequence s, position j, KV head kvh → pointer.
// ForEach(s, kvh, j0, j1, fn) calls fn(j, k_row, v_row) for keys j0..j1-1 in
// order, stepping a pointer through each contiguous run of rows (no division
// per key: decode steps are short enough for it to show).
struct PackedRows {
  const PackedKv& kv;
  int head_dim;
  const float* k(int s, int j, int kvh) const { return kv.k + (static_cast<long>(kv.cu_k[s]) + j) * kv.stride + kvh * head_dim; }
  const float* v(int s, int j, int kvh) const { return kv.v + (static_cast<long>(kv.cu_k[s]) + j) * kv.stride + kvh * head_dim; }
  template <class Fn>
  void ForEach(int s, int kvh, int j0, int j1, Fn&& fn) const {
    const float *kr = k(s, j0, kvh), *vr = v(s, j0, kvh);
    for (int j = j0; j < j1; ++j, kr += kv.stride, vr += kv.stride) fn(j, kr, vr);
  }
};

struct PagedRows {
  const PagedKv& kv;
  int head_dim, n_kv_heads;
  template <class Fn>
  void ForEach(int s, int kvh, int j0, int j1, Fn&& fn) const {
    const long row_stride = static_cast<long>(n_kv_heads) * head_dim;
    const int32_t* table = kv.block_tables + static_cast<long>(s) * kv.max_blocks_per_seq;
    int blk = j0 / kv.block_size, off = j0 % kv.block_size;
    for (int j = j0; j < j1; ++blk, off = 0) {
      const long first = (static_cast<long>(table[blk]) * kv.block_size + off) * row_stride + kvh * head_dim;
      const float* kr = static_cast<const float*>(kv.k_cache) + first;
      const float* vr = static_cast<const float*>(kv.v_cache) + first;
      for (const int end = std::min(j1, j + kv.block_size - off); j < end; ++j, kr += row_stride, vr += row_stride)
        fn(j, kr, vr);
    }
  }
};

// Tasks per scheduling grab: all KV heads of a sequence when there are
// sequences enough to go round (threads then work on different sequences'
// rows at any moment, while each walks one sequence's rows head by head,
// in cache; with single tasks two threads wrote neighbouring heads of the
// same rows and the backward scaled 1.4x on two cores), else single tasks.
int TasksPerGrab(const AttentionDims& dims, const AttentionBatch& batch) {
  return batch.num_seqs >= 4 * omp_get_max_threads() ? dims.n_kv_heads : 1;
}

// Scalar multiply-adds of the forward pass: queries × visible keys × 2·D.
long AttentionWork(const AttentionDims& dims, const AttentionBatch& batch) {
  long pairs = 0;
  for (int s = 0; s < batch.num_seqs; ++s) {
    const long q_len = batch.cu_q[s + 1] - batch.cu_q[s];
    pairs += q_len * batch.ctx_len[s];
  }
  return pairs * dims.n_heads * 2 * dims.head_dim;
}

// Query rows per register tile (forward and backward): two rows share each
// key and value load where their accumulators fit in registers (head dims up
// to 16).
template <int kD>
constexpr int kRowsPerTile = kD > 0 && kD <= 16 ? 2 : 1;

// Calls fn(std::integral_constant<int, n>(), r) for rows r_begin..r_end-1 in
// groups of n = R rows from r, and the rows left over one at a time (n = 1).
template <int R, class Fn>
inline void InRowGroups(int r_begin, int r_end, Fn&& fn) {
  int r = r_begin;
  for (; r + R <= r_end; r += R) fn(std::integral_constant<int, R>(), r);
  for (; r < r_end; ++r) fn(std::integral_constant<int, 1>(), r);
}

// Online-softmax update of R consecutive query rows with one key tile: the
// rows' scores over the keys the last of them sees (earlier rows see those
// keys masked to -inf, which add exact zeros), then per row the logits, the
// new running max, p = exp(s - max) and the rescaled accumulator, then P·V.
// pos[i]: the last key row i sees; kt: the tile's K^T; sc: R·kKeyTile scratch.
template <int kD, int R>
inline void ForwardRows(const float* const* q_rows, const int* pos, int j0, int nt, const float* kt,
                        const float* const* v_rows, int D, __m256 vscale, __m256 vslope, float* sc, float* const* acc,
                        float* m, float* l) {
  int n[R];
  for (int i = 0; i < R; ++i) n[i] = std::min(nt, pos[i] - j0 + 1);
  const int n_max = n[R - 1], padded = (n_max + 7) & ~7;
  Scores<kD, R>(q_rows, kt, D, n_max, sc);
  for (int i = 0; i < R; ++i) {
    float* si = sc + i * kKeyTile;
    // Logits and the tile's max, 8 keys at a time.
    __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    for (int j = 0; j < padded; j += 8) {
      const __m256 x = MaskedLogits8(si, j, static_cast<float>(j0 + j - pos[i]), n[i], vscale, vslope);
      _mm256_storeu_ps(si + j, x);
      vmax = _mm256_max_ps(vmax, x);
    }
    const float m_new = std::max(m[i], HorizontalMax(vmax)), correction = std::exp(m[i] - m_new);
    // p = exp(s - m_new) (0 past n), and its sum in a fixed lane order.
    __m256 vsum = _mm256_setzero_ps();
    for (int j = 0; j < padded; j += 8) {
      const __m256 p = Exp8(_mm256_sub_ps(_mm256_loadu_ps(si + j), _mm256_set1_ps(m_new)));
      _mm256_storeu_ps(si + j, p);
      vsum = _mm256_add_ps(vsum, p);
    }
    l[i] = l[i] * correction + HorizontalSum(vsum);
    for (int d = 0; d < D; ++d) acc[i][d] *= correction;
    m[i] = m_new;
  }
  AccumulateRows<kD, R>(sc, v_rows, n_max, D, acc);
}

// A task is one (sequence, KV head). Its queries go in blocks of kQueryBlock
// rows; each key tile is transposed once per block and head and serves every
// row of the block, each row keeping its own online-softmax state (m, l, acc).
// A row's arithmetic does not depend on the block or tile it shares, so a
// prompt's outputs are the same bits however it is split into chunks.
template <int kD, class Rows>
void ForwardImpl(const AttentionDims& dims, const AttentionBatch& batch, const float* q, long q_stride, const Rows& rows,
                 float* out, long o_stride, float* lse) {
  constexpr int kQueryBlock = 64, R = kRowsPerTile<kD>;
  const int D = dims.head_dim, G = dims.group(), H = dims.n_heads;
  const float scale = dims.scale();
  const __m256 vscale = _mm256_set1_ps(scale);
  const int tasks = batch.num_seqs * dims.n_kv_heads;
  const long work = AttentionWork(dims, batch);
  const int grab = TasksPerGrab(dims, batch);
#pragma omp parallel for schedule(dynamic, grab) if (work >= kMinParallelWork)
  for (int task = 0; task < tasks; ++task) {
    const int s = task / dims.n_kv_heads, kvh = task % dims.n_kv_heads;
    const int q0 = batch.cu_q[s], q_len = batch.cu_q[s + 1] - q0, offset = batch.ctx_len[s] - q_len;
    static thread_local std::vector<float> scratch;
    scratch.resize(static_cast<size_t>(D) * kKeyTile + static_cast<size_t>(kQueryBlock) * (D + 2));
    float* kt = scratch.data();               // K^T of the tile, [D][kKeyTile]
    float* acc = kt + D * kKeyTile;           // [kQueryBlock][D]
    float* m = acc + kQueryBlock * D;         // running max per row
    float* l = m + kQueryBlock;               // running sum per row
    const float *k_rows[kKeyTile], *v_rows[kKeyTile];
    float sc[R * kKeyTile];
    for (int hh = 0; hh < G; ++hh) {
      const int h = kvh * G + hh;
      const float slope = dims.alibi ? AlibiSlope(h, H) : 0.f;
      const __m256 vslope = _mm256_set1_ps(slope);
      for (int i0 = 0; i0 < q_len; i0 += kQueryBlock) {
        const int nq = std::min(kQueryBlock, q_len - i0), last = offset + i0 + nq - 1;  // the block's last visible key
        std::fill(acc, acc + nq * D, 0.f);
        std::fill(m, m + nq, -std::numeric_limits<float>::infinity());
        std::fill(l, l + nq, 0.f);
        for (int j0 = 0; j0 <= last; j0 += kKeyTile) {
          const int nt = std::min(kKeyTile, last + 1 - j0);
          rows.ForEach(s, kvh, j0, j0 + nt, [&](int j, const float* kj, const float* vj) {
            k_rows[j - j0] = kj;
            v_rows[j - j0] = vj;
          });
          RowsToTile(k_rows, nt, D, kt);
          // Rows before the tile's first key see none of it; the rest go R at a time.
          InRowGroups<R>(std::max(0, j0 - offset - i0), nq, [&](auto n, int r) {
            const float* q_rows[n.value];
            float* acc_rows[n.value];
            int pos[n.value];
            for (int i = 0; i < n.value; ++i) {
              q_rows[i] = q + (q0 + i0 + r + i) * q_stride + h * D;
              acc_rows[i] = acc + (r + i) * D;
              pos[i] = offset + i0 + r + i;
            }
            ForwardRows<kD, n.value>(q_rows, pos, j0, nt, kt, v_rows, D, vscale, vslope, sc, acc_rows, m + r, l + r);
          });
        }
        for (int r = 0; r < nq; ++r) {
          float* oi = out + (q0 + i0 + r) * o_stride + h * D;
          for (int d = 0; d < D; ++d) oi[d] = acc[r * D + d] / l[r];
          if (lse) lse[static_cast<long>(q0 + i0 + r) * H + h] = m[r] + std::log(l[r]);
        }
      }
    }
  }
}

}  // namespace

void AttentionForward(const AttentionDims& dims, const AttentionBatch& batch, const float* q, long q_stride,
                      const PackedKv& kv, float* out, long o_stride, float* lse) {
  WithHeadDim(dims.head_dim, [&](auto kD) {
    ForwardImpl<kD.value>(dims, batch, q, q_stride, PackedRows{kv, dims.head_dim}, out, o_stride, lse);
  });
}

void PagedAttentionForward(const AttentionDims& dims, const AttentionBatch& batch, const float* q, long q_stride,
                           const PagedKv& kv, float* out, long o_stride) {
  WithHeadDim(dims.head_dim, [&](auto kD) {
    ForwardImpl<kD.value>(dims, batch, q, q_stride, PagedRows{kv, dims.head_dim, dims.n_kv_heads}, out, o_stride, nullptr);
  });
}

namespace {

// dK^T[d][j] += Σ_r Q[r][d]·dS[r][j] and dV^T[d][j] += Σ_r dO[r][d]·P[r][j]
// for the 8 keys of the tile's chunk at column j, over rows r_begin..r_end-1
// of a query block (p and ds rows kKeyTile apart). The tile columns stay in
// registers across the rows (4 head dims of each at a time: eight FMA chains),
// so each row costs two loads and eight broadcasts instead of a load and a
// store of the tiles per FMA.
template <int kD>
inline void RankUpdateChunk(const float* const* q_rows, const float* ds, const float* const* do_rows, const float* p,
                            int r_begin, int r_end, int j, int D, float* dkt, float* dvt) {
  const int dims = kD ? kD : D;
  int d0 = 0;
  for (; d0 + 4 <= dims; d0 += 4) {
    __m256 ak[4], av[4];
    for (int e = 0; e < 4; ++e) {
      ak[e] = _mm256_loadu_ps(dkt + (d0 + e) * kKeyTile + j);
      av[e] = _mm256_loadu_ps(dvt + (d0 + e) * kKeyTile + j);
    }
    for (int r = r_begin; r < r_end; ++r) {
      const __m256 dsr = _mm256_loadu_ps(ds + r * kKeyTile + j), pr = _mm256_loadu_ps(p + r * kKeyTile + j);
      for (int e = 0; e < 4; ++e) {
        ak[e] = _mm256_fmadd_ps(dsr, _mm256_set1_ps(q_rows[r][d0 + e]), ak[e]);
        av[e] = _mm256_fmadd_ps(pr, _mm256_set1_ps(do_rows[r][d0 + e]), av[e]);
      }
    }
    for (int e = 0; e < 4; ++e) {
      _mm256_storeu_ps(dkt + (d0 + e) * kKeyTile + j, ak[e]);
      _mm256_storeu_ps(dvt + (d0 + e) * kKeyTile + j, av[e]);
    }
  }
  if constexpr (kD % 4 != 0 || kD == 0) {  // head dims that are not a multiple of 4
    for (; d0 < dims; ++d0) {
      __m256 ak = _mm256_loadu_ps(dkt + d0 * kKeyTile + j), av = _mm256_loadu_ps(dvt + d0 * kKeyTile + j);
      for (int r = r_begin; r < r_end; ++r) {
        ak = _mm256_fmadd_ps(_mm256_loadu_ps(ds + r * kKeyTile + j), _mm256_set1_ps(q_rows[r][d0]), ak);
        av = _mm256_fmadd_ps(_mm256_loadu_ps(p + r * kKeyTile + j), _mm256_set1_ps(do_rows[r][d0]), av);
      }
      _mm256_storeu_ps(dkt + d0 * kKeyTile + j, ak);
      _mm256_storeu_ps(dvt + d0 * kKeyTile + j, av);
    }
  }
}

// What the backward's query rows of one head need while a key tile is loaded.
struct BackwardTile {
  int j0, nt, D;                 // the tile's first key, its key count; head dim
  const float *kt, *vt;          // K^T and V^T of the tile, [D][kKeyTile]
  const float* const* k_rows;    // its key rows, for dQ
  const float *q, *out, *dout, *lse;
  long q_stride, o_stride;
  int h, H;                      // this query head, and the head count (lse rows)
  float* dq;
  long dq_stride;
  __m256 vscale, vslope;
};

// R consecutive query rows (packed rows row0.., positions pos0.., so each sees
// keys up to its position) against one key tile: recomputes their
// probabilities P from the saved log-sum-exp and their score gradients
// dS = P·(dP - delta)·scale into p/ds (rows kKeyTile apart; 0 past each
// row's last key, to a whole 8-key chunk), and adds dS·K to their dQ rows.
// The rows' scores and dP come from one pass over K^T and V^T for the R rows.
// Their q and dO row pointers are written to q_rows/do_rows for the tile's
// dK/dV update.
template <int kD, int R>
inline void BackwardRows(const BackwardTile& t, long row0, int pos0, float* p, float* ds, const float** q_rows,
                         const float** do_rows) {
  const int D = t.D;
  int n[R];
  float* dq_rows[R];
  for (int i = 0; i < R; ++i) {
    q_rows[i] = t.q + (row0 + i) * t.q_stride + t.h * D;
    do_rows[i] = t.dout + (row0 + i) * t.o_stride + t.h * D;
    dq_rows[i] = t.dq + (row0 + i) * t.dq_stride + t.h * D;
    n[i] = std::min(t.nt, pos0 + i - t.j0 + 1);
  }
  const int n_max = n[R - 1], padded = (n_max + 7) & ~7;
  float dp[R * kKeyTile];
  // s = q·K^T (the forward's scores, bit for bit) and dp = do·V^T, along the keys.
  Scores<kD, R>(q_rows, t.kt, D, n_max, p);
  Scores<kD, R>(do_rows, t.vt, D, n_max, dp);
  for (int i = 0; i < R; ++i) {
    const long row = row0 + i;
    const float delta = Dot<kD>(do_rows[i], t.out + row * t.o_stride + t.h * D, D);
    const __m256 vlse = _mm256_set1_ps(t.lse[row * t.H + t.h]), vdelta = _mm256_set1_ps(delta);
    float *pi = p + i * kKeyTile, *dsi = ds + i * kKeyTile;
    const float* dpi = dp + i * kKeyTile;
    // 8 keys at a time over the padded width: p and ds are 0 past n, so
    // the tile columns of keys this row does not see get zeros added.
    for (int j = 0; j < padded; j += 8) {
      const __m256 logits = MaskedLogits8(pi, j, static_cast<float>(t.j0 + j - pos0 - i), n[i], t.vscale, t.vslope);
      const __m256 pj = Exp8(_mm256_sub_ps(logits, vlse));
      _mm256_storeu_ps(pi + j, pj);
      _mm256_storeu_ps(dsi + j, _mm256_mul_ps(_mm256_mul_ps(pj, _mm256_sub_ps(_mm256_loadu_ps(dpi + j), vdelta)), t.vscale));
    }
  }
  AccumulateRows<kD, R>(ds, t.k_rows, n_max, D, dq_rows);
}

template <int kD>
void BackwardImpl(const AttentionDims& dims, const AttentionBatch& batch, const float* q, long q_stride,
                  const PackedKv& kv, const float* out, long o_stride, const float* dout, const float* lse,
                  float* dq, float* dk, float* dv, long dqkv_stride) {
  // Recomputes each probability from the saved log-sum-exp (as FlashAttention's
  // backward does). A task owns one (sequence, KV head): it alone writes those
  // dK/dV rows and the dQ rows of its query heads, so no atomics are needed.
  // Keys are handled a tile at a time in key-major (transposed) form, so the
  // inner loops run along the keys of the tile, not along the short head_dim.
  // Queries go in blocks of kQueryBlock rows: each row's probabilities P and
  // score gradients dS over the tile are kept, then the block updates the
  // tile's dK^T and dV^T at once (RankUpdateChunk); dQ, a sum over keys,
  // accumulates key rows along the head dimension (BackwardRows).
  constexpr int kQueryBlock = 32, R = kRowsPerTile<kD>;
  const int D = dims.head_dim, G = dims.group(), H = dims.n_heads;
  const __m256 vscale = _mm256_set1_ps(dims.scale());
  const PackedRows rows{kv, D};
  const int tasks = batch.num_seqs * dims.n_kv_heads;
  const long work = 3 * AttentionWork(dims, batch);
  const int grab = TasksPerGrab(dims, batch);
#pragma omp parallel for schedule(dynamic, grab) if (work >= kMinParallelWork)
  for (int task = 0; task < tasks; ++task) {
    const int s = task / dims.n_kv_heads, kvh = task % dims.n_kv_heads;
    const int q0 = batch.cu_q[s], q_len = batch.cu_q[s + 1] - q0, offset = batch.ctx_len[s] - q_len;
    const int n_keys = batch.ctx_len[s];
    const long k0 = kv.cu_k[s];
    // Per tile: K^T, V^T and their gradients, [D][kKeyTile] each; per query
    // block: P and dS, [kQueryBlock][kKeyTile] each.
    static thread_local std::vector<float> buf;
    buf.resize(4 * static_cast<size_t>(D) * kKeyTile + 2 * kQueryBlock * kKeyTile);
    float *kt = buf.data(), *vt = kt + D * kKeyTile, *dkt = vt + D * kKeyTile, *dvt = dkt + D * kKeyTile;
    float *p_blk = dvt + D * kKeyTile, *ds_blk = p_blk + kQueryBlock * kKeyTile;
    for (int j0 = 0; j0 < n_keys; j0 += kKeyTile) {
      const int nt = std::min(n_keys, j0 + kKeyTile) - j0;
      const float *k_rows[kKeyTile], *v_rows[kKeyTile];
      float *dk_rows[kKeyTile], *dv_rows[kKeyTile];
      for (int jj = 0; jj < nt; ++jj) {
        k_rows[jj] = rows.k(s, j0 + jj, kvh);
        v_rows[jj] = rows.v(s, j0 + jj, kvh);
        dk_rows[jj] = dk + (k0 + j0 + jj) * dqkv_stride + kvh * D;
        dv_rows[jj] = dv + (k0 + j0 + jj) * dqkv_stride + kvh * D;
      }
      RowsToTile(k_rows, nt, D, kt);
      RowsToTile(v_rows, nt, D, vt);
      std::fill(dkt, dkt + 2 * D * kKeyTile, 0.f);
      for (int hh = 0; hh < G; ++hh) {
        const int h = kvh * G + hh;
        const BackwardTile tile{j0, nt, D, kt, vt, k_rows, q, out, dout, lse, q_stride, o_stride, h, H, dq, dqkv_stride,
                                vscale, _mm256_set1_ps(dims.alibi ? AlibiSlope(h, H) : 0.f)};
        // Only queries at or after the tile's first key see any of it.
        for (int i0 = std::max(0, j0 - offset); i0 < q_len; i0 += kQueryBlock) {
          const int nq = std::min(kQueryBlock, q_len - i0);
          const float *q_rows[kQueryBlock], *do_rows[kQueryBlock];
          InRowGroups<R>(0, nq, [&](auto n, int r) {
            BackwardRows<kD, n.value>(tile, q0 + i0 + r, offset + i0 + r, p_blk + r * kKeyTile, ds_blk + r * kKeyTile,
                                      q_rows + r, do_rows + r);
          });
          // Row r sees the chunk of keys j..j+7 once its position reaches j0 + j.
          for (int j = 0; j < nt; j += 8)
            RankUpdateChunk<kD>(q_rows, ds_blk, do_rows, p_blk, std::max(0, j0 + j - offset - i0), nq, j, D, dkt, dvt);
        }
      }
      AddTileToRows(dkt, nt, D, dk_rows);
      AddTileToRows(dvt, nt, D, dv_rows);
    }
  }
}

}  // namespace

void AttentionBackward(const AttentionDims& dims, const AttentionBatch& batch, const float* q, long q_stride,
                       const PackedKv& kv, const float* out, long o_stride, const float* dout, const float* lse,
                       float* dq, float* dk, float* dv, long dqkv_stride) {
  WithHeadDim(dims.head_dim, [&](auto kD) {
    BackwardImpl<kD.value>(dims, batch, q, q_stride, kv, out, o_stride, dout, lse, dq, dk, dv, dqkv_stride);
  });
}

void KvAppend(const float* qkv, long qkv_stride, int T, const int32_t* slot_mapping, const AttentionDims& dims,
              float* k_cache, float* v_cache) {
  const int kv_dim = dims.n_kv_heads * dims.head_dim;
  const int k_off = dims.n_heads * dims.head_dim, v_off = k_off + kv_dim;
  for (int t = 0; t < T; ++t) {
    const long slot = slot_mapping[t];
    if (slot < 0) continue;
    std::memcpy(k_cache + slot * kv_dim, qkv + t * qkv_stride + k_off, sizeof(float) * kv_dim);
    std::memcpy(v_cache + slot * kv_dim, qkv + t * qkv_stride + v_off, sizeof(float) * kv_dim);
  }
}

}  // namespace tinygpt::cpu
