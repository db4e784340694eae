// Decode-step time of the model runner alone (no RPC, no scheduler): steps of
// B sequences, each one new token over a `--ctx`-token context, launched back
// to back as the engine does (step N+1's tokens pending on step N's samples).
// Separates the runner's cost from the serving stack's.
// usage: tinygpt_engine_bench CHECKPOINT [--device=cpu|cuda] [--batches=1,8,64] [--ctx=40] [--graphs=0|1] [--reps=N]
// With TINYGPT_CUDA_OP_TIMES=1 (and --graphs=0) the CUDA backend prints where
// the GPU time went, op by op, at exit. The backend is synchronized once per
// batch size between the warm-up and the timed steps: with
// TINYGPT_CUDA_PROFILE_FROM_SYNC=1 a profiler (ncu --profile-from-start off)
// then sees the first batch size's timed steps only (--reps of them).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "model/kv_cache.h"
#include "model/runner.h"

int main(int argc, char** argv) {
  std::string path, device = "cpu", batches = "1,8,64";
  int ctx = 40;
  bool graphs = true;
  int reps = 0;  // 0: 200 steps on the CPU, 1000 on a GPU
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--device=", 0) == 0) device = a.substr(9);
    else if (a.rfind("--batches=", 0) == 0) batches = a.substr(10);
    else if (a.rfind("--ctx=", 0) == 0) ctx = std::atoi(a.c_str() + 6);
    else if (a.rfind("--graphs=", 0) == 0) graphs = a.substr(9) != "0";
    else if (a.rfind("--reps=", 0) == 0) reps = std::max(1, std::atoi(a.c_str() + 7));
    else path = a;
  }
  if (path.empty()) return std::fprintf(stderr, "usage: %s CHECKPOINT [--device=cpu|cuda] [--batches=1,8,64] [--ctx=40] [--graphs=0|1] [--reps=N]\n", argv[0]), 2;
  auto ck = tinygpt::LoadCheckpoint(path);
  if (!ck.ok()) return std::fprintf(stderr, "%s\n", std::string(ck.status().message()).c_str()), 1;
  auto backend = tinygpt::CreateBackend(device, "bf16");
  if (!backend.ok()) return std::fprintf(stderr, "%s\n", std::string(backend.status().message()).c_str()), 1;
  std::vector<int> ns;
  for (const char* p = batches.c_str(); *p; p = std::strchr(p, ',') ? std::strchr(p, ',') + 1 : p + std::strlen(p)) ns.push_back(std::atoi(p));
  int max_n = 1;
  for (int n : ns) max_n = std::max(max_n, n);
  ctx = std::min(ctx, ck->config.max_seq_len - 1);
  tinygpt::RunnerOptions ro;
  ro.max_seqs = max_n;
  ro.max_batch_tokens = std::max(512, max_n);
  ro.graphs = graphs;
  ro.max_graph_batch = max_n;
  const int per_seq = tinygpt::BlocksFor(ctx + 1, ro.block_size);
  ro.num_kv_blocks = max_n * per_seq;
  auto runner = tinygpt::ModelRunner::Create(backend->get(), *ck, ro);
  if (!runner.ok()) return std::fprintf(stderr, "%s\n", std::string(runner.status().message()).c_str()), 1;
  tinygpt::ModelRunner& r = **runner;
  std::vector<std::vector<int32_t>> tables(max_n);
  for (int s = 0; s < max_n; ++s)
    for (int b = 0; b < per_seq; ++b) tables[s].push_back(s * per_seq + b);
  std::vector<int32_t> tokens(max_n, 5);
  std::printf("%s (%s), context %d, graphs %s\n", (*backend)->device_name().c_str(), (*backend)->name().c_str(), ctx,
              graphs && (*backend)->SupportsGraphs() ? "on" : "off");
  std::printf("| sequences per step | us per step | tokens/s | vs 1 |\n|---|---|---|---|\n");
  double base = 0;
  tinygpt::StepResult out;
  for (int n : ns) {
    // Every step decodes position `ctx` again (the cache beyond it is what
    // earlier steps wrote), so the work per step stays the same.
    std::vector<tinygpt::SeqStep> first, next;
    for (int s = 0; s < n; ++s) {
      tinygpt::SeqStep st{tokens.data(), 1, ctx, &tables[s], true};
      first.push_back(st);
      st.pending_row = s;
      next.push_back(st);
    }
    auto run = [&](int steps) {
      if (!r.Launch(first).ok()) return false;
      for (int i = 1; i < steps; ++i) {
        if (!r.Launch(next).ok() || !r.Collect(&out).ok()) return false;
      }
      return r.Collect(&out).ok();
    };
    if (!run(20)) return std::fprintf(stderr, "step failed\n"), 1;
    (*backend)->Synchronize();
    const int steps = reps > 0 ? reps : device == "cpu" ? 200 : 1000;
    const auto t0 = std::chrono::steady_clock::now();
    if (!run(steps)) return 1;
    const double us = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1e6 / steps;
    const double tps = n / us * 1e6;
    if (base == 0) base = tps;
    std::printf("| %d | %.1f | %.0f | %.2fx |\n", n, us, tps, tps / base);
  }
  return 0;
}
