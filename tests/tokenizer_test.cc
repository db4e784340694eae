// Tokenizers, UTF-8-safe detokenization and stop strings. The cross-check of
// SentencePiece against python3-sentencepiece is tests/python/tokenizer_parity_test.py.
#include <gtest/gtest.h>

#include <cstdio>
#include <random>

#include "common/utf8.h"
#include "model/checkpoint.h"
#include "model/params.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"
#include "server/stop_strings.h"

namespace tinygpt {
namespace {

std::string TempPath(const std::string& name) { return "/tmp/tinygpt-tokenizer-test-" + std::to_string(getpid()) + "-" + name; }

// What Python's bytes.decode("utf-8", "replace") gives for these inputs.
TEST(Utf8, ReplacesIllFormedBytesLikePython) {
  EXPECT_EQ(SanitizeUtf8("plain ascii"), "plain ascii");
  EXPECT_EQ(SanitizeUtf8("h\xC3\xA9llo \xF0\x9F\x98\x80"), "h\xC3\xA9llo \xF0\x9F\x98\x80");
  EXPECT_EQ(SanitizeUtf8("\xFF"), "\xEF\xBF\xBD");
  EXPECT_EQ(SanitizeUtf8("\x80\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(SanitizeUtf8("\xF0\x9F\x98"), "\xEF\xBF\xBD");        // truncated at the end: one U+FFFD
  EXPECT_EQ(SanitizeUtf8("\xF0\x9F\x98" "A"), "\xEF\xBF\xBD" "A");  // maximal subpart, then 'A'
  EXPECT_EQ(SanitizeUtf8("\xE0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong: E0 needs A0..BF
  EXPECT_EQ(SanitizeUtf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // a surrogate
  EXPECT_EQ(SanitizeUtf8("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(SanitizeUtf8("\xF4\x90\x80\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // > U+10FFFF
  EXPECT_TRUE(IsValidUtf8("\xE2\x82\xAC"));
  EXPECT_FALSE(IsValidUtf8("\xE2\x82"));
  EXPECT_FALSE(IsValidUtf8("a\xFE"));
}

// Any split of any byte string into pieces decodes to the same text as the
// whole, and every piece is valid UTF-8 on its own.
TEST(Utf8, StreamingEqualsWholeForEverySplit) {
  std::mt19937 rng(7);
  const std::string alphabet[] = {"a", "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80", "\xFF", "\x80", "\xE2", "\xF0\x9F"};
  for (int trial = 0; trial < 2000; ++trial) {
    std::string bytes;
    const int n = 1 + rng() % 12;
    for (int i = 0; i < n; ++i) bytes += alphabet[rng() % 8];
    Utf8Stream u;
    std::string streamed;
    for (size_t i = 0; i < bytes.size();) {
      const size_t len = 1 + rng() % 3;
      std::string piece;
      u.Push(bytes.substr(i, len), &piece);
      EXPECT_TRUE(IsValidUtf8(piece));
      streamed += piece;
      i += len;
    }
    std::string tail;
    u.Finish(&tail);
    EXPECT_TRUE(IsValidUtf8(tail));
    EXPECT_EQ(streamed + tail, SanitizeUtf8(bytes));
  }
}

TEST(ByteTokenizer, RoundTripsAnyBytesAndHoldsBackSplitCharacters) {
  const auto tok = MakeByteTokenizer();
  const std::string text = "z\xC3\xA9\xF0\x9F\x98\x80!";
  auto ids = tok->Encode(text);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->size(), text.size());
  EXPECT_EQ(DecodeContinuation(*tok, *ids), text);
  Detokenizer d(tok.get());
  EXPECT_EQ(d.Next('z'), "z");
  EXPECT_EQ(d.Next(0xF0), "");  // the emoji's 4 bytes arrive as 4 tokens
  EXPECT_EQ(d.Next(0x9F), "");
  EXPECT_EQ(d.Next(0x98), "");
  EXPECT_EQ(d.Next(0x80), "\xF0\x9F\x98\x80");
  EXPECT_EQ(d.Next(0xE2), "");
  EXPECT_EQ(d.Finish(), "\xEF\xBF\xBD");  // unfinished at the end
  EXPECT_EQ(tok->TokenBytes(300), "");    // beyond the vocabulary: nothing
}

std::string UnicodeCorpus() {
  std::mt19937 rng(3);
  const std::vector<std::string> words = {"the", "cat", "sat", "on", "mat", "caf\xC3\xA9", "na\xC3\xAFve", "\xCE\xB1\xCE\xB2\xCE\xB3",
                                          "\xE6\x97\xA5\xE6\x9C\xAC", "\xF0\x9F\x98\x80", "2026", "don't", "  tabs\tand"};
  std::string text;
  for (int line = 0; line < 400; ++line) {
    for (int w = 0; w < 8; ++w) text += words[rng() % words.size()] + (w < 7 ? " " : "\n");
  }
  return text;
}

TEST(SentencePiece, TrainsEncodesAndDecodesVerbatim) {
  auto tok = TrainSentencePiece(UnicodeCorpus(), 320, 2);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->type(), "sentencepiece");
  EXPECT_EQ((*tok)->vocab_size(), 320);
  EXPECT_GE((*tok)->eos_id(), 0);
  // Text the tokenizer never saw (other scripts, control bytes, a lone
  // combining mark) goes through byte fallback and comes back unchanged.
  for (const std::string text : {"the cat sat", "caf\xC3\xA9 \xF0\x9F\x98\x80!", "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82",
                                 "  two  spaces\tand a tab", "\xF0\x9F\xA6\x99\xCC\x81 \x01"}) {
    auto ids = (*tok)->Encode(text);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ((*tok)->Decode(*ids), text);
    // As a continuation the text keeps SentencePiece's leading space ("▁").
    const std::string cont = DecodeContinuation(**tok, *ids);
    EXPECT_TRUE(cont == text || cont == " " + text) << cont;
  }
}

TEST(SentencePiece, MetadataRoundTripsAndCorruptBlobsAreRefused) {
  auto tok = TrainSentencePiece(UnicodeCorpus(), 300, 2);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto back = TokenizerFromMetadata((*tok)->ToMetadata());
  ASSERT_TRUE(back.ok()) << back.status();
  auto a = (*tok)->Encode("na\xC3\xAFve \xE6\x97\xA5\xE6\x9C\xAC"), b = (*back)->Encode("na\xC3\xAFve \xE6\x97\xA5\xE6\x9C\xAC");
  EXPECT_EQ(*a, *b);
  auto bytes = TokenizerFromMetadata(MakeByteTokenizer()->ToMetadata());
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ((*bytes)->type(), "bytes");
  for (const std::string bad : {"", "[]", "{\"type\":\"wordpiece\"}", "{\"type\":\"sentencepiece\"}",
                                "{\"type\":\"sentencepiece\",\"model\":\"!!not base64!!\"}",
                                "{\"type\":\"sentencepiece\",\"model\":\"Zm9vYmFy\"}"}) {
    auto t = TokenizerFromMetadata(bad);
    EXPECT_FALSE(t.ok()) << bad;
    EXPECT_NE(t.status().message().find("tinygpt.tokenizer"), std::string::npos) << t.status();
  }
}

TEST(Checkpoint, CarriesItsTokenizer) {
  ModelConfig c = *PresetConfig("seed");
  c.vocab_size = 300;
  c.n_layers = 1;
  auto tok = TrainSentencePiece(UnicodeCorpus(), 300, 2);
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::vector<float> params(ParamLayout(c).total(), 0.25f);
  const std::string path = TempPath("ck.safetensors");
  ASSERT_TRUE(SaveCheckpoint(path, c, params.data(), tok->get()).ok());
  auto ck = LoadCheckpoint(path);
  ASSERT_TRUE(ck.ok()) << ck.status();
  ASSERT_NE(ck->tokenizer, nullptr);
  EXPECT_EQ(*ck->tokenizer->Encode("the cat"), *(*tok)->Encode("the cat"));
  EXPECT_EQ(ck->params, params);

  // Without one: ids only.
  ASSERT_TRUE(SaveCheckpoint(path, c, params.data()).ok());
  EXPECT_EQ(LoadCheckpoint(path)->tokenizer, nullptr);

  // A corrupt tokenizer, or one larger than the model's vocabulary, is
  // refused at load with a message that says so.
  auto file = ReadSafetensors(path);
  ASSERT_TRUE(file.ok());
  file->metadata[kTokenizerMetadataKey] = "{\"type\":\"sentencepiece\",\"model\":\"AAAA\"}";
  ASSERT_TRUE(WriteFileAtomically(path, SerializeSafetensors(*file)).ok());
  auto corrupt = LoadCheckpoint(path);
  ASSERT_FALSE(corrupt.ok());
  EXPECT_NE(corrupt.status().message().find("tinygpt.tokenizer"), std::string::npos) << corrupt.status();
  c.vocab_size = 200;
  params.assign(ParamLayout(c).total(), 0.5f);
  ASSERT_TRUE(SaveCheckpoint(path, c, params.data(), tok->get()).ok());
  auto too_big = LoadCheckpoint(path);
  ASSERT_FALSE(too_big.ok());
  EXPECT_NE(too_big.status().message().find("more than the model's vocab_size"), std::string::npos) << too_big.status();
  std::remove(path.c_str());
}

TEST(StopStrings, MatchAcrossPiecesWithoutRescanning) {
  StopStringMatcher m({"\n\n", "END", ""});
  EXPECT_FALSE(m.Push("hello"));
  EXPECT_FALSE(m.Push(" E"));
  EXPECT_FALSE(m.Push("N"));
  EXPECT_TRUE(m.Push("Dgame"));  // "END" straddles three pieces
  StopStringMatcher inside({"ab"});
  EXPECT_TRUE(inside.Push("xxabyy"));  // inside one piece, not only at its end
  StopStringMatcher nl({"\n\n"});
  EXPECT_FALSE(nl.Push("a\n"));
  EXPECT_FALSE(nl.Push(""));
  EXPECT_TRUE(nl.Push("\nb"));
  StopStringMatcher none({""});
  EXPECT_TRUE(none.empty());
  EXPECT_FALSE(none.Push("anything"));
}

// The automaton against the plain definition (some stop string occurs in the
// text so far), on random texts over a small alphabet cut into random pieces,
// with overlapping strings, strings that are suffixes or prefixes of others,
// and multi-byte UTF-8.
TEST(StopStrings, AgreesWithSearchingTheWholeText) {
  std::mt19937 rng(7);
  const std::string alphabet[] = {"a", "b", "c", "\xC3\xA9", "\n"};
  auto random_text = [&](int pieces) {
    std::string t;
    for (int i = 0; i < pieces; ++i) t += alphabet[rng() % 5];
    return t;
  };
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<std::string> stops;
    const int k = 1 + static_cast<int>(rng() % 6);
    for (int i = 0; i < k; ++i) stops.push_back(random_text(1 + static_cast<int>(rng() % 5)));
    if (trial % 7 == 0) stops.push_back(stops[0].substr(1));  // a suffix of another
    const std::string text = random_text(40);
    StopStringMatcher m(stops);
    std::string so_far;
    size_t at = 0;
    while (at < text.size()) {
      const size_t len = std::min(text.size() - at, static_cast<size_t>(rng() % 6));
      const std::string piece = text.substr(at, len);
      at += len;
      so_far += piece;
      bool want = false;
      for (const auto& s : stops) want |= !s.empty() && so_far.find(s) != std::string::npos;
      ASSERT_EQ(m.Push(piece), want) << "trial " << trial << " text so far '" << so_far << "'";
      if (want) break;  // the engine stops at the first match
    }
  }
}

}  // namespace
}  // namespace tinygpt
