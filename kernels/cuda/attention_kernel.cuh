// Paged flash attention (forward) for packed variable-length queries:
// block-diagonal causal with offset (a sequence's new tokens see its cached
// prefix and, causally, each other), GQA, optional ALiBi, split-KV.
//
// Per block: Q tile → shared memory (→ registers where it fits); K/V tiles
// stream through a kStages-deep cp.async pipeline, gathered through the block
// table (its entries staged in shared memory a tile ahead); S = Q·K^T and
// O += P·V on tensor cores (mma.sync m16n8k16, fp32 accumulation); softmax
// online in registers, in the log2 domain. One barrier per key tile. With
// num_splits > 1 each split writes its normalized partial output and
// log-sum-exp for AttentionCombineKernel. Tile shapes: attention_traits.cuh;
// which shape a call gets and the split count: attention_run.cuh.
#pragma once
#include <cfloat>
#include <type_traits>

#include "kernels/cuda/attention_traits.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma_primitives.cuh"

namespace tinygpt::cuda {

struct AttentionParams {
  const void* q;  // fused qkv rows; queries are the first n_heads*head_dim columns
  long q_stride;  // elements between rows
  const void* k_cache;
  const void* v_cache;
  const int32_t* block_tables;
  int max_blocks_per_seq, block_shift;  // block_size = 1 << block_shift
  const int32_t* cu_q;
  const int32_t* ctx_len;
  void* out;  // [total_q, n_heads, head_dim]
  int n_heads, n_kv_heads, group;
  float scale_log2;  // softmax scale · log2(e)
  bool alibi;
  int num_splits;
  float* partial_out;  // [num_splits, total_q, n_heads, head_dim] when num_splits > 1
  float* partial_lse;  // [num_splits, total_q, n_heads]
  // Decode kernel only: one counter per (sequence, KV head), zero between
  // calls; the last split block to finish merges the splits (its reset keeps
  // them zero). Null: the splits are merged by AttentionCombineKernel.
  int* split_counters;
  int total_q;
  // Decode stream kernel (decode_stream_kernel.cuh) only: the step's
  // sequences; its partials are partial_out [slots, 16 rows, head_dim] and
  // partial_lse [slots, 16 rows], two slots per warp of the grid.
  int num_seqs;
  int stream_blocks;  // its grid (0: the split kernel); the launch's, the kernel reads gridDim
  // The stream kernel's run lengths: each warp at least stream_min_tiles
  // tiles and at least 1/stream_max_parts (<= 31) of the longest context's,
  // so that a (sequence, KV head) has at most 32 contributors.
  int stream_min_tiles, stream_max_parts;
};

// exp2 on the SFU; flushes denormals, which only arise from scores far below
// the row maximum (weights < 2^-126 that fp16/bf16 P cannot hold anyway).
__device__ __forceinline__ float FastExp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Reduces this thread's 2·kNTiles scores of row half h (accumulator elements
// 2h, 2h+1 of each n8 tile) as a tree: short dependency chains, since with
// few warps per scheduler there is little else to hide their latency.
template <int kNTiles, class Op>
__device__ __forceinline__ float RowReduce(const float (&sc)[kNTiles][4], int h, Op op) {
  float v[kNTiles];
#pragma unroll
  for (int n = 0; n < kNTiles; ++n) v[n] = op(sc[n][2 * h], sc[n][2 * h + 1]);
#pragma unroll
  for (int w = kNTiles / 2; w >= 1; w /= 2)
#pragma unroll
    for (int i = 0; i < w; ++i) v[i] = op(v[i], v[i + w]);
  return v[0];
}

// Writes one query row of an m16 accumulator tile, held by a quad of lanes
// (each with its part of the row's exponential sum and kDTiles pairs of
// output columns, o[d][2h], o[d][2h + 1]): with one split, the normalized row
// of out; with more, this split's partial output (fp32) and log-sum-exp,
// which the combine (or the decode kernel's last split) merges. m is the
// row's running maximum in score units, score_scale what turns it into log2.
template <class Tr, class Params>
__device__ __forceinline__ void WriteAttentionRow(const Params& p, long row, int split, int lane, float sum, float m,
                                                  float score_scale, const float (&o)[Tr::kDTiles][4], int h) {
  using T = typename Tr::T;
  constexpr int D = Tr::kHeadDim;
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  const int col = 2 * (lane & 3);
  if (p.num_splits == 1) {
    T* out = static_cast<T*>(p.out) + row * D;
#pragma unroll
    for (int d = 0; d < Tr::kDTiles; ++d)
      *reinterpret_cast<uint32_t*>(out + d * 8 + col) = PackPair<T>(o[d][2 * h] * inv, o[d][2 * h + 1] * inv);
  } else {
    const long prow = static_cast<long>(split) * p.total_q * p.n_heads + row;
    float* out = p.partial_out + prow * D;
#pragma unroll
    for (int d = 0; d < Tr::kDTiles; ++d)
      *reinterpret_cast<float2*>(out + d * 8 + col) = make_float2(o[d][2 * h] * inv, o[d][2 * h + 1] * inv);
    const float log2e = 1.4426950408889634f;  // the log-sum-exp in natural-log units
    if ((lane & 3) == 0) p.partial_lse[prow] = sum > 0.f ? (m * score_scale + log2f(sum)) / log2e : -FLT_MAX;
  }
}

// kAlibi is a template argument, and tiles that need the causal mask run a
// separate copy of the tile body: per-score work that is off must cost no
// instructions (a run-time flag was if-converted into selects on every score).
// The launch bounds name one block per SM as the minimum: ptxas then gives the
// kernel all the registers it asks for (up to 255); without the minimum it
// allocates fewer, and the wide head_dim-128 ALiBi kernel spills.
template <class Tr, bool kAlibi>
__global__ void __launch_bounds__(Tr::kThreads, 1) PagedFlashAttentionKernel(const AttentionParams p) {
  using T = typename Tr::T;
  constexpr int D = Tr::kHeadDim, BM = Tr::kBlockM, BN = Tr::kBlockN, MT = Tr::kMTiles, S = Tr::kStages;
  constexpr float kMasked = -FLT_MAX;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + Tr::kQElems;          // kStages stages
  T* sV = sK + S * Tr::kKVElems;     // kStages stages
  // Block-table entries of each stage's tile, staged a tile ahead so that the
  // K/V gather reads them from shared memory instead of waiting on a global
  // load per row (the long-scoreboard stall Nsight showed at head_dim 128).
  int32_t* sTable = reinterpret_cast<int32_t*>(sV + S * Tr::kKVElems);  // [kStages][kBlockN]

  const int s = blockIdx.y / p.n_kv_heads, kvh = blockIdx.y % p.n_kv_heads;
  // The step's metadata (cu_q, ctx_len, block tables) is a host upload, no
  // kernel's output: read before PdlWait, as are the cached keys before the
  // step's new tokens (only those are the predecessor's writes).
  const int q0 = p.cu_q[s], q_len = p.cu_q[s + 1] - q0, ctx = p.ctx_len[s], offset = ctx - q_len;
  const int G = p.group, rows = q_len * G;
  // Causal: later query tiles see more keys. Scheduling them first shortens
  // the tail of the grid.
  const int m0 = (gridDim.x - 1 - blockIdx.x) * BM;
  if (m0 >= rows) {
    PdlWait();
    return;
  }
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
  const int shift = p.block_shift;
  // Table entries one tile spans (block sizes are powers of two, so a tile
  // covers whole blocks or lies inside one), and the last entry in use.
  const int tile_entries = max(1, BN >> shift), last_entry = (n_keys - 1) >> shift;
  constexpr int kEntriesPerThread = (BN + Tr::kThreads - 1) / Tr::kThreads;  // up to BN entries (block size 1)
  auto fetch_entry = [&](int t, int k) {  // entry tid + k·threads of tile t
    const int x = tid + k * Tr::kThreads, e = ((t * BN) >> shift) + x;
    return t < t_end && x < tile_entries && e <= last_entry ? table[e] : 0;
  };

  // --- K/V tile t into a stage, gathered through the block table (a
  // thread keeps one 16-byte column chunk and walks rows) ---
  auto load_kv = [&](int t, int stage) {
    T* dk = sK + stage * Tr::kKVElems;
    T* dv = sV + stage * Tr::kKVElems;
    const int* entries = sTable + stage * BN;
    const int ch = tid % Tr::kChunks, first = (t * BN) >> shift;
    for (int r = tid / Tr::kChunks; r < BN; r += Tr::kThreads / Tr::kChunks) {
      const int j = t * BN + r;
      const bool valid = j < n_keys;
      long src = 0;
      if (valid)
        src = ((static_cast<long>(entries[(j >> shift) - first]) << shift) + (j & ((1 << shift) - 1))) * (p.n_kv_heads * D) +
              kvh * D + ch * 8;
      CpAsync16(dk + Tr::Offset(r, ch * 8), kc + src, valid);
      CpAsync16(dv + Tr::Offset(r, ch * 8), vc + src, valid);
    }
  };
  // Prologue: the table entries of the first kStages tiles, then the first
  // kStages-1 tiles in flight (one commit group each, empty where the split
  // has fewer tiles, so the group count stays fixed).
  // Tiles wholly before the new tokens (keys < offset) are issued before
  // PdlWait, into the first commit group; the rest after it, one group each.
  for (int i = 0; i < S; ++i)
    for (int x = tid; x < tile_entries; x += Tr::kThreads) sTable[i * BN + x] = fetch_entry(t_begin + i, x / Tr::kThreads);
  __syncthreads();
  auto cached = [&](int t) { return (t + 1) * BN <= offset; };
#pragma unroll
  for (int i = 0; i < S - 1; ++i)
    if (t_begin + i < t_end && cached(t_begin + i)) load_kv(t_begin + i, i);
  PdlWait();  // Q and the new tokens' K/V are the predecessor's output (common.cuh)
  PdlLaunchDependents();
  // --- Q tile (rows past the end are zero-filled) ---
  for (int c = tid; c < BM * Tr::kChunks; c += Tr::kThreads) {
    const int r = c / Tr::kChunks, ch = c % Tr::kChunks, gr = m0 + r;
    const bool valid = gr < rows;
    const int token = valid ? gr / G : 0, head = kvh * G + (valid ? gr % G : 0);
    CpAsync16(sQ + Tr::Offset(r, ch * 8), q_base + (q0 + token) * p.q_stride + head * D + ch * 8, valid);
  }
#pragma unroll
  for (int i = 0; i < S - 1; ++i) {
    if (t_begin + i < t_end && !cached(t_begin + i)) load_kv(t_begin + i, i);
    CpAsyncCommit();
  }

  // Per thread and m-tile: rows lo = lane/4 and hi = lane/4 + 8 of 16.
  // Rows past the end are computed (on zero queries) but not written. Row
  // positions are recomputed where needed (masked tiles, the epilogue) rather
  // than held: at head_dim 128 every register counts (a spill there put
  // local-memory loads in the loop).
  auto row_of = [&](int mt, int h) { return m0 + warp * Tr::kRowsPerWarp + mt * 16 + (lane >> 2) + 8 * h; };
  auto pos_of = [&](int mt, int h) { return offset + min(row_of(mt, h), rows - 1) / G; };
  float slope[kAlibi ? MT : 1][2];
  const float log2e = 1.4426950408889634f;
  if constexpr (kAlibi) {
    const float base = exp2f(-8.0f / p.n_heads);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        slope[mt][h] = powf(base, static_cast<float>(kvh * G + min(row_of(mt, h), rows - 1) % G + 1)) * log2e;
  }
  // m is a row's running maximum in score units: raw Q·K without ALiBi,
  // log2-domain with it; score_scale takes it to the log2 domain.
  const float score_scale = kAlibi ? 1.f : p.scale_log2;
  float o[MT][Tr::kDTiles][4];
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int i = 0; i < Tr::kDTiles; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
    m[mt][0] = m[mt][1] = kMasked;
    l[mt][0] = l[mt][1] = 0.f;
  }
  uint32_t qf[Tr::kQInRegisters ? MT : 1][Tr::kQInRegisters ? Tr::kKSteps : 1][4];
  // ldmatrix x4 of a 16×16 operand at (row0, col0): lanes 8i..8i+7 address
  // sub-matrix i = (rows +8 if i odd, cols +8 if i ≥ 2) for A; B swaps them.
  const int mi = lane >> 3;
  auto load_q = [&](uint32_t (&a)[4], int mt, int ks) {
    LdMatrixX4(a, sQ + Tr::Offset(warp * Tr::kRowsPerWarp + mt * 16 + (mi & 1) * 8 + (lane & 7), ks * 16 + (mi >> 1) * 8));
  };

