// The rendezvous of data-parallel ranks (train/rendezvous.h): ranks as
// threads of this process, over real loopback sockets.
#include "train/rendezvous.h"

#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"

namespace tinygpt {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// A port nothing listens on now (the kernel's choice, released at once).
int FreePort() {
  asio::io_context io;
  tcp::acceptor a(io, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
  return a.local_endpoint().port();
}

RendezvousOptions Rank(int rank, int world, int port, const std::string& host = "h", const std::string& fingerprint = "flags") {
  RendezvousOptions o;
  o.rank = rank;
  o.world_size = world;
  o.addr = absl::StrCat("127.0.0.1:", port);
  o.timeout = absl::Seconds(20);
  o.host = host;
  o.fingerprint = fingerprint;
  return o;
}

// Each rank's Join, run at once on threads.
std::vector<absl::StatusOr<std::unique_ptr<Rendezvous>>> JoinAll(const std::vector<RendezvousOptions>& ranks) {
  std::vector<std::future<absl::StatusOr<std::unique_ptr<Rendezvous>>>> f;
  for (const auto& o : ranks) f.push_back(std::async(std::launch::async, [o] { return Rendezvous::Join(o); }));
  std::vector<absl::StatusOr<std::unique_ptr<Rendezvous>>> out;
  for (auto& x : f) out.push_back(x.get());
  return out;
}

TEST(Rendezvous, RanksMeetGetLocalRanksByHostAndHearRankZerosBytes) {
  const int port = FreePort();
  // Ranks on two hosts, interleaved: each host's ranks count 0, 1 in rank order.
  auto r = JoinAll({Rank(0, 4, port, "a"), Rank(1, 4, port, "b"), Rank(2, 4, port, "a"), Rank(3, 4, port, "b")});
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(r[i].ok()) << "rank " << i << ": " << r[i].status();
  const int want_local[4] = {0, 0, 1, 1};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ((*r[i])->rank(), i);
    EXPECT_EQ((*r[i])->world_size(), 4);
    EXPECT_EQ((*r[i])->local_rank(), want_local[i]) << "rank " << i;
  }
  // A binary id (NCCL's is 128 bytes, zeros among them) reaches every rank whole.
  std::string id(128, '\0');
  for (int i = 0; i < 128; ++i) id[i] = static_cast<char>((i * 37) % 256);
  std::vector<std::future<absl::StatusOr<std::string>>> got;
  for (int i = 0; i < 4; ++i)
    got.push_back(std::async(std::launch::async, [&, i]() -> absl::StatusOr<std::string> {
      std::string bytes = i == 0 ? id : "stale";
      if (auto s = (*r[i])->Broadcast(&bytes); !s.ok()) return s;
      return bytes;
    }));
  for (int i = 0; i < 4; ++i) {
    auto b = got[i].get();
    ASSERT_TRUE(b.ok()) << "rank " << i << ": " << b.status();
    EXPECT_EQ(*b, id) << "rank " << i;
  }
  for (int i = 0; i < 4; ++i) EXPECT_TRUE((*r[i])->CheckPeers().ok()) << "rank " << i;
}

TEST(Rendezvous, ARankThatLeavesIsSeenAtOnce) {
  const int port = FreePort();
  auto r = JoinAll({Rank(0, 3, port), Rank(1, 3, port), Rank(2, 3, port)});
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(r[i].ok()) << r[i].status();
  EXPECT_TRUE((*r[0])->CheckPeers().ok());
  r[2]->reset();  // rank 2 dies: its sockets close
  absl::Status seen;
  for (int i = 0; i < 100 && seen.ok(); ++i) {
    seen = (*r[0])->CheckPeers();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_FALSE(seen.ok());
  EXPECT_NE(seen.message().find("rank 2 has left"), std::string::npos) << seen;
  EXPECT_TRUE((*r[1])->CheckPeers().ok());  // rank 1 sees rank 0 only, still there
  r[0]->reset();
  for (int i = 0; i < 100 && (seen = (*r[1])->CheckPeers()).ok(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_NE(seen.message().find("rank 0 has left"), std::string::npos) << seen;
}

TEST(Rendezvous, MismatchesAreRefusedWithTheReasonOnEveryRank) {
  {
    const int port = FreePort();
    auto r = JoinAll({Rank(0, 2, port, "h", "steps=2"), Rank(1, 2, port, "h", "steps=3")});
    ASSERT_FALSE(r[0].ok());
    ASSERT_FALSE(r[1].ok());
    for (auto& x : r) {
      EXPECT_NE(x.status().message().find("other training flags"), std::string::npos) << x.status();
      EXPECT_NE(x.status().message().find("steps=3"), std::string::npos) << x.status();
    }
  }
  {
    const int port = FreePort();
    auto r0 = std::async(std::launch::async, [&] { return Rendezvous::Join(Rank(0, 2, port)); });
    auto r1 = Rendezvous::Join(Rank(1, 3, port));
    EXPECT_FALSE(r1.ok());
    EXPECT_NE(r1.status().message().find("same --world-size"), std::string::npos) << r1.status();
    EXPECT_FALSE(r0.get().ok());
  }
  {
    const int port = FreePort();
    auto r = JoinAll({Rank(0, 3, port), Rank(1, 3, port, "x"), Rank(1, 3, port, "y")});
    EXPECT_FALSE(r[0].ok());
    EXPECT_NE(r[0].status().message().find("two ranks say they are rank 1"), std::string::npos) << r[0].status();
  }
}

TEST(Rendezvous, MissingRanksAndAMissingRankZeroTimeOutWithAMessage) {
  const int port = FreePort();
  RendezvousOptions o = Rank(0, 3, port);
  o.timeout = absl::Milliseconds(500);
  const absl::Time t0 = absl::Now();
  auto r = Rendezvous::Join(o);
  EXPECT_FALSE(r.ok());
  EXPECT_LT(absl::Now() - t0, absl::Seconds(5));
  EXPECT_NE(r.status().message().find("1 of 3 ranks had come (missing: 1, 2)"), std::string::npos) << r.status();

  RendezvousOptions lone = Rank(1, 2, FreePort());
  lone.timeout = absl::Milliseconds(500);
  auto r1 = Rendezvous::Join(lone);
  EXPECT_FALSE(r1.ok());
  EXPECT_NE(r1.status().message().find("found no rank 0"), std::string::npos) << r1.status();
}

TEST(Rendezvous, StrangersOnThePortDoNotStopTheRun) {
  const int port = FreePort();
  auto r0 = std::async(std::launch::async, [&] { return Rendezvous::Join(Rank(0, 2, port)); });
  // A port scan (connect, close) and a client speaking another protocol.
  asio::io_context io;
  for (int attempt = 0;; ++attempt) {
    tcp::socket s(io);
    boost::system::error_code ec;
    s.connect(tcp::endpoint(asio::ip::address_v4::loopback(), port), ec);
    if (!ec) {
      asio::write(s, asio::buffer(std::string("\x05\x00\x00\x00GET /", 9)), ec);
      break;
    }
    ASSERT_LT(attempt, 200) << "rank 0 never listened";
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  {
    tcp::socket s(io);
    s.connect(tcp::endpoint(asio::ip::address_v4::loopback(), port));
  }
  auto r1 = Rendezvous::Join(Rank(1, 2, port));
  EXPECT_TRUE(r1.ok()) << r1.status();
  auto r = r0.get();
  EXPECT_TRUE(r.ok()) << r.status();
}

TEST(Rendezvous, BadOptionsAreRefused) {
  EXPECT_EQ(Rendezvous::Join(Rank(2, 2, 1234)).status().code(), absl::StatusCode::kInvalidArgument);
  RendezvousOptions o = Rank(0, 2, 1234);
  o.addr = "no-port";
  EXPECT_EQ(Rendezvous::Join(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.addr = "host:99999";
  EXPECT_EQ(Rendezvous::Join(o).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tinygpt
