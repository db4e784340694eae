#include "model/checkpoint.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/params.h"
#include "model/safetensors.h"

namespace tinygpt {

absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& path) {
  auto file = ReadSafetensors(path);
  if (!file.ok()) return file.status();
  auto err = [&](const std::string& why) { return absl::InvalidArgumentError(absl::StrCat(path, ": ", why)); };
  auto meta = file->metadata.find(kConfigMetadataKey);
  if (meta == file->metadata.end()) return err(absl::StrCat("missing metadata key ", kConfigMetadataKey));
  auto config = ConfigFromJson(meta->second);
  if (!config.ok()) return err(std::string(config.status().message()));
  Checkpoint ck{*config, {}, nullptr};
  if (auto tok = file->metadata.find(kTokenizerMetadataKey); tok != file->metadata.end()) {
    auto t = TokenizerFromMetadata(tok->second);
    if (!t.ok()) return err(std::string(t.status().message()));
    if ((*t)->vocab_size() > ck.config.vocab_size)
      return err(absl::StrCat("the tokenizer has ", (*t)->vocab_size(), " tokens, more than the model's vocab_size ",
                              ck.config.vocab_size));
    ck.tokenizer = std::move(*t);
  }
  ParamLayout layout(ck.config);
  ck.params.resize(layout.total());
  for (const auto& t : layout.tensors()) {
    auto it = file->tensors.find(t.name);
    if (it == file->tensors.end()) return err(absl::StrCat("missing tensor ", t.name));
    if (it->second.shape != t.shape)
      return err(absl::StrCat("tensor ", t.name, " has shape [", absl::StrJoin(it->second.shape, ", "), "], config needs [",
                              absl::StrJoin(t.shape, ", "), "]"));
    std::vector<float> v = it->second.ToFloat();
    std::memcpy(ck.params.data() + t.offset, v.data(), v.size() * sizeof(float));
  }
  for (const auto& [name, t] : file->tensors)
    if (!layout.find(name)) return err(absl::StrCat("unexpected tensor ", name));
  return ck;
}

absl::Status SaveCheckpoint(const std::string& path, const ModelConfig& config, const float* params,
                            const Tokenizer* tokenizer) {
  ParamLayout layout(config);
  StFile file;
  file.metadata[kConfigMetadataKey] = ConfigToJson(config);
  if (tokenizer) file.metadata[kTokenizerMetadataKey] = tokenizer->ToMetadata();
  for (const auto& t : layout.tensors()) file.tensors.emplace(t.name, F32Tensor(t.shape, params + t.offset));
  return WriteFileAtomically(path, SerializeSafetensors(file));
}

}  // namespace tinygpt
