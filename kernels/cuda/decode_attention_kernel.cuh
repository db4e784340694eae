// Paged attention for decode steps: every sequence's rows (new tokens × the
// GQA group that shares one KV head) fit one m16 tile, so a thread block owns
// one (sequence, KV head, key split) and its warps share the keys instead of
// the rows. Each warp streams its own key tiles (tile t_begin + warp, + W, ...)
// through a private cp.async pipeline, synchronised with __syncwarp only; the
// warps' softmax states are merged in shared memory at the end.
//
// Why not the prefill kernel with one warp per block: there a block walks all
// of its sequence's keys alone, so a 256-sequence step of 330-token contexts
// was 1,024 blocks of 11 serial tiles, 2.6 waves of which the last ran at a
// fraction of the bandwidth; the block's 30 KB of stages also kept a single
// warp per 30 KB (seven warps per SM). Here the same step is 1,024 blocks of
// four warps with about five 16-key tiles each, and a block's latency is that
// of its warp's share. Split-KV (blockIdx.y) still fills the GPU at small
// batches; AttentionCombineKernel merges the splits.
//
// The math of a tile (decode_attention_tile.cuh) as in attention_kernel.cuh:
// S = Q·K^T and O += P·V on mma.sync m16n8k16 with fp32 accumulation, online
// softmax in the log2 domain, causal mask only on tiles past the first new
// token, ALiBi as a template argument.
#pragma once
#include <cfloat>

#include "kernels/cuda/decode_attention_tile.cuh"

namespace tinygpt::cuda {

// What a block does where its inputs from the kernel before become readable
// (q and the new tokens' K/V): the kernel below waits for its programmatic
// predecessor (common.cuh).
struct DecodePdlWait {
  __device__ __forceinline__ void operator()() const {
    PdlWait();
    PdlLaunchDependents();
  }
};

// One block's work: (sequence, KV head) bx and key split by, in smem_raw
// (Tr::kSmemBytes). The kernel below runs one per block; the decode step
// kernel (decode_step_kernel.cuh) runs them in its attention phase, where
// wait_inputs is its grid barrier: the block table, and the cached keys
// before the new tokens, are read before it. Every thread of the block calls
// wait_inputs once.
//
// kSmallCode (the step kernel's): one copy of the tile body, every tile
// masked (a no-op on tiles before the first new token), and the prologue's
// copies in loops, not unrolled: the step kernel's time follows its code
// size (docs/benchmarks.md, issue #23), and these copies were a third of its
// attention phase's code. The kernel below keeps the unrolled form.
template <class Tr, bool kAlibi, class WaitInputs = DecodePdlWait, bool kSmallCode = false>
__device__ __forceinline__ void DecodeAttentionBlock(const AttentionParams& p, const int bx, const int by, unsigned char* smem_raw,
                                                     const WaitInputs& wait_inputs = WaitInputs()) {
  using T = typename Tr::T;
  constexpr int D = Tr::kHeadDim, BN = Tr::kBlockN, S = Tr::kStages, W = Tr::kWarps;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + Tr::kQElems + warp * Tr::kWarpElems;  // this warp's kStages stages of K, then of V
  T* sV = sK + S * Tr::kKVElems;

  // The step's metadata and block tables are host uploads, no kernel's
  // output: read before wait_inputs, as are the cached keys before the
  // step's new tokens.
  const int s = bx / p.n_kv_heads, kvh = bx % p.n_kv_heads;
  const int q0 = p.cu_q[s], q_len = p.cu_q[s + 1] - q0, ctx = p.ctx_len[s], offset = ctx - q_len;
  const int G = p.group, rows = q_len * G;
  if (rows <= 0) {
    wait_inputs();
    return;
  }
  // Every row sees at most the keys up to the last new token: ctx of them.
  const int tiles = (ctx + BN - 1) / BN;
  const int per_split = (tiles + p.num_splits - 1) / p.num_splits;
  const int t_begin = by * per_split, t_end = min(tiles, t_begin + per_split);
  // This warp's tiles: its i-th is t_begin + warp + i·W.
  const int first = t_begin + warp;
  const int count = first < t_end ? (t_end - first + W - 1) / W : 0;
  auto tile_of = [&](int i) { return first + i * W; };

  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);
  const int32_t* table = p.block_tables + static_cast<long>(s) * p.max_blocks_per_seq;
  const int shift = p.block_shift;
  auto fetch_entry = [&](int i) { return i < count ? DecodeTableEntry<Tr>(table, tile_of(i), ctx, shift, lane) : 0; };
  auto load_kv = [&](int i, int stage, int entry) {
    DecodeLoadTile<Tr>(sK + stage * Tr::kKVElems, sV + stage * Tr::kKVElems, kc, vc, tile_of(i), entry, ctx, kvh, p.n_kv_heads,
                       shift, lane);
  };
  auto cached = [&](int i) { return (tile_of(i) + 1) * BN <= offset; };  // wholly before the new tokens

