// libFuzzer target: the bytes of a tinygpt.v1.GenerateRequest through what the
// server does with one before scheduling it (ToSequenceRequest, then the
// engine's ValidateGenerateRequest), and, when it is valid, through Generate
// on a tiny random model (sampling with the request's temperature, top_k,
// top_p, seed and stop ids). Checks that a valid request always generates,
// within max_new_tokens, tokens inside the vocabulary.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>

#include "kernels/cpu/cpu_backend.h"
#include "model/checkpoint.h"
#include "model/generate.h"
#include "model/params.h"
#include "model/runner.h"
#include "server/service.h"

namespace {

void Require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "request_fuzzer: broken invariant: %s\n", what);
    std::abort();
  }
}

struct TinyModel {
  std::unique_ptr<tinygpt::Backend> backend;
  std::unique_ptr<tinygpt::ModelRunner> runner;
};

// Byte vocabulary (text prompts encode to bytes), a 32-token context: small
// enough that a whole generation costs well under a millisecond.
TinyModel* MakeModel() {
  tinygpt::SetCpuThreads(1);
  tinygpt::Checkpoint ck;
  ck.config.vocab_size = 256;
  ck.config.d_model = 16;
  ck.config.n_layers = 1;
  ck.config.n_heads = 2;
  ck.config.n_kv_heads = 1;
  ck.config.ffn_hidden = 16;
  ck.config.max_seq_len = 32;
  ck.params.resize(tinygpt::ParamLayout(ck.config).total());
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.f, 0.5f);
  for (float& p : ck.params) p = normal(rng);
  auto* m = new TinyModel;
  m->backend = tinygpt::CreateCpuBackend();
  tinygpt::RunnerOptions ro;
  ro.block_size = 16;
  ro.num_kv_blocks = 2;
  ro.max_seqs = 1;
  ro.max_batch_tokens = 32;
  auto runner = tinygpt::ModelRunner::Create(m->backend.get(), ck, ro);
  Require(runner.ok(), "the tiny model does not load");
  m->runner = std::move(*runner);
  return m;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static TinyModel* model = MakeModel();
  tinygpt::v1::GenerateRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return 0;
  auto sr = tinygpt::ToSequenceRequest(req, 64 * 1024, /*stream=*/false);
  if (!sr.ok()) return 0;
  const tinygpt::ModelConfig& cfg = model->runner->config();
  if (!tinygpt::ValidateGenerateRequest(cfg, sr->prompt, sr->options).ok()) return 0;
  auto out = tinygpt::Generate(*model->runner, sr->prompt, sr->options);
  Require(out.ok(), "a validated request failed to generate");
  Require(!out->output_ids.empty() && static_cast<int>(out->output_ids.size()) <= sr->options.max_new_tokens,
          "output length outside [1, max_new_tokens]");
  for (int32_t id : out->output_ids) Require(id >= 0 && id < cfg.vocab_size, "a generated token outside the vocabulary");
  return 0;
}
