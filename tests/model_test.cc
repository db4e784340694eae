// The whole model: gradients against finite differences, KV-cache inference
// against the full forward, checkpoints (round trip and every corrupt case),
// and learning the seed counting task.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/checkpoint.h"
#include "model/generate.h"
#include "model/runner.h"
#include "model/params.h"
#include "model/safetensors.h"
#include "model/transformer.h"
#include "tests/support/reference.h"
#include "train/data.h"
#include "train/trainer.h"

namespace tinygpt {
namespace {

ModelConfig SmallConfig(bool alibi, int n_kv_heads) {
  ModelConfig c;
  c.vocab_size = 17; c.d_model = 16; c.n_layers = 2; c.n_heads = 4; c.n_kv_heads = n_kv_heads;
  c.ffn_hidden = 24; c.max_seq_len = 40;
  c.pos_encoding = alibi ? PosEncoding::kAlibi : PosEncoding::kLearned;
  return c;
}

PackedBatch RandomBatch(const ModelConfig& c, const std::vector<int>& lens, uint64_t seed) {
  std::mt19937 rng(seed);
  PackedBatch b;
  b.cu_seqlens = testing::CuSeqlens(lens);
  for (int l : lens)
    for (int i = 0; i < l; ++i) {
      b.tokens.push_back(rng() % c.vocab_size);
      b.targets.push_back(rng() % c.vocab_size);
    }
  return b;
}

std::string TempPath(const std::string& name) { return "/tmp/tinygpt-test-" + std::to_string(getpid()) + "-" + name; }

class ModelVariants : public ::testing::TestWithParam<std::tuple<bool, int>> {};

TEST_P(ModelVariants, GradientsMatchFiniteDifferences) {
  const ModelConfig c = SmallConfig(std::get<0>(GetParam()), std::get<1>(GetParam()));
  Transformer m(c);
  m.InitParams(1);
  const PackedBatch b = RandomBatch(c, {5, 1, 9}, 2);
  m.ZeroGrad();
  m.Forward(b);
  m.Backward(b);
  const std::vector<float> grads = m.grads();
  std::mt19937 rng(3);
  for (const auto& t : m.layout().tensors()) {  // a few coordinates of every tensor
    for (int trial = 0; trial < 3; ++trial) {
      const size_t i = t.offset + rng() % t.numel();
      const float h = 1e-2f, orig = m.params()[i];
      m.params()[i] = orig + h;
      const double up = m.Forward(b);
      m.params()[i] = orig - h;
      const double down = m.Forward(b);
      m.params()[i] = orig;
      const double fd = (up - down) / (2 * h);
      EXPECT_NEAR(grads[i], fd, 3e-2 * std::abs(fd) + 2e-4) << t.name << "[" << i - t.offset << "]";
    }
  }
}

// Backward's grads_ready (data-parallel training sums each range there,
// while the rest of the backward runs): the ranges cover every gradient
// once, from the head down to the embeddings, and each is final when it is
// announced (on the CPU the ops have run by then, so a range written again
// later would differ from its snapshot).
TEST_P(ModelVariants, BackwardAnnouncesEachGradientRangeOnceWhenItIsFinal) {
  const ModelConfig c = SmallConfig(std::get<0>(GetParam()), std::get<1>(GetParam()));
  Transformer m(c);
  m.InitParams(1);
  const PackedBatch b = RandomBatch(c, {5, 1, 9}, 2);
  m.ZeroGrad();
  m.Forward(b);
  std::vector<std::pair<size_t, size_t>> ranges;
  std::vector<std::vector<float>> snapshots;
  m.Backward(b, [&](size_t offset, size_t count) {
    ranges.emplace_back(offset, count);
    snapshots.emplace_back(m.grads().begin() + offset, m.grads().begin() + offset + count);
  });
  ASSERT_EQ(ranges.size(), static_cast<size_t>(c.n_layers + 2));  // head and final norm, each block, the embeddings
  EXPECT_EQ(ranges.front().first + ranges.front().second, m.layout().total());
  EXPECT_EQ(ranges.back().first, 0u);
  for (size_t i = 1; i < ranges.size(); ++i) EXPECT_EQ(ranges[i].first + ranges[i].second, ranges[i - 1].first) << "range " << i;
  EXPECT_EQ(ranges[1].first, m.layout().find("blocks." + std::to_string(c.n_layers - 1) + ".n1.weight")->offset);
  const std::vector<float> grads = m.grads();
  for (size_t i = 0; i < ranges.size(); ++i)
    EXPECT_TRUE(std::equal(snapshots[i].begin(), snapshots[i].end(), grads.begin() + ranges[i].first)) << "range " << i << " changed";
  // The same gradients as a backward that announces nothing.
  m.ZeroGrad();
  m.Forward(b);
  m.Backward(b);
  EXPECT_EQ(m.grads(), grads);
}

// Prefill then token-by-token decoding through the paged cache gives the
// logits of the full forward at every position.
TEST_P(ModelVariants, KvCacheInferenceEqualsFullForward) {
  const ModelConfig c = SmallConfig(std::get<0>(GetParam()), std::get<1>(GetParam()));
  Transformer m(c);
  m.InitParams(4);
  const PackedBatch b = RandomBatch(c, {33}, 5);
  m.Forward(b);
  const std::vector<float> full = m.logits();
  auto backend = CreateCpuBackend();
  Checkpoint ck{c, m.params()};
  RunnerOptions o;
  o.block_size = 6; o.num_kv_blocks = 16; o.max_batch_tokens = 64; o.max_seqs = 4;
  const auto odd = ModelRunner::Create(backend.get(), ck, o);  // block sizes are powers of two
  ASSERT_FALSE(odd.ok());
  EXPECT_NE(odd.status().message().find("power of two"), std::string::npos) << odd.status();
  o.block_size = 4;
  auto runner = ModelRunner::Create(backend.get(), ck, o);
  ASSERT_TRUE(runner.ok()) << runner.status();
  std::vector<int32_t> table{9, 2, 14, 0, 7, 3, 11, 5, 1};  // any blocks, any order
  const int prefill = 12;
  std::vector<float> logits;
  ASSERT_TRUE((*runner)->Step({SeqStep{b.tokens.data(), prefill, 0, &table, true}}, nullptr, &logits).ok());
  EXPECT_LT(testing::RelError(logits, std::vector<float>(full.begin() + (prefill - 1) * c.vocab_size, full.begin() + prefill * c.vocab_size)), 1e-5);
  for (int pos = prefill; pos < 33; ++pos) {
    ASSERT_TRUE((*runner)->Step({SeqStep{b.tokens.data() + pos, 1, pos, &table, true}}, nullptr, &logits).ok());
    EXPECT_LT(testing::RelError(logits, std::vector<float>(full.begin() + pos * c.vocab_size, full.begin() + (pos + 1) * c.vocab_size)), 1e-5)
        << "position " << pos;
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, ModelVariants,
                         ::testing::Values(std::tuple{false, 4}, std::tuple{true, 4}, std::tuple{false, 2}, std::tuple{true, 1}),
                         [](const ::testing::TestParamInfo<std::tuple<bool, int>>& info) {  // e.g. alibi_kv1
                           return std::string(std::get<0>(info.param) ? "alibi" : "learned_pos") + "_kv" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST(Checkpoint, RoundTrip) {
  const ModelConfig c = SmallConfig(false, 2);
  Transformer m(c);
  m.InitParams(6);
  const std::string path = TempPath("rt.safetensors");
  ASSERT_TRUE(SaveCheckpoint(path, c, m.params().data()).ok());
  auto ck = LoadCheckpoint(path);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ(ck->params, m.params());
  EXPECT_EQ(ConfigToJson(ck->config), ConfigToJson(c));
  std::remove(path.c_str());
}

TEST(Checkpoint, LoadsF16AndBF16) {
  StFile f;
  const ModelConfig c = SmallConfig(true, 4);
  f.metadata[kConfigMetadataKey] = ConfigToJson(c);
  ParamLayout layout(c);
  for (const auto& t : layout.tensors()) {
    StTensor st;
    st.dtype = t.name == "tok.weight" ? StDType::kF16 : StDType::kBF16;
    st.shape = t.shape;
    // 1.5 is 0x3e00 in f16 and 0x3fc0 in bf16.
    const uint16_t bits = st.dtype == StDType::kF16 ? 0x3e00 : 0x3fc0;
    st.bytes.resize(t.numel() * 2);
    for (size_t i = 0; i < t.numel(); ++i) std::memcpy(st.bytes.data() + 2 * i, &bits, 2);
    f.tensors.emplace(t.name, st);
  }
  const std::string path = TempPath("half.safetensors");
  ASSERT_TRUE(WriteFileAtomically(path, SerializeSafetensors(f)).ok());
  auto ck = LoadCheckpoint(path);
  ASSERT_TRUE(ck.ok()) << ck.status();
  for (float v : ck->params) ASSERT_EQ(v, 1.5f);
  std::remove(path.c_str());
}

// Each corrupt checkpoint gives an error that names what is wrong.
TEST(Checkpoint, CorruptFilesGiveClearErrors) {
  const ModelConfig c = SmallConfig(false, 2);
  Transformer m(c);
  m.InitParams(7);
  StFile good;
  good.metadata[kConfigMetadataKey] = ConfigToJson(c);
  for (const auto& t : m.layout().tensors()) good.tensors.emplace(t.name, F32Tensor(t.shape, m.params().data() + t.offset));
  const std::string bytes = SerializeSafetensors(good);
  auto expect_error = [&](const std::string& data, const std::string& needle) {
    const std::string path = TempPath("bad.safetensors");
    std::ofstream(path, std::ios::binary) << data;
    auto ck = LoadCheckpoint(path);
    std::remove(path.c_str());
    ASSERT_FALSE(ck.ok()) << "expected an error mentioning " << needle;
    EXPECT_NE(ck.status().message().find(needle), std::string::npos) << ck.status().message();
  };
  expect_error(bytes.substr(0, 5), "too short");
  std::string huge = bytes;
  huge[6] = 0x7f;  // header length far past the file
  expect_error(huge, "header length");
  std::string bad_json = bytes;
  bad_json[8] = '[';
  expect_error(bad_json, "JSON");
  expect_error(bytes.substr(0, bytes.size() - 8), "outside the data section");
  auto with = [&](const std::function<void(StFile&)>& edit) {
    StFile f = good;
    edit(f);
    return SerializeSafetensors(f);
  };
  expect_error(with([](StFile& f) { f.tensors.erase("blocks.1.ff.w3.bias"); }), "missing tensor blocks.1.ff.w3.bias");
  expect_error(with([](StFile& f) { f.tensors.emplace("extra.weight", F32Tensor({1}, std::vector<float>{1}.data())); }),
               "unexpected tensor extra.weight");
  expect_error(with([](StFile& f) { f.tensors["head.bias"].shape = {1, 17}; }), "tensor head.bias has shape [1, 17]");
  expect_error(with([](StFile& f) { f.metadata.clear(); }), "missing metadata key tinygpt.config");
  expect_error(with([](StFile& f) { f.metadata[kConfigMetadataKey] = "{\"vocab_size\": 3"; }), "not a JSON object");
  expect_error(with([](StFile& f) { f.metadata[kConfigMetadataKey] = R"({"vocab_size": 17})"; }), "missing field d_model");
  // A hand-edited header: unknown dtype (overlaps have their own test).
  auto edit_header = [&](const std::string& from, const std::string& to) {
    std::string d = bytes;
    const size_t at = d.find(from);
    EXPECT_NE(at, std::string::npos);
    d.replace(at, from.size(), to);
    return d;
  };
  expect_error(edit_header("\"F32\"", "\"I64\""), "unsupported dtype I64");
}

// A seed-like checkpoint whose header can be edited as JSON before it is
// serialized again, for the hostile-file cases below.
class HostileCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    const ModelConfig c = SmallConfig(false, 2);
    Transformer m(c);
    m.InitParams(8);
    good_.metadata[kConfigMetadataKey] = ConfigToJson(c);
    for (const auto& t : m.layout().tensors()) good_.tensors.emplace(t.name, F32Tensor(t.shape, m.params().data() + t.offset));
    bytes_ = SerializeSafetensors(good_);
  }
  // The config with one field replaced by `value` (JSON text).
  std::string WithConfigField(const std::string& field, const std::string& value) {
    StFile f = good_;
    nlohmann::json j = nlohmann::json::parse(f.metadata[kConfigMetadataKey]);
    j[field] = nlohmann::json::parse(value);
    f.metadata[kConfigMetadataKey] = j.dump();
    return SerializeSafetensors(f);
  }
  // Each must be refused quickly with a message containing `needle`. The
  // bound is loose for sanitizer builds on a busy machine; before the fix
  // these took up to 23 s or aborted.
  void ExpectRefused(const std::string& data, const std::string& needle) {
    const auto start = std::chrono::steady_clock::now();
    auto ck = ParseCheckpoint(data, "ck");
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ASSERT_FALSE(ck.ok()) << "expected an error mentioning " << needle;
    EXPECT_NE(ck.status().message().find(needle), std::string::npos) << "expected " << needle << ", got " << ck.status().message();
    EXPECT_LT(secs, 5.0) << "refusing took " << secs << " s: " << ck.status().message();
  }
  static void SetHeaderLength(std::string& d, uint64_t n) {
    for (int i = 0; i < 8; ++i) d[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  }
  static uint64_t HeaderLength(const std::string& d) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(d[i]);
    return n;
  }
  StFile good_;
  std::string bytes_;
};

// The issue's corrupted configs: each used to allocate (bad_alloc) or
// zero-fill gigabytes before any shape was compared.
TEST_F(HostileCheckpoint, HugeConfigDimensionsAreRefusedBeforeAllocating) {
  ExpectRefused(WithConfigField("max_seq_len", "1073741824"), "config field max_seq_len is 1073741824, above the limit");
  ExpectRefused(WithConfigField("d_model", "100000"), "config field d_model is 100000, above the limit");
  ExpectRefused(WithConfigField("vocab_size", "2147483647"), "config field vocab_size is 2147483647, above the limit");
  ExpectRefused(WithConfigField("n_layers", "4096"), "config field n_layers is 4096, above the limit");
  ExpectRefused(WithConfigField("n_layers", "2147483647"), "config field n_layers");
  ExpectRefused(WithConfigField("ffn_hidden", "1048576"), "config field ffn_hidden is 1048576, above the limit");
  // Values that do not fit an int are refused, not wrapped (2^32 + 17 -> 17).
  ExpectRefused(WithConfigField("vocab_size", "4294967313"), "config field vocab_size is 4294967313");
  ExpectRefused(WithConfigField("n_heads", "-4"), "config field n_heads is -4");
  ExpectRefused(WithConfigField("norm_eps", "1e300"), "norm_eps must be in (0, 1)");
  // Within the limits but larger than the tensors present: the first tensor
  // that disagrees is named, and nothing of the config's size is allocated.
  ExpectRefused(WithConfigField("max_seq_len", "100000"), "tensor pos.weight has shape [40, 16], config needs [100000, 16]");
  ExpectRefused(WithConfigField("vocab_size", "2000000"), "tensor tok.weight has shape [17, 16], config needs [2000000, 16]");
  ExpectRefused(WithConfigField("n_layers", "500"), "missing tensor blocks.2.n1.weight");
  ExpectRefused(WithConfigField("ffn_hidden", "100000"), "tensor blocks.0.ff.w12.weight has shape [48, 16], config needs [200000, 16]");
}

TEST_F(HostileCheckpoint, DataSectionMustBeCoveredExactly) {
  // A header length one byte short: the header's last byte (a padding
  // space) is read as data, which shifts every tensor by a byte.
  const size_t n = HeaderLength(bytes_);
  ASSERT_EQ(bytes_[8 + n - 1], ' ');
  std::string short_header = bytes_;
  SetHeaderLength(short_header, n - 1);
  ExpectRefused(short_header, "1 bytes left over");
  ExpectRefused(bytes_ + std::string(4, '\0'), "4 bytes left over");
  ExpectRefused(bytes_.substr(0, bytes_.size() - 1), "outside the data section");
  // A gap: a tensor moved 4 bytes later, so bytes between belong to no tensor
  // (the file is one float longer so the move stays inside it).
  StFile f;
  f.tensors.emplace("a", F32Tensor({2}, std::vector<float>{1, 2}.data()));
  f.tensors.emplace("b", F32Tensor({2}, std::vector<float>{3, 4}.data()));
  std::string d = SerializeSafetensors(f) + std::string(4, '\0');
  const size_t at = d.find("[8,16]");
  ASSERT_NE(at, std::string::npos);
  d.replace(at, 6, "[12,20]");
  auto r = ParseSafetensorsView(d);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("bytes [8, 12) of the data section belong to no tensor"), std::string::npos) << r.status();
}

TEST_F(HostileCheckpoint, HeaderLengthAndShapeArithmeticAreChecked) {
  std::string huge = bytes_;
  SetHeaderLength(huge, ~0ull);  // 2^64 - 1: 8 + n would wrap around
  ExpectRefused(huge, "exceeds the file");
  // A header over the cap is refused before it is parsed, even inside the file.
  std::string big(8 + kMaxSafetensorsHeaderBytes + 1, ' ');
  SetHeaderLength(big, kMaxSafetensorsHeaderBytes + 1);
  big[8] = '{';
  ExpectRefused(big, "exceeds the limit of");
  auto header_only = [](const std::string& json) {
    std::string d(8, '\0');
    SetHeaderLength(d, json.size());
    return d + json;
  };
  // 2^62 * 2^62 elements wraps to 0 in 64 bits; 2^62 F32 elements is 2^64 bytes.
  ExpectRefused(header_only(R"({"t":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904],"data_offsets":[0,0]}})"),
                "more than 2^64 bytes");
  ExpectRefused(header_only(R"({"t":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})"),
                "more than 2^64 bytes");
  ExpectRefused(header_only(R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})"), "negative dimension");
  ExpectRefused(header_only(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[18446744073709551615,3]}})"), "outside the data section");
  // Deep nesting is refused before the JSON parser builds a node per level.
  ExpectRefused(header_only("{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}"), "nests JSON deeper than 8");
  // So is a long flat array (a node per two bytes of input).
  std::string zeros;
  for (int i = 0; i < 300000; ++i) zeros += "0,";
  zeros.pop_back();
  ExpectRefused(header_only(R"({"t":{"dtype":"F32","data_offsets":[0,0],"shape":[)" + zeros + "]}}"), "more than 262144 JSON values");
  // Brackets inside strings do not count.
  auto quoted = ParseSafetensorsView(header_only(R"({"__metadata__":{"k":"[[[[[[[[[[{{{{{{{{{{\"["}})"));
  ASSERT_TRUE(quoted.ok()) << quoted.status();
  EXPECT_EQ(quoted->metadata.at("k"), "[[[[[[[[[[{{{{{{{{{{\"[");
  // The largest config accepted still has a header well under the cap.
  ModelConfig largest = SmallConfig(false, 2);
  largest.n_layers = ConfigLimits::kMaxLayers;
  StFile names_only;
  names_only.metadata[kConfigMetadataKey] = ConfigToJson(largest);
  const ParamLayout largest_layout(largest);
  for (const auto& t : largest_layout.tensors()) {
    StTensor st;
    st.shape = t.shape;
    st.shape[0] = 0;  // no data: only the header's size matters here
    names_only.tensors.emplace(t.name, st);
  }
  EXPECT_LT(HeaderLength(SerializeSafetensors(names_only)), kMaxSafetensorsHeaderBytes / 4);
  // A zero dimension makes a tensor empty whatever the others are.
  auto empty = ParseSafetensorsView(header_only(R"({"t":{"dtype":"F32","shape":[0,4611686018427387904],"data_offsets":[0,0]}})"));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->tensors.at("t").numel, 0u);
}

TEST_F(HostileCheckpoint, NonFiniteWeightsAreRefusedUnlessAllowed) {
  for (float bad : {std::nanf(""), std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()}) {
    StFile f = good_;
    std::memcpy(f.tensors["blocks.1.proj.weight"].bytes.data() + 4 * 5, &bad, 4);
    const std::string d = SerializeSafetensors(f);
    ExpectRefused(d, "tensor blocks.1.proj.weight has 1 non-finite value");
    LoadOptions allow;
    allow.allow_bad_weights = true;
    auto ck = ParseCheckpoint(d, "ck", allow);
    ASSERT_TRUE(ck.ok()) << ck.status();
    ASSERT_EQ(ck->warnings.size(), 1u);
    EXPECT_NE(ck->warnings[0].find("blocks.1.proj.weight"), std::string::npos) << ck->warnings[0];
    EXPECT_NE(ck->warnings[0].find("at element 5"), std::string::npos) << ck->warnings[0];
  }
}

// The issue's corrupted checkpoint: one weight of blocks.1.n1.weight set to
// 3.4e38, a valid float that passes a NaN check. Refused with the tensor's
// name unless allowed (old flag name included, via LoadOptions).
TEST_F(HostileCheckpoint, ImplausiblyLargeWeightsAreRefusedUnlessAllowed) {
  for (float bad : {3.4e38f, -2e4f}) {
    StFile f = good_;
    std::memcpy(f.tensors["blocks.1.n1.weight"].bytes.data() + 4 * 3, &bad, 4);
    const std::string d = SerializeSafetensors(f);
    ExpectRefused(d, "tensor blocks.1.n1.weight has 1 value of magnitude above 10000");
    ExpectRefused(d, "at element 3");
    ExpectRefused(d, "--allow-bad-weights");
    LoadOptions allow;
    allow.allow_bad_weights = true;
    auto ck = ParseCheckpoint(d, "ck", allow);
    ASSERT_TRUE(ck.ok()) << ck.status();
    ASSERT_EQ(ck->warnings.size(), 1u);
    EXPECT_NE(ck->warnings[0].find("blocks.1.n1.weight"), std::string::npos) << ck->warnings[0];
  }
  // The limit itself loads: only larger magnitudes are refused.
  StFile f = good_;
  const float edge = kMaxWeightMagnitude;
  std::memcpy(f.tensors["blocks.1.n1.weight"].bytes.data(), &edge, 4);
  EXPECT_TRUE(ParseCheckpoint(SerializeSafetensors(f), "ck").ok());
}

// Non-finite logits end the sample with INTERNAL (generate) or flag the row
// (the runner's sampled id), never a token: the issue's checkpoint gave
// 0,0,0,... with status OK. Greedy and sampled rows alike.
TEST(NonFiniteLogits, RunnerFlagsTheRowAndGenerateFails) {
  const ModelConfig c = SmallConfig(false, 2);
  Transformer m(c);
  m.InitParams(8);
  Checkpoint ck{c, m.params()};
  const ParamLayout layout(c);
  for (const auto& t : layout.tensors())
    if (t.name == "blocks.1.n1.weight") ck.params[t.offset + 3] = 3.4e38f;
  auto backend = CreateCpuBackend();
  RunnerOptions o;
  o.block_size = 4; o.num_kv_blocks = 16; o.max_batch_tokens = 64; o.max_seqs = 4;
  auto runner = ModelRunner::Create(backend.get(), ck, o);
  ASSERT_TRUE(runner.ok()) << runner.status();
  for (float temperature : {0.f, 0.8f}) {
    GenerateOptions g;
    g.max_new_tokens = 4;
    g.temperature = temperature;
    auto r = Generate(**runner, {1, 2, 3}, g);
    ASSERT_FALSE(r.ok()) << "generated " << r->output_ids.size() << " tokens with status OK";
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInternal);
    EXPECT_EQ(r.status().message(), "the model produced non-finite logits at position 3");
  }
  // The clean model is untouched by the check.
  auto clean = ModelRunner::Create(backend.get(), Checkpoint{c, m.params()}, o);
  ASSERT_TRUE(clean.ok());
  GenerateOptions g;
  g.max_new_tokens = 4;
  auto r = Generate(**clean, {1, 2, 3}, g);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->output_ids.size(), 4u);
}

// The CPU sampler flags a row with NaN, +Inf or -Inf anywhere, greedy or
// sampled; a pending token taken from a flagged row becomes token 0 (in the
// vocabulary); a huge repetition penalty on finite logits stays finite.
TEST(NonFiniteLogits, SamplerFlagsRowsAndPenaltiesDoNotOverflow) {
  auto b = CreateCpuBackend();
  const int V = 50, R = 8;
  std::vector<float> logits(R * V);
  std::mt19937 rng(3);
  std::normal_distribution<float> d(0.f, 2.f);
  for (auto& x : logits) x = d(rng);
  const float bad[] = {std::nanf(""), std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
  for (int r = 1; r < R; r += 2) logits[r * V + (7 * r) % V] = bad[(r / 2) % 3];
  std::vector<SamplingParams> params(R);
  for (int r = 0; r < R; ++r) params[r] = {r % 4 < 2 ? 0.f : 0.9f, r % 3 ? 0 : 10, 0.9f, 0.5f};
  std::vector<int32_t> tokens(R);
  b->Sample(logits.data(), R, V, params.data(), tokens.data());
  for (int r = 0; r < R; ++r) {
    if (r % 2) EXPECT_EQ(tokens[r], kNonFiniteLogits) << "row " << r;
    else EXPECT_TRUE(tokens[r] >= 0 && tokens[r] < V) << "row " << r << ": " << tokens[r];
  }
  std::vector<int32_t> pending{-2, 5, -1};
  b->FillPendingTokens(pending.data(), 3, tokens.data());
  EXPECT_EQ(pending, (std::vector<int32_t>{0, 5, tokens[0]}));
  std::vector<float> row{-3e38f, 2e10f, -1.f, 1e-30f};  // overflow under each penalty
  std::vector<PenaltyEntry> seen{{0, 1}, {1, 0}, {2, 2}, {3, 0}};
  for (float repetition : {1e38f, 1e-38f}) {
    PenaltyRow pr{repetition, 2.f, 2.f, 0, 4};
    std::vector<float> out(4);
    b->ApplyPenalties(row.data(), out.data(), 1, 4, &pr, seen.data());
    for (float v : out) EXPECT_TRUE(std::isfinite(v)) << "repetition " << repetition << " gave " << v;
  }
}

// Every input of the checkpoint fuzzer's corpus (seeds, and the regression
// input of any crash the fuzzer found) loads or is refused with a message;
// under scripts/sanitize.sh this replays them with ASan and UBSan too.
TEST(FuzzCorpus, EveryCheckpointInputIsLoadedOrRefused) {
  const std::string dir = TINYGPT_FUZZ_CORPUS "/checkpoint";
  int files = 0, loaded = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(entry.path(), std::ios::binary);
    const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto ck = ParseCheckpoint(data, entry.path().filename().string());
    ++files;
    if (ck.ok()) {
      ++loaded;
      EXPECT_EQ(ck->params.size(), ParamLayout(ck->config).total());
    } else {
      EXPECT_FALSE(ck.status().message().empty()) << entry.path();
    }
  }
  EXPECT_GE(files, 8);
  EXPECT_GE(loaded, 2) << "the valid seeds (learned_f32, alibi_mixed) no longer load";
}

TEST_F(HostileCheckpoint, OnlyRegularFilesAreRead) {
  for (const std::string& path : {std::string("/dev/zero"), std::string("/tmp")}) {
    auto ck = LoadCheckpoint(path);
    ASSERT_FALSE(ck.ok());
    EXPECT_NE(ck.status().message().find("not a regular file"), std::string::npos) << ck.status();
  }
  // A FIFO with no writer: opening it must not wait for one.
  const std::string fifo = TempPath("fifo");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  auto ck = LoadCheckpoint(fifo);
  std::remove(fifo.c_str());
  ASSERT_FALSE(ck.ok());
  EXPECT_NE(ck.status().message().find("not a regular file"), std::string::npos) << ck.status();
  EXPECT_FALSE(LoadCheckpoint(TempPath("does-not-exist")).ok());
  const std::string empty = TempPath("empty.safetensors");
  std::ofstream(empty).close();
  auto e = LoadCheckpoint(empty);
  std::remove(empty.c_str());
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("too short"), std::string::npos) << e.status();
}

TEST(Checkpoint, OverlappingRangesAreRejected) {
  StFile f;
  f.tensors.emplace("a", F32Tensor({2}, std::vector<float>{1, 2}.data()));
  f.tensors.emplace("b", F32Tensor({2}, std::vector<float>{3, 4}.data()));
  std::string d = SerializeSafetensors(f);
  const size_t at = d.find("[8,16]");
  ASSERT_NE(at, std::string::npos);
  d.replace(at, 6, "[4,12]");
  auto r = ParseSafetensors(d);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("overlap"), std::string::npos) << r.status();
}

TEST(Training, UntimedStepsAreLeftOutOfTheThroughput) {
  ModelConfig c = *PresetConfig("seed");
  auto data = MakeCountTask(c.vocab_size, c.max_seq_len, 4);
  TrainOptions o;
  o.quiet = true;
  o.out = TempPath("untimed.safetensors");
  o.steps = 3;
  o.untimed_steps = 3;  // nothing timed: no tokens counted
  auto none = Train(c, *data, o);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(none->tokens_per_second, 0.0);
  EXPECT_EQ(none->steps_run, 3);
  o.steps = 5;  // two timed steps
  auto some = Train(c, *data, o);
  ASSERT_TRUE(some.ok()) << some.status();
  EXPECT_GT(some->tokens_per_second, 0.0);
  EXPECT_EQ(some->steps_run, 5);
}

TEST(Training, LearnsTheCountingTask) {
  ModelConfig c = *PresetConfig("seed");
  auto data = MakeCountTask(c.vocab_size, c.max_seq_len, 16);
  TrainOptions o;
  o.steps = 120;
  o.quiet = true;
  o.out = TempPath("count.safetensors");
  auto r = Train(c, *data, o);
  ASSERT_TRUE(r.ok()) << r.status();
  // Chance is 1/64; the tutorial's full run reaches ≥ 99%.
  EXPECT_GT(r->final_accuracy, 0.95f) << "loss " << r->final_loss;
  // --resume continues from the saved step with the same data stream.
  o.steps = 130;
  o.resume = o.out;
  auto more = Train(c, *data, o);
  ASSERT_TRUE(more.ok()) << more.status();
  EXPECT_EQ(more->steps_run, 10);
  // Greedy generation continues the count.
  auto ck = LoadCheckpoint(o.out);
  ASSERT_TRUE(ck.ok());
  auto backend = CreateCpuBackend();
  auto runner = ModelRunner::Create(backend.get(), *ck, RunnerOptions{});
  ASSERT_TRUE(runner.ok());
  GenerateOptions g;
  g.max_new_tokens = 10;
  auto out = Generate(**runner, {60, 61, 62, 63, 0, 1}, g);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->output_ids, (std::vector<int32_t>{2, 3, 4, 5, 6, 7, 8, 9, 10, 11}));
  RemoveTrainingCheckpoint(o.out);
}

}  // namespace
}  // namespace tinygpt

namespace tinygpt {
namespace {

TEST(Training, PacksTextDocumentsWithoutPaddingAndLearns) {
  const std::string path = TempPath("corpus.txt");
  {
    std::ofstream f(path);
    for (int i = 0; i < 30; ++i) f << "abcabcabc the cat sat on the mat " << i << "\n\n";
    f << "zz\n\n";
  }
  ModelConfig c = *PresetConfig("seed");
  c.vocab_size = 256;
  c.max_seq_len = 32;
  auto docs = ReadDocuments(path);
  ASSERT_TRUE(docs.ok()) << docs.status();
  EXPECT_EQ(docs->size(), 31u);
  const auto bytes = MakeByteTokenizer();
  auto data = MakeTextData(*docs, *bytes, c.max_seq_len, 8, /*quiet=*/true);
  ASSERT_TRUE(data.ok()) << data.status();
  const PackedBatch b = (*data)->Batch(1, 0);
  EXPECT_EQ(b.tokens.size(), 8u * 32);  // the budget is filled exactly: no padding
  EXPECT_EQ(b.cu_seqlens.front(), 0);
  EXPECT_EQ(b.cu_seqlens.back(), static_cast<int>(b.tokens.size()));
  for (size_t s = 0; s + 1 < b.cu_seqlens.size(); ++s) {
    EXPECT_LE(b.cu_seqlens[s + 1] - b.cu_seqlens[s], 32);
    EXPECT_GT(b.cu_seqlens[s + 1], b.cu_seqlens[s]);
    // A chunk never crosses a document boundary (a blank line).
    for (int t = b.cu_seqlens[s]; t + 1 < b.cu_seqlens[s + 1]; ++t) EXPECT_FALSE(b.tokens[t] == '\n' && b.tokens[t + 1] == '\n');
  }
  TrainOptions o;
  o.steps = 80;
  o.quiet = true;
  o.out = TempPath("text.safetensors");
  auto r = Train(c, **data, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_LT(r->final_loss, 1.5f);  // uniform over 256 bytes is 5.5
  std::remove(path.c_str());
  RemoveTrainingCheckpoint(o.out);
  EXPECT_FALSE(ReadDocuments(TempPath("missing.txt")).ok());
}

// The weights and optimizer state of one step: OUT names its optimizer file
// by step and commit; an older version's OUT.optim still resumes when its
// stamps match and is refused when a torn save left another step's.
class TrainingCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    data_ = MakeCountTask(cfg_.vocab_size, cfg_.max_seq_len, 2);
    opt_.quiet = true;
    opt_.out = TempPath("pair.safetensors");
    opt_.steps = 2;
  }
  void TearDown() override {
    RemoveTrainingCheckpoint(opt_.out);
    for (const std::string& suffix : {".step4", ".step4.optim"}) std::remove((opt_.out + suffix).c_str());
  }
  absl::StatusOr<TrainResult> TrainTo(long steps, bool resume) {
    TrainOptions o = opt_;
    o.steps = steps;
    if (resume) o.resume = o.out;
    return Train(cfg_, *data_, o);
  }
  // The optimizer files beside OUT (OUT.step<N>-<commit>.optim; not the test's OUT.step4.optim).
  std::vector<std::string> OptimizerFiles() const {
    std::vector<std::string> out;
    const std::filesystem::path p(opt_.out);
    for (const auto& e : std::filesystem::directory_iterator(p.parent_path())) {
      const std::string name = e.path().filename().string(), base = p.filename().string() + ".step";
      if (name.rfind(base, 0) == 0 && name.find('-', base.size()) != std::string::npos && name.size() > 6 &&
          name.substr(name.size() - 6) == ".optim")
        out.push_back(e.path().string());
    }
    return out;
  }
  static void Copy(const std::string& from, const std::string& to) {
    std::ifstream in(from, std::ios::binary);
    std::ofstream(to, std::ios::binary) << in.rdbuf();
  }
  ModelConfig cfg_ = SmallConfig(false, 2);
  std::unique_ptr<DataSource> data_;
  TrainOptions opt_;
};

TEST_F(TrainingCheckpoint, ResumeFindsTheOptimizerStateItsStampNames) {
  ASSERT_TRUE(TrainTo(4, false).ok());
  auto files = OptimizerFiles();
  ASSERT_EQ(files.size(), 1u);
  EXPECT_NE(files[0].find(".step4-"), std::string::npos) << files[0];
  Copy(opt_.out, opt_.out + ".step4");
  auto more = TrainTo(6, true);
  ASSERT_TRUE(more.ok()) << more.status();
  EXPECT_EQ(more->steps_run, 2);
  files = OptimizerFiles();  // the step-4 file went once OUT named step 6's
  ASSERT_EQ(files.size(), 1u);
  EXPECT_NE(files[0].find(".step6-"), std::string::npos) << files[0];
  // An old copy of OUT whose optimizer file is gone: refused, naming the file.
  Copy(opt_.out + ".step4", opt_.out);
  auto r = TrainTo(8, true);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("needs the optimizer state"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find(opt_.out + ".step4-"), std::string::npos) << r.status();
}

TEST_F(TrainingCheckpoint, OlderVersionsPairsResumeOnlyWhenTheirStampsMatch) {
  // An older version's layout: the optimizer state in OUT.optim.
  ASSERT_TRUE(TrainTo(4, false).ok());
  ASSERT_EQ(OptimizerFiles().size(), 1u);
  std::filesystem::rename(OptimizerFiles()[0], opt_.out + ".optim");
  Copy(opt_.out, opt_.out + ".step4");
  Copy(opt_.out + ".optim", opt_.out + ".step4.optim");
  auto more = TrainTo(6, true);
  ASSERT_TRUE(more.ok()) << more.status();
  EXPECT_EQ(more->steps_run, 2);
  EXPECT_NE(access((opt_.out + ".optim").c_str(), F_OK), 0) << "the old-style file outlived the first new save";
  // A save of step 6 by the older version killed after OUT.optim was renamed
  // into place but before OUT was: step-4 weights beside step-6 state.
  std::filesystem::rename(OptimizerFiles()[0], opt_.out + ".optim");
  Copy(opt_.out + ".step4", opt_.out);
  auto r = TrainTo(8, true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("cannot resume"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find(opt_.out + " is step 4"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find(opt_.out + ".optim is step 6"), std::string::npos) << r.status();
  // Nor a pair of the same step from two saves.
  ASSERT_TRUE(TrainTo(4, false).ok());  // a fresh run: step 4 again, another commit
  for (const auto& f : OptimizerFiles()) std::remove(f.c_str());
  Copy(opt_.out + ".step4.optim", opt_.out + ".optim");
  r = TrainTo(8, true);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not saved together"), std::string::npos) << r.status();
  // Without any optimizer state a checkpoint cannot be resumed.
  std::remove((opt_.out + ".optim").c_str());
  r = TrainTo(8, true);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("needs the optimizer state"), std::string::npos) << r.status();
}

TEST_F(TrainingCheckpoint, StaleTempFilesOfKilledWritesAreRemoved) {
  const pid_t dead = fork();  // a PID that no longer runs once reaped
  if (dead == 0) _exit(0);
  ASSERT_GT(dead, 0);
  ASSERT_EQ(waitpid(dead, nullptr, 0), dead);
  const std::vector<std::string> stale = {absl::StrCat(opt_.out, ".tmp.", dead), absl::StrCat(opt_.out, ".optim.tmp.", dead),
                                          absl::StrCat(opt_.out, ".step7-0123456789abcdef.optim.tmp.", dead),
                                          opt_.out + ".step7-0123456789abcdef.optim"};  // named by no OUT (there is none)
  // Another writer still running (our parent) and files that only look alike stay.
  const std::vector<std::string> kept = {absl::StrCat(opt_.out, ".tmp.", getppid()), opt_.out + ".tmp.x12",
                                         absl::StrCat(opt_.out, "x.tmp.", dead), opt_.out + ".step7-xyz.optim"};
  for (const auto& p : stale) std::ofstream(p) << "half a checkpoint";
  for (const auto& p : kept) std::ofstream(p) << "not ours";
  // (That this happens at the start, before the run's first save, is
  // tests/train_kill_test.sh's check.)
  ASSERT_TRUE(TrainTo(1, false).ok());
  for (const auto& p : stale) EXPECT_NE(access(p.c_str(), F_OK), 0) << p << " was left behind";
  for (const auto& p : kept) {
    EXPECT_EQ(access(p.c_str(), F_OK), 0) << p << " was removed";
    std::remove(p.c_str());
  }
}

TEST(Training, LearningRateWarmsUpThenDecays) {
  TrainOptions o;
  o.steps = 100;
  o.warmup = 10;
  o.lr = 1.f;
  o.min_lr_ratio = 0.1f;
  EXPECT_FLOAT_EQ(LearningRate(o, 0), 0.1f);
  EXPECT_FLOAT_EQ(LearningRate(o, 9), 1.f);
  EXPECT_NEAR(LearningRate(o, 55), 0.55f, 1e-5);  // cosine midpoint
  EXPECT_NEAR(LearningRate(o, 100), 0.1f, 1e-6);
}

TEST(Checkpoint, FailedWriteLeavesThePreviousFile) {
  const std::string path = TempPath("keep.safetensors");
  ASSERT_TRUE(WriteFileAtomically(path, "old contents").ok());
  // A write into a folder that does not exist fails without touching `path`.
  EXPECT_FALSE(WriteFileAtomically(TempPath("no/such/dir/x"), "new").ok());
  std::ifstream in(path);
  std::string got((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(got, "old contents");
  std::remove(path.c_str());
}

}  // namespace
}  // namespace tinygpt
