// Paged attention for decode steps, stream-K: all key tiles of the step
// (every sequence × KV head × 16-key tile, in that order) are one list, and
// each warp of the grid takes an equal, contiguous run of it. A warp's run
// may start inside one (sequence, KV head), cover several whole ones, and
// end inside another; its cp.async pipeline runs on across those borders.
// Where a warp covers a whole (sequence, KV head) it writes the rows; where
// it covers part of one it writes a partial (fp32 output and log-sum-exp)
// and counts itself in, and the warp that comes last merges them.
//
// Why (docs/benchmarks.md, issue #23): the split kernel of
// decode_attention_kernel.cuh gives each (sequence, KV head, split) a block,
// so its grid comes in waves: at 8 × 8192 tokens (32q/8kv, head_dim 128) its
// 576 blocks were 2.2 waves of 264 (70% of copy bandwidth), and at 256 × 330
// (12q/4kv, head_dim 64) each block's four warps had five tiles each, so the
// ramp and merge of every block were a large share of its time. Here every
// warp has the same number of tiles whatever the batch, the contexts (also
// unequal ones) and the SM count, and a warp pays one ramp per call.
//
// Grid: stream_blocks blocks (attention_run.cuh plans them: at most one wave
// of resident blocks, each warp at least a few tiles). Shared memory: each
// warp's K/V stages, then the sequences' tile-count prefix, first rows and
// contexts (copied from global memory once: the pipeline reads them for
// every tile, and a global load there stalls the warp for its latency).
#pragma once
#include <cfloat>

#include "kernels/cuda/decode_attention_tile.cuh"