  auto tile = [&](const int t, auto mask) {
    constexpr bool kMask = decltype(mask)::value;
    const int i = t - t_begin, stage = i % S;
    CpAsyncWait<S - 2>();
    __syncthreads();  // tile t has landed for all; everyone is done with tile t-1's stage
    // Tile t+S reuses this stage's table slot, whose entries tile t's own
    // K/V copies (issued S-1 tiles ago) no longer need; the load's latency
    // hides behind this tile's math, the store comes at its end.
    int next_entry[kEntriesPerThread];
#pragma unroll
    for (int k = 0; k < kEntriesPerThread; ++k) next_entry[k] = fetch_entry(t + S, k);
    if constexpr (Tr::kQInRegisters) {
      if (i == 0) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int ks = 0; ks < Tr::kKSteps; ++ks) load_q(qf[mt][ks], mt, ks);
      }
    }
    const T* k = sK + stage * Tr::kKVElems;
    const T* v = sV + stage * Tr::kKVElems;

    // S = Q · K^T: each K fragment feeds every m-tile of the warp.
    float sc[MT][Tr::kNTiles][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int n = 0; n < Tr::kNTiles; ++n) sc[mt][n][0] = sc[mt][n][1] = sc[mt][n][2] = sc[mt][n][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < Tr::kKSteps; ++ks) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if constexpr (Tr::kQInRegisters) {
#pragma unroll
          for (int e = 0; e < 4; ++e) a[mt][e] = qf[mt][ks][e];
        } else {
          load_q(a[mt], mt, ks);
        }
      }
