// `tinygpt serve`: loads a checkpoint, starts the engine, the gRPC server
// (Generation, health, reflection), the OpenAI-compatible HTTP API and the
// /metrics endpoint, and drains on SIGTERM/SIGINT.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>
#include <sys/resource.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include "absl/flags/flag.h"
#include "common/log.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "cli/stop_signals.h"
#include "cli/common_flags.h"
#include "common/address_file.h"
#include "model/checkpoint.h"
#include "server/engine.h"
#include "server/http/http_server.h"
#include "server/http/metrics_endpoint.h"
#include "server/http/openai_api.h"
#include "server/metrics.h"
#include "server/service.h"

ABSL_FLAG(std::string, host, "127.0.0.1", "address to bind the gRPC server to");
ABSL_FLAG(int, port, 50051, "gRPC port (0: pick a free one)");
ABSL_FLAG(int, metrics_port, 9464, "Prometheus /metrics port (0: pick a free one, -1: off)");
ABSL_FLAG(std::string, metrics_host, "", "address to bind /metrics to (empty: the same as --host)");
ABSL_FLAG(int, metrics_threads, 1, "threads serving /metrics (asynchronous: each serves any number of connections)");
ABSL_FLAG(int, metrics_request_timeout_ms, 5000, "a /metrics connection that sends no full request in this time is dropped");
ABSL_FLAG(int, http_port, 8000, "OpenAI-compatible HTTP API port, on --host (0: pick a free one, -1: off)");
ABSL_FLAG(int, http_threads, 0,
          "threads serving the HTTP API (asynchronous: each serves any number of connections); 0: one per 8 cores, 1 to 4");
ABSL_FLAG(int, http_max_connections, 4096,
          "open HTTP API connections beyond which the one idle longest is closed (or, when none is idle, the new one)");
ABSL_FLAG(int, http_request_timeout_ms, 30000,
          "an HTTP API connection that sends no full request in this time (from connecting or its last response) is dropped");
