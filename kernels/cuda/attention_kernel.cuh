// Paged flash attention (forward) for packed variable-length queries:
// block-diagonal causal with offset (a sequence's new tokens see its cached
// prefix and, causally, each other), GQA, optional ALiBi, split-KV.
//
// Per block: Q tile → registers once; K/V tiles stream through a two-stage
// cp.async pipeline, gathered through the block table; S = Q·K^T and O += P·V
// on tensor cores (mma.sync m16n8k16, fp32 accumulation); softmax online in
// registers, in the log2 domain. With num_splits > 1 each split writes its
// normalized partial output and log-sum-exp for attention_combine.
#pragma once
#include <cfloat>

#include "kernels/cuda/attention_traits.cuh"
#include "kernels/cuda/common.cuh"

namespace tinygpt::cuda {

struct AttentionParams {
  const void* q;  // fused qkv rows; queries are the first n_heads*head_dim columns
  long q_stride;  // elements between rows
  const void* k_cache;
  const void* v_cache;
  const int32_t* block_tables;
  int max_blocks_per_seq, block_size;
  const int32_t* cu_q;
  const int32_t* ctx_len;
  void* out;  // [total_q, n_heads, head_dim]
  int n_heads, n_kv_heads, group;
  float scale_log2;  // softmax scale · log2(e)
  bool alibi;
  int num_splits;
  float* partial_out;  // [num_splits, total_q, n_heads, head_dim] when num_splits > 1
  float* partial_lse;  // [num_splits, total_q, n_heads]
  int total_q;
};

__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void CpAsyncWaitAll() { asm volatile("cp.async.wait_group 0;\n" ::); }

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* smem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const void* smem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
}

template <class T> __device__ __forceinline__ void Mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <> __device__ __forceinline__ void Mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void Mma16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads) PagedFlashAttentionKernel(const AttentionParams p) {
  using T = typename Tr::T;
  constexpr int D = Tr::kHeadDim, BM = Tr::kBlockM, BN = Tr::kBlockN;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + Tr::kQElems;      // two stages
  T* sV = sK + 2 * Tr::kKVElems;  // two stages

  const int s = blockIdx.y / p.n_kv_heads, kvh = blockIdx.y % p.n_kv_heads;
  const int q0 = p.cu_q[s], q_len = p.cu_q[s + 1] - q0, ctx = p.ctx_len[s], offset = ctx - q_len;
  const int G = p.group, rows = q_len * G, m0 = blockIdx.x * BM;
  if (m0 >= rows) return;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

  // Keys this tile can see: up to the position of its last token.
  const int n_keys = offset + min(q_len - 1, (m0 + BM - 1) / G) + 1;
  const int tiles = (n_keys + BN - 1) / BN;
  const int per_split = (tiles + p.num_splits - 1) / p.num_splits;
  const int t_begin = blockIdx.z * per_split, t_end = min(tiles, t_begin + per_split);

  const T* q_base = static_cast<const T*>(p.q);
  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);
  const int32_t* table = p.block_tables + static_cast<long>(s) * p.max_blocks_per_seq;

  // --- Load Q (rows past the end are zero-filled) ---
  for (int c = tid; c < BM * Tr::kChunks; c += Tr::kThreads) {
    const int r = c / Tr::kChunks, ch = c % Tr::kChunks, gr = m0 + r;
    const bool valid = gr < rows;
    const int token = valid ? gr / G : 0, head = kvh * G + (valid ? gr % G : 0);
    CpAsync16(sQ + Tr::Offset(r, ch * 8), q_base + (q0 + token) * p.q_stride + head * D + ch * 8, valid);
  }
  auto load_kv = [&](int t, int stage) {
    T* dk = sK + stage * Tr::kKVElems;
    T* dv = sV + stage * Tr::kKVElems;
    for (int c = tid; c < BN * Tr::kChunks; c += Tr::kThreads) {
      const int r = c / Tr::kChunks, ch = c % Tr::kChunks, j = t * BN + r;
      const bool valid = j < n_keys;
      long src = 0;
      if (valid) src = ((static_cast<long>(table[j / p.block_size]) * p.block_size + j % p.block_size) * p.n_kv_heads + kvh) * D + ch * 8;
      CpAsync16(dk + Tr::Offset(r, ch * 8), kc + src, valid);
      CpAsync16(dv + Tr::Offset(r, ch * 8), vc + src, valid);
    }
  };
  if (t_begin < t_end) load_kv(t_begin, 0);
  CpAsyncCommit();

  // Per thread: rows r_lo = lane/4 and r_hi = lane/4 + 8 of the warp's 16.
  const int r_lo = m0 + warp * 16 + (lane >> 2), r_hi = r_lo + 8;
  const int pos_lo = offset + min(r_lo, rows - 1) / G, pos_hi = offset + min(r_hi, rows - 1) / G;
  const float log2e = 1.4426950408889634f;
  float slope_lo = 0.f, slope_hi = 0.f;
  if (p.alibi) {
    const float base = exp2f(-8.0f / p.n_heads);
    slope_lo = powf(base, static_cast<float>(kvh * G + min(r_lo, rows - 1) % G + 1)) * log2e;
    slope_hi = powf(base, static_cast<float>(kvh * G + min(r_hi, rows - 1) % G + 1)) * log2e;
  }
  float o[Tr::kDTiles][4];
