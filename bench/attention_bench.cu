// Times tinygpt's paged flash-attention kernel on the device; prints one JSON
// object per measurement (bench/attention_report.py puts them beside PyTorch).
//   prefill: forward TFLOP/s (FLOPs = 4·B·H·M²·D, halved for causal) and the
//            bytes this process holds for the call (inputs + output: linear in M)
//   decode:  GB/s of K/V read at batch × context (cold: K/V from DRAM, see
//            KvCopies; the L2-warm figure beside it), and the device copy bandwidth
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/attention_launch.h"
#include "kernels/cuda/attention_run.cuh"
#include "kernels/cuda/common.cuh"

using namespace tinygpt;

namespace {

std::mt19937 rng(7);

// Fills on the device (a host-side normal generator would take minutes for the
// largest decode cache): a hash of the index mapped to a Gaussian-shaped value
// by summing four uniforms (Irwin-Hall), mean 0, variance 1. Never zeros.
template <class T>
__global__ void FillRandom(T* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 0x9E3779B1u ^ static_cast<uint32_t>(i >> 32) ^ seed;
    float sum = 0.f;
    for (int k = 0; k < 4; ++k) {
      h ^= h >> 16; h *= 0x7FEB352Du; h ^= h >> 15; h *= 0x846CA68Bu; h ^= h >> 16;
      sum += (h >> 8) * (1.f / 16777216.f);
    }
    p[i] = T((sum - 2.f) * 1.7320508f);
  }
}

template <class T>
T* RandomDevice(size_t n) {
  T* p;
  TG_CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
  FillRandom<T><<<1024, 256>>>(p, n, static_cast<uint32_t>(rng()));
  TG_CUDA_LAUNCH_CHECK();
  return p;
}

int32_t* Ints(const std::vector<int32_t>& v) {
  int32_t* p;
  TG_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(1, v.size()) * 4));
  TG_CUDA_CHECK(cudaMemcpy(p, v.data(), v.size() * 4, cudaMemcpyHostToDevice));
  return p;
}

// n zeroed ints on the device (the decode kernel's split counters), or null.
int* ZeroInts(int n) {
  if (n <= 0) return nullptr;
  int32_t* p;
  TG_CUDA_CHECK(cudaMalloc(&p, n * sizeof(int)));
  TG_CUDA_CHECK(cudaMemset(p, 0, n * sizeof(int)));
  return p;
}

// Median time (ms) of `fn` over `reps` runs after warm-up, with CUDA events.
template <class Fn>
float MedianMs(Fn fn, int reps = 20) {
  for (int i = 0; i < 3; ++i) fn();
  TG_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> t;
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(a);
    fn();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Median time (ms) of one call of `fn(stream, i)` in steady state: `calls`
// calls back to back (i = 0 .. calls-1) captured in a CUDA graph, as the
// engine replays its decode steps (so that a few-microsecond kernel is not
// timed with the host's launch latency), the graph replayed after warm-up.
// Each captured call binds its arguments (e.g. which K/V copy, from i) when
// it is captured.
template <class Fn>
float GraphMedianMs(Fn fn, int calls = 20, int reps = 15) {
  cudaStream_t stream;
  TG_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  fn(stream, 0);  // first call outside the capture: one-time setup (shared-memory limits)
  TG_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  TG_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < calls; ++i) fn(stream, i);
  TG_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  TG_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int i = 0; i < 3; ++i) TG_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  TG_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<float> t;
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(a, stream);
    TG_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    cudaEventRecord(b, stream);
    cudaEventSynchronize(b);
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    t.push_back(ms / calls);
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaStreamDestroy(stream);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Cold K/V for the decode timings. In the engine's decode step the attention
// kernel finds its K/V in DRAM: ~250 MB of weights went through the L2 since
// the previous step's attention. A graph of calls on one K/V cache instead
// reads the same bytes every call, and at small shapes they stay in the
// H200's L2 (~50-60 MB) from call to call, so the bench timed L2 reads and
// disagreed with the engine at small grids. So the decode calls rotate
// through `copies` identical copies of the paged K/V cache (call i reads copy
// i % copies), enough that between two reads of one copy the other calls
// read >= max(2.5 × L2, 150 MB): no call finds its K/V in L2. One copy when
// a single cache is that large already (the largest shape's is 8.6 GB); at
// most a quarter of the free memory in extra copies. Q, the block tables
// (the copies share them: same layout, other base pointers), the output and
// the split workspace are shared: small, and in the engine just written or
// read too. The L2-warm figure (one copy, 20 calls) is reported beside it.
int KvCopies(size_t copy_bytes, const cudaDeviceProp& prop, size_t free_bytes) {
  const double cold_bytes = std::max(2.5 * prop.l2CacheSize, 150e6);
  const long wanted = static_cast<long>(std::ceil(cold_bytes / static_cast<double>(copy_bytes)));
  const long fit = 1 + static_cast<long>(free_bytes / 4 / copy_bytes);
  return static_cast<int>(std::max(1L, std::min({wanted, fit, 4096L})));
}

