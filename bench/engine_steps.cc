// Decode-step throughput of the model runner alone (no RPC): one step of B
// sequences, each one new token over a 40-token context, on the CPU backend.
// Separates the engine's batching gain from the serving stack's overheads.
// usage: tinygpt_engine_bench CHECKPOINT
#include <chrono>
#include <cstdio>

#include "kernels/cpu/cpu_backend.h"
#include "model/checkpoint.h"
#include "model/runner.h"

int main(int argc, char** argv) {
  if (argc != 2) return std::fprintf(stderr, "usage: %s CHECKPOINT\n", argv[0]), 2;
  auto ck = tinygpt::LoadCheckpoint(argv[1]);
  if (!ck.ok()) return std::fprintf(stderr, "%s\n", std::string(ck.status().message()).c_str()), 1;
  auto backend = tinygpt::CreateCpuBackend();
  tinygpt::RunnerOptions ro;
  ro.num_kv_blocks = 512;
  auto runner = tinygpt::ModelRunner::Create(backend.get(), *ck, ro);
  if (!runner.ok()) return 1;
  std::vector<std::vector<int32_t>> tables(64);
  for (int s = 0; s < 64; ++s)
    for (int b = 0; b < 4; ++b) tables[s].push_back(s * 4 + b);
  std::vector<int32_t> tokens(64, 5), out;
  std::printf("| sequences per step | us per step | tokens/s | vs 1 |\n|---|---|---|---|\n");
  double base = 0;
  for (int n : {1, 8, 64}) {
    std::vector<tinygpt::SeqStep> steps;
    for (int s = 0; s < n; ++s) steps.push_back({tokens.data(), 1, 40, &tables[s], true});
    for (int i = 0; i < 20; ++i) (void)(*runner)->Step(steps, &out);
    const auto t0 = std::chrono::steady_clock::now();
    const int reps = 400;
    for (int i = 0; i < reps; ++i) (void)(*runner)->Step(steps, &out);
    const double us = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1e6 / reps;
    const double tps = n / us * 1e6;
    if (n == 1) base = tps;
    std::printf("| %d | %.1f | %.0f | %.2fx |\n", n, us, tps, tps / base);
  }
  return 0;
}