namespace tinygpt::cuda {

// Dynamic shared memory of a stream block for `num_seqs` sequences.
template <class Tr>
constexpr int DecodeStreamSmemBytes(int num_seqs) {
  return Tr::kStageBytes + (3 * (num_seqs + 1) * 4 + 15) / 16 * 16;
}

template <class Tr, bool kAlibi>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks) DecodeStreamKernel(const AttentionParams p) {
  using T = typename Tr::T;
  constexpr int D = Tr::kHeadDim, BN = Tr::kBlockN, S = Tr::kStages, W = Tr::kWarps, kRows = Tr::kRows;
  static_assert(32 * (kRows + 1) * 4 <= Tr::kWarpElems * 2, "a merge's weights and slots fit the warp's stages");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  T* sK = reinterpret_cast<T*>(smem_raw) + warp * Tr::kWarpElems;  // this warp's kStages stages of K, then of V
  T* sV = sK + S * Tr::kKVElems;
  int* prefix = reinterpret_cast<int*>(smem_raw + Tr::kStageBytes);  // [num_seqs + 1]: tiles of the sequences before
  int* cu_q = prefix + p.num_seqs + 1;                                   // [num_seqs + 1]: p.cu_q
  int* ctx_len = cu_q + p.num_seqs + 1;                                  // [num_seqs]: p.ctx_len
  __shared__ int warp_sums[W], warp_maxes[W];

  const int n = p.num_seqs, nkv = p.n_kv_heads, G = p.group, shift = p.block_shift;
  // 1. The tile-count prefix (metadata are host uploads, read before
  //    PdlWait): thread t sums a chunk of consecutive sequences, the block
  //    scans the chunk sums, each thread writes its chunk's prefix. The
  //    longest sequence's tiles come with it.
  auto seq_tiles_of = [&](int s) { return p.cu_q[s + 1] > p.cu_q[s] ? (p.ctx_len[s] + BN - 1) / BN : 0; };
  int longest = 0;
  {
    const int per = (n + Tr::kThreads - 1) / Tr::kThreads, s0 = tid * per;
    int local = 0, local_max = 0;
    for (int k = 0; k < per && s0 + k < n; ++k) {
      const int t = seq_tiles_of(s0 + k);
      local += t;
      local_max = max(local_max, t);
    }
    int incl = local;
#pragma unroll
    for (int x = 1; x < 32; x *= 2) {
      const int v = __shfl_up_sync(0xffffffffu, incl, x);
      if (lane >= x) incl += v;
      local_max = max(local_max, __shfl_xor_sync(0xffffffffu, local_max, x));
    }
    if (lane == 31) warp_sums[warp] = incl;
    if (lane == 0) warp_maxes[warp] = local_max;
    __syncthreads();
    int run = incl - local;
    for (int w = 0; w < warp; ++w) run += warp_sums[w];
    for (int w = 0; w < W; ++w) longest = max(longest, warp_maxes[w]);
    for (int k = 0; k < per && s0 + k < n; ++k) {
      prefix[s0 + k] = run;
      run += seq_tiles_of(s0 + k);
    }
    if (tid == Tr::kThreads - 1) prefix[n] = run;  // the last thread's run ends at the total
    for (int k = tid; k <= n; k += Tr::kThreads) {
      cu_q[k] = p.cu_q[k];
      if (k < n) ctx_len[k] = p.ctx_len[k];
    }
    __syncthreads();
  }
  const long total = static_cast<long>(prefix[n]) * nkv;  // key tiles of the step
  // Warps with work: as many as the grid has, fewer where a run would be
  // under stream_min_tiles tiles or under 1/stream_max_parts of the longest
  // (sequence, KV head) (the plan sized the grid for the graph's context
  // bucket; the step's contexts may be shorter). Every run is then at least
  // `least` tiles long, so a (sequence, KV head) meets at most
  // stream_max_parts + 1 <= 32 runs: its merge has a lane per contributor.
  const long least = max(static_cast<long>(p.stream_min_tiles), (static_cast<long>(longest) + p.stream_max_parts - 1) / p.stream_max_parts);
  const long nw = max(1L, min(static_cast<long>(gridDim.x) * W, total / least));
  const long gw = static_cast<long>(blockIdx.x) * W + warp;
  if (static_cast<long>(blockIdx.x) * W >= nw) return;  // a block without work
  // Runs of q tiles, the first r of them one longer (no division per use).
  const long q_run = total / nw, r_long = total % nw, long_end = r_long * (q_run + 1);
  auto run_begin = [&](long w) { return w * q_run + min(w, r_long); };
  // The warp whose run holds tile g.
  auto warp_of = [&](long g) { return g < long_end ? g / (q_run + 1) : r_long + (g - long_end) / q_run; };
  const long a = gw < nw ? run_begin(gw) : 0, b = gw < nw ? run_begin(gw + 1) : 0;
  const int count = static_cast<int>(b - a);

  // A position in the tile list: sequence s, KV head h, tile t of the
  // sequence's `tiles`.
  struct Cursor {
    int s, h, t, tiles;
  };
  auto seq_tiles = [&](int s) { return prefix[s + 1] - prefix[s]; };
  // The runs that cover (sequence s, KV head h): the pair's first tile in
  // the list, its first warp and how many warps contribute to it.
  struct Span {
    long begin, w0;
    int contributors;
  };
  auto span_of = [&](int s, int h) {
    const int tiles = seq_tiles(s);
    const long begin = static_cast<long>(prefix[s]) * nkv + static_cast<long>(h) * tiles, w0 = warp_of(begin);
    return Span{begin, w0, static_cast<int>(warp_of(begin + tiles - 1) - w0 + 1)};
  };
  auto locate = [&](long g) {
    int lo = 0, hi = n - 1;  // the last sequence whose first tile is at or before g
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (static_cast<long>(prefix[mid]) * nkv <= g) lo = mid;
      else hi = mid - 1;
    }
    const int tiles = seq_tiles(lo);
    const int off = static_cast<int>(g - static_cast<long>(prefix[lo]) * nkv);  // < tiles × nkv
    return Cursor{lo, off / tiles, off % tiles, tiles};
  };
  auto advance = [&](Cursor& c) {
    if (++c.t < c.tiles) return;
    c.t = 0;
    if (++c.h < nkv) return;
    c.h = 0;
    do ++c.s;
    while (c.s < n - 1 && seq_tiles(c.s) == 0);
    c.tiles = c.s < n ? max(1, seq_tiles(c.s)) : 1;
  };

  // 2. The copy pipeline: a tile's table entries and context are fetched a
  //    tile before its copies are issued.
  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);
  struct Fetched {
    Cursor c;
    int entry, ctx;
  };
  auto fetch = [&](const Cursor& c) {
    const int ctx = ctx_len[c.s];
    return Fetched{c, DecodeTableEntry<Tr>(p.block_tables + static_cast<long>(c.s) * p.max_blocks_per_seq, c.t, ctx, shift, lane), ctx};
  };
  auto load = [&](const Fetched& f, int stage) {
    DecodeLoadTile<Tr>(sK + stage * Tr::kKVElems, sV + stage * Tr::kKVElems, kc, vc, f.c.t, f.entry, f.ctx, f.c.h, nkv, shift, lane);
  };
  // Wholly before its sequence's new tokens: no predecessor wrote it.
  auto cached = [&](const Fetched& f) { return (f.c.t + 1) * BN <= f.ctx - (cu_q[f.c.s + 1] - cu_q[f.c.s]); };

  const Cursor first = count > 0 ? locate(a) : Cursor{0, 0, 0, 1};
  Cursor lc = first;  // the next tile to fetch
  Fetched pro[S - 1];