// Calls per timed graph: at least 20, and a whole number of rotations (so
// that the first calls of a replay, after the last of the previous one, also
// find their copies `copies` calls back).
int CallsPerGraph(int copies) { return copies * ((20 + copies - 1) / copies); }

// Other tile shapes of the same kernel, timed beside the one the backend
// picks (named w<warps>m<m-tiles per warp>n<block N>s<stages>), each checked
// against the backend's output on the same inputs. For decode (the backend
// runs the split kernel of decode_attention_kernel.cuh): the stream kernel
// of decode_stream_kernel.cuh with the backend's traits ("stream",
// TINYGPT_DECODE_STREAM=1) and with other shapes (stream-w<warps>n<block
// N>s<stages>).
// A variant with the backend's own traits is planned and launched through
// attention_launch.cu (`launch` null): instantiating the backend's kernels
// here as well would register them twice, and a shared-memory limit set on
// one copy would not hold for the other.
struct Variant {
  const char* name;
  void (*plan)(const AttentionDims&, const AttentionBatch&, int, cuda::AttentionPlan*);
  void (*launch)(const AttentionDims&, const AttentionBatch&, const cuda::AttentionParams&, cudaStream_t);
};
template <int D, int W, int MT, int BN, int S>
Variant V(const char* name) {
  using Tr = cuda::AttentionTraits<D, __half, W, MT, BN, S>;
  return {name, &cuda::PlanFor<Tr>, &cuda::LaunchFor<Tr>};
}
void PlanBackendStream(const AttentionDims& dims, const AttentionBatch& batch, int num_sms, cuda::AttentionPlan* plan) {
  *plan = cuda::PlanPagedDecodeStream(false, dims, batch, num_sms);
}
Variant BackendStream(const char* name) { return {name, &PlanBackendStream, nullptr}; }
template <int D, int W, int BN, int S, int B>
Variant Stream(const char* name) {
  using Tr = cuda::DecodeTraits<D, __half, W, BN, S, B>;
  return {name, &cuda::PlanDecodeStream<Tr>, &cuda::LaunchDecode<Tr>};
}
std::vector<Variant> Variants(const std::string& kind, int D) {
  if (kind == "prefill" && D == 64)
    return {V<64, 4, 2, 64, 2>("w4m2n64s2"), V<64, 4, 1, 64, 3>("w4m1n64s3")};
  if (kind == "prefill" && D == 128) return {V<128, 4, 2, 32, 2>("w4m2n32s2"), V<128, 8, 1, 64, 2>("w8m1n64s2")};
  if (kind == "decode" && D == 64)
    return {BackendStream("stream"), Stream<64, 4, 16, 3, 4>("stream-w4n16s3"),
            Stream<64, 4, 32, 3, 2>("stream-w4n32s3"), Stream<64, 8, 16, 2, 2>("stream-w8n16s2")};
  if (kind == "decode" && D == 128)
    return {BackendStream("stream"), Stream<128, 4, 16, 2, 3>("stream-w4n16s2"),
            Stream<128, 4, 16, 4, 1>("stream-w4n16s4")};
  return {};
}

// One attention problem: sequences of given lengths (queries = context, i.e.
// prefill) or of one query over a context (decode), KV in a paged cache.
struct Problem {
  std::string kind, label;
  std::vector<int> q_lens, ctx_lens;
  int H, Hkv, D, block_size;
  bool variants = false;
};