ABSL_FLAG(int, http_write_timeout_ms, 30000, "an HTTP API client that takes longer than this to take one write is dropped");
ABSL_FLAG(std::string, served_model_name, "", "the model's id in the HTTP API (empty: the checkpoint's file name without extension)");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: serve gRPC over TLS (with --tls-key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA certificates: require every client to present a certificate signed by one of them (mutual TLS)");
ABSL_FLAG(std::string, auth_token_file, "",
          "file holding a bearer token: Generation calls without 'authorization: Bearer <token>' get UNAUTHENTICATED "
          "(health checks and reflection stay open)");
ABSL_FLAG(int, max_batch_tokens, 0, "tokens per scheduler step (0: 8192 on CUDA, 512 on the CPU)");
ABSL_FLAG(int, max_seqs, 0, "sequences per scheduler step (0: 256 on CUDA, 64 on the CPU)");
ABSL_FLAG(int, max_queue, 0, "waiting requests beyond which RESOURCE_EXHAUSTED (0: 16 x max_seqs on CUDA, 256 on the CPU)");
ABSL_FLAG(int, kv_block_size, 16, "tokens per KV cache block");
ABSL_FLAG(int, kv_cache_tokens, 0, "KV cache capacity in tokens (0: see --kv-cache-fraction)");
ABSL_FLAG(double, kv_cache_fraction, 0.0,
          "size the KV cache to this fraction of the memory left after the weights (GPU memory on CUDA); "
          "0 with --kv-cache-tokens 0: on CUDA 0.9 of the free GPU memory left after the weights and activations, "
          "on the CPU max_seqs x min(max_seq_len, 4096) tokens");
ABSL_FLAG(int, max_new_tokens_limit, 0, "largest max_new_tokens accepted (0: the model context)");
ABSL_FLAG(int, max_request_bytes, 64 * 1024, "largest request accepted (INVALID_ARGUMENT beyond)");
ABSL_FLAG(int, debug_step_delay_ms, 0, "testing only: sleep this long in every scheduler step");
ABSL_FLAG(double, drain_timeout, 30.0, "seconds in-flight requests get to finish on SIGTERM");
ABSL_FLAG(int, max_n, 16, "most samples (GenerateRequest.n) per request");
ABSL_FLAG(int, max_stop_strings, 16, "most stop strings per request (INVALID_ARGUMENT beyond)");
ABSL_FLAG(int, max_stop_bytes, 4096, "most bytes of stop strings per request, all of them together (INVALID_ARGUMENT beyond)");
ABSL_FLAG(int, max_total_new_tokens, 8192, "largest n x max_new_tokens per request (INVALID_ARGUMENT beyond)");
ABSL_FLAG(int, max_total_top_logprobs, 80, "largest n x top_logprobs per request (INVALID_ARGUMENT beyond)");
ABSL_FLAG(int, notify_threads, 0,
          "threads that hand new tokens to the calls (serialize and start each stream's write); 0: one per 4 cores, 1 to 4");
ABSL_FLAG(bool, warm_start, true,
          "before listening, do the one-time work of every step shape the scheduler can plan with these flags (decode graphs "
          "of every batch and context bucket, GEMM algorithms of every row bucket, workspaces), so that no request pays for "
          "it (--nowarm-start: skip, for quick tests)");
ABSL_FLAG(int, stream_interval, 0,
          "tokens a GenerateStream message gathers after the first one, which is sent at once (as vLLM's --stream-interval); "
          "0: automatic, 1 while fewer than 64 streams share a step, then one more for every 32 streams, up to 16");
ABSL_FLAG(bool, log_requests, true, "log one INFO line per finished request (--nolog-requests: off; counts stay in /metrics)");
ABSL_FLAG(bool, prefix_caching, true, "reuse the KV cache blocks of prompt prefixes seen before (--noprefix-caching: off)");

namespace tinygpt {
namespace {

constexpr const char* kVersion = "0.1.0";
constexpr int kDefaultKvTokensPerSeq = 4096;

std::string PresetName(const ModelConfig& c) {
  for (const char* name : {"seed", "bench-125m"}) {
    const ModelConfig p = *PresetConfig(name);
    if (ConfigToJson(p) == ConfigToJson(c)) return name;
  }
  return "custom";
}

int Fail(const std::string& msg) {
  std::fprintf(stderr, "tinygpt serve: %s\n", msg.c_str());
  return 1;
}

// A whole file, or an error naming the flag it came from.
absl::StatusOr<std::string> ReadFile(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open()) return absl::InvalidArgumentError(absl::StrCat("--", flag, ": cannot open ", path));
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat("--", flag, ": cannot read ", path));
  return data;
}

// The gRPC credentials the flags ask for: TLS (mutual with --tls-client-ca) or none.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFromFlags() {
  const std::string cert = absl::GetFlag(FLAGS_tls_cert), key = absl::GetFlag(FLAGS_tls_key),
                    ca = absl::GetFlag(FLAGS_tls_client_ca);
  if (cert.empty() && key.empty() && ca.empty()) return grpc::InsecureServerCredentials();
  if (cert.empty() || key.empty()) return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  auto cert_pem = ReadFile(cert, "tls-cert");
  if (!cert_pem.ok()) return cert_pem.status();
  auto key_pem = ReadFile(key, "tls-key");
  if (!key_pem.ok()) return key_pem.status();
  grpc::SslServerCredentialsOptions opts(ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                                    : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  opts.pem_key_cert_pairs.push_back({*key_pem, *cert_pem});
  if (!ca.empty()) {
    auto ca_pem = ReadFile(ca, "tls-client-ca");
    if (!ca_pem.ok()) return ca_pem.status();
    opts.pem_root_certs = *ca_pem;
  }
  return grpc::SslServerCredentials(opts);
}

// The bearer token of --auth-token-file, without the trailing newline an
// editor or `echo` leaves; empty when the flag is unset.
absl::StatusOr<std::string> AuthTokenFromFlags() {
  const std::string path = absl::GetFlag(FLAGS_auth_token_file);
  if (path.empty()) return std::string();
  auto token = ReadFile(path, "auth-token-file");
  if (!token.ok()) return token.status();
  while (!token->empty() && std::isspace(static_cast<unsigned char>(token->back()))) token->pop_back();
  if (token->empty()) return absl::InvalidArgumentError(absl::StrCat("--auth-token-file: ", path, " holds no token"));
  for (char c : *token)
    if (c < 0x21 || c > 0x7e) return absl::InvalidArgumentError("--auth-token-file: the token must be printable ASCII without spaces");
  return token;
}

// The PEM files of --tls-cert/--tls-key/--tls-client-ca for the HTTP API
// (checked by ServerCredentialsFromFlags first); none without TLS.
absl::StatusOr<std::optional<http::TlsConfig>> HttpTlsFromFlags() {
  if (absl::GetFlag(FLAGS_tls_cert).empty()) return std::optional<http::TlsConfig>();
  http::TlsConfig tls;
  auto cert = ReadFile(absl::GetFlag(FLAGS_tls_cert), "tls-cert");
  if (!cert.ok()) return cert.status();
  auto key = ReadFile(absl::GetFlag(FLAGS_tls_key), "tls-key");
  if (!key.ok()) return key.status();
  tls.cert_pem = *cert;
  tls.key_pem = *key;
  if (!absl::GetFlag(FLAGS_tls_client_ca).empty()) {
    auto ca = ReadFile(absl::GetFlag(FLAGS_tls_client_ca), "tls-client-ca");
    if (!ca.ok()) return ca.status();
    tls.client_ca_pem = *ca;
  }
  return std::optional<http::TlsConfig>(std::move(tls));
}

// Each HTTP connection is a file descriptor: take the hard limit, so that
// thousands of streams fit under the default soft limit's 1024.
void RaiseFileLimit() {
  rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
  }
}

}  // namespace

