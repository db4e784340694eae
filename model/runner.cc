#include "model/runner.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "model/kv_cache.h"

namespace tinygpt {

// Byte offsets of the step inputs inside the staging buffer and its device
// copy. Regions are sized for the largest step, so their addresses never
// change; the block tables come last, so a step copies only the prefix it uses.
struct ModelRunner::Layout {
  size_t tokens, positions, slots, cu_q, ctx, rows, params, penalties, tables, bytes;
  int max_blocks;
  Layout(const RunnerOptions& o, int max_blocks_per_seq) : max_blocks(max_blocks_per_seq) {
    size_t at = 0;
    auto region = [&](size_t bytes) {
      const size_t start = at;
      at += (bytes + 15) / 16 * 16;
      return start;
    };
    const size_t T = o.max_batch_tokens, S = o.max_seqs;
    tokens = region(T * sizeof(int32_t));
    positions = region(T * sizeof(int32_t));
    slots = region(T * sizeof(int32_t));
    cu_q = region((S + 1) * sizeof(int32_t));
    ctx = region(S * sizeof(int32_t));
    rows = region(S * sizeof(int32_t));
    params = region(S * sizeof(SamplingParams));
    penalties = region(S * sizeof(PenaltyRow));
    tables = region(S * max_blocks_per_seq * sizeof(int32_t));
    bytes = at;
  }
  // The bytes to copy for a step of n sequences.
  size_t used(int n) const { return tables + static_cast<size_t>(n) * max_blocks * sizeof(int32_t); }
};

// One step between Launch and Collect.
struct ModelRunner::Slot {
  char* meta = nullptr;            // pinned staging of the inputs
  int32_t* sampled = nullptr;      // pinned: the sampled ids come back here
  char* logits = nullptr;          // pinned: rows for logprobs / want_logits (allocated on first use)
  PenaltyEntry* entries = nullptr; // pinned: penalty entries (allocated on first use)
  void *start = nullptr, *end = nullptr;  // events around the step
  // What Collect needs to know.
  int rows = 0;
  bool want_logits = false, graph = false;
  std::vector<std::pair<int, int>> logprob_rows;  // (row, top) of rows asking for logprobs
};

ModelRunner::ModelRunner(Backend* b, const ModelConfig& cfg, const RunnerOptions& opt) : backend_(b), cfg_(cfg), opt_(opt) {}

void* ModelRunner::Alloc(size_t elems, size_t elem_bytes) {
  void* p = backend_->Alloc(std::max<size_t>(1, elems) * elem_bytes);
  if (p) allocations_.push_back(p);
  return p;
}

ModelRunner::~ModelRunner() {
  backend_->Synchronize();
  for (auto& [key, g] : graphs_)
    if (g) backend_->DestroyGraph(g);
  for (auto& slot : slots_) {
    for (void* p : {static_cast<void*>(slot->meta), static_cast<void*>(slot->sampled), static_cast<void*>(slot->logits),
                    static_cast<void*>(slot->entries)})
      if (p) backend_->FreeHost(p);
    backend_->DestroyEvent(slot->start);
    backend_->DestroyEvent(slot->end);
  }
  for (void* p : allocations_) backend_->Free(p);
}

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(Backend* backend, const Checkpoint& ck, const RunnerOptions& opt) {
  const ModelConfig& c = ck.config;
  if (auto s = backend->SupportsModel(c.head_dim()); !s.ok()) return s;
  if (opt.num_kv_blocks <= 0 || opt.block_size <= 0 || opt.max_batch_tokens <= 0 || opt.max_seqs <= 0)
    return absl::InvalidArgumentError("runner: kv blocks, block size, max batch tokens and max seqs must be > 0");
  if ((opt.block_size & (opt.block_size - 1)) != 0)  // the CUDA kernels index blocks by shift and mask
    return absl::InvalidArgumentError(absl::StrCat("runner: KV block size ", opt.block_size, " is not a power of two"));
  std::unique_ptr<ModelRunner> r(new ModelRunner(backend, c, opt));
  const size_t es = DTypeSize(backend->dtype());
  ParamLayout layout(c);
  std::vector<void*> weights;
  for (const auto& t : layout.tensors()) {
    void* w = r->Alloc(t.numel(), es);
    if (!w) return absl::ResourceExhaustedError(absl::StrCat("runner: out of memory for weight ", t.name));
    if (t.linear_weight)
      backend->UploadLinearWeight(w, ck.params.data() + t.offset, static_cast<int>(t.shape[0]), static_cast<int>(t.shape[1]));
    else
      backend->UploadFloats(w, ck.params.data() + t.offset, t.numel());
    weights.push_back(w);
  }
  size_t w = 0;
  auto next = [&] { return weights[w++]; };  // ParamLayout's order
  r->tok_emb_ = next();
  if (!c.alibi()) r->pos_emb_ = next();
  for (int l = 0; l < c.n_layers; ++l) {
    Backend::LayerWeights lw{};
    for (const void** p : {&lw.norm1_w, &lw.norm1_b, &lw.qkv_w, &lw.qkv_b, &lw.proj_w, &lw.proj_b, &lw.norm2_w, &lw.norm2_b,
                           &lw.w12_w, &lw.w12_b, &lw.w3_w, &lw.w3_b})
      *p = next();
    r->layers_.push_back(lw);
  }
  r->norm_f_w_ = next();
  r->norm_f_b_ = next();
  r->head_w_ = next();
  r->head_b_ = next();
  // One block more than the cache manager hands out: the scratch block.
  r->scratch_block_ = opt.num_kv_blocks;
  const size_t cache_elems = static_cast<size_t>(opt.num_kv_blocks + 1) * opt.block_size * c.kv_dim();
  for (int l = 0; l < c.n_layers; ++l) {
    r->k_cache_.push_back(r->Alloc(cache_elems, es));
    r->v_cache_.push_back(r->Alloc(cache_elems, es));
    if (!r->k_cache_.back() || !r->v_cache_.back())
      return absl::ResourceExhaustedError(absl::StrCat("runner: out of memory for a KV cache of ", opt.num_kv_blocks, " blocks"));
    r->layers_[l].k_cache = r->k_cache_.back();
    r->layers_[l].v_cache = r->v_cache_.back();
  }
  const size_t T = opt.max_batch_tokens, d = c.d_model, F = c.ffn_hidden;
  r->x_ = r->Alloc(T * d, es);
  r->ln_ = r->Alloc(T * d, es);
  r->qkv_ = r->Alloc(T * c.qkv_dim(), es);
  r->att_ = r->Alloc(T * d, es);
  r->tmp_ = r->Alloc(T * d, es);
  r->h12_ = r->Alloc(T * 2 * F, es);
  r->sw_ = r->Alloc(T * F, es);
  r->last_ = r->Alloc(opt.max_seqs * d, es);
  r->logits_ = r->Alloc(static_cast<size_t>(opt.max_seqs) * c.vocab_size, es);
  r->max_blocks_per_seq_ = BlocksFor(c.max_seq_len, opt.block_size);
  r->layout_ = std::make_unique<Layout>(opt, r->max_blocks_per_seq_);
  r->d_meta_ = static_cast<char*>(r->Alloc(r->layout_->bytes, 1));
  r->d_sampled_ = static_cast<int32_t*>(r->Alloc(opt.max_seqs, sizeof(int32_t)));
  r->d_prompt_rows_ = static_cast<int32_t*>(r->Alloc(opt.max_seqs, sizeof(int32_t)));
  if (!r->x_ || !r->ln_ || !r->qkv_ || !r->att_ || !r->tmp_ || !r->h12_ || !r->sw_ || !r->last_ || !r->logits_ || !r->d_meta_ ||
      !r->d_sampled_ || !r->d_prompt_rows_)
    return absl::ResourceExhaustedError("runner: out of memory for activations");
  for (int i = 0; i < kMaxInFlight; ++i) {
    auto slot = std::make_unique<Slot>();
    slot->meta = static_cast<char*>(backend->AllocHost(r->layout_->bytes));
    slot->sampled = static_cast<int32_t*>(backend->AllocHost(opt.max_seqs * sizeof(int32_t)));
    if (!slot->meta || !slot->sampled) return absl::ResourceExhaustedError("runner: out of pinned host memory");
    slot->start = backend->CreateEvent();
    slot->end = backend->CreateEvent();
    slot->logprob_rows.reserve(opt.max_seqs);
    r->slots_.push_back(std::move(slot));
  }
  // Decode batch buckets: small steps exactly, then multiples of 8, 16, 32
  // (a step of n sequences runs the graph of the smallest bucket >= n, its
  // extra rows padding).
  const int cap = std::min({opt.max_seqs, opt.max_batch_tokens, opt.max_graph_batch});
  if (opt.graphs && backend->SupportsGraphs() && cap > 0) {
    for (int b : {1, 2, 4})
      if (b <= cap) r->buckets_.push_back(b);
    for (int b = 8; b <= cap; b += b < 64 ? 8 : b < 256 ? 16 : 32) r->buckets_.push_back(b);
    if (r->buckets_.back() != cap) r->buckets_.push_back(cap);
  }
  return r;
}

int ModelRunner::GraphBucket(int n) const {
  auto it = std::lower_bound(buckets_.begin(), buckets_.end(), n);
  return it == buckets_.end() ? 0 : *it;
}

int ModelRunner::ContextBucket(int max_ctx) const {
  int c = 256;
  while (c < max_ctx) c *= 2;
  return std::min(c, cfg_.max_seq_len);
}

absl::StatusOr<WarmupReport> ModelRunner::Warmup() {
  if (in_flight() > 0) return absl::FailedPreconditionError("runner: warm-up with a step in flight");
  const auto t0 = std::chrono::steady_clock::now();
  const Backend::ShapeCounters before = backend_->shape_counters();
  const int graphs_before = graph_stats_.captured;
  WarmupReport report;
  warming_up_ = true;
  struct Done {
    bool* flag;
    ~Done() { *flag = false; }
  } done{&warming_up_};
  // Every synthetic sequence's block table names only the scratch block
  // (the blocks the cache manager hands out stay untouched), long enough
  // for a context of max_seq_len.
  const std::vector<int32_t> table(BlocksFor(cfg_.max_seq_len, opt_.block_size), scratch_block_);
  const std::vector<int32_t> tokens(std::min(opt_.max_batch_tokens, cfg_.max_seq_len), 0);
  TokenHistory no_history;
  SamplingExtras penalized, logprobs;
  penalized.penalties.repetition = 1.1f;
  penalized.history = &no_history;
  logprobs.top_logprobs = 1;
  StepResult result;
  auto run = [&](const std::vector<SeqStep>& step) -> absl::Status {
    if (auto s = Launch(step); !s.ok()) return s;
    ++report.steps;
    return Collect(&result);
  };
  auto seq = [&](int num_tokens, int start_pos, bool sample, const SamplingExtras* extras = nullptr) {
    SeqStep q;
    q.tokens = tokens.data();
    q.num_tokens = num_tokens;
    q.start_pos = start_pos;
    q.block_table = &table;
    q.sample = sample;
    q.extras = extras;
    return q;
  };
  std::vector<SeqStep> step;
  // 1. Prefill and mixed steps of every row bucket up to max_batch_tokens:
  //    sequences of up to max_seq_len tokens each, all sampling. The largest
  //    also size the prefill attention's workspace.
  const int chunk = static_cast<int>(tokens.size());
  for (int rows : backend_->WarmupRowCounts(opt_.max_batch_tokens)) {
    if ((rows + chunk - 1) / chunk > opt_.max_seqs) continue;  // no step can have this many tokens
    step.clear();
    for (int left = rows; left > 0; left -= chunk) step.push_back(seq(std::min(left, chunk), 0, true));
    if (auto s = run(step); !s.ok()) return s;
  }
  // 2. The vocabulary projection of every row bucket up to max_seqs (one
  //    sampled row per sequence): one sequence of two tokens keeps the step
  //    off the decode graphs.
  for (int rows : backend_->WarmupRowCounts(opt_.max_seqs)) {
    if (rows + 1 > opt_.max_batch_tokens) continue;
    step.assign(1, seq(2, 0, true));
    for (int i = 1; i < rows; ++i) step.push_back(seq(1, 0, true));
    if (auto s = run(step); !s.ok()) return s;
  }
  // 3. The decode graph of every batch bucket and context bucket, with and
  //    without penalties. A context bucket is reached by a decode token at
  //    its last position.
  std::vector<int> contexts;
  for (int ctx = 1;; ctx = contexts.back() + 1) {
    contexts.push_back(ContextBucket(ctx));
    if (contexts.back() >= cfg_.max_seq_len) break;
  }
  for (int bucket : buckets_)
    for (int ctx : contexts)
      for (const SamplingExtras* extras : {static_cast<const SamplingExtras*>(nullptr), static_cast<const SamplingExtras*>(&penalized)}) {
        step.assign(bucket, seq(1, ctx - 1, true, extras));
        if (auto s = run(step); !s.ok()) return s;
      }
  // 4. Logprobs: each in-flight slot's pinned buffer for logits rows.
  for (int i = 0; i < kMaxInFlight; ++i) {
    step.assign(1, seq(2, 0, true, &logprobs));
    if (auto s = run(step); !s.ok()) return s;
  }
  const Backend::ShapeCounters after = backend_->shape_counters();
  report.graphs = graph_stats_.captured - graphs_before;
  report.gemm_searches = after.gemm_searches - before.gemm_searches;
  report.workspace_growths = after.workspace_growths - before.workspace_growths;
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

void ModelRunner::Forward(int T, int n, int R, int max_q, int max_ctx, bool pending, bool penalties) {
  Backend& b = *backend_;
  const Layout& m = *layout_;
  auto i32 = [&](size_t offset) { return reinterpret_cast<int32_t*>(d_meta_ + offset); };
  int32_t* tokens = i32(m.tokens);
  if (pending) b.FillPendingTokens(tokens, T, d_sampled_);
  const int d = cfg_.d_model;
  const AttentionDims dims{cfg_.n_heads, cfg_.n_kv_heads, cfg_.head_dim(), cfg_.alibi()};
  const AttentionBatch batch{n, i32(m.cu_q), i32(m.ctx), T, max_q, max_ctx};
  b.Embedding(tokens, i32(m.positions), tok_emb_, pos_emb_, x_, T, d);
  Backend::LayersArgs layers;
  layers.layers = layers_.data();
  layers.n_layers = cfg_.n_layers;
  layers.T = T;
  layers.d_model = d;
  layers.ffn_hidden = cfg_.ffn_hidden;
  layers.norm_eps = cfg_.norm_eps;
  layers.dims = dims;
  layers.batch = batch;
  layers.block_size = opt_.block_size;
  layers.block_tables = i32(m.tables);
  layers.max_blocks_per_seq = max_blocks_per_seq_;
  layers.slots = i32(m.slots);
  layers.x = x_;
  layers.ln = ln_;
  layers.qkv = qkv_;
  layers.att = att_;
  layers.tmp = tmp_;
  layers.h12 = h12_;
  layers.sw = sw_;
  b.TransformerLayers(layers);
  if (R == 0) return;
  // Only the rows that sample need the final norm and the vocabulary projection.
  const int V = cfg_.vocab_size;
  b.GatherRows(x_, i32(m.rows), last_, R, d);
  b.LayerNorm(last_, norm_f_w_, norm_f_b_, ln_, R, d, cfg_.norm_eps);
  b.Linear(ln_, head_w_, head_b_, logits_, R, d, V);
  const auto* params = reinterpret_cast<const SamplingParams*>(d_meta_ + m.params);
  if (penalties) {
    b.ApplyPenalties(logits_, logits_penalized_, R, V, reinterpret_cast<const PenaltyRow*>(d_meta_ + m.penalties), d_entries_);
    b.Sample(logits_penalized_, R, V, params, d_sampled_);
  } else {
    b.Sample(logits_, R, V, params, d_sampled_);
  }
}

absl::Status ModelRunner::Launch(const std::vector<SeqStep>& seqs, bool want_logits) {
  const int n = static_cast<int>(seqs.size());
  if (n == 0) return absl::InvalidArgumentError("runner: a step needs at least one sequence");
  if (n > opt_.max_seqs) return absl::InvalidArgumentError("runner: too many sequences in one step");
  if (in_flight() >= kMaxInFlight) return absl::FailedPreconditionError("runner: too many steps in flight");
  Slot& slot = *slots_[launched_ % kMaxInFlight];
  const Layout& m = *layout_;
  auto h32 = [&](size_t offset) { return reinterpret_cast<int32_t*>(slot.meta + offset); };
  int32_t *tokens = h32(m.tokens), *positions = h32(m.positions), *slots = h32(m.slots), *cu_q = h32(m.cu_q);
  int32_t *ctx = h32(m.ctx), *rows = h32(m.rows), *tables = h32(m.tables);
  auto* params = reinterpret_cast<SamplingParams*>(slot.meta + m.params);
  auto* pen_rows = reinterpret_cast<PenaltyRow*>(slot.meta + m.penalties);

  // 1. The inputs, into the staging buffer.
  int T = 0, R = 0, max_q = 0, max_ctx = 0, entries = 0;
  bool pending = false, penalties = false, decode = true;
  slot.logprob_rows.clear();
  cu_q[0] = 0;
  for (int s = 0; s < n; ++s) {
    const SeqStep& q = seqs[s];
    const int end = q.start_pos + q.num_tokens;
    if (q.num_tokens <= 0 || end > cfg_.max_seq_len || !q.block_table ||
        static_cast<int>(q.block_table->size()) < BlocksFor(end, opt_.block_size) ||
        static_cast<int>(q.block_table->size()) > max_blocks_per_seq_)
      return absl::InternalError(absl::StrCat("runner: sequence ", s, " has no room for positions up to ", end));
    if (T + q.num_tokens > opt_.max_batch_tokens) return absl::InvalidArgumentError("runner: step exceeds max_batch_tokens");
    if (q.pending_row >= 0 && (q.num_tokens != 1 || q.pending_row >= last_rows_ || launched_ == 0))
      return absl::InternalError("runner: a pending token must be one decode token sampled by the previous step");
    for (int i = 0; i < q.num_tokens; ++i) {
      const int pos = q.start_pos + i;
      if (q.pending_row >= 0) {
        tokens[T] = -1 - q.pending_row;
      } else {
        if (q.tokens[i] < 0 || q.tokens[i] >= cfg_.vocab_size) return absl::InvalidArgumentError("runner: token id out of range");
        tokens[T] = q.tokens[i];
      }
      positions[T] = pos;
      slots[T] = (*q.block_table)[pos / opt_.block_size] * opt_.block_size + pos % opt_.block_size;
      ++T;
    }
    pending |= q.pending_row >= 0;
    std::copy(q.block_table->begin(), q.block_table->end(), tables + static_cast<long>(s) * max_blocks_per_seq_);
    cu_q[s + 1] = T;
    ctx[s] = end;
    max_q = std::max(max_q, q.num_tokens);
    max_ctx = std::max(max_ctx, end);
    decode &= q.num_tokens == 1 && q.sample;
    if (!q.sample) continue;
    rows[R] = T - 1;
    params[R] = q.sampling;
    PenaltyRow& pr = pen_rows[R];
    pr = PenaltyRow{};
    const SamplingExtras* e = q.extras;
    if (e && e->penalties.active() && e->history) {
      // The tokens the sequence has seen, each once with its output count.
      if (!d_entries_) {
        entry_capacity_ = static_cast<size_t>(opt_.max_seqs) * cfg_.max_seq_len;
        d_entries_ = static_cast<PenaltyEntry*>(Alloc(entry_capacity_, sizeof(PenaltyEntry)));
        logits_penalized_ = Alloc(static_cast<size_t>(opt_.max_seqs) * cfg_.vocab_size, DTypeSize(backend_->dtype()));
        if (!d_entries_ || !logits_penalized_) return absl::ResourceExhaustedError("runner: out of memory for penalties");
      }
      if (!slot.entries) {
        slot.entries = static_cast<PenaltyEntry*>(backend_->AllocHost(entry_capacity_ * sizeof(PenaltyEntry)));
        if (!slot.entries) return absl::ResourceExhaustedError("runner: out of pinned memory for penalties");
      }
      const TokenHistory& h = *e->history;
      if (entries + h.prompt.size() + h.output_counts.size() > entry_capacity_)
        return absl::InternalError("runner: too many penalized tokens in one step");
      pr = PenaltyRow{e->penalties.repetition, e->penalties.frequency, e->penalties.presence, entries, entries};
      for (int32_t id : h.prompt) {
        auto it = h.output_counts.find(id);
        slot.entries[entries++] = PenaltyEntry{id, it == h.output_counts.end() ? 0 : it->second};
      }
      for (const auto& [id, count] : h.output_counts)
        if (!h.prompt.count(id)) slot.entries[entries++] = PenaltyEntry{id, count};
      pr.end = entries;
      penalties = true;
    }
    if (e && e->wants_logprobs()) slot.logprob_rows.emplace_back(R, e->top_logprobs);
    ++R;
  }

  // 2. Decode steps replay a graph of their bucket: padding rows decode
  //    token 0 at position 0 into the scratch block and are ignored.
  const int bucket = decode ? GraphBucket(n) : 0;
  int shape_n = n, shape_ctx = max_ctx;
  if (bucket > 0) {
    for (int s = n; s < bucket; ++s) {
      tokens[s] = 0;
      positions[s] = 0;
      slots[s] = scratch_block_ * opt_.block_size;
      cu_q[s + 1] = s + 1;
      ctx[s] = 1;
      rows[s] = s;
      params[s] = SamplingParams{};
      pen_rows[s] = PenaltyRow{};
      tables[static_cast<long>(s) * max_blocks_per_seq_] = scratch_block_;
    }
    shape_n = bucket;
    // The attention's grid (its key splits) is planned for the context bucket.
    shape_ctx = ContextBucket(max_ctx);
  }

  // 3. One copy in, the forward pass, the sampled ids back.
  Backend& b = *backend_;
  b.RecordEvent(slot.start);
  b.CopyToDevice(d_meta_, slot.meta, m.used(shape_n));
  if (penalties) b.CopyToDevice(d_entries_, slot.entries, entries * sizeof(PenaltyEntry));
  const int shape_T = bucket > 0 ? bucket : T, shape_R = bucket > 0 ? bucket : R;
  slot.graph = false;
  if (bucket > 0) {
    const auto key = std::make_tuple(bucket, shape_ctx, penalties);
    auto it = graphs_.find(key);
    if (it != graphs_.end() && it->second) {
      b.LaunchGraph(it->second);
      slot.graph = true;
      ++graph_stats_.replays;
    } else if (it != graphs_.end()) {  // its capture failed: op by op, unpadded
      Forward(T, n, R, max_q, max_ctx, pending, penalties);
    } else {
      // First time: run op by op (which also sizes every workspace the ops
      // use), then record the same ops for next time.
      Forward(shape_T, shape_n, shape_R, 1, shape_ctx, pending, penalties);
      {
        const auto t0 = std::chrono::steady_clock::now();
        void* graph = nullptr;
        if (b.BeginCapture()) {
          Forward(shape_T, shape_n, shape_R, 1, shape_ctx, true, penalties);
          graph = b.EndCapture();
        }
        graphs_[key] = graph;
        if (graph) {
          const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          ++graph_stats_.captured;
          graph_stats_.capture_seconds += sec;
          if (!warming_up_)  // the warm-up reports its captures in one line
            LOG(INFO) << "captured the decode graph of " << bucket << " sequences, contexts up to " << shape_ctx
                    << (penalties ? ", with penalties" : "") << " in " << sec * 1e3 << " ms";
        }
      }
    }
  } else {
    Forward(T, n, R, max_q, max_ctx, pending, penalties);
  }
  if (R > 0) b.CopyToHostAsync(slot.sampled, d_sampled_, R * sizeof(int32_t));
  slot.want_logits = want_logits;
  if (want_logits || !slot.logprob_rows.empty()) {
    const size_t row_bytes = static_cast<size_t>(cfg_.vocab_size) * DTypeSize(b.dtype());
    if (!slot.logits) {
      slot.logits = static_cast<char*>(b.AllocHost(opt_.max_seqs * row_bytes));
      if (!slot.logits) return absl::ResourceExhaustedError("runner: out of pinned memory for logits");
    }
    if (want_logits) {
      b.CopyToHostAsync(slot.logits, logits_, R * row_bytes);
    } else {
      for (const auto& [row, top] : slot.logprob_rows)
        b.CopyToHostAsync(slot.logits + row * row_bytes, static_cast<const char*>(logits_) + row * row_bytes, row_bytes);
    }
  }
  bool want_prompt = false;
  for (const SeqStep& q : seqs) want_prompt |= q.prompt_logprobs != nullptr;
  if (want_prompt)
    if (auto s = PromptLogprobs(seqs); !s.ok()) return s;
  b.RecordEvent(slot.end);
  slot.rows = R;
  last_rows_ = R;
  ++launched_;
  return absl::OkStatus();
}

absl::Status ModelRunner::PromptLogprobs(const std::vector<SeqStep>& seqs) {
  Backend& b = *backend_;
  const int d = cfg_.d_model, V = cfg_.vocab_size;
  const size_t row_bytes = static_cast<size_t>(V) * DTypeSize(b.dtype());
  struct Want {
    int row, pos;
    int32_t target;
    const SeqStep* seq;
  };
  std::vector<Want> want;
  int first_row = 0;
  for (const SeqStep& q : seqs) {
    if (q.prompt_logprobs && q.pending_row < 0)
      for (int i = 0; i < q.num_tokens; ++i) {
        const int pos = q.start_pos + i;
        if (pos + 1 < q.prompt_len) want.push_back({first_row + i, pos, q.tokens[i + 1], &q});
      }
    first_row += q.num_tokens;
  }
  std::vector<int32_t> rows;
  std::vector<char> host(std::min<size_t>(opt_.max_seqs, want.size()) * row_bytes);
  std::vector<float> row(V);
  for (size_t at = 0; at < want.size(); at += opt_.max_seqs) {
    const int n = static_cast<int>(std::min<size_t>(opt_.max_seqs, want.size() - at));
    rows.clear();
    for (int i = 0; i < n; ++i) rows.push_back(want[at + i].row);
    // After the step's own ops (same stream), which are done with logits_.
    b.CopyToDevice(d_prompt_rows_, rows.data(), n * sizeof(int32_t));
    b.GatherRows(x_, d_prompt_rows_, last_, n, d);
    b.LayerNorm(last_, norm_f_w_, norm_f_b_, ln_, n, d, cfg_.norm_eps);
    b.Linear(ln_, head_w_, head_b_, logits_, n, d, V);
    b.CopyToHost(host.data(), logits_, n * row_bytes);
    for (int i = 0; i < n; ++i) {
      const Want& w = want[at + i];
      if (w.target < 0 || w.target >= V) return absl::InvalidArgumentError("runner: token id out of range");
      b.HostToFloats(host.data() + i * row_bytes, row.data(), V);
      std::vector<TokenLogprobs>& out = *w.seq->prompt_logprobs;
      if (static_cast<int>(out.size()) <= w.pos) out.resize(w.pos + 1);
      out[w.pos] = ComputeLogprobs(row.data(), V, w.target, w.seq->prompt_top);
    }
  }
  return absl::OkStatus();
}

absl::Status ModelRunner::Collect(StepResult* out) {
  if (in_flight() == 0) return absl::FailedPreconditionError("runner: no step to collect");
  Slot& slot = *slots_[collected_ % kMaxInFlight];
  Backend& b = *backend_;
  b.WaitEvent(slot.end);
  ++collected_;
  out->device_seconds = b.EventSeconds(slot.start, slot.end);
  out->graph = slot.graph;
  out->sampled.assign(slot.sampled, slot.sampled + slot.rows);
  const int V = cfg_.vocab_size;
  const size_t row_bytes = static_cast<size_t>(V) * DTypeSize(b.dtype());
  out->logits.clear();
  if (slot.want_logits) {
    out->logits.resize(static_cast<size_t>(slot.rows) * V);
    b.HostToFloats(slot.logits, out->logits.data(), out->logits.size());
  }
  out->logprobs.clear();
  if (!slot.logprob_rows.empty()) {
    // Log-softmax of the raw logits (before penalties and temperature).
    out->logprobs.resize(slot.rows);
    std::vector<float> row(V);
    for (const auto& [r, top] : slot.logprob_rows) {
      if (out->sampled[r] == kNonFiniteLogits) continue;  // no token to score; the caller ends the sequence
      b.HostToFloats(slot.logits + r * row_bytes, row.data(), V);
      out->logprobs[r] = ComputeLogprobs(row.data(), V, out->sampled[r], top);
    }
  }
  return absl::OkStatus();
}

absl::Status ModelRunner::Step(const std::vector<SeqStep>& seqs, std::vector<int32_t>* sampled, std::vector<float>* logits,
                               std::vector<TokenLogprobs>* logprobs) {
  if (seqs.empty()) return absl::OkStatus();
  if (auto s = Launch(seqs, logits != nullptr); !s.ok()) return s;
  StepResult r;
  if (auto s = Collect(&r); !s.ok()) return s;
  if (logprobs) {
    *logprobs = std::move(r.logprobs);
    logprobs->resize(r.sampled.size());
  }
  if (sampled) *sampled = std::move(r.sampled);
  if (logits) *logits = std::move(r.logits);
  return absl::OkStatus();
}

}  // namespace tinygpt
