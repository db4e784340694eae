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
  // this class's thread); ctx must stay valid until then.
  void Add(const grpc::ServerContextBase* ctx, Done done) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_.push_back({ctx, std::chrono::steady_clock::now() + kWait, std::move(done)});
    }
    cv_.notify_one();
  }

  // Why a call ended without its message, given whether it shows cancelled.
  static grpc::Status StatusOf(const grpc::ServerContextBase& ctx, bool cancelled) {
    if (!cancelled) return grpc::Status(grpc::INVALID_ARGUMENT, "request: no message");
    // gRPC does not say why a call was cancelled. A client whose deadline
    // runs out sends a cancel slightly before the server's copy of that
    // deadline passes (the server's starts when the headers arrive); a
    // client sends its message with its headers, so one with no deadline
    // near has not cancelled: its message was refused.
    if (ctx.deadline() - std::chrono::system_clock::now() < std::chrono::seconds(1))
      return grpc::Status(grpc::DEADLINE_EXCEEDED, "deadline exceeded");
    return grpc::Status(grpc::RESOURCE_EXHAUSTED, "request: message over the receive limit (refused by gRPC)");
  }

 private:
  struct Entry {
    const grpc::ServerContextBase* ctx;
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
          ready.emplace_back(std::move(it->done), StatusOf(*it->ctx, cancelled));
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
