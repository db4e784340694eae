// Calls that ended without their one request message, waiting to learn why.
// gRPC ends a call itself when its message is over the receive limit (the
// client gets RESOURCE_EXHAUSTED from gRPC), and the server's context shows
// it cancelled a moment later: about 1 ms on an idle loopback, over 100 ms on
// a loaded 2-core machine. A client that half-closes without a message leaves
// the call live. So each such call is watched for up to 2 s for the cancel;
// one thread watches them all, so that a flood of empty calls costs a list
// entry each, not a thread.
#pragma once
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tinygpt {

// gRPC does not tell a server why a call was cancelled: a client whose
// deadline ran out sends the same cancel as one that gave up. The server's
// copy of the deadline starts when it reads the headers, so the client's
// cancel reaches it a little before that copy passes: by the one-way latency,
// and by however much later the server read the headers than the cancel
// (hundreds of milliseconds on a loaded 2-core machine). A cancel that comes
// this close to the server's deadline, or after it, is taken for the
// deadline; one earlier for the client's own.
inline constexpr std::chrono::milliseconds kDeadlineSlack{250};
inline bool NearDeadline(const grpc::ServerContextBase& ctx, std::chrono::system_clock::time_point at) {
  return ctx.deadline() - at < kDeadlineSlack;
}

class NoMessageWaiter {
 public:
  using Done = std::function<void(grpc::Status)>;
  static constexpr std::chrono::seconds kWait{2};

  NoMessageWaiter() : thread_([this] { Run(); }) {}
  ~NoMessageWaiter() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }

  // Calls done(status) once the call shows cancelled or kWait has passed (on
  // this class's thread); ctx must stay valid until then. `read_failed`: when
  // the read of the message failed.
  void Add(const grpc::ServerContextBase* ctx, std::chrono::system_clock::time_point read_failed, Done done) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_.push_back({ctx, read_failed, std::chrono::steady_clock::now() + kWait, std::move(done)});
    }
    cv_.notify_one();
  }

  // Why a call ended without its message, given whether it shows cancelled
  // and when its read failed. A client sends its message with its headers,
  // so a read that failed with no deadline near was not the client giving up
  // on its deadline: gRPC refused the message (over the receive limit). The
  // time of the failed read decides, not the time the cancel shows (up to
  // kWait later, past a short deadline: a 4 MiB + 1 request with a 0.5 s
  // deadline was counted DEADLINE_EXCEEDED while its client got
  // RESOURCE_EXHAUSTED).
  static grpc::Status StatusOf(const grpc::ServerContextBase& ctx, bool cancelled,
                               std::chrono::system_clock::time_point read_failed) {
    if (!cancelled) return grpc::Status(grpc::INVALID_ARGUMENT, "request: no message");
    if (NearDeadline(ctx, read_failed)) return grpc::Status(grpc::DEADLINE_EXCEEDED, "deadline exceeded");
    return grpc::Status(grpc::RESOURCE_EXHAUSTED, "request: message over the receive limit (refused by gRPC)");
  }

 private:
  struct Entry {
    const grpc::ServerContextBase* ctx;
    std::chrono::system_clock::time_point read_failed;
    std::chrono::steady_clock::time_point give_up;
    Done done;
  };

  void Run() {
    std::vector<std::pair<Done, grpc::Status>> ready;
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [&] { return stop_ || !pending_.empty(); });
      if (pending_.empty()) return;  // stopping
      // At shutdown gRPC cancels every call still open, so the rest resolve
      // within the loop below.
      const auto now = std::chrono::steady_clock::now();
      for (auto it = pending_.begin(); it != pending_.end();) {
        const bool cancelled = it->ctx->IsCancelled();
        if (cancelled || now >= it->give_up) {
          ready.emplace_back(std::move(it->done), StatusOf(*it->ctx, cancelled, it->read_failed));
          it = pending_.erase(it);
        } else {
          ++it;
        }
      }
      lock.unlock();
      for (auto& [done, status] : ready) done(std::move(status));  // may end the call: ctx is not touched after
      ready.clear();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Entry> pending_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace tinygpt
