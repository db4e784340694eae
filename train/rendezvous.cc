#include "train/rendezvous.h"

#include <poll.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <chrono>
#include <cstdint>
#include <map>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace tinygpt {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

constexpr char kMagic[] = "tinygpt-rendezvous 1";
constexpr uint32_t kMaxFrame = 1 << 20;  // a hello, an answer or a broadcast id: bytes, not megabytes

// Runs the io_context's handlers until *done or the deadline; false at the
// deadline (the caller then closes the sockets and calls Drain).
bool RunUntil(asio::io_context& io, const bool& done, absl::Time deadline) {
  io.restart();
  while (!done) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    io.run_one_for(std::chrono::milliseconds(absl::ToInt64Milliseconds(left) + 1));
  }
  return true;
}
// Runs the handlers of cancelled operations to their end (they refer to the
// caller's locals).
void Drain(asio::io_context& io) {
  io.restart();
  io.run();
}
// RunUntil for an operation on `s`: at the deadline, closes s (cancelling
// the operation) and drains; false then.
bool RunOnSocket(asio::io_context& io, tcp::socket& s, const bool& done, absl::Time deadline) {
  if (RunUntil(io, done, deadline)) return true;
  s.close();
  Drain(io);
  return false;
}

// One frame: 4 bytes of length (little-endian), then the bytes.
absl::Status WriteFrame(asio::io_context& io, tcp::socket& s, const std::string& bytes, absl::Time deadline) {
  const uint32_t n = static_cast<uint32_t>(bytes.size());
  const unsigned char head[4] = {static_cast<unsigned char>(n), static_cast<unsigned char>(n >> 8), static_cast<unsigned char>(n >> 16),
                                 static_cast<unsigned char>(n >> 24)};
  const std::vector<asio::const_buffer> bufs = {asio::buffer(head), asio::buffer(bytes)};
  bool done = false;
  boost::system::error_code error;
  asio::async_write(s, bufs, [&](const boost::system::error_code& ec, size_t) {
    error = ec;
    done = true;
  });
  if (!RunOnSocket(io, s, done, deadline)) return absl::DeadlineExceededError("the write did not finish in time");
  if (error) return absl::UnavailableError(error.message());
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFrame(asio::io_context& io, tcp::socket& s, absl::Time deadline) {
  unsigned char head[4];
  std::string body;
  bool done = false;
  boost::system::error_code error;
  asio::async_read(s, asio::buffer(head), [&](const boost::system::error_code& ec, size_t) {
    if (ec) {
      error = ec;
      done = true;
      return;
    }
    const uint32_t n = head[0] | head[1] << 8 | head[2] << 16 | static_cast<uint32_t>(head[3]) << 24;
    if (n > kMaxFrame) {
      error = asio::error::message_size;
      done = true;
      return;
    }
    body.resize(n);
    asio::async_read(s, asio::buffer(body), [&](const boost::system::error_code& ec2, size_t) {
      error = ec2;
      done = true;
    });
  });
  if (!RunOnSocket(io, s, done, deadline)) return absl::DeadlineExceededError("nothing came in time");
  if (error == asio::error::eof) return absl::UnavailableError("the connection closed");
  if (error) return absl::UnavailableError(error.message());
  return body;
}

// host:port, or [v6 address]:port.
absl::Status SplitAddr(const std::string& addr, std::string* host, std::string* port) {
  const size_t colon = addr.rfind(':');
  int p = 0;
  if (colon == std::string::npos || colon == 0 || !absl::SimpleAtoi(addr.substr(colon + 1), &p) || p <= 0 || p > 65535)
    return absl::InvalidArgumentError(absl::StrCat("--init-addr '", addr, "' is not host:port"));
  *host = addr.substr(0, colon);
  if (host->size() > 2 && host->front() == '[' && host->back() == ']') *host = host->substr(1, host->size() - 2);
  *port = addr.substr(colon + 1);
  return absl::OkStatus();
}

std::string HostName() {
  char name[256] = {0};
  if (gethostname(name, sizeof(name) - 1) != 0) return "localhost";
  return name;
}

class AsioRendezvous final : public Rendezvous {
 public:
  explicit AsioRendezvous(const RendezvousOptions& o) : o_(o) {}
  int rank() const override { return o_.rank; }
  int world_size() const override { return o_.world_size; }
  int local_rank() const override { return local_rank_; }

  absl::Status Start() {
    std::string host, port;
    if (auto s = SplitAddr(o_.addr, &host, &port); !s.ok()) return s;
    if (o_.host.empty()) o_.host = HostName();
    return o_.rank == 0 ? Gather(host, port) : Call(host, port);
  }

  absl::Status Broadcast(std::string* bytes) override {
    const absl::Time deadline = absl::Now() + o_.timeout;
    if (o_.rank == 0) {
      for (int r = 1; r < o_.world_size; ++r)
        if (auto s = WriteFrame(io_, *peers_[r], *bytes, deadline); !s.ok())
          return absl::UnavailableError(absl::StrCat("rendezvous: rank 0 cannot reach rank ", r, ": ", s.message()));
      return absl::OkStatus();
    }
    auto got = ReadFrame(io_, *peers_[0], deadline);
    if (!got.ok()) return absl::UnavailableError(absl::StrCat("rendezvous: rank ", o_.rank, " heard nothing from rank 0: ", got.status().message()));
    *bytes = std::move(*got);
    return absl::OkStatus();
  }

  absl::Status CheckPeers() override {
    for (size_t r = 0; r < peers_.size(); ++r) {
      if (!peers_[r]) continue;
      pollfd p{peers_[r]->native_handle(), POLLIN | POLLRDHUP, 0};
      if (::poll(&p, 1, 0) <= 0) continue;  // nothing to read: still there
      boost::system::error_code ec;
      const size_t pending = peers_[r]->available(ec);
      if (ec || (p.revents & (POLLHUP | POLLERR | POLLRDHUP)) || pending == 0)
        return absl::UnavailableError(o_.rank == 0 ? absl::StrCat("rank ", r, " has left the run (its connection to rank 0 closed)")
                                                   : absl::StrCat("rank 0 has left the run (rank ", o_.rank, "'s connection to it closed)"));
    }
    return absl::OkStatus();
  }

 private:
  // Rank 0: every other rank's hello, then each one's answer.
  absl::Status Gather(const std::string& host, const std::string& port) {
    const absl::Time deadline = absl::Now() + o_.timeout;
    boost::system::error_code ec;
    // Listen on every address of the host's family, as torchrun's store does:
    // --init-addr names how the others reach rank 0, which may be a name of
    // this machine that resolves elsewhere (a load balancer, a service).
    tcp::resolver resolver(io_);
    auto found = resolver.resolve(host, port, ec);
    const bool v6 = !ec && found.begin() != found.end() && found.begin()->endpoint().address().is_v6();
    tcp::acceptor acceptor(io_);
    const tcp::endpoint any(v6 ? tcp::v6() : tcp::v4(), static_cast<unsigned short>(std::stoi(port)));
    acceptor.open(any.protocol(), ec);
    if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acceptor.bind(any, ec);
    if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return absl::UnavailableError(absl::StrCat("rendezvous: rank 0 cannot listen on port ", port, ": ", ec.message()));
    peers_.resize(o_.world_size);
    std::vector<std::string> hosts(o_.world_size);
    hosts[0] = o_.host;
    int joined = 1;
    // Every rank that came (and `also`, the one being refused) hears why the
    // run does not start.
    auto fail = [&](const std::string& why, tcp::socket* also = nullptr) {
      for (auto& p : peers_)
        if (p) (void)WriteFrame(io_, *p, "error " + why, absl::Now() + absl::Seconds(2));
      if (also) (void)WriteFrame(io_, *also, "error " + why, absl::Now() + absl::Seconds(2));
      return absl::FailedPreconditionError(why);
    };
    while (joined < o_.world_size) {
      auto sock = std::make_unique<tcp::socket>(io_);
      bool done = false;
      boost::system::error_code aerr;
      acceptor.async_accept(*sock, [&](const boost::system::error_code& e) {
        aerr = e;
        done = true;
      });
      if (!RunUntil(io_, done, deadline)) {
        acceptor.close();
        Drain(io_);
        std::vector<std::string> missing;
        for (int r = 1; r < o_.world_size; ++r)
          if (!peers_[r]) missing.push_back(std::to_string(r));
        return fail(absl::StrCat("rendezvous at ", o_.addr, ": after ", absl::FormatDuration(o_.timeout), ", ", joined, " of ",
                                 o_.world_size, " ranks had come (missing: ", absl::StrJoin(missing, ", "), ")"));
      }
      if (aerr) continue;
      auto hello = ReadFrame(io_, *sock, std::min(deadline, absl::Now() + absl::Seconds(10)));
      if (!hello.ok()) continue;  // not a rank (a port scan, a health check): wait for the next
      const std::vector<std::string> f = absl::StrSplit(*hello, absl::MaxSplits('\n', 4));
      int r = -1, world = 0;
      if (f.size() != 5 || f[0] != kMagic || !absl::SimpleAtoi(f[1], &r) || !absl::SimpleAtoi(f[2], &world)) {
        (void)WriteFrame(io_, *sock, "error not a tinygpt rendezvous hello", absl::Now() + absl::Seconds(2));
        continue;
      }
      if (world != o_.world_size)
        return fail(absl::StrCat("rank ", r, " (host ", f[3], ") says the world has ", world, " ranks, rank 0 says ", o_.world_size,
                                 ": give every rank the same --world-size"),
                    sock.get());
      if (r < 1 || r >= o_.world_size)
        return fail(absl::StrCat("a rank says it is rank ", r, ", outside 1..", o_.world_size - 1), sock.get());
      if (peers_[r]) return fail(absl::StrCat("two ranks say they are rank ", r, " (hosts ", hosts[r], " and ", f[3], ")"), sock.get());
      if (f[4] != o_.fingerprint)
        return fail(absl::StrCat("rank ", r, " (host ", f[3], ") was started with other training flags than rank 0:\n  rank 0: ",
                                 o_.fingerprint, "\n  rank ", r, ": ", f[4]),
                    sock.get());
      peers_[r] = std::move(sock);
      hosts[r] = f[3];
      ++joined;
    }
    std::map<std::string, int> seen;
    for (int r = 0; r < o_.world_size; ++r) {
      const int local = seen[hosts[r]]++;
      if (r == 0) {
        local_rank_ = local;
      } else if (auto s = WriteFrame(io_, *peers_[r], absl::StrCat("ok ", local), deadline); !s.ok()) {
        return fail(absl::StrCat("rendezvous: rank 0 cannot answer rank ", r, ": ", s.message()));
      }
    }
    return absl::OkStatus();
  }

  // Another rank: connect to rank 0 (retrying until it listens), say who
  // this is, hear the answer.
  absl::Status Call(const std::string& host, const std::string& port) {
    const absl::Time deadline = absl::Now() + o_.timeout;
    std::string last_error = "no attempt";
    auto sock = std::make_unique<tcp::socket>(io_);
    for (;;) {
      boost::system::error_code ec;
      tcp::resolver resolver(io_);
      auto found = resolver.resolve(host, port, ec);
      if (!ec) {
        bool done = false;
        asio::async_connect(*sock, found, [&](const boost::system::error_code& e, const tcp::endpoint&) {
          ec = e;
          done = true;
        });
        if (!RunOnSocket(io_, *sock, done, std::min(deadline, absl::Now() + absl::Seconds(5)))) ec = asio::error::timed_out;
        if (!ec) break;
      }
      last_error = ec.message();
      sock = std::make_unique<tcp::socket>(io_);
      if (absl::Now() + absl::Milliseconds(200) >= deadline)
        return absl::DeadlineExceededError(absl::StrCat("rendezvous: rank ", o_.rank, " found no rank 0 at ", o_.addr, " in ",
                                                        absl::FormatDuration(o_.timeout), " (last: ", last_error, ")"));
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    const std::string hello = absl::StrCat(kMagic, "\n", o_.rank, "\n", o_.world_size, "\n", o_.host, "\n", o_.fingerprint);
    if (auto s = WriteFrame(io_, *sock, hello, deadline); !s.ok())
      return absl::UnavailableError(absl::StrCat("rendezvous: rank ", o_.rank, " cannot talk to rank 0 at ", o_.addr, ": ", s.message()));
    auto answer = ReadFrame(io_, *sock, deadline);
    if (!answer.ok())
      return absl::UnavailableError(absl::StrCat("rendezvous: rank ", o_.rank, " got no answer from rank 0 at ", o_.addr, ": ",
                                                 answer.status().message()));
    if (absl::StartsWith(*answer, "error ")) return absl::FailedPreconditionError(answer->substr(6));
    if (!absl::StartsWith(*answer, "ok ") || !absl::SimpleAtoi(answer->substr(3), &local_rank_))
      return absl::InternalError(absl::StrCat("rendezvous: rank 0 answered '", *answer, "'"));
    peers_.resize(1);
    peers_[0] = std::move(sock);
    return absl::OkStatus();
  }

  RendezvousOptions o_;
  asio::io_context io_;
  std::vector<std::unique_ptr<tcp::socket>> peers_;  // rank 0: [r] for r >= 1; the others: [0], rank 0
  int local_rank_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Rendezvous>> Rendezvous::Join(const RendezvousOptions& options) {
  if (options.world_size < 1) return absl::InvalidArgumentError("--world-size must be at least 1");
  if (options.rank < 0 || options.rank >= options.world_size)
    return absl::InvalidArgumentError(absl::StrCat("--rank ", options.rank, " is outside 0..", options.world_size - 1));
  auto r = std::make_unique<AsioRendezvous>(options);
  if (auto s = r->Start(); !s.ok()) return s;
  return std::unique_ptr<Rendezvous>(std::move(r));
}

}  // namespace tinygpt
