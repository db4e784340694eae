// Prometheus metrics of the server (prometheus-cpp's registry; /metrics is
// served by server/http/metrics_endpoint.h).
// Names follow Prometheus conventions: tinygpt_ prefix, base units,
// _total for counters, _seconds for durations.
#pragma once
#include <memory>
#include <string>

namespace prometheus {
class Registry;
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

  // The tinygpt_build_info gauge, once the backend is known.
  void SetBuildInfo(const BuildInfo& info);
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // One finished request: its final status name (gRPC's, e.g. "OK"), finish
  // reason, and the API it came through ("grpc" or "openai").
  void OnRequestDone(const std::string& grpc_code, const std::string& finish_reason, int prompt_tokens, int generated_tokens,
                     double e2e_seconds, double queue_seconds, double ttft_seconds, const char* api = "grpc");
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
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Histogram> *e2e_family_, *ttft_family_;  // by api
  prometheus::Counter *prompt_tokens_, *generated_tokens_, *preemptions_, *prefix_queries_, *prefix_hits_, *nonfinite_;
  prometheus::Counter *graph_steps_, *eager_steps_, *device_seconds_, *graph_captures_, *graph_capture_seconds_;
  prometheus::Counter *gemm_searches_, *workspace_growths_;
  prometheus::Gauge *warmup_seconds_, *warmup_graphs_, *warmup_gemm_searches_;
  prometheus::Histogram *queue_, *itl_, *step_seconds_, *step_tokens_;
  prometheus::Gauge *running_, *waiting_, *kv_used_, *kv_total_, *kv_cached_;
};

}  // namespace tinygpt