void Run(const Problem& pr) {
  // TINYGPT_BENCH_ONLY=LABEL times that shape alone (for a profiler run).
  if (const char* only = std::getenv("TINYGPT_BENCH_ONLY"); only && pr.label != only) return;
  // TINYGPT_BENCH_KIND=decode times only that kind (the decode mode of scripts/device-run.sh).
  if (const char* kind = std::getenv("TINYGPT_BENCH_KIND"); kind && pr.kind != kind) return;
  using T = __half;  // the tutorial's and the peers' fp16
  const int n = static_cast<int>(pr.q_lens.size());
  int total_q = 0, max_q = 0, max_ctx = 0;
  long blocks_needed = 0;
  std::vector<int32_t> cu{0}, ctx;
  for (int i = 0; i < n; ++i) {
    total_q += pr.q_lens[i];
    cu.push_back(total_q);
    ctx.push_back(pr.ctx_lens[i]);
    max_q = std::max(max_q, pr.q_lens[i]);
    max_ctx = std::max(max_ctx, pr.ctx_lens[i]);
    blocks_needed += (pr.ctx_lens[i] + pr.block_size - 1) / pr.block_size;
  }
  const int max_blocks = (max_ctx + pr.block_size - 1) / pr.block_size;
  std::vector<int32_t> perm(blocks_needed), tables(static_cast<size_t>(n) * max_blocks, 0);
  for (long i = 0; i < blocks_needed; ++i) perm[i] = static_cast<int32_t>(i);
  std::shuffle(perm.begin(), perm.end(), rng);
  long next = 0;
  for (int i = 0; i < n; ++i)
    for (int b = 0; b < (pr.ctx_lens[i] + pr.block_size - 1) / pr.block_size; ++b) tables[static_cast<size_t>(i) * max_blocks + b] = perm[next++];
  cudaDeviceProp prop;
  TG_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  size_t free_before, free_after, total;
  TG_CUDA_CHECK(cudaMemGetInfo(&free_before, &total));
  const size_t kv_elems = static_cast<size_t>(blocks_needed) * pr.block_size * pr.Hkv * pr.D;
  T* q = RandomDevice<T>(static_cast<size_t>(total_q) * pr.H * pr.D);
  T* k = RandomDevice<T>(kv_elems);
  T* v = RandomDevice<T>(kv_elems);
  T* out;
  TG_CUDA_CHECK(cudaMalloc(&out, static_cast<size_t>(total_q) * pr.H * pr.D * sizeof(T)));
  int32_t *d_cu = Ints(cu), *d_ctx = Ints(ctx), *d_tables = Ints(tables);
  AttentionDims dims{pr.H, pr.Hkv, pr.D, false};
  AttentionBatch batch{n, d_cu, d_ctx, total_q, max_q, max_ctx};
  PagedKv kv{k, v, pr.block_size, d_tables, max_blocks};
  const cuda::AttentionPlan plan = cuda::PlanPagedAttention(false, dims, batch, prop.multiProcessorCount);  // as the backend does
  const int splits = plan.num_splits;
  float* partial = nullptr;
  if (plan.partial_floats > 0) TG_CUDA_CHECK(cudaMalloc(&partial, plan.partial_floats * sizeof(float)));
  int* counters = ZeroInts(plan.split_counters);
  TG_CUDA_CHECK(cudaMemGetInfo(&free_after, &total));  // bytes_held: one copy of everything
  // Decode kernels take microseconds: timed in a graph (steady state), on
  // cold K/V (KvCopies); the prefill shapes one call at a time.
  const bool graphed = pr.kind == "decode";
  const size_t kv_copy_bytes = 2 * kv_elems * sizeof(T);  // K and V
  const int copies = graphed ? KvCopies(kv_copy_bytes, prop, free_after) : 1;
  const int calls = CallsPerGraph(copies);
  // kvs[c]: copy c; copy 0 is k/v above, copies 1.. lie in k_more/v_more
  // (copy c at offset (c - 1) × kv_elems), each a device copy of copy 0.
  std::vector<PagedKv> kvs{kv};
  T *k_more = nullptr, *v_more = nullptr;
  if (copies > 1) {
    const size_t more = static_cast<size_t>(copies - 1) * kv_elems;
    TG_CUDA_CHECK(cudaMalloc(&k_more, more * sizeof(T)));
    TG_CUDA_CHECK(cudaMalloc(&v_more, more * sizeof(T)));
    for (int c = 1; c < copies; ++c) {
      T* kc = k_more + static_cast<size_t>(c - 1) * kv_elems;
      T* vc = v_more + static_cast<size_t>(c - 1) * kv_elems;
      TG_CUDA_CHECK(cudaMemcpy(kc, k, kv_elems * sizeof(T), cudaMemcpyDeviceToDevice));
      TG_CUDA_CHECK(cudaMemcpy(vc, v, kv_elems * sizeof(T), cudaMemcpyDeviceToDevice));
      kvs.push_back({kc, vc, pr.block_size, d_tables, max_blocks});
    }
  }
  auto call = [&](cudaStream_t stream, int copy) {
    cuda::LaunchPagedAttention(false, plan, dims, batch, q, static_cast<long>(pr.H) * pr.D, kvs[copy], out, partial, counters, stream);
  };
  const float ms = graphed ? GraphMedianMs([&](cudaStream_t s, int i) { call(s, i % copies); }, calls) : MedianMs([&] { call(0, 0); });
  // The old figure: 20 calls on copy 0, its K/V warm in L2 when it fits (with
  // one copy that is the cold timing's graph already).
  const float warm_ms = graphed && copies > 1 ? GraphMedianMs([&](cudaStream_t s, int) { call(s, 0); }) : ms;
  if (graphed) {  // the output the variants are checked against: one call on copy 0
    call(0, 0);
    TG_CUDA_CHECK(cudaDeviceSynchronize());
  }
  std::string lens;
  for (int i = 0; i < n; ++i) lens += (i ? "," : "") + std::to_string(pr.q_lens[i]);
  double flops = 0, kv_bytes = 0;
  for (int i = 0; i < n; ++i) {
    // Causal: each query sees (offset + its index + 1) keys.
    const double q_len = pr.q_lens[i], c = pr.ctx_lens[i];
    flops += 4.0 * pr.H * pr.D * (q_len * (c - q_len) + q_len * (q_len + 1) / 2);
    kv_bytes += 2.0 * c * pr.Hkv * pr.D * sizeof(T);
  }
  const std::string timing = graphed ? "graph of " + std::to_string(calls) + " calls over " + std::to_string(copies) + " K/V copies (cold)" : "one call";
  // ms/kv_gbps: cold K/V (decode); warm_ms/warm_kv_gbps: one copy, warm in
  // L2 when it fits (the figure before the copies); kv_copies × kv_copy_bytes
  // the K/V the graph rotates through.
  std::printf("{\"kind\":\"%s\",\"label\":\"%s\",\"timing\":\"%s\",\"ms\":%.5f,\"tflops\":%.2f,\"kv_gbps\":%.1f,\"bytes_held\":%zu,\"splits\":%d,"
              "\"batch\":%d,\"ctx\":%d,\"total_q\":%d,\"H\":%d,\"Hkv\":%d,\"D\":%d,\"lens\":[%s],"
              "\"warm_ms\":%.5f,\"warm_kv_gbps\":%.1f,\"kv_copies\":%d,\"kv_copy_bytes\":%zu,\"calls\":%d,\"l2_bytes\":%d,\"stream_blocks\":%d}\n",
              pr.kind.c_str(), pr.label.c_str(), timing.c_str(), ms, flops / ms / 1e9, kv_bytes / ms / 1e6, free_before - free_after, splits, n,
              max_ctx, total_q, pr.H, pr.Hkv, pr.D, lens.c_str(), warm_ms, kv_bytes / warm_ms / 1e6, copies, kv_copy_bytes,
              graphed ? calls : 1, prop.l2CacheSize, plan.stream_blocks);
  std::fflush(stdout);
  if (pr.variants) {
    const size_t out_n = static_cast<size_t>(total_q) * pr.H * pr.D;
    std::vector<__half> ref(out_n), got(out_n);
    TG_CUDA_CHECK(cudaMemcpy(ref.data(), out, out_n * sizeof(T), cudaMemcpyDeviceToHost));
    for (const Variant& var : Variants(pr.kind, pr.D)) {
      cuda::AttentionPlan vp;
      var.plan(dims, batch, prop.multiProcessorCount, &vp);
      float* vpart = nullptr;
      if (vp.partial_floats > 0) TG_CUDA_CHECK(cudaMalloc(&vpart, vp.partial_floats * sizeof(float)));
      int* vcounters = ZeroInts(vp.split_counters);
      std::vector<cuda::AttentionParams> params;  // params[c]: on K/V copy c
      for (const PagedKv& kc : kvs)
        params.push_back(cuda::MakeAttentionParams(vp, dims, batch, q, static_cast<long>(pr.H) * pr.D, kc, out, vpart, vcounters));
      auto vcall = [&](cudaStream_t stream, int copy) {
        if (var.launch) var.launch(dims, batch, params[copy], stream);
        else cuda::LaunchPagedAttention(false, vp, dims, batch, q, static_cast<long>(pr.H) * pr.D, kvs[copy], out, vpart, vcounters, stream);
      };
      const float vms = graphed ? GraphMedianMs([&](cudaStream_t s, int i) { vcall(s, i % copies); }, calls) : MedianMs([&] { vcall(0, 0); });
      // The check: one more call, on copy 0, into an output that is NaN until written.
      TG_CUDA_CHECK(cudaMemset(out, 0xff, out_n * sizeof(T)));
      vcall(0, 0);
      TG_CUDA_CHECK(cudaMemcpy(got.data(), out, out_n * sizeof(T), cudaMemcpyDeviceToHost));
      float diff = 0.f;
      for (size_t i = 0; i < out_n; ++i) {
        const float d = std::abs(static_cast<float>(got[i]) - static_cast<float>(ref[i]));
        diff = std::isfinite(d) ? std::max(diff, d) : INFINITY;
      }
      std::printf("{\"kind\":\"variant\",\"label\":\"%s\",\"variant\":\"%s\",\"ms\":%.5f,\"tflops\":%.2f,\"kv_gbps\":%.1f,"
                  "\"splits\":%d,\"stream_blocks\":%d,\"max_diff\":%.3g}\n",
                  pr.label.c_str(), var.name, vms, flops / vms / 1e9, kv_bytes / vms / 1e6, vp.num_splits, vp.stream_blocks, diff);
      std::fflush(stdout);
      if (vpart) cudaFree(vpart);
      if (vcounters) cudaFree(vcounters);
    }
  }
  cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(out); cudaFree(d_cu); cudaFree(d_ctx); cudaFree(d_tables);
  if (k_more) cudaFree(k_more);
  if (v_more) cudaFree(v_more);
  if (partial) cudaFree(partial);
  if (counters) cudaFree(counters);
}