int ServeCommand() {
  // SIGTERM/SIGINT exit at once (143/130) until the model is loaded, then
  // start the drain (cli/stop_signals.h).
  // Security settings first: a typo in them must stop the server before it
  // loads anything or listens.
  auto credentials = ServerCredentialsFromFlags();
  if (!credentials.ok()) return Fail(std::string(credentials.status().message()));
  auto auth_token = AuthTokenFromFlags();
  if (!auth_token.ok()) return Fail(std::string(auth_token.status().message()));
  auto http_tls = HttpTlsFromFlags();
  if (!http_tls.ok()) return Fail(std::string(http_tls.status().message()));
  RaiseFileLimit();
  const std::string path = absl::GetFlag(FLAGS_checkpoint);
  auto ck = LoadCheckpointFromFlags(path);
  if (!ck.ok()) return Fail(std::string(ck.status().message()));
  // /metrics first, so that a port in use stops the server before it loads
  // the model.
  ServerMetrics metrics;
  const int metrics_port = absl::GetFlag(FLAGS_metrics_port);
  const std::string metrics_host = absl::GetFlag(FLAGS_metrics_host).empty() ? absl::GetFlag(FLAGS_host) : absl::GetFlag(FLAGS_metrics_host);
  std::unique_ptr<http::Server> metrics_server;
  if (metrics_port >= 0) {
    if (absl::GetFlag(FLAGS_metrics_threads) < 1) return Fail("--metrics-threads must be at least 1");
    if (absl::GetFlag(FLAGS_metrics_request_timeout_ms) < 1) return Fail("--metrics-request-timeout-ms must be positive");
    http::ServerOptions mo;
    mo.name = "metrics";
    mo.host = metrics_host;
    mo.port = metrics_port;
    mo.threads = absl::GetFlag(FLAGS_metrics_threads);
    mo.max_connections = 512;  // beyond it the longest idle one is dropped: scrapes always get in
    mo.request_timeout = std::chrono::milliseconds(absl::GetFlag(FLAGS_metrics_request_timeout_ms));
    mo.write_timeout = std::chrono::seconds(10);
    mo.body_limit = 4096;  // a scrape is a GET
    auto started = http::Server::Start(mo, http::MetricsHandler(metrics.registry()));
    if (!started.ok()) return Fail(absl::StrCat("cannot serve /metrics on port ", metrics_port, ": ", started.status().message()));
    metrics_server = std::move(*started);
  }
  const int http_port = absl::GetFlag(FLAGS_http_port);
  if (http_port >= 0 && (absl::GetFlag(FLAGS_http_threads) < 0 || absl::GetFlag(FLAGS_http_max_connections) < 1 ||
                         absl::GetFlag(FLAGS_http_request_timeout_ms) < 1 || absl::GetFlag(FLAGS_http_write_timeout_ms) < 1))
    return Fail("--http-max-connections, --http-request-timeout-ms and --http-write-timeout-ms must be positive, --http-threads >= 0");
  auto backend = BackendFromFlags();
  if (!backend.ok()) return Fail(std::string(backend.status().message()));
  // Defaults that fit the device: a GPU step costs little more for many
  // sequences than for one (it reads the weights once), so on CUDA the batch
  // is large and the KV cache takes the free memory, as vLLM's
  // gpu_memory_utilization=0.9 does; the CPU keeps small steps.
  const bool gpu = (*backend)->name() == "cuda";
  RunnerOptions ro;
  ro.block_size = absl::GetFlag(FLAGS_kv_block_size);
  ro.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens) > 0 ? absl::GetFlag(FLAGS_max_batch_tokens) : gpu ? 8192 : 512;
  ro.max_seqs = absl::GetFlag(FLAGS_max_seqs) > 0 ? absl::GetFlag(FLAGS_max_seqs) : gpu ? 256 : 64;
  ro.max_graph_batch = ro.max_seqs;
  const size_t block_bytes = ModelRunner::KvBlockBytes(ck->config, std::max(1, ro.block_size), (*backend)->dtype());
  const double fraction = absl::GetFlag(FLAGS_kv_cache_fraction);
  const size_t weights = ck->params.size() * DTypeSize((*backend)->dtype());
  if (absl::GetFlag(FLAGS_kv_cache_tokens) > 0) {
    ro.num_kv_blocks = (absl::GetFlag(FLAGS_kv_cache_tokens) + ro.block_size - 1) / std::max(1, ro.block_size);
  } else if (fraction > 0) {
    if (fraction >= 1) return Fail("--kv-cache-fraction must be below 1");
    const size_t avail = (*backend)->AvailableBytes();
    ro.num_kv_blocks = static_cast<int>(std::min<double>(1 << 30, fraction * (avail > weights ? avail - weights : 0) / block_bytes));
  } else if (gpu) {
    // Activations of the largest step (with the logits of every sequence),
    // cuBLASLt's workspace, attention split buffers: a generous estimate.
    const ModelConfig& c = ck->config;
    const size_t act = DTypeSize((*backend)->dtype()) *
                           (static_cast<size_t>(ro.max_batch_tokens) * (5 * c.d_model + c.qkv_dim() + 3 * c.ffn_hidden) +
                            2ul * ro.max_seqs * c.vocab_size) +
                       (256ul << 20);
    const size_t avail = (*backend)->AvailableBytes();
    const size_t used = weights + act;
    ro.num_kv_blocks = static_cast<int>(std::min<double>(1 << 30, 0.9 * (avail > used ? avail - used : 0) / block_bytes));
  } else {
    // A default that the checkpoint's context alone cannot blow up (an ALiBi
    // config may claim 131072 positions with no tensor backing them): room
    // for max_seqs sequences of up to 4096 tokens; the flags above ask for more.
    const long per_seq = std::min(ck->config.max_seq_len, kDefaultKvTokensPerSeq);
    ro.num_kv_blocks = static_cast<int>((ro.max_seqs * per_seq + ro.block_size - 1) / std::max(1, ro.block_size));
  }
  if (ro.num_kv_blocks <= 0) return Fail("the KV cache would hold no block; raise --kv-cache-tokens or --kv-cache-fraction");
  auto runner = ModelRunner::Create(backend->get(), *ck, ro);
  if (!runner.ok()) return Fail(std::string(runner.status().message()));
  DrainOnStopSignals();  // the model is loaded: a stop signal from now on drains (at once if nothing is in flight)
  metrics.SetBuildInfo({kVersion, (*backend)->name(), (*backend)->device_name(), PresetName(ck->config)});
  std::string warmup_note;
  if (absl::GetFlag(FLAGS_warm_start)) {
    auto warm = (*runner)->Warmup();
    if (!warm.ok()) return Fail(absl::StrCat("warm-up: ", warm.status().message()));
    metrics.SetWarmup(warm->seconds, warm->graphs, warm->gemm_searches);
    warmup_note = absl::StrFormat("; warmed up in %.1f s (%d steps, %d decode graphs, %ld GEMM algorithm choices)", warm->seconds,
                                  warm->steps, warm->graphs, warm->gemm_searches);
    LOG(INFO) << "warm-up: " << warm->steps << " steps, " << warm->graphs << " decode graphs captured, " << warm->gemm_searches
              << " GEMM algorithm choices, " << warm->workspace_growths << " workspace allocations, in " << warm->seconds << " s";
  }

  EngineOptions eo;
  eo.max_queue = absl::GetFlag(FLAGS_max_queue) > 0 ? absl::GetFlag(FLAGS_max_queue) : gpu ? 16 * ro.max_seqs : 256;
  eo.max_new_tokens_limit = absl::GetFlag(FLAGS_max_new_tokens_limit);
  eo.debug_step_delay = std::chrono::milliseconds(absl::GetFlag(FLAGS_debug_step_delay_ms));
  eo.tokenizer = ck->tokenizer.get();
  eo.prefix_caching = absl::GetFlag(FLAGS_prefix_caching);
  eo.max_n = absl::GetFlag(FLAGS_max_n);
  eo.notify_threads = absl::GetFlag(FLAGS_notify_threads);
  eo.stream_interval = absl::GetFlag(FLAGS_stream_interval);
  if (eo.stream_interval < 0) return Fail("--stream-interval must be >= 0 (0: automatic)");
  eo.model_name = path;
  eo.max_stop_strings = absl::GetFlag(FLAGS_max_stop_strings);
  eo.max_stop_bytes = absl::GetFlag(FLAGS_max_stop_bytes);
  eo.max_total_new_tokens = absl::GetFlag(FLAGS_max_total_new_tokens);
  eo.max_total_top_logprobs = absl::GetFlag(FLAGS_max_total_top_logprobs);
  // Declared before the engine, so they outlive it: its destructor may still
  // tell a completion of its end.
  std::unique_ptr<http::OpenAiApi> openai;
  std::unique_ptr<http::Server> http_server;
  Engine engine(runner->get(), eo, &metrics);
  GenerationService service(&engine, &metrics,
                            {static_cast<size_t>(absl::GetFlag(FLAGS_max_request_bytes)), path, ConfigToJson(ck->config),
                             ck->tokenizer.get(), *auth_token, absl::GetFlag(FLAGS_log_requests)});

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  const std::string address = absl::StrCat(absl::GetFlag(FLAGS_host), ":", absl::GetFlag(FLAGS_port));
  builder.AddListeningPort(address, *credentials, &port);
  builder.SetMaxReceiveMessageSize(4 << 20);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) return Fail(absl::StrCat("cannot listen on ", address));
  auto* health = server->GetHealthCheckService();
  const std::string service_name = v1::Generation::service_full_name();
  health->SetServingStatus(true);
  health->SetServingStatus(service_name, true);
  std::printf("tinygpt serve: listening on %s:%d (backend %s, %d KV blocks of %d tokens, %s)\n", absl::GetFlag(FLAGS_host).c_str(),
              port, (*backend)->name().c_str(), ro.num_kv_blocks, ro.block_size,
              ck->tokenizer ? absl::StrCat(ck->tokenizer->type(), " tokenizer").c_str() : "no tokenizer: token ids only");
  if (metrics_port >= 0) std::printf("tinygpt serve: metrics on http://%s:%d/metrics\n", metrics_host.c_str(), metrics_server->port());
  if (http_port >= 0) {
    const std::string name = absl::GetFlag(FLAGS_served_model_name).empty() ? std::filesystem::path(path).stem().string()
                                                                            : absl::GetFlag(FLAGS_served_model_name);
    openai = std::make_unique<http::OpenAiApi>(
        &service, &engine, http::OpenAiOptions{name, *auth_token, ck->tokenizer.get(), ck->config.max_seq_len, ck->config.vocab_size});
    http::ServerOptions ho;
    ho.name = "OpenAI API";
    ho.host = absl::GetFlag(FLAGS_host);
    ho.port = http_port;
    // One io thread per 8 cores: on 2 cores a second one costs more in thread
    // switches than it brings (64 streams: 12k tok/s with one, 6-7k with two,
    // gRPC 10-11k beside them).
    ho.threads = absl::GetFlag(FLAGS_http_threads) > 0 ? absl::GetFlag(FLAGS_http_threads)
                                                       : std::clamp(static_cast<int>(std::thread::hardware_concurrency()) / 8, 1, 4);
    ho.max_connections = absl::GetFlag(FLAGS_http_max_connections);
    ho.request_timeout = std::chrono::milliseconds(absl::GetFlag(FLAGS_http_request_timeout_ms));
    ho.write_timeout = std::chrono::milliseconds(absl::GetFlag(FLAGS_http_write_timeout_ms));
    ho.body_limit = 4 << 20;  // gRPC's receive limit; each prompt then meets --max-request-bytes
    ho.tls = *http_tls;
    ho.error_response = http::OpenAiServerError;
    auto started = http::Server::Start(ho, openai->handler());
    if (!started.ok()) return Fail(absl::StrCat(started.status().message(), " (--http-port -1 turns the HTTP API off)"));
    http_server = std::move(*started);
    // After the lines above, which scripts read first.
    std::printf("tinygpt serve: OpenAI API on %s://%s:%d/v1 (model \"%s\")\n", ho.tls ? "https" : "http", ho.host.c_str(),
                http_server->port(), name.c_str());
  }
  // After the two lines above, which scripts read first.
  std::printf("tinygpt serve: %d sequences and %d tokens per step, a queue of %d, KV cache of %ld tokens (%.1f GiB)%s%s\n",
              ro.max_seqs, ro.max_batch_tokens, eo.max_queue, static_cast<long>(ro.num_kv_blocks) * ro.block_size,
              static_cast<double>(ro.num_kv_blocks) * block_bytes / (1 << 30),
              (*backend)->SupportsGraphs() ? ", decode steps as graphs" : "", warmup_note.c_str());
  std::fflush(stdout);
  LOG(INFO) << "serving " << path << " on port " << port << (absl::GetFlag(FLAGS_tls_cert).empty() ? " (plaintext)" : " (TLS)")
            << (absl::GetFlag(FLAGS_tls_client_ca).empty() ? "" : " requiring client certificates")
            << (auth_token->empty() ? "" : ", bearer token required");
  // For the container image's HEALTHCHECK: where a local client reaches us.
  const std::string address_file = WriteAddressFile(absl::GetFlag(FLAGS_host), port);

  const int sig = WaitForStopSignal();
  LOG(INFO) << "signal " << sig << ": draining";
  health->SetServingStatus(false);
  health->SetServingStatus(service_name, false);
  const int in_flight_at_signal = service.in_flight() + (openai ? openai->in_flight() : 0);
  service.BeginDrain();
  if (openai) openai->BeginDrain();
  engine.StartDrain();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(absl::GetFlag(FLAGS_drain_timeout));
  auto drained = [&] { return engine.Idle() && service.in_flight() == 0 && (!openai || openai->in_flight() == 0); };
  while (!drained() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  if (!drained()) {
    LOG(WARNING) << "drain timeout: cutting off what is still in flight (UNAVAILABLE)";
    engine.CancelAll();
    // Let the calls send that status: the engine retires their sequences at
    // its next step, which ends each call (server/call_reactor.cc). The bound
    // only matters if a step hangs.
    const auto grace = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!drained() && std::chrono::steady_clock::now() < grace) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const DrainCounts counts = service.drain_counts();
  LOG(INFO) << "drain: " << in_flight_at_signal << " requests in flight at the signal; " << counts.finished << " finished, "
            << counts.cut_off << " cut off by the " << absl::GetFlag(FLAGS_drain_timeout) << " s drain deadline (UNAVAILABLE), "
            << counts.refused << " refused while draining";
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  if (http_server) http_server->Stop();
  LOG(INFO) << "stopped";
  if (!address_file.empty()) std::remove(address_file.c_str());
  return 0;
}

}  // namespace tinygpt
