// Runs TinyGPT inference steps on any backend over a paged KV cache. One Step
// packs the new tokens of many sequences (prefill chunks and decode tokens
// alike) into one forward pass with one attention call.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <tuple>
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
  // Decode steps (one new token per sequence) replay a graph captured per
  // batch-size bucket, where the backend supports graphs (CUDA).
  bool graphs = true;
  int max_graph_batch = 512;  // larger decode steps run op by op
};

// One sequence's share of a step.
struct SeqStep {
  const int32_t* tokens = nullptr;  // the new tokens
  int num_tokens = 0;
  int start_pos = 0;  // tokens already in the cache for this sequence
  const std::vector<int32_t>* block_table = nullptr;  // covers start_pos + num_tokens
  bool sample = false;  // produce a token from the last new token's logits
  SamplingParams sampling;
  const SamplingExtras* extras = nullptr;  // penalties and logprobs, or none
  // A decode token that is not known yet: the token that sampling row
  // `pending_row` of the previously launched step produces (num_tokens must
  // be 1; `tokens` is not read). The device fills it in, so a step can be
  // launched before the previous one's result has come back.
  int pending_row = -1;
  // Prompt logprobs: row i of this chunk (position start_pos + i) gives the
  // log-probability of the prompt token at position start_pos + i + 1 (when
  // that is < prompt_len), with prompt_top alternatives, stored at index
  // start_pos + i of *prompt_logprobs (recomputing a position overwrites it).
  std::vector<TokenLogprobs>* prompt_logprobs = nullptr;
  int prompt_len = 0;
  int prompt_top = 0;
};

// What a collected step produced.
struct StepResult {
  std::vector<int32_t> sampled;         // one token per sampling row, in order; kNonFiniteLogits
                                        // for a row whose logits held a NaN or an infinity
  std::vector<TokenLogprobs> logprobs;  // per sampling row; filled for rows whose extras ask
  std::vector<float> logits;            // fp32 logits of the sampling rows, if Launch asked
  double device_seconds = 0;            // the step's time on the device (0 on the CPU)
  bool graph = false;                   // replayed as a captured graph
};

struct GraphStats {
  int captured = 0;
  double capture_seconds = 0;
  long replays = 0;
};

// What ModelRunner::Warmup did.
struct WarmupReport {
  double seconds = 0;
  int steps = 0;            // synthetic steps run
  int graphs = 0;           // decode graphs captured
  long gemm_searches = 0;   // backend algorithm choices made (Backend::ShapeCounters)
  long workspace_growths = 0;
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

  // Enqueues a step: one host-to-device copy of its inputs, the forward pass
  // (a graph replay for decode steps), sampling, and the copy of the sampled
  // ids back. Returns before the device has finished. At most kMaxInFlight
  // steps may be launched and not yet collected.
  static constexpr int kMaxInFlight = 2;
  absl::Status Launch(const std::vector<SeqStep>& seqs, bool want_logits = false);
  // Waits for the oldest uncollected step and returns its results.
  absl::Status Collect(StepResult* out);
  int in_flight() const { return static_cast<int>(launched_ - collected_); }
  // Launch then Collect. `sampled` gets one token per sequence with
  // sample=true, in order; `logprobs` their log-probabilities where asked;
  // `logits` those rows' logits (fp32, before penalties).
  absl::Status Step(const std::vector<SeqStep>& seqs, std::vector<int32_t>* sampled, std::vector<float>* logits = nullptr,
                    std::vector<TokenLogprobs>* logprobs = nullptr);
  GraphStats graph_stats() const { return graph_stats_; }
  // The one-time work of every step shape the engine can plan with these
  // options, done now instead of inside the first requests that need it:
  // synthetic steps (their K/V go to the scratch block, their tokens are
  // dropped) that capture the decode graph of every batch bucket and
  // context bucket (with and without penalties), make the backend's
  // per-row-bucket choices (Backend::WarmupRowCounts) for the layers of
  // prefill and mixed steps and for the vocabulary projection of up to
  // max_seqs rows, size the attention workspaces for the largest steps, and
  // allocate the pinned buffers of logprobs. Call it before the first
  // Launch, with no step in flight. On the CPU backend it does little.
  absl::StatusOr<WarmupReport> Warmup();

 private:
  ModelRunner(Backend* b, const ModelConfig& cfg, const RunnerOptions& opt);
  void* Alloc(size_t elems, size_t elem_bytes);
  // The step's inputs, at fixed offsets of one host staging buffer and of its
  // device copy (so captured graphs always read the same addresses).
  struct Layout;
  // Issues the forward pass and sampling for T tokens of n sequences (R
  // sampling rows) whose inputs are in the device metadata buffer.
  void Forward(int T, int n, int R, int max_q, int max_ctx, bool pending, bool penalties);
  int GraphBucket(int n) const;  // 0: no graph for n sequences
  // The context bucket a decode graph is planned for (a power of two, at
  // least 256, at most max_seq_len), so one graph serves every context up
  // to it.
  int ContextBucket(int max_ctx) const;
  // The prompt logprobs the step's sequences ask for: the final norm and the
  // head over their rows, max_seqs rows at a time (waits for the device).
  absl::Status PromptLogprobs(const std::vector<SeqStep>& seqs);

  Backend* backend_;
  ModelConfig cfg_;
  RunnerOptions opt_;
  std::vector<void*> allocations_;
  // The weights on the backend, in ParamLayout order; each layer's entry
  // also names its K/V cache.
  void *tok_emb_ = nullptr, *pos_emb_ = nullptr;  // pos_emb_ null under ALiBi
  std::vector<Backend::LayerWeights> layers_;
  void *norm_f_w_ = nullptr, *norm_f_b_ = nullptr, *head_w_ = nullptr, *head_b_ = nullptr;
  std::vector<void*> k_cache_, v_cache_;
  int scratch_block_ = 0;  // one extra KV block that the padded rows of a graph write to
  // Activations sized for max_batch_tokens.
  void *x_, *ln_, *qkv_, *att_, *tmp_, *h12_, *sw_, *last_, *logits_;
  void* logits_penalized_ = nullptr;  // allocated with the first penalized step
  int max_blocks_per_seq_ = 0;
  // Step inputs: device buffer and its regions; two host staging buffers
  // (pinned), one per step in flight.
  std::unique_ptr<Layout> layout_;
  char* d_meta_ = nullptr;
  int32_t* d_sampled_ = nullptr;  // the sampled ids of the last launched step
  int32_t* d_prompt_rows_ = nullptr;  // hidden rows whose prompt logprobs are wanted (max_seqs)
  PenaltyEntry* d_entries_ = nullptr;
  size_t entry_capacity_ = 0;
  struct Slot;  // per step in flight: staging buffers, events, what to collect
  std::vector<std::unique_ptr<Slot>> slots_;
  long launched_ = 0, collected_ = 0;
  int last_rows_ = 0;  // sampling rows of the last launched step
  std::vector<int> buckets_;
  std::map<std::tuple<int, int, bool>, void*> graphs_;  // (bucket, context bucket, penalties) -> graph; null: capture failed
  GraphStats graph_stats_;
  bool warming_up_ = false;
};

}  // namespace tinygpt