void CopyBandwidth() {
  const size_t bytes = 2ull << 30;
  void *a, *b;
  TG_CUDA_CHECK(cudaMalloc(&a, bytes));
  TG_CUDA_CHECK(cudaMalloc(&b, bytes));
  TG_CUDA_CHECK(cudaMemset(a, 1, bytes));
  const float ms = MedianMs([&] { cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice); }, 10);
  std::printf("{\"kind\":\"copy\",\"label\":\"device-to-device copy\",\"ms\":%.4f,\"gbps\":%.1f}\n", ms, 2.0 * bytes / ms / 1e6);
  std::fflush(stdout);
  cudaFree(a);
  cudaFree(b);
}

}  // namespace

int main() {
  CopyBandwidth();
  // The tutorial's sweep: causal, B=2, H=8, D=64.
  for (int M : {512, 1024, 2048, 4096, 8192, 16384})
    Run({"tutorial", "B2 H8 D64 M" + std::to_string(M), {M, M}, {M, M}, 8, 8, 64, 256});
  // Prefill shapes.
  Run({"prefill", "B8 M2048 H16 D64", std::vector<int>(8, 2048), std::vector<int>(8, 2048), 16, 16, 64, 256, true});
  Run({"prefill", "B8 M2048 H16 D128", std::vector<int>(8, 2048), std::vector<int>(8, 2048), 16, 16, 128, 256, true});
  Run({"prefill", "B4 M4096 GQA 32q/8kv D128", std::vector<int>(4, 4096), std::vector<int>(4, 4096), 32, 8, 128, 256, true});
  std::vector<int> lens;
  std::mt19937 lrng(11);
  for (int i = 0; i < 32; ++i) lens.push_back(64 + static_cast<int>(lrng() % 1985));
  Run({"prefill", "packed 32 x 64-2048 H16 D128", lens, lens, 16, 16, 128, 256});
  // Decode: one query per sequence over its context, 32q/8kv D128, 16-token blocks.
  for (int B : {1, 8, 64, 256})
    for (int C : {256, 1024, 4096, 8192})
      Run({"decode", "decode B" + std::to_string(B) + " ctx" + std::to_string(C), std::vector<int>(B, 1), std::vector<int>(B, C), 32, 8,
           128, 16, true});
  // Decode at bench-125m's shape (12q/4kv heads, D=64, the server's 16-token
  // blocks), the serving benchmarks' model.
  for (int B : {1, 8, 64, 256})
    for (int C : {330, 1024, 4096})
      Run({"decode", "decode 12q/4kv D64 B" + std::to_string(B) + " ctx" + std::to_string(C), std::vector<int>(B, 1),
           std::vector<int>(B, C), 12, 4, 64, 16, true});
  return 0;
}
