// Prometheus metrics of the server (prometheus-cpp, pulled from /metrics).
// Names follow Prometheus conventions: tinygpt_ prefix, base units,
// _total for counters, _seconds for durations.
#pragma once
#include <memory>
#include <string>

namespace prometheus {
class Registry;
class Exposer;
template <typename T> class Family;
class Counter;
class Gauge;
class Histogram;
}  // namespace prometheus

namespace tinygpt {

struct BuildInfo {
  std::string version, backend, device, preset;
};

class ServerMetrics {
 public:
  ServerMetrics();
  ~ServerMetrics();

  // Serves /metrics on host:port (a civetweb thread pool). Call it before the
  // CUDA module is loaded: cuBLASLt's large static TLS would not fit the
  // small stacks civetweb gives its threads.
  // `threads` workers serve scrapes; a connection that sends no complete
  // request within `request_timeout_ms` is dropped, so slow or idle clients
  // cannot hold every worker (civetweb gives each connection one thread).
  void Expose(const std::string& host_port, int threads = 8, int request_timeout_ms = 5000);
  // The tinygpt_build_info gauge, once the backend is known.
  void SetBuildInfo(const BuildInfo& info);
  // The port /metrics listens on (after Expose), e.g. when asked for port 0.
  int port() const;
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // One finished RPC: its final gRPC status name (e.g. "OK") and finish reason.
  void OnRequestDone(const std::string& grpc_code, const std::string& finish_reason, int prompt_tokens, int generated_tokens,
                     double e2e_seconds, double queue_seconds, double ttft_seconds);
  // A collected step: its host time (launch + wait for the result), its
  // tokens, its device time (0 on the CPU) and whether it replayed a graph.
  void OnStep(double host_seconds, int tokens, double device_seconds, bool graph);
  void OnGraphCaptures(int count, double seconds);
  // One-time backend work done while serving (Backend::ShapeCounters): a
  // warmed-up server does none for the shapes its scheduler plans.
  void OnShapeSearches(long gemm_searches, long workspace_growths);
  // What the warm-up before serving did (ModelRunner::Warmup).
  void SetWarmup(double seconds, int graphs, long gemm_searches);
  void OnInterTokenLatency(double seconds);
  void OnPreemption();
  // A sample ended INTERNAL because its logits held a NaN or an infinity.
  void OnNonFiniteLogits();
  // An admitted sequence's tokens looked up in the prefix cache, and how many
  // of them were found (vLLM's prefix_cache_queries / prefix_cache_hits).
  void OnPrefixCacheQuery(int tokens, int hits);
  void SetGauges(int running, int waiting, int kv_blocks_used, int kv_blocks_total, int kv_blocks_cached);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Counter *prompt_tokens_, *generated_tokens_, *preemptions_, *prefix_queries_, *prefix_hits_, *nonfinite_;
  prometheus::Counter *graph_steps_, *eager_steps_, *device_seconds_, *graph_captures_, *graph_capture_seconds_;
  prometheus::Counter *gemm_searches_, *workspace_growths_;
  prometheus::Gauge *warmup_seconds_, *warmup_graphs_, *warmup_gemm_searches_;
  prometheus::Histogram *e2e_, *queue_, *ttft_, *itl_, *step_seconds_, *step_tokens_;
  prometheus::Gauge *running_, *waiting_, *kv_used_, *kv_total_, *kv_cached_;
};

}  // namespace tinygpt
