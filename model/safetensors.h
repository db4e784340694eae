// Reading and writing the safetensors format
// (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length, a JSON header, then the raw tensor bytes.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tinygpt {

enum class StDType { kF32, kF16, kBF16 };

struct StTensor {
  StDType dtype = StDType::kF32;
  std::vector<long> shape;
  std::vector<uint8_t> bytes;  // raw little-endian data
  size_t numel() const;
  // Converts to fp32 whatever the stored dtype.
  std::vector<float> ToFloat() const;
};

struct StFile {
  std::map<std::string, std::string> metadata;
  std::map<std::string, StTensor> tensors;
};

// Parses and validates: header bounds, JSON, dtypes, offsets inside the data
// section and not overlapping, byte counts matching shapes.
absl::StatusOr<StFile> ParseSafetensors(const std::string& data);
absl::StatusOr<StFile> ReadSafetensors(const std::string& path);

// Serializes tensors (sorted by name, as safetensors does) with metadata.
std::string SerializeSafetensors(const StFile& file);
// Writes to a temporary file in the same folder, fsyncs it and renames it over
// `path`, so a crash never leaves a half-written file under that name.
absl::Status WriteFileAtomically(const std::string& path, const std::string& contents);

StTensor F32Tensor(std::vector<long> shape, const float* data);

float HalfToFloat(uint16_t h);
float BFloat16ToFloat(uint16_t h);

}  // namespace tinygpt