#pragma unroll
  for (int i = 0; i < S - 1; ++i) {
    if (i < count) {
      pro[i] = fetch(lc);
      advance(lc);
      if (cached(pro[i])) load(pro[i], i);
    }
  }
  PdlWait();  // Q and the new tokens' K/V are the predecessor's output
  PdlLaunchDependents();
#pragma unroll
  for (int i = 0; i < S - 1; ++i) {
    if (i < count && !cached(pro[i])) load(pro[i], i);
    CpAsyncCommit();  // one group per tile, empty past the run's end: the group count stays fixed
  }
  Fetched next{};  // the tile issued next (i + S - 1 at iteration i)
  if (S - 1 < count) {
    next = fetch(lc);
    advance(lc);
  }

  // 3. The run, segment by segment (one sequence and KV head each).
  DecodeWarpState<Tr, kAlibi> st;
  int won_pairs[2], num_won = 0;  // the pairs this warp counted in last (its first and last segments at most)
  uint32_t qf[Tr::kKSteps][4];
  const T* q_base = static_cast<const T*>(p.q);
  Cursor cc = first;
  bool first_segment = true;
  int seg_t0 = 0, q0 = 0, rows = 0, t_mask = 0;
  for (int i = 0; i < count; ++i) {
    if (i == 0 || cc.t == 0) {
      // A new segment: its rows' Q as A fragments straight from global
      // memory (lane l: rows l/4 and l/4 + 8, columns 2(l%4) and +8 of each
      // k16 step; rows past the end zero), and a fresh softmax state.
      q0 = cu_q[cc.s];
      const int q_len = cu_q[cc.s + 1] - q0, ctx = ctx_len[cc.s], offset = ctx - q_len;
      rows = q_len * G;
      t_mask = (offset + 1) / BN;  // tiles before it are wholly at or before the first new token: no mask
      seg_t0 = cc.t;
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int r = (lane >> 2) + 8 * hf;
        const bool valid = r < rows;
        const T* qr = q_base + (q0 + (valid ? r / G : 0)) * p.q_stride + (cc.h * G + (valid ? r % G : 0)) * D + 2 * (lane & 3);
#pragma unroll
        for (int ks = 0; ks < Tr::kKSteps; ++ks) {
          qf[ks][hf] = valid ? __ldg(reinterpret_cast<const uint32_t*>(qr + ks * 16)) : 0u;
          qf[ks][2 + hf] = valid ? __ldg(reinterpret_cast<const uint32_t*>(qr + ks * 16 + 8)) : 0u;
        }
      }
      st.Begin(p, cc.h, rows, offset, lane);
    }
    const int stage = i % S;
    CpAsyncWait<S - 2>();
    __syncwarp();  // tile i has landed for every lane; all are done with tile i-1's stage
    float sc[Tr::kNTiles][4];
    st.Scores(qf, sK + stage * Tr::kKVElems, lane, sc);
    if (i + S - 1 < count) load(next, (i + S - 1) % S);
    CpAsyncCommit();
    if (i + S < count) {
      next = fetch(lc);
      advance(lc);
    }
    if (cc.t < t_mask) st.template Accumulate<false>(sc, sV + stage * Tr::kKVElems, cc.t * BN, lane);
    else st.template Accumulate<true>(sc, sV + stage * Tr::kKVElems, cc.t * BN, lane);

    if (i == count - 1 || cc.t == cc.tiles - 1) {
      // The segment's end: the rows (the warp saw all of the pair's tiles),
      // or a partial in slot 2·gw (the run's first segment) or 2·gw + 1.
      const bool whole = seg_t0 == 0 && cc.t == cc.tiles - 1;
      const long slot = 2 * gw + (first_segment ? 0 : 1);
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const float sum = st.RowSum(hf);
        const int r = (lane >> 2) + 8 * hf;
        if (r >= rows) continue;
        const float inv = sum > 0.f ? 1.f / sum : 0.f;
        const int col = 2 * (lane & 3);
        if (whole) {
          T* out = static_cast<T*>(p.out) + (static_cast<long>(q0 + r / G) * p.n_heads + cc.h * G + r % G) * D;
#pragma unroll
          for (int d = 0; d < Tr::kDTiles; ++d)
            *reinterpret_cast<uint32_t*>(out + d * 8 + col) = PackPair<T>(st.o[d][2 * hf] * inv, st.o[d][2 * hf + 1] * inv);
        } else {
          float* out = p.partial_out + (slot * kRows + r) * D;
#pragma unroll
          for (int d = 0; d < Tr::kDTiles; ++d)
            *reinterpret_cast<float2*>(out + d * 8 + col) = make_float2(st.o[d][2 * hf] * inv, st.o[d][2 * hf + 1] * inv);
          if ((lane & 3) == 0) p.partial_lse[slot * kRows + r] = st.Lse(hf, sum);
        }
      }
      if (!whole) {
        // Count this warp in; the pair's last contributor merges it (after
        // its loop, when its stages are free).
        __threadfence();  // this lane's partial writes, visible device-wide before the count
        __syncwarp();
        int won = -1;
        if (lane == 0) {
          const int pair = cc.s * nkv + cc.h;
          won = atomicAdd(p.split_counters + pair, 1) == span_of(cc.s, cc.h).contributors - 1 ? pair : -1;
          if (won >= 0) {
            p.split_counters[pair] = 0;  // zero for the next call
            __threadfence();             // the others' partials, seen after their counts
          }
        }
        won = __shfl_sync(0xffffffffu, won, 0);
        if (won >= 0) won_pairs[num_won++] = won;
      }
      first_segment = false;
    }
    advance(cc);
  }
  CpAsyncWaitAll();
  __syncwarp();

  // 4. The merges this warp won, in its own (now free) stages: lane c is
  //    contributor c. Every (row, 4 columns) of the pair is the sum over the
  //    contributors' partials weighted by exp(lse - max) / sum of those; the
  //    weights, per contributor and row, go to shared memory first.
  float* weights = reinterpret_cast<float*>(sK);           // [32 contributors][kRows]
  int* slots = reinterpret_cast<int*>(weights + 32 * kRows);  // [32 contributors]
  for (int k = 0; k < num_won; ++k) {
    const int pair = won_pairs[k], s = pair / nkv, h = pair % nkv;
    const Span span = span_of(s, h);
    const long pair_begin = span.begin, w0 = span.w0;
    const int contributors = span.contributors;  // <= 32 (see `least`)
    const int mq0 = cu_q[s], mrows = (cu_q[s + 1] - mq0) * G;
    // A contributor's partial is its run's first segment when its run begins inside this pair.
    auto slot_of = [&](int c) { return static_cast<int>(2 * (w0 + c) + (run_begin(w0 + c) >= pair_begin ? 0 : 1)); };
    const bool mine = lane < contributors;
    const int my_slot = mine ? slot_of(lane) : 0;
    float lse[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) lse[r] = mine && r < mrows ? __ldcg(p.partial_lse + my_slot * kRows + r) : -FLT_MAX;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (r >= mrows) break;  // uniform across the warp
      float mx = lse[r];
#pragma unroll
      for (int x = 16; x >= 1; x /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, x));
      const float e = lse[r] == -FLT_MAX ? 0.f : expf(lse[r] - mx);
      float sum = e;
