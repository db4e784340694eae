#include "server/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <string>
#include <vector>

namespace tinygpt {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

namespace {
// Latency buckets from 1 ms to 60 s; per-token ones from 0.1 ms to 2 s.
const Histogram::BucketBoundaries kLatency{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
const Histogram::BucketBoundaries kToken{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2};
const Histogram::BucketBoundaries kTokens{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};
}  // namespace

ServerMetrics::ServerMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
  auto& r = *registry_;
  requests_ = &BuildCounter().Name("tinygpt_requests_total").Help("Finished requests by final status (gRPC's names), finish reason and API (grpc or openai)").Register(r);
  auto& tokens = BuildCounter().Name("tinygpt_tokens_total").Help("Tokens processed, by kind (prompt or generated)").Register(r);
  prompt_tokens_ = &tokens.Add({{"kind", "prompt"}});
  generated_tokens_ = &tokens.Add({{"kind", "generated"}});
  preemptions_ = &BuildCounter().Name("tinygpt_preemptions_total").Help("Sequences preempted for KV cache space").Register(r).Add({});
  prefix_queries_ = &BuildCounter().Name("tinygpt_prefix_cache_queries_total")
                         .Help("Tokens of admitted sequences looked up in the prefix cache").Register(r).Add({});
  prefix_hits_ = &BuildCounter().Name("tinygpt_prefix_cache_hits_total")
                      .Help("Tokens found in the prefix cache (their KV blocks reused, not computed)").Register(r).Add({});
  nonfinite_ = &BuildCounter().Name("tinygpt_nonfinite_logits_total")
                    .Help("Samples ended INTERNAL because the model's logits held a NaN or an infinity").Register(r).Add({});
  auto hist = [&](const char* name, const char* help, const Histogram::BucketBoundaries& b) {
    return &BuildHistogram().Name(name).Help(help).Register(r).Add({}, b);
  };
  e2e_family_ = &BuildHistogram().Name("tinygpt_request_duration_seconds").Help("End-to-end latency of requests, by API").Register(r);
  queue_ = hist("tinygpt_queue_duration_seconds", "Time from arrival to the first scheduled step", kLatency);
  ttft_family_ = &BuildHistogram().Name("tinygpt_time_to_first_token_seconds")
                      .Help("Time from arrival to the first generated token, by API").Register(r);
  for (const char* api : {"grpc", "openai"}) {  // both series from the start, at 0
    e2e_family_->Add({{"api", api}}, kLatency);
    ttft_family_->Add({{"api", api}}, kLatency);
  }
  itl_ = hist("tinygpt_inter_token_latency_seconds", "Time between consecutive tokens of a sequence", kToken);
  step_seconds_ = hist("tinygpt_step_duration_seconds",
                       "Duration of one batched forward step (its device time on a GPU, its wall time on the CPU)", kToken);
  auto& steps = BuildCounter().Name("tinygpt_steps_total").Help("Engine steps, by how they ran (graph replay or op by op)").Register(r);
  graph_steps_ = &steps.Add({{"mode", "graph"}});
  eager_steps_ = &steps.Add({{"mode", "eager"}});
  device_seconds_ = &BuildCounter().Name("tinygpt_step_device_seconds_total")
                         .Help("Device time of engine steps (GPU busy time; 0 on the CPU)").Register(r).Add({});
  graph_captures_ = &BuildCounter().Name("tinygpt_graph_captures_total")
                         .Help("Decode-step graphs captured while serving (after the warm-up)").Register(r).Add({});
  graph_capture_seconds_ = &BuildCounter().Name("tinygpt_graph_capture_seconds_total")
                                .Help("Time spent capturing decode-step graphs while serving (after the warm-up)").Register(r).Add({});
  gemm_searches_ = &BuildCounter().Name("tinygpt_gemm_algorithm_searches_total")
                        .Help("GEMM algorithm choices (heuristic query and timing) made while serving (after the warm-up)")
                        .Register(r).Add({});
  workspace_growths_ = &BuildCounter().Name("tinygpt_workspace_allocations_total")
                            .Help("Device workspaces allocated or enlarged while serving (after the warm-up)").Register(r).Add({});
  step_tokens_ = hist("tinygpt_step_tokens", "Tokens packed into one step", kTokens);
  auto gauge = [&](const char* name, const char* help) { return &BuildGauge().Name(name).Help(help).Register(r).Add({}); };
  warmup_seconds_ = gauge("tinygpt_warmup_seconds", "Time the warm-up before serving took (0: none)");
  warmup_graphs_ = gauge("tinygpt_warmup_graphs", "Decode-step graphs the warm-up captured");
  warmup_gemm_searches_ = gauge("tinygpt_warmup_gemm_algorithm_searches", "GEMM algorithm choices the warm-up made");
  running_ = gauge("tinygpt_running_sequences", "Sequences in the running batch");
  waiting_ = gauge("tinygpt_waiting_sequences", "Sequences waiting to be scheduled");
  kv_used_ = gauge("tinygpt_kv_cache_blocks_used", "KV cache blocks in use");
  kv_total_ = gauge("tinygpt_kv_cache_blocks_total", "KV cache blocks in the pool");
  kv_cached_ = gauge("tinygpt_kv_cache_blocks_cached", "KV cache blocks holding a cached prefix (in use or evictable)");
}

void ServerMetrics::SetBuildInfo(const BuildInfo& info) {
  BuildGauge()
      .Name("tinygpt_build_info")
      .Help("Build and model information (always 1)")
      .Register(*registry_)
      .Add({{"version", info.version}, {"backend", info.backend}, {"device", info.device}, {"model_preset", info.preset}})
      .Set(1);
}

ServerMetrics::~ServerMetrics() = default;

void ServerMetrics::OnRequestDone(const std::string& grpc_code, const std::string& finish_reason, int prompt_tokens,
                                  int generated_tokens, double e2e, double queue, double ttft, const char* api) {
  requests_->Add({{"code", grpc_code}, {"finish_reason", finish_reason}, {"api", api}}).Increment();
  prompt_tokens_->Increment(prompt_tokens);
  generated_tokens_->Increment(generated_tokens);
  e2e_family_->Add({{"api", api}}, kLatency).Observe(e2e);
  if (queue >= 0) queue_->Observe(queue);
  if (ttft >= 0) ttft_family_->Add({{"api", api}}, kLatency).Observe(ttft);
}

void ServerMetrics::OnStep(double host_seconds, int tokens, double device_seconds, bool graph) {
  step_seconds_->Observe(device_seconds > 0 ? device_seconds : host_seconds);
  step_tokens_->Observe(tokens);
  device_seconds_->Increment(device_seconds);
  (graph ? graph_steps_ : eager_steps_)->Increment();
}

void ServerMetrics::OnGraphCaptures(int count, double seconds) {
  if (count <= 0) return;
  graph_captures_->Increment(count);
  graph_capture_seconds_->Increment(seconds);
}

void ServerMetrics::OnShapeSearches(long gemm_searches, long workspace_growths) {
  if (gemm_searches > 0) gemm_searches_->Increment(static_cast<double>(gemm_searches));
  if (workspace_growths > 0) workspace_growths_->Increment(static_cast<double>(workspace_growths));
}

void ServerMetrics::SetWarmup(double seconds, int graphs, long gemm_searches) {
  warmup_seconds_->Set(seconds);
  warmup_graphs_->Set(graphs);
  warmup_gemm_searches_->Set(static_cast<double>(gemm_searches));
}

void ServerMetrics::OnInterTokenLatency(double seconds) { itl_->Observe(seconds); }
void ServerMetrics::OnPreemption() { preemptions_->Increment(); }

void ServerMetrics::OnNonFiniteLogits() { nonfinite_->Increment(); }

void ServerMetrics::OnPrefixCacheQuery(int tokens, int hits) {
  prefix_queries_->Increment(tokens);
  prefix_hits_->Increment(hits);
}

void ServerMetrics::SetGauges(int running, int waiting, int used, int total, int cached) {
  kv_cached_->Set(cached);
  running_->Set(running);
  waiting_->Set(waiting);
  kv_used_->Set(used);
  kv_total_->Set(total);
}

}  // namespace tinygpt