#pragma unroll
      for (int n = 0; n < Tr::kNTiles; n += 2) {
        uint32_t b[4];
        LdMatrixX4(b, k + Tr::Offset(n * 8 + (mi >> 1) * 8 + (lane & 7), ks * 16 + (mi & 1) * 8));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Mma16816<T>(sc[mt][n], a[mt], b[0], b[1]);
          Mma16816<T>(sc[mt][n + 1], a[mt], b[2], b[3]);
        }
      }
    }
    // The next tile's copies go out after this tile's Q·K^T MMAs are issued,
    // so the address work they wait on overlaps the tensor cores instead of
    // stalling the warp before them (6% at head_dim 128 against issuing them
    // first).
    if (t + S - 1 < t_end) load_kv(t + S - 1, (i + S - 1) % S);
    CpAsyncCommit();
    // Causal mask (and ALiBi); online softmax per row. Without ALiBi the
    // scores stay raw and the scale folds into exp2's argument (one FFMA per
    // score); with ALiBi they are moved to the log2 domain first.
    const int j0 = t * BN + 2 * (lane & 3);  // this thread's first key column in the tile
    float m_new[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      if constexpr (kAlibi || kMask) {
        const int pos[2] = {pos_of(mt, 0), pos_of(mt, 1)};
#pragma unroll
        for (int n = 0; n < Tr::kNTiles; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int h = e >> 1, dj = n * 8 + (e & 1);
            float x = sc[mt][n][e];
            if constexpr (kAlibi) x = x * p.scale_log2 + slope[mt][h] * static_cast<float>(j0 + dj - pos[h]);
            if constexpr (kMask) x = j0 + dj > pos[h] ? kMasked : x;
            sc[mt][n][e] = x;
          }
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float tmax = RowReduce<Tr::kNTiles>(sc[mt], h, [](float a, float b) { return fmaxf(a, b); });
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));
        m_new[mt][h] = fmaxf(m[mt][h], tmax);
      }
    }
    // Rescale O and l only when some row of the warp has a new maximum
    // (after the first tiles, rarely): saves a multiply per accumulator (a
    // vote and a branch per tile; rescaling every tile ran 4-9% slower).
    bool grew = false;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) grew |= (m_new[mt][0] > m[mt][0]) | (m_new[mt][1] > m[mt][1]);
    if (__any_sync(0xffffffffu, grew)) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          // A row with every key so far masked keeps m = kMasked; using 0
          // for it keeps its masked scores at -FLT_MAX, whose exp2 is 0.
          const float m_use = m_new[mt][h] == kMasked ? 0.f : m_new[mt][h];
          const float corr = FastExp2((m[mt][h] - m_use) * score_scale);
          l[mt][h] *= corr;