  // Prologue: the entries of the first kStages tiles; the cached ones of the
  // first kStages-1 tiles issued before wait_inputs, into the first commit
  // group, the rest after it (one group per tile, empty past the warp's
  // last, so that the group count stays fixed).
  int entry[S];
#pragma unroll
  for (int i = 0; i < S; ++i) entry[i] = fetch_entry(i);
  // entry[i] without indexing the array at run time (in the unrolled form i
  // is a constant and the selects fold away).
  auto entry_of = [&](int i) {
    int e = entry[0];
#pragma unroll
    for (int k = 1; k < S; ++k) e = i == k ? entry[k] : e;
    return e;
  };
  constexpr int kPrologueUnroll = kSmallCode ? 1 : S - 1;
#pragma unroll kPrologueUnroll
  for (int i = 0; i < S - 1; ++i)
    if (i < count && cached(i)) load_kv(i, i, entry_of(i));
  wait_inputs();  // Q and the new tokens' K/V are the predecessor's output
  const T* q_base = static_cast<const T*>(p.q);
  constexpr int kQChunks = Tr::kRows * Tr::kChunks;
#pragma unroll
  for (int k = 0; k < (kQChunks + Tr::kThreads - 1) / Tr::kThreads; ++k) {  // Q, rows past the end zero-filled
    const int c = tid + k * Tr::kThreads;
    if (kQChunks % Tr::kThreads != 0 && c >= kQChunks) break;
    const int r = c / Tr::kChunks, ch = c % Tr::kChunks;
    const bool valid = r < rows;
    const int token = valid ? r / G : 0, head = kvh * G + (valid ? r % G : 0);
    CpAsync16(sQ + Tr::Offset(r, ch * 8), q_base + (q0 + token) * p.q_stride + head * D + ch * 8, valid);
  }
#pragma unroll kPrologueUnroll
  for (int i = 0; i < S - 1; ++i) {
    if (i < count && !cached(i)) load_kv(i, i, entry_of(i));
    CpAsyncCommit();
  }
  int next_entry = entry[S - 1];  // of the tile issued next (i + S - 1 at iteration i)
  CpAsyncWait<S - 2>();           // the first group: Q (and this warp's first tile)
  __syncthreads();                // Q as every thread copied it
  const int mi = lane >> 3;       // ldmatrix x4: lanes 8i..8i+7 address sub-matrix i
  uint32_t qf[Tr::kKSteps][4];
#pragma unroll
  for (int ks = 0; ks < Tr::kKSteps; ++ks) LdMatrixX4(qf[ks], sQ + Tr::Offset((mi & 1) * 8 + (lane & 7), ks * 16 + (mi >> 1) * 8));

  DecodeWarpState<Tr, kAlibi> st;
  st.Begin(p, kvh, rows, offset, lane);
  auto tile = [&](const int i, auto mask) {
    const int stage = i % S;
    CpAsyncWait<S - 2>();
    __syncwarp();  // tile i has landed for every lane; all are done with tile i-1's stage
    float sc[Tr::kNTiles][4];
    st.Scores(qf, sK + stage * Tr::kKVElems, lane, sc);
    // The next copies go out once this tile's Q·K^T is issued (as in the
    // prefill kernel: their address work then overlaps the tensor cores).
    if (i + S - 1 < count) load_kv(i + S - 1, (i + S - 1) % S, next_entry);
    CpAsyncCommit();
    next_entry = fetch_entry(i + S);
    st.template Accumulate<decltype(mask)::value>(sc, sV + stage * Tr::kKVElems, tile_of(i) * BN, lane);
  };
  // Tiles wholly at or before the first new token's position need no mask.
  const int t_mask = (offset + 1) / BN;
  for (int i = 0; i < count; ++i) {
    if (kSmallCode || tile_of(i) >= t_mask) tile(i, std::true_type());
    else tile(i, std::false_type());
  }
  CpAsyncWaitAll();

