// Per-op GPU time for profiling without a profiler (TINYGPT_CUDA_OP_TIMES):
// see OpTimes. Used by the CUDA backend (cuda_backend.cu) around each op.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace tinygpt::cuda {

// Per-op GPU time of the training ops, when TINYGPT_CUDA_OP_TIMES=N is set:
// events around each op on the stream, summed per op name and printed to
// stderr when the backend goes away (the device has no profiler we can
// use, and this tells where a training step's time goes). What ran before
// the N-th Synchronize() (the trainer's once per step: N-1 warm-up steps,
// whose first tunes the GEMMs) is left out.
class OpTimes {
 public:
  OpTimes() : enabled_(std::getenv("TINYGPT_CUDA_OP_TIMES") != nullptr) {
    if (enabled_) skip_syncs_ = std::atol(std::getenv("TINYGPT_CUDA_OP_TIMES"));
  }
  void OnSynchronize() {
    if (!enabled_ || ++syncs_ >= skip_syncs_) return;
    for (auto& e : pending_) cudaEventDestroy(e.a), cudaEventDestroy(e.b);
    pending_.clear();
  }
  struct Scope {
    OpTimes* t;
    const char* name;
    cudaStream_t stream;
    cudaEvent_t a = nullptr, b = nullptr;
    Scope(OpTimes* t_, const char* n, cudaStream_t s) : t(t_), name(n), stream(s) {
      if (!t->enabled_) return;
      cudaEventCreate(&a);
      cudaEventCreate(&b);
      cudaEventRecord(a, stream);
    }
    ~Scope() {
      if (!t->enabled_) return;
      cudaEventRecord(b, stream);
      t->pending_.push_back({name, a, b});
    }
  };
  void Print() {
    if (!enabled_) return;
    std::map<std::string, std::pair<double, long>> sum;
    double total = 0;
    for (auto& e : pending_) {
      cudaEventSynchronize(e.b);
      float ms = 0;
      cudaEventElapsedTime(&ms, e.a, e.b);
      sum[e.name].first += ms;
      sum[e.name].second += 1;
      total += ms;
      cudaEventDestroy(e.a);
      cudaEventDestroy(e.b);
    }
    pending_.clear();
    std::vector<std::pair<double, std::string>> order;
    for (auto& [name, v] : sum) order.push_back({v.first, name});
    std::sort(order.rbegin(), order.rend());
    std::fprintf(stderr, "CUDA op times (sum over the run, %.1f ms in ops):\n", total);
    for (auto& [ms, name] : order)
      std::fprintf(stderr, "  %-28s %10.2f ms %5.1f%%  %6ld calls\n", name.c_str(), ms, 100.0 * ms / total, sum[name].second);
  }

 private:
  struct Entry {
    const char* name;
    cudaEvent_t a, b;
  };
  bool enabled_;
  long skip_syncs_ = 0, syncs_ = 0;
  std::vector<Entry> pending_;
};

}  // namespace tinygpt::cuda
