#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "cli/commands.h"
#include "cli/common_flags.h"
#include "common/token_ids.h"
#include "model/checkpoint.h"
#include "model/generate.h"
#include "model/tokenizer.h"

ABSL_FLAG(std::string, prompt, "", "prompt text (needs a checkpoint with a tokenizer)");
ABSL_FLAG(std::string, prompt_ids, "", "prompt token ids, comma separated");
ABSL_FLAG(int, max_new_tokens, 16, "tokens to generate");
ABSL_FLAG(float, temperature, 0.f, "0 = greedy");
ABSL_FLAG(int, top_k, 0, "keep the k most likely tokens (0: all)");
ABSL_FLAG(float, top_p, 1.f, "nucleus sampling mass in (0, 1]");
ABSL_FLAG(std::string, stop_ids, "", "token ids that end generation, comma separated");
ABSL_FLAG(bool, json, false, "print one JSON object");
ABSL_FLAG(bool, ignore_eos, false, "keep generating past the tokenizer's end token");

namespace tinygpt {
namespace {

int Fail(const std::string& msg, int code = 1) {
  std::fprintf(stderr, "tinygpt generate: %s\n", msg.c_str());
  return code;
}

}  // namespace

int GenerateCommand() {
  if (absl::GetFlag(FLAGS_prompt_ids).empty() && absl::GetFlag(FLAGS_prompt).empty()) return Fail("give --prompt or --prompt-ids", 2);
  auto ck = LoadCheckpointFromFlags(absl::GetFlag(FLAGS_checkpoint));
  if (!ck.ok()) return Fail(std::string(ck.status().message()));
  const Tokenizer* tok = ck->tokenizer.get();
  std::vector<int32_t> prompt;
  if (!absl::GetFlag(FLAGS_prompt_ids).empty()) {
    if (!ParseTokenIds(absl::GetFlag(FLAGS_prompt_ids), &prompt)) return Fail("--prompt-ids must be comma-separated integers", 2);
  } else {
    if (!tok) return Fail("this checkpoint has no tokenizer, so it takes --prompt-ids only", 2);
    auto ids = tok->Encode(absl::GetFlag(FLAGS_prompt));
    if (!ids.ok()) return Fail(std::string(ids.status().message()), 2);
    prompt = std::move(*ids);
  }
  GenerateOptions o;
  o.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  o.temperature = absl::GetFlag(FLAGS_temperature);
  o.top_k = absl::GetFlag(FLAGS_top_k);
  o.top_p = absl::GetFlag(FLAGS_top_p);
  o.seed = absl::GetFlag(FLAGS_seed);
  if (!ParseTokenIds(absl::GetFlag(FLAGS_stop_ids), &o.stop_ids)) return Fail("--stop-ids must be comma-separated integers", 2);
  if (tok && tok->eos_id() >= 0 && !absl::GetFlag(FLAGS_ignore_eos)) o.stop_ids.push_back(tok->eos_id());
  if (auto s = ValidateGenerateRequest(ck->config, prompt, o); !s.ok()) return Fail(std::string(s.message()), 2);
  auto backend = BackendFromFlags();
  if (!backend.ok()) return Fail(std::string(backend.status().message()));
  RunnerOptions ro;
  ro.block_size = 16;
  // The cache holds this one request, not the whole context: a checkpoint's
  // max_seq_len (up to ConfigLimits::kMaxSeqLen, backed by no tensor under
  // ALiBi) would otherwise size it, whatever the file's size.
  const int needed = static_cast<int>(prompt.size()) + o.max_new_tokens;  // <= max_seq_len, validated above
  ro.num_kv_blocks = (needed + ro.block_size - 1) / ro.block_size;
  ro.max_seqs = 1;
  ro.max_batch_tokens = std::min(ck->config.max_seq_len, 512);
  auto runner = ModelRunner::Create(backend->get(), *ck, ro);
  if (!runner.ok()) return Fail(std::string(runner.status().message()));
  auto r = Generate(**runner, prompt, o);
  if (!r.ok()) return Fail(std::string(r.status().message()));
  const std::string text = tok ? DecodeContinuation(*tok, r->output_ids) : "";
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json j = {{"prompt_ids", prompt}, {"output_ids", r->output_ids}, {"finish_reason", r->finish_reason}};
    if (tok) j["text"] = text;  // valid UTF-8 by construction
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::string ids;
    for (int32_t id : r->output_ids) ids += (ids.empty() ? "" : ",") + std::to_string(id);
    std::printf("output_ids: %s\n", ids.c_str());
    if (tok) std::printf("text: %s\n", text.c_str());
    else std::printf("(token ids only: the checkpoint has no tokenizer)\n");
    std::printf("finish_reason: %s\n", r->finish_reason.c_str());
  }
  return 0;
}

}  // namespace tinygpt
