// Runs TinyGPT inference steps on any backend over a paged KV cache. One Step
// packs the new tokens of many sequences (prefill chunks and decode tokens
// alike) into one forward pass with one attention call.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "model/logits_processing.h"
#include "model/params.h"

namespace tinygpt {

struct RunnerOptions {
  int num_kv_blocks = 256;
  int block_size = 16;
  int max_batch_tokens = 512;  // tokens per step
  int max_seqs = 64;           // sequences per step
};

// One sequence's share of a step.
struct SeqStep {
  const int32_t* tokens = nullptr;  // the new tokens
  int num_tokens = 0;
  int start_pos = 0;  // tokens already in the cache for this sequence
  const std::vector<int32_t>* block_table = nullptr;  // covers start_pos + num_tokens
  bool sample = false;  // produce a token from the last new token's logits
  SamplingParams sampling;
  const SamplingExtras* extras = nullptr;  // penalties and logprobs (host side), or none
};

class ModelRunner {
 public:
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Create(Backend* backend, const Checkpoint& ck, const RunnerOptions& opt);
  ~ModelRunner();

  const ModelConfig& config() const { return cfg_; }
  const RunnerOptions& options() const { return opt_; }
  Backend* backend() const { return backend_; }
  // Bytes of KV cache per block, over all layers (K and V).
  static size_t KvBlockBytes(const ModelConfig& cfg, int block_size, DType dtype) {
    return 2ul * cfg.n_layers * block_size * cfg.kv_dim() * DTypeSize(dtype);
  }

  // Runs the step. `sampled` gets one token per sequence with sample=true, in
  // order; `logprobs` (if non-null) their log-probabilities, for the rows
  // whose extras ask for them (others stay empty). If `logits` is non-null it
  // gets those rows' logits (fp32, before penalties).
  absl::Status Step(const std::vector<SeqStep>& seqs, std::vector<int32_t>* sampled, std::vector<float>* logits = nullptr,
                    std::vector<TokenLogprobs>* logprobs = nullptr);

 private:
  ModelRunner(Backend* b, const ModelConfig& cfg, const RunnerOptions& opt) : backend_(b), cfg_(cfg), opt_(opt) {}
  void* Alloc(size_t elems, size_t elem_bytes);

  Backend* backend_;
  ModelConfig cfg_;
  RunnerOptions opt_;
  std::vector<void*> allocations_;
  std::vector<void*> weights_;  // one per ParamLayout tensor
  std::vector<void*> k_cache_, v_cache_;
  // Activations sized for max_batch_tokens.
  void *x_, *ln_, *qkv_, *att_, *tmp_, *h12_, *sw_, *last_, *logits_;
  // Step metadata on the backend.
  int32_t *d_tokens_, *d_positions_, *d_slots_, *d_cu_q_, *d_ctx_, *d_tables_, *d_rows_;
  int max_blocks_per_seq_ = 0;
};

}  // namespace tinygpt
