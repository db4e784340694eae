// Reading and writing the safetensors format
// (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length, a JSON header, then the raw tensor bytes.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace tinygpt {

enum class StDType { kF32, kF16, kBF16 };

size_t StDTypeSize(StDType t);
const char* StDTypeName(StDType t);

// A tensor to write (or a parsed tensor copied out of its file).
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

// A parsed tensor that points into the file's bytes rather than copying them,
// so a checkpoint is held in memory once (mapped) while it is converted.
struct StTensorView {
  StDType dtype = StDType::kF32;
  std::vector<long> shape;
  size_t numel = 0;  // product of shape, checked for overflow while parsing
  std::string_view bytes;  // numel * StDTypeSize(dtype) bytes inside the file
  // Writes numel fp32 values to `out`.
  void ToFloat(float* out) const;
};

// The header of a parsed file; tensors view the bytes passed to the parser,
// which must outlive it.
struct StFileView {
  std::map<std::string, std::string> metadata;
  std::map<std::string, StTensorView> tensors;
};

// Largest header accepted. safetensors itself allows 100 MB, but a parsed
// JSON header costs up to ~16 times its size (a node per number of a long
// array; the value count is capped separately, see kMaxJsonValues), and the
// largest config tinygpt accepts (512 layers, 6150 tensors) needs well under
// 1 MB. The rest is room for the tokenizer, one JSON string: a SentencePiece
// model of 256k pieces (4 MB) is 5.5 MB in base64.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 16u << 20;

// Parses and validates everything the format requires before anything is
// sized from it: the header length within the file and under
// kMaxSafetensorsHeaderBytes, a JSON object starting with '{' (nested at most
// 8 deep, at most 2^18 values, so parsing it stays cheap), string-valued
// metadata, known dtypes, non-negative dimensions whose products (and byte
// counts) do not overflow, data_offsets matching the byte counts, and ranges
// that do not overlap and cover the data section exactly (no byte left over or
// missing).
absl::StatusOr<StFileView> ParseSafetensorsView(std::string_view data);
// The same, copying each tensor's bytes out of `data`.
absl::StatusOr<StFile> ParseSafetensors(std::string_view data);

// A file mapped read-only into memory (empty files map to an empty view).
class MappedFile {
 public:
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  std::string_view data() const { return {static_cast<const char*>(addr_), size_}; }

 private:
  MappedFile(void* addr, size_t size) : addr_(addr), size_(size) {}
  void* addr_;
  size_t size_;
};

absl::StatusOr<StFile> ReadSafetensors(const std::string& path);

// Serializes tensors (sorted by name, as safetensors does) with metadata.
std::string SerializeSafetensors(const StFile& file);
// Called at each point of a write where a crash leaves a different state on
// disk (crash-consistency tests kill the process there): "written half",
// "written", "fsynced", "renamed" (the rename made durable by an fsync of the
// folder). Null: no hook.
using WritePointHook = void (*)(const char* point);
// Writes to a temporary file `path.tmp.PID` in the same folder, fsyncs it,
// renames it over `path` and fsyncs the folder, so a crash (or power loss)
// never leaves a half-written file under that name. After a successful write,
// temporary files of `path` left by earlier writers that were killed (their
// PID no longer runs) are removed.
absl::Status WriteFileAtomically(const std::string& path, const std::string& contents, WritePointHook hook = nullptr);
// fsyncs the folder holding `path`, so that a rename or unlink in it lasts.
absl::Status SyncParentDir(const std::string& path);
// Whether the process `pid` is gone (so a temporary file it left is stale).
bool ProcessIsGone(int pid);
// Removes `path.tmp.PID` files whose PID no longer runs; returns how many.
int RemoveStaleTempFiles(const std::string& path);

StTensor F32Tensor(std::vector<long> shape, const float* data);

float HalfToFloat(uint16_t h);
float BFloat16ToFloat(uint16_t h);

}  // namespace tinygpt
