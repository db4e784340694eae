#include "model/safetensors.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <limits>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <tuple>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tinygpt {
namespace {

// Tensor names come from the file; an absurd one should not flood the error.
std::string ShortName(std::string_view name) {
  constexpr size_t kMax = 120;
  if (name.size() <= kMax) return std::string(name);
  return absl::StrCat(std::string(name.substr(0, kMax)), "...(", name.size(), " bytes)");
}

// Bounds on a header's JSON, enforced while it is parsed: a parsed value costs
// tens of bytes (a node, a container or map entry) for as little as two bytes
// of input, so without them a 4 MB header of '[' or of "0," would take
// hundreds of MB. The largest config accepted (512 layers) needs ~8 values
// for each of its 6150 tensors and 3 levels.
constexpr int kMaxJsonDepth = 8;
constexpr size_t kMaxJsonValues = 1 << 18;

// nlohmann's DOM builder behind a SAX filter that stops the parse at the
// first value past either bound.
class BoundedJsonParser {
 public:
  using json = nlohmann::json;
  explicit BoundedJsonParser(json& root) : dom_(root, /*allow_exceptions=*/false) {}
  bool null() { return Count() && dom_.null(); }
  bool boolean(bool v) { return Count() && dom_.boolean(v); }
  bool number_integer(json::number_integer_t v) { return Count() && dom_.number_integer(v); }
  bool number_unsigned(json::number_unsigned_t v) { return Count() && dom_.number_unsigned(v); }
  bool number_float(json::number_float_t v, const json::string_t& s) { return Count() && dom_.number_float(v, s); }
  bool string(json::string_t& v) { return Count() && dom_.string(v); }
  bool binary(json::binary_t& v) { return Count() && dom_.binary(v); }
  bool key(json::string_t& v) { return Count() && dom_.key(v); }
  bool start_object(std::size_t n) { return Enter() && dom_.start_object(n); }
  bool start_array(std::size_t n) { return Enter() && dom_.start_array(n); }
  bool end_object() { return --depth_, dom_.end_object(); }
  bool end_array() { return --depth_, dom_.end_array(); }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) { return false; }
  // Why the parse stopped early, if a bound stopped it.
  std::string bound_hit() const { return bound_hit_; }

 private:
  bool Count() {
    if (++values_ <= kMaxJsonValues) return true;
    bound_hit_ = absl::StrCat("header has more than ", kMaxJsonValues, " JSON values");
    return false;
  }
  bool Enter() {
    if (++depth_ > kMaxJsonDepth) {
      bound_hit_ = absl::StrCat("header nests JSON deeper than ", kMaxJsonDepth, " levels");
      return false;
    }
    return Count();
  }
  nlohmann::detail::json_sax_dom_parser<json> dom_;
  size_t values_ = 0;
  int depth_ = 0;
  std::string bound_hit_;
};

}  // namespace

size_t StDTypeSize(StDType t) { return t == StDType::kF32 ? 4 : 2; }

const char* StDTypeName(StDType t) {
  switch (t) {
    case StDType::kF32: return "F32";
    case StDType::kF16: return "F16";
    case StDType::kBF16: return "BF16";
  }
  return "?";
}

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

void StTensorView::ToFloat(float* out) const {
  if (dtype == StDType::kF32) {
    std::memcpy(out, bytes.data(), numel * 4);  // memcpy: the data need not be 4-byte aligned
    return;
  }
  for (size_t i = 0; i < numel; ++i) {
    uint16_t h;
    std::memcpy(&h, bytes.data() + 2 * i, 2);
    out[i] = dtype == StDType::kF16 ? HalfToFloat(h) : BFloat16ToFloat(h);
  }
}

