// Tells the calls that read event channels that new tokens (or their end) are
// there, off the scheduler thread. Telling a call runs its reactor
// (server/call_reactor.cc), which takes the tokens, builds and serializes a
// message and starts its write: about 3.5 us per stream and step on this
// machine's CPU, so a step of 256 streams would cost the scheduler about a
// millisecond, as long as a decode step on the GPU. The scheduler hands each
// step's channels over in one batch instead, and these threads serve them
// while the next step runs; a stream whose reactor is still writing when
// more tokens come sends them together in its next message.
#pragma once
#include <pthread.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "server/sequence.h"

namespace tinygpt {

class ChannelWaker {
 public:
  // One thread per 4 cores, 1 to 4: a GPU host's 16 cores get 4, so that 256
  // streams take about a quarter of a millisecond per step.
  static int DefaultThreads() { return std::clamp(static_cast<int>(std::thread::hardware_concurrency()) / 4, 1, 4); }

  explicit ChannelWaker(int threads = DefaultThreads()) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
  }
  ~ChannelWaker() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  // Channels to tell, gathered over one step (scheduler thread only).
  void Add(const std::shared_ptr<EventChannel>& channel) { batch_.push_back(channel); }
  // Hands the gathered channels to the waker threads.
  void Flush() {
    if (batch_.empty()) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_.insert(pending_.end(), batch_.begin(), batch_.end());
    }
    batch_.clear();
    cv_.notify_all();
  }

 private:
  static constexpr size_t kChunk = 32;  // channels a thread takes at a time

  void Run() {
    pthread_setname_np(pthread_self(), "tg-notify");
    std::vector<std::shared_ptr<EventChannel>> work;
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !pending_.empty(); });
        if (pending_.empty()) return;  // stopping, nothing left to tell
        const size_t n = std::min(kChunk, pending_.size());  // oldest first
        work.assign(std::make_move_iterator(pending_.begin()), std::make_move_iterator(pending_.begin() + n));
        pending_.erase(pending_.begin(), pending_.begin() + n);
      }
      for (auto& channel : work) channel->Notify();
      work.clear();
    }
  }

  std::vector<std::shared_ptr<EventChannel>> batch_;  // scheduler thread
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<EventChannel>> pending_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace tinygpt
