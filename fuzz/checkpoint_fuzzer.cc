// libFuzzer target: a checkpoint file's bytes through the whole loader
// (safetensors header, config, tensors against the config, non-finite check).
// Besides crashes and sanitizer reports it checks what the loader promises:
// the parameter buffer it allocates holds exactly the file's elements, so no
// input can make it larger than twice the file (F16/BF16 widened to F32).
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "model/checkpoint.h"
#include "model/params.h"
#include "model/safetensors.h"

namespace {

void Require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "checkpoint_fuzzer: broken invariant: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  const std::string_view data(reinterpret_cast<const char*>(bytes), size);
  auto view = tinygpt::ParseSafetensorsView(data);
  auto owned = tinygpt::ParseSafetensors(data);
  Require(view.ok() == owned.ok(), "the view and copying parsers disagree");
  if (view.ok()) {
    size_t total = 0;
    for (const auto& [name, t] : view->tensors) {
      Require(t.bytes.size() == t.numel * tinygpt::StDTypeSize(t.dtype), "a tensor's bytes do not match its shape");
      total += t.bytes.size();
    }
    Require(total <= size, "tensors cover more bytes than the file has");
  }
  for (bool allow : {false, true}) {
    tinygpt::LoadOptions options;
    options.allow_bad_weights = allow;
    auto ck = tinygpt::ParseCheckpoint(data, "fuzz", options);
    if (!ck.ok()) continue;
    Require(view.ok(), "a checkpoint loaded from a file the parser refused");
    Require(ck->params.size() == tinygpt::ParamLayout(ck->config).total(), "params do not match the layout");
    Require(ck->params.size() * sizeof(float) <= 2 * size, "params larger than twice the file");
    Require(allow || ck->warnings.empty(), "warnings without --allow-bad-weights");
  }
  // The config parser on its own, with the input as its JSON text.
  auto config = tinygpt::ConfigFromJson(std::string(data));
  if (config.ok()) Require(tinygpt::ValidateConfig(*config).ok(), "ConfigFromJson returned an invalid config");
  return 0;
}
