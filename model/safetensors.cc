#include "model/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace tinygpt {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // safetensors' own limit

size_t DTypeSize(StDType t) { return t == StDType::kF32 ? 4 : 2; }

const char* DTypeName(StDType t) {
  switch (t) {
    case StDType::kF32: return "F32";
    case StDType::kF16: return "F16";
    case StDType::kBF16: return "BF16";
  }
  return "?";
}

}  // namespace

size_t StTensor::numel() const {
  size_t n = 1;
  for (long d : shape) n *= static_cast<size_t>(d);
  return n;
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ffu, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalize
      exp = 127 - 15 + 1;
      while (!(mant & 0x400u)) { mant <<= 1; --exp; }
      bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float BFloat16ToFloat(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

std::vector<float> StTensor::ToFloat() const {
  const size_t n = numel();
  std::vector<float> out(n);
  if (dtype == StDType::kF32) {
    std::memcpy(out.data(), bytes.data(), n * 4);
  } else {
    for (size_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, bytes.data() + 2 * i, 2);
      out[i] = dtype == StDType::kF16 ? HalfToFloat(h) : BFloat16ToFloat(h);
    }
  }
  return out;
}

StTensor F32Tensor(std::vector<long> shape, const float* data) {
  StTensor t;
  t.shape = std::move(shape);
  t.bytes.resize(t.numel() * 4);
  std::memcpy(t.bytes.data(), data, t.bytes.size());
  return t;
}

absl::StatusOr<StFile> ParseSafetensors(const std::string& data) {
  if (data.size() < 8) return absl::InvalidArgumentError(absl::StrCat("safetensors: file is ", data.size(), " bytes, too short for the 8-byte header length"));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(data[i]);
  if (n > kMaxHeaderBytes || n > data.size() - 8)
    return absl::InvalidArgumentError(absl::StrCat("safetensors: header length ", n, " exceeds the file (", data.size() - 8, " bytes after the length field)"));
  nlohmann::json header = nlohmann::json::parse(data.begin() + 8, data.begin() + 8 + n, nullptr, false);
  if (header.is_discarded() || !header.is_object()) return absl::InvalidArgumentError("safetensors: header is not a valid JSON object");
  const size_t data_begin = 8 + n, data_size = data.size() - data_begin;
  StFile file;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return absl::InvalidArgumentError("safetensors: __metadata__ is not an object");
      for (auto& [k, v] : entry.items()) {
        if (!v.is_string()) return absl::InvalidArgumentError(absl::StrCat("safetensors: metadata value ", k, " is not a string"));
        file.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& why) { return absl::InvalidArgumentError(absl::StrCat("safetensors: tensor ", name, ": ", why)); };
    if (!entry.is_object()) return bad("entry is not an object");
    StTensor t;
    auto dt = entry.find("dtype");
    if (dt == entry.end() || !dt->is_string()) return bad("missing dtype");
    if (*dt == "F32") t.dtype = StDType::kF32;
    else if (*dt == "F16") t.dtype = StDType::kF16;
    else if (*dt == "BF16") t.dtype = StDType::kBF16;
    else return bad(absl::StrCat("unsupported dtype ", dt->get<std::string>(), " (F32, F16, BF16 load)"));
    auto sh = entry.find("shape");
    if (sh == entry.end() || !sh->is_array()) return bad("missing shape");
    for (auto& d : *sh) {
      if (!d.is_number_integer() || d.get<long>() < 0) return bad("shape has a non-integer or negative dimension");
      t.shape.push_back(d.get<long>());
    }
    auto off = entry.find("data_offsets");
    if (off == entry.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned())
      return bad("data_offsets must be two non-negative integers");
    const uint64_t b = (*off)[0].get<uint64_t>(), e = (*off)[1].get<uint64_t>();
    if (b > e || e > data_size) return bad(absl::StrCat("data_offsets [", b, ", ", e, "] lie outside the data section of ", data_size, " bytes"));
    if (e - b != t.numel() * DTypeSize(t.dtype))
      return bad(absl::StrCat("holds ", e - b, " bytes but shape and dtype ", DTypeName(t.dtype), " need ", t.numel() * DTypeSize(t.dtype)));
    t.bytes.assign(data.begin() + data_begin + b, data.begin() + data_begin + e);
    ranges.emplace_back(b, e);
    file.tensors.emplace(name, std::move(t));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second)
      return absl::InvalidArgumentError(absl::StrCat("safetensors: tensor data ranges overlap at byte ", ranges[i].first));
  return file;
}

absl::StatusOr<StFile> ReadSafetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open checkpoint ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  auto f = ParseSafetensors(ss.str());
  if (!f.ok()) return absl::Status(f.status().code(), absl::StrCat(path, ": ", f.status().message()));
  return f;
}

std::string SerializeSafetensors(const StFile& file) {
  nlohmann::json header = nlohmann::json::object();
  if (!file.metadata.empty()) header["__metadata__"] = file.metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : file.tensors) {  // std::map: sorted by name
    header[name] = {{"dtype", DTypeName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string h = header.dump();
  while ((h.size() + 8) % 8) h.push_back(' ');  // align the data section, as the reference writer does
  std::string out(8, '\0');
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out += h;
  out.reserve(out.size() + offset);
  for (const auto& [name, t] : file.tensors) out.append(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
  return out;
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& contents) {
  const std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot create ", tmp, ": ", std::strerror(errno)));
  size_t done = 0;
  while (done < contents.size()) {
    ssize_t w = ::write(fd, contents.data() + done, contents.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return absl::InternalError(absl::StrCat("cannot write ", tmp, ": ", std::strerror(err)));
    }
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot flush ", tmp));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace tinygpt