#pragma unroll
          for (int d = 0; d < Tr::kDTiles; ++d) {
            o[mt][d][2 * h] *= corr;
            o[mt][d][2 * h + 1] *= corr;
          }
        }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        m[mt][h] = m_new[mt][h];
        const float neg_m = -(m_new[mt][h] == kMasked ? 0.f : m_new[mt][h]) * score_scale;
#pragma unroll
        for (int n = 0; n < Tr::kNTiles; ++n) {
          sc[mt][n][2 * h] = FastExp2(fmaf(sc[mt][n][2 * h], score_scale, neg_m));
          sc[mt][n][2 * h + 1] = FastExp2(fmaf(sc[mt][n][2 * h + 1], score_scale, neg_m));
        }
        l[mt][h] += RowReduce<Tr::kNTiles>(sc[mt], h, [](float a, float b) { return a + b; });
      }
    // O += P · V: P's accumulators become A fragments without leaving
    // registers; each V fragment feeds every m-tile.
#pragma unroll
    for (int kk = 0; kk < Tr::kNTiles / 2; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        a[mt][0] = PackPair<T>(sc[mt][2 * kk][0], sc[mt][2 * kk][1]);
        a[mt][1] = PackPair<T>(sc[mt][2 * kk][2], sc[mt][2 * kk][3]);
        a[mt][2] = PackPair<T>(sc[mt][2 * kk + 1][0], sc[mt][2 * kk + 1][1]);
        a[mt][3] = PackPair<T>(sc[mt][2 * kk + 1][2], sc[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dn = 0; dn < Tr::kDTiles; dn += 2) {
        uint32_t b[4];
        LdMatrixX4Trans(b, v + Tr::Offset(kk * 16 + (mi & 1) * 8 + (lane & 7), dn * 8 + (mi >> 1) * 8));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Mma16816<T>(o[mt][dn], a[mt], b[0], b[1]);
          Mma16816<T>(o[mt][dn + 1], a[mt], b[2], b[3]);
        }
      }
    }
    if (t + S < t_end) {
#pragma unroll
      for (int k = 0; k < kEntriesPerThread; ++k)
        if (tid + k * Tr::kThreads < tile_entries) sTable[stage * BN + tid + k * Tr::kThreads] = next_entry[k];
    }
  };
  // Tiles wholly at or before the block's first query position need no mask.
  const int t_mask = max(t_begin, min(t_end, (offset + m0 / G + 1) / BN));
  for (int t = t_begin; t < t_mask; ++t) tile(t, std::false_type());
  for (int t = t_mask; t < t_end; ++t) tile(t, std::true_type());
  CpAsyncWaitAll();

  // Epilogue: finish the row sums across the quad, normalize, write.
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float sum = l[mt][h];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int r = row_of(mt, h);
      if (r >= rows) continue;
      const int token = r / G, head = kvh * G + r % G;
      const long row = static_cast<long>(q0 + token) * p.n_heads + head;
      WriteAttentionRow<Tr>(p, row, blockIdx.z, lane, sum, m[mt][h], score_scale, o[mt], h);
    }
}

// Merges the splits of each (row, head): weights exp(lse_s - lse_max).
template <class T>
__global__ void AttentionCombineKernel(const float* partial_out, const float* partial_lse, T* out, int num_splits,
                                       int total_q, int n_heads, int head_dim) {
  PdlWait();  // launched with programmatic dependent launch (common.cuh)
  PdlLaunchDependents();
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