  // Merge: warps 1..W-1 leave their state over their own stages (lane-minor,
  // conflict-free); warp 0 folds them into its own, then writes the rows.
  float* record = reinterpret_cast<float*>(sK);
  if (warp > 0) {
    __syncwarp();  // every lane's copies into these stages have landed and been read
#pragma unroll
    for (int d = 0; d < Tr::kDTiles; ++d)
#pragma unroll
      for (int e = 0; e < 4; ++e) record[(d * 4 + e) * 32 + lane] = st.o[d][e];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      record[(Tr::kDTiles * 4 + h) * 32 + lane] = st.m[h];
      record[(Tr::kDTiles * 4 + 2 + h) * 32 + lane] = st.l[h];
    }
  }
  __syncthreads();
  const bool fused_merge = p.num_splits > 1 && p.split_counters != nullptr;
  if (warp > 0 && !fused_merge) return;
  // Warp 0 folds the other warps' records into its own state, then writes
  // the rows (or this split's partial output and log-sum-exp).
  auto merge_warps_and_write = [&] {
    constexpr float kMasked = DecodeWarpState<Tr, kAlibi>::kMasked;
    auto record_of = [&](int w) { return reinterpret_cast<const float*>(sQ + Tr::kQElems + w * Tr::kWarpElems); };
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = st.m[h];
#pragma unroll
      for (int w = 1; w < W; ++w) mx = fmaxf(mx, record_of(w)[(Tr::kDTiles * 4 + h) * 32 + lane]);
      const float m_use = mx == kMasked ? 0.f : mx;
      st.Rescale(h, FastExp2((st.m[h] - m_use) * st.score_scale));
#pragma unroll
      for (int w = 1; w < W; ++w) {
        const float* rec = record_of(w);
        const float cw = FastExp2((rec[(Tr::kDTiles * 4 + h) * 32 + lane] - m_use) * st.score_scale);
        st.l[h] += rec[(Tr::kDTiles * 4 + 2 + h) * 32 + lane] * cw;
#pragma unroll
        for (int d = 0; d < Tr::kDTiles; ++d) {
          st.o[d][2 * h] += rec[(d * 4 + 2 * h) * 32 + lane] * cw;
          st.o[d][2 * h + 1] += rec[(d * 4 + 2 * h + 1) * 32 + lane] * cw;
        }
      }
      st.m[h] = mx;
    }

    // Epilogue: the row sums across the quad, normalize, write (the rows, or
    // this split's partial output and log-sum-exp for the combine).
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float sum = st.RowSum(h);
      const int r = (lane >> 2) + 8 * h;
      if (r >= rows) continue;
      const int token = r / G, head = kvh * G + r % G;
      const long row = static_cast<long>(q0 + token) * p.n_heads + head;
      WriteAttentionRow<Tr>(p, row, by, lane, sum, st.m[h], st.score_scale, st.o, h);
    }
  };
  if (warp == 0) merge_warps_and_write();
  if (!fused_merge) return;

  // The splits' merge, by the block that finishes its (sequence, KV head)
  // last: the others' partials are visible once their counter increments are
  // (each fences its writes first). It merges with all of its warps: the
  // weights of each row's splits first, then every (row, column) as a sum
  // over the splits, loads issued together.
  __shared__ int last;
  __threadfence();  // warp 0's partial writes, visible device-wide before the count
  __syncthreads();
  if (tid == 0) {
    const int done = atomicAdd(p.split_counters + bx, 1);
    last = done == p.num_splits - 1;
    if (last) p.split_counters[bx] = 0;  // zero for the next call
    __threadfence();
  }
  __syncthreads();
  if (!last) return;
  float* weight = reinterpret_cast<float*>(sQ + Tr::kQElems);  // [kRows][num_splits ≤ 64], over warp 0's stages
  const long split_stride = static_cast<long>(p.total_q) * p.n_heads;
  for (int r = warp; r < rows; r += W) {
    const long row = static_cast<long>(q0 + r / G) * p.n_heads + kvh * G + r % G;
    float lse[2], mx = -FLT_MAX;
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int z = lane + 32 * k;
      lse[k] = z < p.num_splits ? __ldcg(p.partial_lse + z * split_stride + row) : -FLT_MAX;
      mx = fmaxf(mx, lse[k]);
    }
#pragma unroll
    for (int x = 16; x >= 1; x /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, x));
    float w[2], total = 0.f;
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      w[k] = lse[k] == -FLT_MAX ? 0.f : expf(lse[k] - mx);
      total += w[k];
    }
#pragma unroll
    for (int x = 16; x >= 1; x /= 2) total += __shfl_xor_sync(0xffffffffu, total, x);
    const float inv = total > 0.f ? 1.f / total : 0.f;
#pragma unroll
    for (int k = 0; k < 2; ++k)
      if (lane + 32 * k < p.num_splits) weight[r * 64 + lane + 32 * k] = w[k] * inv;
  }
  __syncthreads();
  for (int e = tid; e < rows * D; e += Tr::kThreads) {
    const int r = e / D, d = e % D;
    const long row = static_cast<long>(q0 + r / G) * p.n_heads + kvh * G + r % G;
    const float* part = p.partial_out + row * D + d;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    int z = 0;
    for (; z + 4 <= p.num_splits; z += 4)
#pragma unroll
      for (int k = 0; k < 4; ++k) acc[k] += weight[r * 64 + z + k] * __ldcg(part + (z + k) * split_stride * D);
    for (; z < p.num_splits; ++z) acc[0] += weight[r * 64 + z] * __ldcg(part + z * split_stride * D);
    static_cast<T*>(p.out)[row * D + d] = FromFloat<T>((acc[0] + acc[1]) + (acc[2] + acc[3]));
  }
}

// kSmallCode: DecodeAttentionBlock's small-code form, for the A/B of
// TINYGPT_DECODE_SMALL_CODE=1 (attention_run.cuh) against the unrolled one.
template <class Tr, bool kAlibi, bool kSmallCode = false>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocks) DecodeAttentionKernel(const AttentionParams p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  DecodeAttentionBlock<Tr, kAlibi, DecodePdlWait, kSmallCode>(p, blockIdx.x, blockIdx.y, smem_raw);
}

}  // namespace tinygpt::cuda
