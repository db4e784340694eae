// EventChannel (server/sequence.h): when the engine tells a call of new
// tokens. A stream hears of a sample's first token at once and of later ones
// once --stream-interval of them have gathered; one notice covers everything
// queued until the call takes it; a unary call hears only of the end.
#include <gtest/gtest.h>

#include "server/sequence.h"

namespace tinygpt {
namespace {

std::vector<int32_t> TakeTokens(EventChannel& c, int index, bool* any, bool* finished = nullptr) {
  std::vector<SequenceEvents> ev;
  c.Take(&ev, any);
  if (finished) *finished = ev[index].finished;
  return ev[index].tokens;
}

TEST(EventChannel, StreamTellsTheFirstTokenAtOnceThenEveryIntervalTokens) {
  EventChannel c(1, /*stream=*/true);
  bool any = false;
  EXPECT_TRUE(c.Emit(0, 10, "", nullptr, 4));  // the first token is never held back
  EXPECT_EQ(TakeTokens(c, 0, &any), std::vector<int32_t>({10}));
  EXPECT_TRUE(any);
  EXPECT_FALSE(c.Emit(0, 11, "", nullptr, 4));
  EXPECT_FALSE(c.Emit(0, 12, "", nullptr, 4));
  EXPECT_TRUE(TakeTokens(c, 0, &any).empty());  // nothing due: the two tokens wait
  EXPECT_FALSE(any);
  EXPECT_FALSE(c.Emit(0, 13, "", nullptr, 4));
  EXPECT_TRUE(c.Emit(0, 14, "", nullptr, 4));  // the fourth gathered
  EXPECT_FALSE(c.Emit(0, 15, "", nullptr, 4));  // told already, not taken yet: no second notice
  EXPECT_EQ(TakeTokens(c, 0, &any), std::vector<int32_t>({11, 12, 13, 14, 15}));
  EXPECT_FALSE(c.Emit(0, 16, "", nullptr, 4));
  EXPECT_TRUE(c.Finish(0, FinishReason::kLength, absl::OkStatus(), ""));  // the end flushes what waits
  bool finished = false;
  EXPECT_EQ(TakeTokens(c, 0, &any, &finished), std::vector<int32_t>({16}));
  EXPECT_TRUE(finished);
}

TEST(EventChannel, IntervalOneTellsEveryToken) {
  EventChannel c(1, true);
  bool any = false;
  for (int32_t t = 0; t < 5; ++t) {
    EXPECT_TRUE(c.Emit(0, t, "", nullptr, 1));
    EXPECT_EQ(TakeTokens(c, 0, &any), std::vector<int32_t>({t}));
  }
}

TEST(EventChannel, EachSampleOfAStreamStartsAtOnce) {
  EventChannel c(2, true);
  bool any = false;
  EXPECT_TRUE(c.Emit(0, 1, "", nullptr, 8));
  std::vector<SequenceEvents> ev;
  c.Take(&ev, &any);
  EXPECT_TRUE(c.Emit(1, 2, "", nullptr, 8));  // sample 1's first token
  c.Take(&ev, &any);
  EXPECT_EQ(ev[1].tokens, std::vector<int32_t>({2}));
  EXPECT_FALSE(c.Emit(0, 3, "", nullptr, 8));
  EXPECT_TRUE(c.Finish(0, FinishReason::kStop, absl::OkStatus(), ""));  // any sample's end, for a stream
  c.Take(&ev, &any);
  EXPECT_TRUE(ev[0].finished);
  EXPECT_EQ(ev[0].tokens, std::vector<int32_t>({3}));
  EXPECT_FALSE(ev[1].finished);
}

TEST(EventChannel, UnaryHearsOnlyOfTheLastEnd) {
  EventChannel c(2, /*stream=*/false);
  bool any = false;
  EXPECT_FALSE(c.Emit(0, 1, "a", nullptr, 1));
  EXPECT_FALSE(c.Emit(1, 2, "b", nullptr, 1));
  EXPECT_FALSE(c.Finish(0, FinishReason::kLength, absl::OkStatus(), ""));
  std::vector<SequenceEvents> ev;
  c.Take(&ev, &any);
  EXPECT_FALSE(any);
  EXPECT_TRUE(c.Finish(1, FinishReason::kLength, absl::OkStatus(), "!"));
  c.Take(&ev, &any);
  EXPECT_TRUE(any);
  EXPECT_EQ(ev[0].text, "a");
  EXPECT_EQ(ev[1].text, "b!");
  EXPECT_TRUE(ev[0].finished && ev[1].finished);
}

// Take reuses the caller's vectors: a taken batch leaves nothing behind for the next.
TEST(EventChannel, TakeClearsWhatTheCallerKept) {
  EventChannel c(1, true);
  bool any = false;
  std::vector<SequenceEvents> ev;
  EXPECT_TRUE(c.Emit(0, 7, "x", nullptr, 2));
  c.Take(&ev, &any);
  EXPECT_EQ(ev[0].text, "x");
  c.Take(&ev, &any);
  EXPECT_FALSE(any);
  EXPECT_TRUE(ev[0].tokens.empty() && ev[0].text.empty());
}

// ... and no end either: after a Take that handed out a failed sample's end,
// a Take with nothing due reports it unfinished with an OK status.
TEST(EventChannel, TakeClearsAKeptEnd) {
  EventChannel c(2, true);
  bool any = false;
  std::vector<SequenceEvents> ev;
  EXPECT_TRUE(c.Finish(0, FinishReason::kCancelled, absl::InternalError("boom"), ""));
  c.Take(&ev, &any);
  ASSERT_TRUE(any);
  EXPECT_TRUE(ev[0].finished);
  EXPECT_EQ(ev[0].reason, FinishReason::kCancelled);
  EXPECT_FALSE(ev[0].status.ok());
  c.Take(&ev, &any);
  EXPECT_FALSE(any);
  EXPECT_FALSE(ev[0].finished);
  EXPECT_EQ(ev[0].reason, FinishReason::kNone);
  EXPECT_TRUE(ev[0].status.ok());
}

}  // namespace
}  // namespace tinygpt