absl::StatusOr<StFileView> ParseSafetensorsView(std::string_view data) {
  auto invalid = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat("safetensors: ", parts...)); };
  if (data.size() < 8) return invalid("file is ", data.size(), " bytes, too short for the 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(data[i]);
  if (n > data.size() - 8)
    return invalid("header length ", n, " exceeds the file (", data.size() - 8, " bytes after the length field)");
  if (n > kMaxSafetensorsHeaderBytes) return invalid("header length ", n, " exceeds the limit of ", kMaxSafetensorsHeaderBytes, " bytes");
  const std::string_view text = data.substr(8, n);
  // The format requires the header to start with '{' (it may end in spaces).
  if (text.empty() || text[0] != '{') return invalid("header is not a JSON object (it must start with '{')");
  nlohmann::json header;
  BoundedJsonParser parser(header);
  if (!nlohmann::json::sax_parse(text.begin(), text.end(), &parser) || !header.is_object()) {
    if (!parser.bound_hit().empty()) return invalid(parser.bound_hit());
    return invalid("header is not a valid JSON object");
  }
  const std::string_view body = data.substr(8 + n);
  StFileView file;
  struct Range {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  for (auto& item : header.items()) {
    // Not a structured binding: the lambda below captures the name, which
    // C++17 does not allow for bindings (clang refuses it).
    const std::string& name = item.key();
    auto& entry = item.value();
    if (name == "__metadata__") {
      if (!entry.is_object()) return invalid("__metadata__ is not an object");
      for (auto& [k, v] : entry.items()) {
        if (!v.is_string()) return invalid("metadata value ", ShortName(k), " is not a string");
        file.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    auto bad = [&](auto&&... why) { return invalid("tensor ", ShortName(name), ": ", why...); };
    if (!entry.is_object()) return bad("entry is not an object");
    StTensorView t;
    auto dt = entry.find("dtype");
    if (dt == entry.end() || !dt->is_string()) return bad("missing dtype");
    if (*dt == "F32") t.dtype = StDType::kF32;
    else if (*dt == "F16") t.dtype = StDType::kF16;
    else if (*dt == "BF16") t.dtype = StDType::kBF16;
    else return bad("unsupported dtype ", ShortName(dt->get<std::string>()), " (F32, F16, BF16 load)");
    auto sh = entry.find("shape");
    if (sh == entry.end() || !sh->is_array()) return bad("missing shape");
    // numel and the byte count in 64 bits with overflow checks: a shape such
    // as [2^40, 2^40] must be refused, not wrap around to a small size.
    uint64_t numel = 1;
    bool overflow = false, empty = false;
    for (auto& d : *sh) {
      if (!d.is_number_unsigned()) return bad("shape has a non-integer or negative dimension");
      const uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(std::numeric_limits<long>::max())) return bad("dimension ", dim, " is too large");
      empty |= dim == 0;
      overflow |= __builtin_mul_overflow(numel, dim, &numel);
      t.shape.push_back(static_cast<long>(dim));
    }
    uint64_t nbytes = 0;
    overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(StDTypeSize(t.dtype)), &nbytes);
    // A zero dimension makes the tensor empty whatever the others are.
    if (empty) numel = nbytes = 0;
    else if (overflow) return bad("shape [", absl::StrJoin(t.shape, ", "), "] has more than 2^64 bytes");
    auto off = entry.find("data_offsets");
    if (off == entry.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned())
      return bad("data_offsets must be two non-negative integers");
    const uint64_t b = (*off)[0].get<uint64_t>(), e = (*off)[1].get<uint64_t>();
    if (b > e || e > body.size()) return bad("data_offsets [", b, ", ", e, "] lie outside the data section of ", body.size(), " bytes");
    if (e - b != nbytes)
      return bad("holds ", e - b, " bytes but shape [", absl::StrJoin(t.shape, ", "), "] and dtype ", StDTypeName(t.dtype), " need ", nbytes);
    t.numel = numel;
    t.bytes = body.substr(b, e - b);
    auto [it, inserted] = file.tensors.emplace(name, std::move(t));
    ranges.push_back({b, e, &it->first});
  }
  // Sorted by offset, each range must start where the previous one ended and
  // the last must end at the end of the file: no overlap (two tensors sharing
  // bytes), no gap and no trailing bytes (e.g. a header length one byte short
  // shifts the data by a byte and leaves one over).
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  uint64_t covered = 0;
  for (size_t i = 0; i < ranges.size(); ++i) {
    const Range& r = ranges[i];
    if (r.begin < covered)
      return invalid("tensor ", ShortName(*r.name), "'s data [", r.begin, ", ", r.end, ") overlap tensor ", ShortName(*ranges[i - 1].name),
                     "'s, which ends at byte ", covered);
    if (r.begin > covered) return invalid("bytes [", covered, ", ", r.begin, ") of the data section belong to no tensor");
    covered = r.end;
  }
  if (covered != body.size())
    return invalid("the data section is ", body.size(), " bytes but the tensors cover ", covered, " (", body.size() - covered,
                   " bytes left over)");
  return file;
}

absl::StatusOr<StFile> ParseSafetensors(std::string_view data) {
  auto view = ParseSafetensorsView(data);
  if (!view.ok()) return view.status();
  StFile file;
  file.metadata = std::move(view->metadata);
  for (auto& [name, v] : view->tensors) {
    StTensor t;
    t.dtype = v.dtype;
    t.shape = v.shape;
    t.bytes.assign(v.bytes.begin(), v.bytes.end());
    file.tensors.emplace(name, std::move(t));
  }
  return file;
}

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer; only regular files
  // are read at all (a FIFO, a device such as /dev/zero or a folder is refused).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  void* addr = nullptr;
  if (size > 0) {
    addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (addr == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::InternalError(absl::StrCat("cannot map ", path, ": ", std::strerror(err)));
    }
  }
  ::close(fd);  // the mapping keeps the file open
  return std::unique_ptr<MappedFile>(new MappedFile(addr, size));
}

