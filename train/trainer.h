// The training loop: AdamW with weight decay, linear warmup then cosine decay,
// global-norm gradient clipping, periodic atomic checkpoints and --resume.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/tokenizer.h"
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
  std::string out;         // checkpoint path; optimizer state goes to out + ".optim"
  std::string resume;      // checkpoint to continue from (its .optim beside it)
  // Saved in the checkpoint so it serves text; with --resume, null keeps the
  // resumed checkpoint's own.
  std::shared_ptr<const Tokenizer> tokenizer;
  bool quiet = false;
  long untimed_steps = 0;  // first steps left out of tokens_per_second (a benchmark's warm-up)
};

struct TrainResult {
  float final_loss = 0.f;
  float final_accuracy = 0.f;  // next-token argmax accuracy of the last batch
  double tokens_per_second = 0.0;
  long steps_run = 0;
};

absl::StatusOr<TrainResult> Train(const ModelConfig& cfg, DataSource& data, const TrainOptions& opt);

// Learning rate at `step` (0-based): linear warmup, then cosine to min_lr_ratio·lr.
float LearningRate(const TrainOptions& opt, long step);

}  // namespace tinygpt
