// tinygpt_tokenize CHECKPOINT: the checkpoint's tokenizer as a filter, for the
// cross-checks against python3-sentencepiece. Each stdin line is a JSON object
// {"text": "..."} or {"ids": [...]}; each stdout line answers it with
// {"ids": [...], "decode": "...", "continuation": "..."}: the encoding, the
// tokenizer's own decoding of the ids, and the text they add to a prompt.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "model/checkpoint.h"

int main(int argc, char** argv) {
  if (argc != 2) return std::fprintf(stderr, "usage: tinygpt_tokenize CHECKPOINT < requests.jsonl\n"), 2;
  auto ck = tinygpt::LoadCheckpoint(argv[1]);
  if (!ck.ok()) return std::fprintf(stderr, "%s\n", std::string(ck.status().message()).c_str()), 1;
  if (!ck->tokenizer) return std::fprintf(stderr, "%s has no tokenizer\n", argv[1]), 1;
  const tinygpt::Tokenizer& tok = *ck->tokenizer;
  std::string line;
  while (std::getline(std::cin, line)) {
    const nlohmann::json req = nlohmann::json::parse(line);
    std::vector<int32_t> ids;
    if (req.contains("text")) {
      auto enc = tok.Encode(req["text"].get<std::string>());
      if (!enc.ok()) return std::fprintf(stderr, "%s\n", std::string(enc.status().message()).c_str()), 1;
      ids = *enc;
    } else {
      ids = req["ids"].get<std::vector<int32_t>>();
    }
    const nlohmann::json out = {{"ids", ids}, {"decode", tok.Decode(ids)}, {"continuation", tinygpt::DecodeContinuation(tok, ids)}};
    std::cout << out.dump() << "\n";
  }
  return 0;
}