#pragma unroll
  for (int i = 0; i < Tr::kDTiles; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_lo = -FLT_MAX, m_hi = -FLT_MAX, l_lo = 0.f, l_hi = 0.f;
  uint32_t qf[Tr::kKSteps][4];

  for (int t = t_begin; t < t_end; ++t) {
    const int stage = (t - t_begin) & 1;
    CpAsyncWaitAll();
    __syncthreads();
    if (t == t_begin) {
#pragma unroll
      for (int ks = 0; ks < Tr::kKSteps; ++ks) {
        const int mi = lane >> 3;
        LdMatrixX4(qf[ks], sQ + Tr::Offset(warp * 16 + (mi & 1) * 8 + (lane & 7), ks * 16 + (mi >> 1) * 8));
      }
    }
    if (t + 1 < t_end) load_kv(t + 1, stage ^ 1);
    CpAsyncCommit();
    const T* k = sK + stage * Tr::kKVElems;
    const T* v = sV + stage * Tr::kKVElems;

    // S = Q · K^T for the warp's 16 rows × BN keys.
    float sc[Tr::kNTiles][4];
#pragma unroll
    for (int n = 0; n < Tr::kNTiles; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < Tr::kKSteps; ++ks) {
#pragma unroll
      for (int n = 0; n < Tr::kNTiles; n += 2) {
        uint32_t b[4];
        const int mi = lane >> 3;
        LdMatrixX4(b, k + Tr::Offset(n * 8 + (mi >> 1) * 8 + (lane & 7), ks * 16 + (mi & 1) * 8));
        Mma16816<T>(sc[n], qf[ks], b[0], b[1]);
        Mma16816<T>(sc[n + 1], qf[ks], b[2], b[3]);
      }
    }
    // Scale, mask, bias; online softmax over this tile (log2 domain).
    const bool needs_mask = (t + 1) * BN - 1 > offset + (m0 + warp * 16) / G;
    float tmax_lo = -FLT_MAX, tmax_hi = -FLT_MAX;
#pragma unroll
    for (int n = 0; n < Tr::kNTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = t * BN + n * 8 + 2 * (lane & 3) + (e & 1);
        const bool hi = e >= 2;
        const int pos = hi ? pos_hi : pos_lo;
        float x = sc[n][e] * p.scale_log2 + (hi ? slope_hi : slope_lo) * static_cast<float>(j - pos);
        if (needs_mask && (j > pos || (hi ? r_hi : r_lo) >= rows)) x = -FLT_MAX;
        sc[n][e] = x;
        if (hi) tmax_hi = fmaxf(tmax_hi, x); else tmax_lo = fmaxf(tmax_lo, x);
      }
    }
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      tmax_lo = fmaxf(tmax_lo, __shfl_xor_sync(0xffffffffu, tmax_lo, off));
      tmax_hi = fmaxf(tmax_hi, __shfl_xor_sync(0xffffffffu, tmax_hi, off));
    }
    const float mn_lo = fmaxf(m_lo, tmax_lo), mn_hi = fmaxf(m_hi, tmax_hi);
    const float corr_lo = exp2f(m_lo - mn_lo), corr_hi = exp2f(m_hi - mn_hi);
    m_lo = mn_lo;
    m_hi = mn_hi;
    l_lo *= corr_lo;
    l_hi *= corr_hi;
#pragma unroll
    for (int i = 0; i < Tr::kDTiles; ++i) {
      o[i][0] *= corr_lo; o[i][1] *= corr_lo; o[i][2] *= corr_hi; o[i][3] *= corr_hi;
    }
    // P = exp2(S - m); masked entries (-FLT_MAX) underflow to exactly 0.
