// `tinygpt bench`: seed-task training throughput on the CPU backend. The
// script bench/train_cpu_vs_torch.py runs it beside PyTorch in one run.
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/flags/flag.h"
#include "cli/commands.h"
#include "cli/common_flags.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/linear_rows.h"
#include "model/config.h"
#include "train/data.h"
#include "train/trainer.h"

ABSL_FLAG(long, bench_steps, 30, "training steps to time (after 3 warm-up steps)");
ABSL_FLAG(int, bench_batch, 64, "sequences per batch");

namespace tinygpt {

int BenchCommand() {
  ModelConfig cfg = *PresetConfig("seed");
  auto data = MakeCountTask(cfg.vocab_size, cfg.max_seq_len, absl::GetFlag(FLAGS_bench_batch));
  TrainOptions o;
  o.quiet = true;
  o.seed = absl::GetFlag(FLAGS_seed);
  o.out = "/tmp/tinygpt-bench-" + std::to_string(getpid()) + ".safetensors";
  // Three untimed warm-up steps on the same model first (thread pools, first
  // touch of every buffer), as the PyTorch side of the comparison does.
  o.untimed_steps = 3;
  o.steps = o.untimed_steps + absl::GetFlag(FLAGS_bench_steps);
  auto r = Train(cfg, *data, o);
  RemoveTrainingCheckpoint(o.out);
  if (!r.ok()) {
    std::fprintf(stderr, "tinygpt bench: %s\n", std::string(r.status().message()).c_str());
    return 1;
  }
  nlohmann::json j = {{"system", "tinygpt"}, {"steps", r->steps_run - o.untimed_steps}, {"tokens_per_second", r->tokens_per_second},
                      {"final_loss", r->final_loss}, {"blas_core", CpuBlasCoreName()},
                      {"linear_isa", cpu::RowsIsaName(cpu::CurrentRowsIsa())}};
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace tinygpt