#pragma unroll
      for (int x = 16; x >= 1; x /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, x);
      weights[lane * kRows + r] = sum > 0.f ? e / sum : 0.f;
    }
    slots[lane] = my_slot;
    __syncwarp();
    constexpr int kVecs = D / 4;  // float4 columns of a row
    for (int e = lane; e < mrows * kVecs; e += 32) {
      const int r = e / kVecs, v4 = e % kVecs;
      float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
      auto add = [&](int c) {
        const float wgt = weights[c * kRows + r];
        const float4 x = __ldcg(reinterpret_cast<const float4*>(p.partial_out + (static_cast<long>(slots[c]) * kRows + r) * D) + v4);
        acc.x += wgt * x.x;
        acc.y += wgt * x.y;
        acc.z += wgt * x.z;
        acc.w += wgt * x.w;
      };
      int c = 0;
      for (; c + 4 <= contributors; c += 4) {  // four contributors' loads in flight
#pragma unroll
        for (int u = 0; u < 4; ++u) add(c + u);
      }
      for (; c < contributors; ++c) add(c);
      T* out = static_cast<T*>(p.out) + (static_cast<long>(mq0 + r / G) * p.n_heads + h * G + r % G) * D + v4 * 4;
      *reinterpret_cast<uint32_t*>(out) = PackPair<T>(acc.x, acc.y);
      *reinterpret_cast<uint32_t*>(out + 2) = PackPair<T>(acc.z, acc.w);
    }
    __syncwarp();  // the weights are the next merge's
  }
}

}  // namespace tinygpt::cuda