MappedFile::~MappedFile() {
  if (size_ > 0) ::munmap(addr_, size_);
}

absl::StatusOr<StFile> ReadSafetensors(const std::string& path) {
  auto mapped = MappedFile::Open(path);
  if (!mapped.ok()) return mapped.status();
  auto f = ParseSafetensors((*mapped)->data());
  if (!f.ok()) return absl::Status(f.status().code(), absl::StrCat(path, ": ", f.status().message()));
  return f;
}

std::string SerializeSafetensors(const StFile& file) {
  nlohmann::json header = nlohmann::json::object();
  if (!file.metadata.empty()) header["__metadata__"] = file.metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : file.tensors) {  // std::map: sorted by name
    header[name] = {{"dtype", StDTypeName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
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

int RemoveStaleTempFiles(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const std::string prefix = absl::StrCat(slash == std::string::npos ? path : path.substr(slash + 1), ".tmp.");
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return 0;
  int removed = 0;
  while (const dirent* e = ::readdir(d)) {
    const std::string_view name = e->d_name;
    if (name.size() <= prefix.size() || name.substr(0, prefix.size()) != prefix) continue;
    int pid = 0;
    if (!absl::SimpleAtoi(std::string(name.substr(prefix.size())), &pid) || pid <= 0 || pid == getpid()) continue;
    // A writer that still runs may be about to rename its file: leave it. A
    // PID reused by an unrelated process keeps a stale file until that exits.
    if (!ProcessIsGone(pid)) continue;
    if (::unlink(absl::StrCat(dir, "/", std::string(name)).c_str()) == 0) ++removed;
  }
  ::closedir(d);
  return removed;
}

bool ProcessIsGone(int pid) { return ::kill(pid, 0) != 0 && errno == ESRCH; }

absl::Status SyncParentDir(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot open the folder ", dir, ": ", std::strerror(errno)));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return absl::InternalError(absl::StrCat("cannot fsync the folder ", dir, ": ", std::strerror(err)));
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& contents, WritePointHook hook) {
  const std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot create ", tmp, ": ", std::strerror(errno)));
  size_t done = 0;
  auto write_to = [&](size_t end) {
    while (done < end) {
      ssize_t w = ::write(fd, contents.data() + done, end - done);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) return false;
      done += static_cast<size_t>(w);
    }
    return true;
  };
  // With a hook, the first half goes out alone, so that a test can stop the
  // process with a partial file on disk.
  bool ok = true;
  if (hook) {
    ok = write_to(contents.size() / 2);
    if (ok) hook("written half");
  }
  if (!ok || !write_to(contents.size())) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot write ", tmp, ": ", std::strerror(err)));
  }
  if (hook) hook("written");
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot flush ", tmp));
  }
  if (hook) hook("fsynced");
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path, ": ", std::strerror(err)));
  }
  // The rename itself lasts through a power loss only once the folder is synced.
  if (auto s = SyncParentDir(path); !s.ok()) return s;
  if (hook) hook("renamed");
  RemoveStaleTempFiles(path);
  return absl::OkStatus();
}

}  // namespace tinygpt
