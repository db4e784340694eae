#include "model/generate.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "model/kv_cache.h"

namespace tinygpt {

absl::Status ValidateGenerateRequest(const ModelConfig& cfg, const std::vector<int32_t>& prompt, const GenerateOptions& o) {
  if (prompt.empty()) return absl::InvalidArgumentError("prompt: must not be empty");
  for (size_t i = 0; i < prompt.size(); ++i)
    if (prompt[i] < 0 || prompt[i] >= cfg.vocab_size)
      return absl::InvalidArgumentError(absl::StrCat("prompt: token id ", prompt[i], " at index ", i, " is outside the vocabulary [0, ", cfg.vocab_size, ")"));
  if (static_cast<int>(prompt.size()) >= cfg.max_seq_len)
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", prompt.size(), " tokens leave no room in the context of ", cfg.max_seq_len));
  if (o.max_new_tokens <= 0) return absl::InvalidArgumentError("max_new_tokens: must be > 0");
  if (static_cast<long>(prompt.size()) + o.max_new_tokens > cfg.max_seq_len)
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens: prompt (", prompt.size(), ") + max_new_tokens (", o.max_new_tokens,
                                                   ") exceeds the model context of ", cfg.max_seq_len));
  if (!(o.temperature >= 0.f)) return absl::InvalidArgumentError("temperature: must be >= 0");
  if (o.top_k < 0) return absl::InvalidArgumentError("top_k: must be >= 0");
  if (!(o.top_p > 0.f && o.top_p <= 1.f)) return absl::InvalidArgumentError("top_p: must be in (0, 1]");
  for (int32_t id : o.stop_ids)
    if (id < 0 || id >= cfg.vocab_size) return absl::InvalidArgumentError(absl::StrCat("stop: token id ", id, " is outside the vocabulary"));
  return absl::OkStatus();
}

absl::Status NonFiniteLogitsError(int position) {
  return absl::InternalError(absl::StrCat("the model produced non-finite logits at position ", position));
}

absl::StatusOr<GenerateResult> Generate(ModelRunner& runner, const std::vector<int32_t>& prompt, const GenerateOptions& o) {
  if (auto s = ValidateGenerateRequest(runner.config(), prompt, o); !s.ok()) return s;
  const int bs = runner.options().block_size;
  const int total = static_cast<int>(prompt.size()) + o.max_new_tokens;
  if (BlocksFor(total, bs) > runner.options().num_kv_blocks)
    return absl::ResourceExhaustedError("the KV cache is too small for this request");
  std::vector<int32_t> table(BlocksFor(total, bs));  // the whole cache is this request's
  std::iota(table.begin(), table.end(), 0);
  SequenceRng rng(o.seed);
  GenerateResult result{{}, "length"};
  std::vector<int32_t> sampled;
  int pos = 0;
  std::vector<int32_t> pending = prompt;
  while (static_cast<int>(result.output_ids.size()) < o.max_new_tokens) {
    // Prefill in chunks no larger than one step's token budget.
    const int chunk = std::min<int>(static_cast<int>(pending.size()), runner.options().max_batch_tokens);
    SeqStep step{pending.data(), chunk, pos, &table, chunk == static_cast<int>(pending.size()),
                 {o.temperature, o.top_k, o.top_p, 0.f}};
    if (step.sample) step.sampling.uniform = rng.NextUniform();
    if (auto s = runner.Step({step}, &sampled); !s.ok()) return s;
    pos += chunk;
    pending.erase(pending.begin(), pending.begin() + chunk);
    if (!step.sample) continue;
    const int32_t tok = sampled[0];
    if (tok == kNonFiniteLogits) return NonFiniteLogitsError(static_cast<int>(prompt.size() + result.output_ids.size()));
    result.output_ids.push_back(tok);
    if (std::find(o.stop_ids.begin(), o.stop_ids.end(), tok) != o.stop_ids.end()) {
      result.finish_reason = "stop";
      break;
    }
    pending = {tok};
  }
  return result;
}

}  // namespace tinygpt
