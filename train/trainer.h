// The training loop: AdamW with weight decay, linear warmup then cosine decay,
// global-norm gradient clipping, periodic atomic checkpoints and --resume.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "train/communicator.h"
#include "train/data.h"

namespace tinygpt {

struct TrainOptions {
  long steps = 400;
  float lr = 3e-3f;
  float min_lr_ratio = 0.1f;
  long warmup = 20;
  float weight_decay = 0.01f;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float clip = 1.0f;
  uint64_t seed = 0;
  long save_every = 0;     // 0: only at the end
  std::string out;         // checkpoint path; optimizer state goes to out + ".step<STEP>-<COMMIT>.optim"
  std::string resume;      // checkpoint to continue from (the optimizer state its stamp names beside it)
  // Saved in the checkpoint so it serves text; with --resume, null keeps the
  // resumed checkpoint's own.
  std::shared_ptr<const Tokenizer> tokenizer;
  bool quiet = false;
  long untimed_steps = 0;  // first steps left out of tokens_per_second (a benchmark's warm-up)
  // Where the steps run: "auto" (CUDA when the module and a GPU are there),
  // "cpu" or "cuda"; precision of the compute copy of the weights, the
  // activations and GEMM inputs: "bf16" | "fp16" | "fp32" ("" picks bf16 on
  // CUDA, fp32 on the CPU, which only has fp32). Master weights, gradients and
  // AdamW moments are fp32 everywhere.
  std::string device = "cpu";
  std::string precision;
  // fp16 dynamic loss scaling, as PyTorch's GradScaler: the loss gradient is
  // multiplied by the scale; a step whose gradients are not finite is skipped
  // and the scale halved; after `loss_scale_growth_interval` good steps in a
  // row it doubles.
  float initial_loss_scale = 65536.f;
  long loss_scale_growth_interval = 2000;
  // Test hook: writes +inf into one gradient at this step (0-based), as an
  // fp16 overflow would (-1: never).
  long inject_overflow_step = -1;
  // Data parallelism (null: one process). Every rank builds the global batch
  // of each step and takes its shard of the sequences; the gradients, the
  // loss and the accuracy are summed over the ranks, weighted by the shards'
  // tokens, so every rank takes the step one process would on the whole
  // batch. Only rank 0 writes checkpoints and the progress line.
  // On GPUs each rank takes the GPU of its local rank and NCCL sums the
  // gradients (fp32), each block's as soon as its backward is enqueued.
  Communicator* comm = nullptr;
  // How long a rank waits for the others' gradients (a rank that died ends
  // the others after this, or at once where the launcher's channel tells).
  absl::Duration collective_timeout = absl::Seconds(300);
  // Test hook: rank `exit_rank` kills itself (SIGKILL) at step `exit_step`
  // (0-based; -1: never), as a crashed rank would.
  int exit_rank = -1;
  long exit_step = -1;
  // Each step's loss (%.9g, one line a step) goes to this file (rank 0; "" none).
  std::string loss_log;
};

struct TrainResult {
  float final_loss = 0.f;
  float final_accuracy = 0.f;  // next-token argmax accuracy of the last batch
  double tokens_per_second = 0.0;
  long steps_run = 0;
  long skipped_steps = 0;    // fp16: steps skipped for inf/NaN gradients
  float loss_scale = 1.f;    // the final loss scale (1 unless fp16)
  double mfu = 0.0;          // model FLOPs utilization (0 when the device's peak is unknown)
  std::string device;        // what ran: "cpu" or the GPU's name
  std::string precision;     // "fp32", "bf16" or "fp16"
  size_t device_bytes = 0;   // device memory the training took at its peak (0 on the CPU)
};

absl::StatusOr<TrainResult> Train(const ModelConfig& cfg, DataSource& data, const TrainOptions& opt);

// Rank `rank`'s shard of a global batch: sequences [rank·S/world,
// (rank+1)·S/world) of its S.
PackedBatch ShardBatch(const PackedBatch& batch, int rank, int world);

// Removes a training checkpoint: OUT, its optimizer files (any step, and an
// older version's OUT.optim) and temporary files of dead writers.
void RemoveTrainingCheckpoint(const std::string& out);

// Learning rate at `step` (0-based): linear warmup, then cosine to min_lr_ratio·lr.
float LearningRate(const TrainOptions& opt, long step);

// Training FLOPs per token (forward + backward) at sequence length `seq_len`:
// 6 per parameter of the matrices (position embeddings excluded, as
// nanoGPT's estimate does) plus the attention scores and their backward,
// 12 · layers · d_model · seq_len (PaLM's appendix B).
double TrainFlopsPerToken(const ModelConfig& cfg, int seq_len);

}  // namespace tinygpt