#pragma unroll
    for (int n = 0; n < Tr::kNTiles; ++n) {
      sc[n][0] = sc[n][0] == -FLT_MAX ? 0.f : exp2f(sc[n][0] - m_lo);
      sc[n][1] = sc[n][1] == -FLT_MAX ? 0.f : exp2f(sc[n][1] - m_lo);
      sc[n][2] = sc[n][2] == -FLT_MAX ? 0.f : exp2f(sc[n][2] - m_hi);
      sc[n][3] = sc[n][3] == -FLT_MAX ? 0.f : exp2f(sc[n][3] - m_hi);
      l_lo += sc[n][0] + sc[n][1];
      l_hi += sc[n][2] + sc[n][3];
    }
    // O += P · V: P's accumulators become A fragments without leaving registers.
#pragma unroll
    for (int kk = 0; kk < Tr::kNTiles / 2; ++kk) {
      uint32_t a[4];
      a[0] = PackPair<T>(sc[2 * kk][0], sc[2 * kk][1]);
      a[1] = PackPair<T>(sc[2 * kk][2], sc[2 * kk][3]);
      a[2] = PackPair<T>(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
      a[3] = PackPair<T>(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
      for (int dn = 0; dn < Tr::kDTiles; dn += 2) {
        uint32_t b[4];
        const int mi = lane >> 3;
        LdMatrixX4Trans(b, v + Tr::Offset(kk * 16 + (mi & 1) * 8 + (lane & 7), dn * 8 + (mi >> 1) * 8));
        Mma16816<T>(o[dn], a, b[0], b[1]);
        Mma16816<T>(o[dn + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // the next iteration's prefetch overwrites this stage
  }
  CpAsyncWaitAll();

  // Epilogue: finish the row sums across the quad, normalize, write.
#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, off);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, off);
  }
  const float inv_lo = l_lo > 0.f ? 1.f / l_lo : 0.f, inv_hi = l_hi > 0.f ? 1.f / l_hi : 0.f;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = half ? r_hi : r_lo;
    if (r >= rows) continue;
    const int token = r / G, head = kvh * G + r % G;
    const long row = static_cast<long>(q0 + token) * p.n_heads + head;
    const float inv = half ? inv_hi : inv_lo;
    const int col = 2 * (lane & 3);
    if (p.num_splits == 1) {
      T* out = static_cast<T*>(p.out) + row * D;
#pragma unroll
      for (int i = 0; i < Tr::kDTiles; ++i) {
        const uint32_t packed = PackPair<T>(o[i][2 * half] * inv, o[i][2 * half + 1] * inv);
        *reinterpret_cast<uint32_t*>(out + i * 8 + col) = packed;
      }
    } else {
      const long prow = static_cast<long>(blockIdx.z) * p.total_q * p.n_heads + row;
      float* out = p.partial_out + prow * D;
#pragma unroll
      for (int i = 0; i < Tr::kDTiles; ++i)
        *reinterpret_cast<float2*>(out + i * 8 + col) = make_float2(o[i][2 * half] * inv, o[i][2 * half + 1] * inv);
      if ((lane & 3) == 0) {
        const float l = half ? l_hi : l_lo, m = half ? m_hi : m_lo;
        p.partial_lse[prow] = l > 0.f ? (m + log2f(l)) / log2e : -FLT_MAX;
      }
    }
  }
}

// Merges the splits of each (row, head): weights exp(lse_s - lse_max).
template <class T>
__global__ void AttentionCombineKernel(const float* partial_out, const float* partial_lse, T* out, int num_splits,
                                       int total_q, int n_heads, int head_dim) {
  const long row = blockIdx.x;  // token * n_heads + head
  const long stride = static_cast<long>(total_q) * n_heads;
  float mx = -FLT_MAX;
  for (int s = 0; s < num_splits; ++s) mx = fmaxf(mx, partial_lse[s * stride + row]);
  float total = 0.f;
  for (int s = 0; s < num_splits; ++s) {
    const float l = partial_lse[s * stride + row];
    total += l == -FLT_MAX ? 0.f : expf(l - mx);
  }
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float acc = 0.f;
    for (int s = 0; s < num_splits; ++s) {
      const float l = partial_lse[s * stride + row];
      if (l != -FLT_MAX) acc += expf(l - mx) * partial_out[(s * stride + row) * head_dim + d];
    }
    out[row * head_dim + d] = FromFloat<T>(total > 0.f ? acc / total : 0.f);
  }
}

}  // namespace tinygpt::cuda
