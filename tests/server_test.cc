// Integration tests over loopback: a real `tinygpt serve` process and real
// gRPC clients.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <future>
#include <random>
#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "tests/support/server_process.h"
#include "tinygpt.grpc.pb.h"

namespace tinygpt {
namespace {

using testing::ServerProcess;
using v1::GenerateRequest;
using v1::GenerateResponse;

struct Client {
  explicit Client(const std::string& address)
      : channel(grpc::CreateChannel(address, grpc::InsecureChannelCredentials())), stub(v1::Generation::NewStub(channel)) {}
  grpc::Status Generate(const GenerateRequest& req, GenerateResponse* resp, int deadline_ms = 30000) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(deadline_ms));
    return stub->Generate(&ctx, req, resp);
  }
  v1::ModelInfo Info() {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    EXPECT_TRUE(stub->GetModelInfo(&ctx, {}, &info).ok());
    return info;
  }
  // Waits until every KV block is back in the free pool.
  bool WaitAllBlocksFree(std::chrono::milliseconds timeout = std::chrono::milliseconds(3000)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      const v1::ModelInfo i = Info();
      if (i.kv_blocks_free() == i.kv_blocks_total() && i.running_seqs() == 0) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Generation::Stub> stub;
};

GenerateRequest Ids(std::vector<int> ids, int max_new_tokens) {
  GenerateRequest r;
  for (int id : ids) r.mutable_token_ids()->add_ids(id);
  r.set_max_new_tokens(max_new_tokens);
  return r;
}

std::vector<int> Tokens(const GenerateResponse& r) { return {r.token_ids().begin(), r.token_ids().end()}; }

TEST(Server, UnaryStreamingInfoHealthReflection) {
  ServerProcess server({});
  Client c(server.address());
  GenerateResponse resp;
  ASSERT_TRUE(c.Generate(Ids({10, 11, 12, 13}, 6), &resp).ok());
  EXPECT_EQ(Tokens(resp), (std::vector<int>{14, 15, 16, 17, 18, 19}));  // the model counts
  EXPECT_EQ(resp.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(resp.usage().prompt_tokens(), 4);
  EXPECT_EQ(resp.usage().generated_tokens(), 6);
  EXPECT_GT(resp.timings().total_seconds(), 0);
  EXPECT_FALSE(resp.request_id().empty());

  grpc::ClientContext sctx;
  auto reader = c.stub->GenerateStream(&sctx, Ids({10, 11, 12, 13}, 6));
  v1::GenerateStreamResponse m;
  std::vector<int> streamed;
  int messages = 0;
  v1::FinishReason last = v1::FINISH_REASON_UNSPECIFIED;
  while (reader->Read(&m)) {
    ++messages;
    streamed.insert(streamed.end(), m.token_ids().begin(), m.token_ids().end());
    last = m.finish_reason();
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(streamed, Tokens(resp));
  EXPECT_GE(messages, 2);
  EXPECT_EQ(last, v1::FINISH_REASON_LENGTH);

  // Text prompt and stop conditions.
  GenerateRequest stop = Ids({20, 21}, 10);
  stop.add_stop_token_ids(25);
  ASSERT_TRUE(c.Generate(stop, &resp).ok());
  EXPECT_EQ(Tokens(resp), (std::vector<int>{22, 23, 24, 25}));
  EXPECT_EQ(resp.finish_reason(), v1::FINISH_REASON_STOP);
  // The counting model has no tokenizer: ids only, no text (text prompts,
  // stop strings and output text are covered by tests/python/text_serving_test.py).
  EXPECT_EQ(resp.text(), "");

  const v1::ModelInfo info = c.Info();
  EXPECT_EQ(info.tokenizer(), "");
  EXPECT_EQ(info.eos_token_id(), -1);
  // The backend the server was asked for (TINYGPT_TEST_SERVER_FLAGS may say --device=cuda).
  const bool cuda = [] {
    for (const auto& f : testing::ExtraServerFlags())
      if (f == "--device=cuda") return true;
    return false;
  }();
  EXPECT_EQ(info.backend(), cuda ? "cuda" : "cpu");
  EXPECT_EQ(info.vocab_size(), 64);
  EXPECT_EQ(info.max_seq_len(), 64);
  EXPECT_NE(info.config_json().find("\"n_layers\":3"), std::string::npos);

  auto health = grpc::health::v1::Health::NewStub(c.channel);
  for (const char* service : {"", "tinygpt.v1.Generation"}) {
    grpc::ClientContext hctx;
    grpc::health::v1::HealthCheckRequest hreq;
    hreq.set_service(service);
    grpc::health::v1::HealthCheckResponse hresp;
    ASSERT_TRUE(health->Check(&hctx, hreq, &hresp).ok()) << service;
    EXPECT_EQ(hresp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  }

  auto reflection = grpc::reflection::v1alpha::ServerReflection::NewStub(c.channel);
  grpc::ClientContext rctx;
  auto stream = reflection->ServerReflectionInfo(&rctx);
  grpc::reflection::v1alpha::ServerReflectionRequest rreq;
  rreq.set_list_services("*");
  ASSERT_TRUE(stream->Write(rreq));
  stream->WritesDone();
  grpc::reflection::v1alpha::ServerReflectionResponse rresp;
  ASSERT_TRUE(stream->Read(&rresp));
  std::vector<std::string> names;
  for (const auto& s : rresp.list_services_response().service()) names.push_back(s.name());
  EXPECT_NE(std::find(names.begin(), names.end(), "tinygpt.v1.Generation"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "grpc.health.v1.Health"), names.end());
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(server.Stop(), 0);
}

// 64 requests of mixed prompt and output lengths, greedy and sampled: run
// together, each gives exactly what it gives alone.
std::vector<GenerateRequest> MixedRequests(int n, int vocab, uint64_t seed) {
  std::mt19937 rng(seed);
  std::vector<GenerateRequest> reqs;
  for (int i = 0; i < n; ++i) {
    const int plen = 1 + rng() % 40;
    std::vector<int> ids;
    for (int k = 0; k < plen; ++k) ids.push_back(rng() % vocab);
    GenerateRequest r = Ids(ids, 1 + rng() % (63 - plen));
    if (i % 2) {
      r.set_temperature(0.8f + 0.1f * (i % 5));
      r.set_top_k(i % 3 == 0 ? 0 : 10);
      r.mutable_top_p()->set_value(i % 4 == 1 ? 0.9f : 1.f);
      r.set_seed(1000 + i);
    }
    reqs.push_back(r);
  }
  return reqs;
}

std::vector<std::vector<int>> RunConcurrently(Client& c, const std::vector<GenerateRequest>& reqs) {
  std::vector<std::future<std::vector<int>>> futures;
  for (const auto& r : reqs)
    futures.push_back(std::async(std::launch::async, [&c, r] {
      GenerateResponse resp;
      const grpc::Status s = c.Generate(r, &resp, 120000);
      EXPECT_TRUE(s.ok()) << s.error_message();
      return Tokens(resp);
    }));
  std::vector<std::vector<int>> out;
  for (auto& f : futures) out.push_back(f.get());
  return out;
}

TEST(Server, BatchingNeverChangesResults) {
  ServerProcess server({});
  Client c(server.address());
  const auto reqs = MixedRequests(64, 64, 7);
  std::vector<std::vector<int>> alone;
  for (const auto& r : reqs) {
    GenerateResponse resp;
    ASSERT_TRUE(c.Generate(r, &resp).ok());
    ASSERT_EQ(resp.token_ids_size(), r.max_new_tokens());
    alone.push_back(Tokens(resp));
  }
  const auto together = RunConcurrently(c, reqs);
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(together[i], alone[i]) << "request " << i;
  EXPECT_TRUE(c.WaitAllBlocksFree());
  EXPECT_EQ(server.Stop(), 0);
}

// A client that has heard its call end finds, at once and without polling,
// its KV blocks free and nothing running: the scheduler publishes what
// GetModelInfo reports before it wakes the calls it ended (it once woke them
// first, and nonfinite_test caught a stale count on a loaded CI machine).
TEST(Server, EndedCallsBlocksAreFreeWhenTheClientHearsOfIt) {
  ServerProcess server({});
  Client c(server.address());
  for (int i = 0; i < 100; ++i) {
    GenerateResponse resp;
    ASSERT_TRUE(c.Generate(Ids({1 + i % 50, 2, 3}, 1 + i % 7), &resp).ok());
    const v1::ModelInfo info = c.Info();
    ASSERT_EQ(info.kv_blocks_free(), info.kv_blocks_total()) << "after request " << i;
    ASSERT_EQ(info.running_seqs(), 0) << "after request " << i;
  }
  EXPECT_EQ(server.Stop(), 0);
}

// A cache of 8 blocks (128 tokens) for 24 requests of up to 64 tokens: the
// scheduler must preempt, and every output must still be exact.
TEST(Server, PreemptionKeepsOutputsCorrect) {
  const auto reqs = MixedRequests(24, 64, 9);
  std::vector<std::vector<int>> alone;
  {
    ServerProcess big({});
    Client c(big.address());
    for (const auto& r : reqs) {
      GenerateResponse resp;
      ASSERT_TRUE(c.Generate(r, &resp).ok());
      alone.push_back(Tokens(resp));
    }
  }
  // The step delay keeps all 24 in flight together, so the cache must overflow.
  ServerProcess small({"--kv-cache-tokens=128", "--max-seqs=16", "--debug-step-delay-ms=2"});
  Client c(small.address());
  EXPECT_EQ(c.Info().kv_blocks_total(), 8);
  const auto together = RunConcurrently(c, reqs);
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(together[i], alone[i]) << "request " << i;
  EXPECT_GT(c.Info().preemptions(), 0);
  EXPECT_TRUE(c.WaitAllBlocksFree());
  // A request that can never fit the cache is refused up front.
  GenerateResponse resp;
  GenerateRequest huge = Ids({1}, 62);
  ServerProcess tiny({"--kv-cache-tokens=32"});
  Client t(tiny.address());
  const grpc::Status s = t.Generate(huge, &resp);
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("max_new_tokens"), std::string::npos) << s.error_message();
}

TEST(Server, KvCacheSizedByMemoryFraction) {
  ServerProcess small({"--kv-cache-fraction=0.00001"});
  Client c(small.address());
  const v1::ModelInfo info = c.Info();
  EXPECT_GT(info.kv_blocks_total(), 0);
  EXPECT_LT(info.kv_blocks_total(), 256);  // the default would be 64 x 64 tokens = 256 blocks
  GenerateResponse resp;
  ASSERT_TRUE(c.Generate(Ids({1, 2}, 4), &resp).ok());
  EXPECT_EQ(Tokens(resp), (std::vector<int>{3, 4, 5, 6}));
}

TEST(Server, CancellationAndDeadlineFreeBlocks) {
  ServerProcess server({"--debug-step-delay-ms=20"});
  Client c(server.address());
  {
    grpc::ClientContext ctx;
    auto reader = c.stub->GenerateStream(&ctx, Ids({1, 2, 3}, 50));
    v1::GenerateStreamResponse m;
    ASSERT_TRUE(reader->Read(&m));  // mid-stream...
    EXPECT_LT(c.Info().kv_blocks_free(), c.Info().kv_blocks_total());
    ctx.TryCancel();  // ...the client goes away
    while (reader->Read(&m)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::CANCELLED);
  }
  EXPECT_TRUE(c.WaitAllBlocksFree());
  GenerateResponse resp;
  EXPECT_EQ(c.Generate(Ids({1, 2, 3}, 50), &resp, /*deadline_ms=*/100).error_code(), grpc::DEADLINE_EXCEEDED);
  EXPECT_TRUE(c.WaitAllBlocksFree());
  // Still serving.
  ASSERT_TRUE(c.Generate(Ids({5}, 2), &resp).ok());
  EXPECT_EQ(Tokens(resp), (std::vector<int>{6, 7}));
}

TEST(Server, InvalidInputsGetInvalidArgumentNamingTheField) {
  ServerProcess server({"--max-new-tokens-limit=40", "--max-request-bytes=2048"});
  Client c(server.address());
  struct Case {
    GenerateRequest req;
    std::string field;
  };
  std::vector<Case> cases;
  cases.push_back({Ids({}, 5), "prompt"});
  GenerateRequest empty_text;
  empty_text.set_text("");
  empty_text.set_max_new_tokens(5);
  cases.push_back({empty_text, "prompt"});
  cases.push_back({Ids({1, 64}, 5), "prompt: token id 64"});
  cases.push_back({Ids({1, -1}, 5), "prompt: token id -1"});
  cases.push_back({Ids(std::vector<int>(64, 1), 1), "prompt"});
  cases.push_back({Ids({1}, 0), "max_new_tokens"});
  cases.push_back({Ids({1}, -3), "max_new_tokens"});
  cases.push_back({Ids({1}, 41), "max_new_tokens"});     // over the server limit
  cases.push_back({Ids(std::vector<int>(30, 1), 38), "max_new_tokens"});  // beyond the context
  GenerateRequest r = Ids({1}, 5);
  r.set_temperature(-0.5f);
  cases.push_back({r, "temperature"});
  r = Ids({1}, 5);
  r.mutable_top_p()->set_value(0.f);
  cases.push_back({r, "top_p"});
  r.mutable_top_p()->set_value(1.5f);
  cases.push_back({r, "top_p"});
  r = Ids({1}, 5);
  r.set_top_k(-1);
  cases.push_back({r, "top_k"});
  r = Ids({1}, 5);
  r.add_stop_token_ids(99);
  cases.push_back({r, "stop"});
  GenerateRequest text;  // no tokenizer to encode it with
  text.set_text("01");
  text.set_max_new_tokens(3);
  cases.push_back({text, "prompt: this model has no tokenizer"});
  r = Ids({1}, 5);
  r.add_stop("+,");
  cases.push_back({r, "stop: this model has no tokenizer"});
  r = Ids({1}, 5);
  r.set_request_id(std::string(4096, 'x'));
  cases.push_back({r, "request"});  // oversize
  for (const auto& k : cases) {
    GenerateResponse resp;
    const grpc::Status s = c.Generate(k.req, &resp);
    EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT) << k.field << ": " << s.error_message();
    EXPECT_EQ(s.error_message().rfind(k.field, 0), 0u) << "message '" << s.error_message() << "' should start with " << k.field;
  }
  // Garbage on the wire never crashes the server.
  GenerateResponse resp;
  EXPECT_TRUE(c.Generate(Ids({3}, 2), &resp).ok());
  EXPECT_EQ(server.Stop(), 0);
}

TEST(Server, QueueOverflowGivesResourceExhausted) {
  ServerProcess server({"--max-queue=2", "--max-seqs=1", "--debug-step-delay-ms=40"});
  Client c(server.address());
  // One request holds the only running slot: its first streamed token proves the
  // engine took it out of the waiting queue (50 steps of 40 ms keep it there).
  grpc::ClientContext sctx;
  auto running = c.stub->GenerateStream(&sctx, Ids({1, 2}, 50));
  v1::GenerateStreamResponse m;
  ASSERT_TRUE(running->Read(&m));
  // Nine more arrive together: exactly two fit the queue, the rest are refused.
  std::vector<std::future<grpc::StatusCode>> futures;
  for (int i = 0; i < 9; ++i)
    futures.push_back(std::async(std::launch::async, [&c] {
      GenerateResponse resp;
      return c.Generate(Ids({1, 2}, 5), &resp).error_code();
    }));
  int ok = 0, exhausted = 0;
  for (auto& f : futures) {
    const grpc::StatusCode code = f.get();
    ok += code == grpc::OK;
    exhausted += code == grpc::RESOURCE_EXHAUSTED;
  }
  while (running->Read(&m)) {
  }
  EXPECT_TRUE(running->Finish().ok());
  EXPECT_EQ(ok, 2);
  EXPECT_EQ(exhausted, 7);
  EXPECT_TRUE(c.WaitAllBlocksFree());
}

// Issue 13's overload check, kept: 500 streams at once against a queue of 256
// end only OK (with every token) or RESOURCE_EXHAUSTED, and the cache empties.
// 64 running sequences (the CPU default; CUDA's 256 would take every stream
// that the queue does not).
TEST(Server, FiveHundredStreamsOverQueue256GiveOnlyOkOrResourceExhausted) {
  ServerProcess server({"--max-queue=256", "--max-seqs=64", "--debug-step-delay-ms=10"});
  Client c(server.address());
  constexpr int kStreams = 500, kTokens = 20;
  std::vector<std::future<std::pair<grpc::StatusCode, int>>> futures;
  for (int i = 0; i < kStreams; ++i)
    futures.push_back(std::async(std::launch::async, [&c, i] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
      auto reader = c.stub->GenerateStream(&ctx, Ids({i % 40, i % 40 + 1}, kTokens));
      v1::GenerateStreamResponse m;
      int tokens = 0;
      while (reader->Read(&m)) tokens += m.token_ids_size();
      return std::pair{reader->Finish().error_code(), tokens};
    }));
  int ok = 0, exhausted = 0, other = 0, short_ok = 0;
  for (auto& f : futures) {
    const auto [code, tokens] = f.get();
    if (code == grpc::OK) {
      ++ok;
      short_ok += tokens != kTokens;
    } else if (code == grpc::RESOURCE_EXHAUSTED) {
      ++exhausted;
    } else {
      ++other;
    }
  }
  EXPECT_EQ(other, 0);
  EXPECT_EQ(short_ok, 0);
  EXPECT_EQ(ok + exhausted, kStreams);
  EXPECT_GE(ok, 256) << "the queue alone holds 256";
  EXPECT_GT(exhausted, 0) << "500 at once with 10 ms steps must overflow a queue of 256";
  EXPECT_TRUE(c.WaitAllBlocksFree(std::chrono::milliseconds(10000)));
  EXPECT_EQ(c.Info().waiting_seqs(), 0);
  GenerateResponse resp;
  ASSERT_TRUE(c.Generate(Ids({5}, 2), &resp).ok());
  EXPECT_EQ(Tokens(resp), (std::vector<int>{6, 7}));
}

// Issue 13's cancellation check, kept: 300 streams cancelled mid-way (50 at a
// time) return every KV block, and nothing is left running or waiting.
TEST(Server, ThreeHundredCancelledStreamsReturnEveryKvBlock) {
  ServerProcess server({"--debug-step-delay-ms=5"});
  Client c(server.address());
  const int total_blocks = c.Info().kv_blocks_total();
  int cancelled = 0, first_token = 0;
  for (int wave = 0; wave < 6; ++wave) {
    std::vector<std::future<std::pair<grpc::StatusCode, bool>>> futures;
    for (int i = 0; i < 50; ++i)
      futures.push_back(std::async(std::launch::async, [&c, i] {
        grpc::ClientContext ctx;
        auto reader = c.stub->GenerateStream(&ctx, Ids({i % 30, i % 30 + 1, i % 30 + 2}, 60));
        v1::GenerateStreamResponse m;
        const bool got = reader->Read(&m);  // mid-stream: it holds blocks now
        ctx.TryCancel();
        while (reader->Read(&m)) {
        }
        return std::pair{reader->Finish().error_code(), got};
      }));
    for (auto& f : futures) {
      const auto [code, got] = f.get();
      cancelled += code == grpc::CANCELLED;
      first_token += got;
    }
  }
  EXPECT_EQ(cancelled, 300);
  EXPECT_EQ(first_token, 300);
  EXPECT_TRUE(c.WaitAllBlocksFree(std::chrono::milliseconds(10000)));
  const v1::ModelInfo info = c.Info();
  EXPECT_EQ(info.kv_blocks_free(), total_blocks);
  EXPECT_EQ(info.running_seqs(), 0);
  EXPECT_EQ(info.waiting_seqs(), 0);
}

TEST(Server, SigtermDrainsInFlightRequestsAndExitsZero) {
  ServerProcess server({"--debug-step-delay-ms=10", "--drain-timeout=20"});
  Client c(server.address());
  std::vector<std::future<std::pair<grpc::StatusCode, int>>> futures;
  for (int i = 0; i < 16; ++i)
    futures.push_back(std::async(std::launch::async, [&c, i] {
      GenerateResponse resp;
      const grpc::Status s = c.Generate(Ids({i}, 30), &resp);
      return std::pair{s.error_code(), resp.token_ids_size()};
    }));
  // Wait until all 16 are admitted, then ask the server to stop.
  for (int tries = 0; tries < 400 && c.Info().running_seqs() < 16; ++tries) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  kill(server.pid(), SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto health = grpc::health::v1::Health::NewStub(c.channel);
  grpc::ClientContext hctx;
  grpc::health::v1::HealthCheckResponse hresp;
  ASSERT_TRUE(health->Check(&hctx, {}, &hresp).ok());
  EXPECT_EQ(hresp.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  GenerateResponse late;
  EXPECT_EQ(c.Generate(Ids({1}, 2), &late).error_code(), grpc::UNAVAILABLE);
  for (auto& f : futures) {
    const auto [code, n] = f.get();
    EXPECT_EQ(code, grpc::OK);
    EXPECT_EQ(n, 30);
  }
  EXPECT_EQ(server.Stop(0), 0);  // signal 0: just wait for the exit
}

}  // namespace
}  // namespace tinygpt
