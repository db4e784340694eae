#include "model/checkpoint.h"

#include <cmath>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/params.h"
#include "model/safetensors.h"

namespace tinygpt {

absl::StatusOr<Checkpoint> ParseCheckpoint(std::string_view data, const std::string& name, const LoadOptions& options) {
  auto file = ParseSafetensorsView(data);
  if (!file.ok()) return absl::Status(file.status().code(), absl::StrCat(name, ": ", file.status().message()));
  auto err = [&](auto&&... why) { return absl::InvalidArgumentError(absl::StrCat(name, ": ", why...)); };
  auto meta = file->metadata.find(kConfigMetadataKey);
  if (meta == file->metadata.end()) return err("missing metadata key ", kConfigMetadataKey);
  // The config is range-checked here, so the layout below (a list of at most
  // 12 * kMaxLayers + 6 tensors) is cheap to build, whatever the file says.
  auto config = ConfigFromJson(meta->second);
  if (!config.ok()) return err(config.status().message());
  const ParamLayout layout(*config);
  // Every tensor the config implies must be in the file with its exact shape
  // before the parameter buffer is sized: then that buffer holds exactly the
  // file's elements, and a config with a huge dimension fails here, naming the
  // first tensor that does not match, instead of allocating for it.
  for (const auto& t : layout.tensors()) {
    auto it = file->tensors.find(t.name);
    if (it == file->tensors.end()) return err("missing tensor ", t.name);
    if (it->second.shape != t.shape)
      return err("tensor ", t.name, " has shape [", absl::StrJoin(it->second.shape, ", "), "], config needs [", absl::StrJoin(t.shape, ", "),
                 "]");
  }
  if (file->tensors.size() != layout.tensors().size()) {
    std::unordered_set<std::string> expected;
    for (const auto& t : layout.tensors()) expected.insert(t.name);
    for (const auto& [tensor_name, t] : file->tensors)
      if (!expected.count(tensor_name)) return err("unexpected tensor ", tensor_name.substr(0, 120));
  }
  Checkpoint ck{*config, {}, file->metadata, {}, nullptr};
  if (auto tok = file->metadata.find(kTokenizerMetadataKey); tok != file->metadata.end()) {
    auto t = TokenizerFromMetadata(tok->second);
    if (!t.ok()) return err(t.status().message());
    if ((*t)->vocab_size() > ck.config.vocab_size)
      return err("the tokenizer has ", (*t)->vocab_size(), " tokens, more than the model's vocab_size ", ck.config.vocab_size);
    ck.tokenizer = std::move(*t);
  }
  ck.params.resize(layout.total());
  for (const auto& t : layout.tensors()) {
    float* dst = ck.params.data() + t.offset;
    file->tensors.at(t.name).ToFloat(dst);
    // Non-finite weights, or finite ones too large for any trained model,
    // would load silently and turn every logit into NaN.
    size_t nonfinite = 0, huge = 0, first_nonfinite = 0, first_huge = 0;
    for (size_t i = 0; i < t.numel(); ++i) {
      if (!std::isfinite(dst[i])) {
        if (nonfinite++ == 0) first_nonfinite = i;
      } else if (std::abs(dst[i]) > kMaxWeightMagnitude && huge++ == 0) {
        first_huge = i;
      }
    }
    if (nonfinite == 0 && huge == 0) continue;
    const std::string what =
        nonfinite > 0 ? absl::StrCat("tensor ", t.name, " has ", nonfinite, " non-finite value", nonfinite > 1 ? "s" : "", " (the first, ",
                                     dst[first_nonfinite], ", at element ", first_nonfinite, ")")
                      : absl::StrCat("tensor ", t.name, " has ", huge, " value", huge > 1 ? "s" : "", " of magnitude above ",
                                     kMaxWeightMagnitude, " (the first, ", dst[first_huge], ", at element ", first_huge,
                                     "), more than any trained weight");
    if (!options.allow_bad_weights) return err(what, "; --allow-bad-weights loads it anyway");
    ck.warnings.push_back(absl::StrCat(name, ": ", what));
  }
  return ck;
}

absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& path, const LoadOptions& options) {
  // Mapped rather than read: the file's bytes are in memory once (as page
  // cache), converted straight into the parameter buffer.
  auto mapped = MappedFile::Open(path);
  if (!mapped.ok()) return mapped.status();
  return ParseCheckpoint((*mapped)->data(), path, options);
}

absl::Status SaveCheckpoint(const std::string& path, const ModelConfig& config, const float* params,
                            const Tokenizer* tokenizer, const std::map<std::string, std::string>& extra_metadata,
                            WritePointHook hook) {
  ParamLayout layout(config);
  StFile file;
  file.metadata = extra_metadata;
  file.metadata[kConfigMetadataKey] = ConfigToJson(config);
  if (tokenizer) file.metadata[kTokenizerMetadataKey] = tokenizer->ToMetadata();
  for (const auto& t : layout.tensors()) file.tensors.emplace(t.name, F32Tensor(t.shape, params + t.offset));
  return WriteFileAtomically(path, SerializeSafetensors(file), hook);
}

}  // namespace tinygpt
