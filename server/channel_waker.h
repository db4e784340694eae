// Tells the readers of event channels that new tokens are there, off the
// scheduler thread. A reader is a unary RPC thread waiting on the channel (a
// futex wake-up of a few microseconds) or a stream reactor, which takes the
// tokens and starts a write (server/stream_reactor.cc). A step of 256 streams
// paid 256 of those in a row on the scheduler thread, which the GPU then
// waited for; the scheduler hands each step's channels over in one batch
// instead, and this thread serves them while the next step runs.
#pragma once
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "server/sequence.h"

namespace tinygpt {

class ChannelWaker {
 public:
  ChannelWaker() : thread_([this] { Run(); }) {}
  ~ChannelWaker() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  // Channels to wake, gathered over one step (scheduler thread only).
  void Add(const std::shared_ptr<EventChannel>& channel) { batch_.push_back(channel); }
  // Hands the gathered channels to the waker thread.
  void Flush() {
    if (batch_.empty()) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (pending_.empty()) pending_.swap(batch_);
      else pending_.insert(pending_.end(), batch_.begin(), batch_.end());
    }
    batch_.clear();
    cv_.notify_one();
  }

 private:
  void Run() {
    std::vector<std::shared_ptr<EventChannel>> work;
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !pending_.empty(); });
        if (pending_.empty()) return;  // stopping, nothing left to wake
        work.swap(pending_);
      }
      for (auto& channel : work) channel->Notify();
      work.clear();
    }
  }

  std::vector<std::shared_ptr<EventChannel>> batch_;  // scheduler thread
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<EventChannel>> pending_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace tinygpt
