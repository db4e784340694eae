#include "model/runner.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/sampling.h"
#include "model/kv_cache.h"

namespace tinygpt {

void* ModelRunner::Alloc(size_t elems, size_t elem_bytes) {
  void* p = backend_->Alloc(std::max<size_t>(1, elems) * elem_bytes);
  if (p) allocations_.push_back(p);
  return p;
}

ModelRunner::~ModelRunner() {
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
  for (const auto& t : layout.tensors()) {
    void* w = r->Alloc(t.numel(), es);
    if (!w) return absl::ResourceExhaustedError(absl::StrCat("runner: out of memory for weight ", t.name));
    if (t.linear_weight)
      backend->UploadLinearWeight(w, ck.params.data() + t.offset, static_cast<int>(t.shape[0]), static_cast<int>(t.shape[1]));
    else
      backend->UploadFloats(w, ck.params.data() + t.offset, t.numel());
    r->weights_.push_back(w);
  }
  const size_t cache_elems = static_cast<size_t>(opt.num_kv_blocks) * opt.block_size * c.kv_dim();
  for (int l = 0; l < c.n_layers; ++l) {
    r->k_cache_.push_back(r->Alloc(cache_elems, es));
    r->v_cache_.push_back(r->Alloc(cache_elems, es));
    if (!r->k_cache_.back() || !r->v_cache_.back())
      return absl::ResourceExhaustedError(absl::StrCat("runner: out of memory for a KV cache of ", opt.num_kv_blocks, " blocks"));
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
  auto ints = [&](size_t n) { return static_cast<int32_t*>(r->Alloc(n, sizeof(int32_t))); };
  r->d_tokens_ = ints(T);
  r->d_positions_ = ints(T);
  r->d_slots_ = ints(T);
  r->d_cu_q_ = ints(opt.max_seqs + 1);
  r->d_ctx_ = ints(opt.max_seqs);
  r->d_tables_ = ints(static_cast<size_t>(opt.max_seqs) * r->max_blocks_per_seq_);
  r->d_rows_ = ints(opt.max_seqs);
  if (!r->x_ || !r->ln_ || !r->qkv_ || !r->att_ || !r->tmp_ || !r->h12_ || !r->sw_ || !r->last_ || !r->logits_ ||
      !r->d_tokens_ || !r->d_positions_ || !r->d_slots_ || !r->d_cu_q_ || !r->d_ctx_ || !r->d_tables_ || !r->d_rows_)
    return absl::ResourceExhaustedError("runner: out of memory for activations");
  return r;
}

absl::Status ModelRunner::Step(const std::vector<SeqStep>& seqs, std::vector<int32_t>* sampled, std::vector<float>* logits,
                               std::vector<TokenLogprobs>* logprobs) {
  const int n = static_cast<int>(seqs.size());
  if (n == 0) return absl::OkStatus();
  if (n > opt_.max_seqs) return absl::InvalidArgumentError("runner: too many sequences in one step");
  std::vector<int32_t> tokens, positions, slots, cu_q{0}, ctx, tables(static_cast<size_t>(n) * max_blocks_per_seq_, 0), rows;
  std::vector<SamplingParams> params;
  std::vector<const SamplingExtras*> extras;  // per sampling row
  int max_q = 0, max_ctx = 0;
  for (int s = 0; s < n; ++s) {
    const SeqStep& q = seqs[s];
    const int end = q.start_pos + q.num_tokens;
    if (q.num_tokens <= 0 || end > cfg_.max_seq_len || !q.block_table ||
        static_cast<int>(q.block_table->size()) < BlocksFor(end, opt_.block_size))
      return absl::InternalError(absl::StrCat("runner: sequence ", s, " has no room for positions up to ", end));
    for (int i = 0; i < q.num_tokens; ++i) {
      const int pos = q.start_pos + i;
      if (q.tokens[i] < 0 || q.tokens[i] >= cfg_.vocab_size) return absl::InvalidArgumentError("runner: token id out of range");
      tokens.push_back(q.tokens[i]);
      positions.push_back(pos);
      slots.push_back((*q.block_table)[pos / opt_.block_size] * opt_.block_size + pos % opt_.block_size);
    }
    std::copy(q.block_table->begin(), q.block_table->end(), tables.begin() + static_cast<long>(s) * max_blocks_per_seq_);
    cu_q.push_back(static_cast<int32_t>(tokens.size()));
    ctx.push_back(end);
    max_q = std::max(max_q, q.num_tokens);
    max_ctx = std::max(max_ctx, end);
    if (q.sample) {
      rows.push_back(cu_q.back() - 1);
      params.push_back(q.sampling);
      extras.push_back(q.extras);
    }
  }
  const int T = static_cast<int>(tokens.size());
  if (T > opt_.max_batch_tokens) return absl::InvalidArgumentError("runner: step exceeds max_batch_tokens");
  Backend& b = *backend_;
  b.CopyToDevice(d_tokens_, tokens.data(), T * sizeof(int32_t));
  b.CopyToDevice(d_positions_, positions.data(), T * sizeof(int32_t));
  b.CopyToDevice(d_slots_, slots.data(), T * sizeof(int32_t));
  b.CopyToDevice(d_cu_q_, cu_q.data(), cu_q.size() * sizeof(int32_t));
  b.CopyToDevice(d_ctx_, ctx.data(), ctx.size() * sizeof(int32_t));
  b.CopyToDevice(d_tables_, tables.data(), tables.size() * sizeof(int32_t));
  if (!rows.empty()) b.CopyToDevice(d_rows_, rows.data(), rows.size() * sizeof(int32_t));

  const int d = cfg_.d_model, F = cfg_.ffn_hidden, qkv_dim = cfg_.qkv_dim();
  const AttentionDims dims{cfg_.n_heads, cfg_.n_kv_heads, cfg_.head_dim(), cfg_.alibi()};
  const AttentionBatch batch{n, d_cu_q_, d_ctx_, T, max_q, max_ctx};
  size_t w = 0;
  auto next = [&] { return weights_[w++]; };  // weights in ParamLayout order
  void* tok = next();
  void* pos = cfg_.alibi() ? nullptr : next();
  b.Embedding(d_tokens_, d_positions_, tok, pos, x_, T, d);
  for (int l = 0; l < cfg_.n_layers; ++l) {
    void *n1w = next(), *n1b = next(), *qkvw = next(), *qkvb = next(), *projw = next(), *projb = next();
    void *n2w = next(), *n2b = next(), *w12w = next(), *w12b = next(), *w3w = next(), *w3b = next();
    b.LayerNorm(x_, n1w, n1b, ln_, T, d, cfg_.norm_eps);
    b.Linear(ln_, qkvw, qkvb, qkv_, T, d, qkv_dim);
    b.KvAppend(qkv_, T, d_slots_, dims, k_cache_[l], v_cache_[l]);
    const PagedKv kv{k_cache_[l], v_cache_[l], opt_.block_size, d_tables_, max_blocks_per_seq_};
    b.PagedAttention(dims, batch, qkv_, kv, att_);
    b.Linear(att_, projw, projb, tmp_, T, d, d);
    b.AddInPlace(x_, tmp_, static_cast<size_t>(T) * d);
    b.LayerNorm(x_, n2w, n2b, ln_, T, d, cfg_.norm_eps);
    b.Linear(ln_, w12w, w12b, h12_, T, d, 2 * F);
    b.SwiGLU(h12_, sw_, T, F);
    b.Linear(sw_, w3w, w3b, tmp_, T, F, d);
    b.AddInPlace(x_, tmp_, static_cast<size_t>(T) * d);
  }
  void *nfw = next(), *nfb = next(), *headw = next(), *headb = next();
  const int R = static_cast<int>(rows.size());
  if (R == 0) return absl::OkStatus();
  // Only the rows that sample need the final norm and the vocabulary projection.
  b.GatherRows(x_, d_rows_, last_, R, d);
  b.LayerNorm(last_, nfw, nfb, ln_, R, d, cfg_.norm_eps);
  b.Linear(ln_, headw, headb, logits_, R, d, cfg_.vocab_size);
  const int V = cfg_.vocab_size;
  if (logits) {
    logits->resize(static_cast<size_t>(R) * V);
    b.DownloadFloats(logits->data(), logits_, logits->size());
  }
  if (!sampled) return absl::OkStatus();
  sampled->resize(R);
  b.Sample(logits_, R, V, params.data(), sampled->data());
  if (logprobs) logprobs->assign(R, TokenLogprobs{});
  // Rows with penalties or logprobs: their logits come to the host, and a
  // penalized row is sampled again there (same rule as every backend's Sample).
  std::vector<float> row;  // sized on first use: most steps have no such row
  for (int r = 0; r < R; ++r) {
    const SamplingExtras* e = extras[r];
    if (!e || (!e->penalties.active() && !e->wants_logprobs())) continue;
    row.resize(V);
    b.DownloadFloats(row.data(), static_cast<const char*>(logits_) + static_cast<size_t>(r) * V * DTypeSize(b.dtype()), V);
    if (e->penalties.active() && e->history) {
      std::vector<float> penalized = row;
      ApplyPenalties(e->penalties, *e->history, penalized.data(), V);
      (*sampled)[r] = cpu::SampleToken(penalized.data(), V, params[r]);
    }
    if (e->wants_logprobs() && logprobs) (*logprobs)[r] = ComputeLogprobs(row.data(), V, (*sampled)[r], e->top_logprobs);
  }
  return absl::OkStatus();
}

}  // namespace tinygpt
