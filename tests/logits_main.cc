// Helper for the PyTorch parity test: prints tinygpt's logits for packed
// sequences, one value per whitespace-separated field.
// usage: tinygpt_logits CHECKPOINT LEN,LEN,... TOKEN,TOKEN,...
#include <cstdio>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "model/checkpoint.h"
#include "model/transformer.h"

int main(int argc, char** argv) {
  if (argc != 4) return std::fprintf(stderr, "usage: %s CHECKPOINT LENS TOKENS\n", argv[0]), 2;
  auto ck = tinygpt::LoadCheckpoint(argv[1]);
  if (!ck.ok()) return std::fprintf(stderr, "%s\n", std::string(ck.status().message()).c_str()), 1;
  tinygpt::PackedBatch b;
  b.cu_seqlens.push_back(0);
  for (absl::string_view s : absl::StrSplit(argv[2], ',')) {
    int n;
    if (!absl::SimpleAtoi(s, &n)) return 2;
    b.cu_seqlens.push_back(b.cu_seqlens.back() + n);
  }
  for (absl::string_view s : absl::StrSplit(argv[3], ',')) {
    int t;
    if (!absl::SimpleAtoi(s, &t)) return 2;
    b.tokens.push_back(t);
  }
  if (b.tokens.size() != static_cast<size_t>(b.cu_seqlens.back())) return std::fprintf(stderr, "lengths do not add up\n"), 2;
  tinygpt::Transformer m(ck->config);
  m.params() = ck->params;
  m.Forward(b);
  for (float v : m.logits()) std::printf("%.9g\n", v);
  return 0;
}
