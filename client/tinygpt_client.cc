// tinygpt-client: generate | stream | info | health | bench, against --target.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include <google/protobuf/util/json_util.h>

#include "common/address_file.h"
#include "common/flag_args.h"
#include "client/bench_calls.h"
#include "client/openai_calls.h"
#include "common/token_ids.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "tinygpt.grpc.pb.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051",
          "server host:port (when not given: the address a local tinygpt serve wrote to $TINYGPT_ADDRESS_FILE, if any)");
ABSL_FLAG(std::string, prompt, "", "prompt text");
ABSL_FLAG(std::string, prompt_ids, "", "prompt token ids, comma separated");
ABSL_FLAG(int, max_new_tokens, 16, "tokens to generate");
ABSL_FLAG(float, temperature, 0.f, "0 = greedy");
ABSL_FLAG(int, top_k, 0, "top-k (0: off)");
ABSL_FLAG(float, top_p, 1.f, "top-p");
ABSL_FLAG(uint64_t, seed, 0, "sampling seed");
ABSL_FLAG(std::vector<std::string>, stop, {}, "stop strings, comma separated");
ABSL_FLAG(int, deadline_ms, 0, "per-request deadline (0: none, except in bench: 60000)");
ABSL_FLAG(bool, json, false, "machine-readable output");
ABSL_FLAG(std::string, service, "", "health: the service name to check (empty: the server)");
// TLS and authentication (the server's --tls-* and --auth-token-file).
ABSL_FLAG(std::string, tls_ca, "", "PEM CA certificates to verify the server with: connect over TLS");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate chain, for servers that require one (with --tls-key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert");
ABSL_FLAG(std::string, tls_server_name, "", "name to verify in the server's certificate instead of the --target host");
ABSL_FLAG(std::string, auth_token_file, "", "file holding the bearer token to send as 'authorization: Bearer <token>'");
// bench
ABSL_FLAG(int, requests, 64, "bench: requests to send");
ABSL_FLAG(int, concurrency, 8, "bench: concurrent streams (ignored with --rate)");
ABSL_FLAG(double, rate, 0, "bench: Poisson arrival rate in requests/s (0: closed loop at --concurrency)");
ABSL_FLAG(int, prompt_len_min, 4, "bench: shortest prompt");
ABSL_FLAG(int, shared_prefix_len, 0, "bench: every prompt starts with the same N random tokens (a shared system prompt), "
          "then its own prompt_len tokens");
ABSL_FLAG(int, prompt_len_max, 32, "bench: longest prompt");
ABSL_FLAG(int, output_len_min, 8, "bench: fewest new tokens");
ABSL_FLAG(int, output_len_max, 32, "bench: most new tokens");
ABSL_FLAG(std::string, prompts_file, "",
          "bench: JSONL file, one JSON array of token ids per line; request i sends line i mod N (after any "
          "--shared-prefix-len tokens) instead of random tokens (--prompt-len-min/max are then unused)");
ABSL_FLAG(std::string, api, "grpc",
          "bench: grpc (GenerateStream, or Generate with --unary) or openai (POST /v1/completions with SSE streaming, "
          "or whole with --unary; --target is then the HTTP API's host:port)");
ABSL_FLAG(bool, unary, false, "bench: unary Generate calls (TTFT and inter-token latency from the server's timings)");
ABSL_FLAG(bool, ignore_eos, false, "keep generating past the model's end token");
ABSL_FLAG(bool, logprobs, false, "return each generated token's log-probability");
ABSL_FLAG(int, top_logprobs, 0, "also the N (<= 20) most likely tokens at each step");
ABSL_FLAG(int, prompt_logprobs, -1, "generate: each prompt token's log-probability (after the first) and the N (<= 20) "
          "most likely tokens at its position (-1: none)");
ABSL_FLAG(float, repetition_penalty, 1.f, "CTRL/HF repetition penalty (> 0; 1: none)");
ABSL_FLAG(float, frequency_penalty, 0.f, "OpenAI frequency penalty in [-2, 2]");
ABSL_FLAG(float, presence_penalty, 0.f, "OpenAI presence penalty in [-2, 2]");
ABSL_FLAG(int, n, 1, "samples of the prompt (sample i uses --seed + i)");

namespace {

using tinygpt::v1::GenerateRequest;
using Clock = std::chrono::steady_clock;
using tinygpt::client::CallDone;
using tinygpt::client::CallResult;
using tinygpt::client::PrepareContext;
using tinygpt::client::StreamCall;
using tinygpt::client::UnaryCall;

constexpr const char* kUsage =
    "usage: tinygpt-client <command> [--target host:port] [flags]\n"
    "  generate  one Generate call; prints the output ids (and text)\n"
    "  stream    one GenerateStream call; prints tokens as they arrive\n"
    "  info      GetModelInfo: model, backend, limits, KV cache use (JSON)\n"
    "  health    the standard gRPC health check: SERVING (exit 0) or NOT_SERVING (exit 1)\n"
    "  bench     drive load (closed loop or Poisson arrivals) and print throughput and latency\n"
    "Run `tinygpt-client <command> --help` for its flags.";

// `tinygpt-client CMD --help`: the flags CMD uses, in groups, with their
// defaults. (Abseil's own --help filters flags by the program's file name,
// which no file here has: it printed "No flags matched".) A flag of this file
// that no group names is listed under "other flags" for every command, so a
// new flag is never hidden.
struct FlagGroup {
  const char* title;
  std::vector<const char*> flags;
};
struct Subcommand {
  const char* name;
  const char* summary;
  std::vector<FlagGroup> groups;
};

const std::vector<Subcommand>& Subcommands() {
  static const std::vector<Subcommand> subs = [] {
    const std::vector<const char*> tls = {"tls_ca", "tls_cert", "tls_key", "tls_server_name"};
    auto cat = [](std::vector<const char*> a, const std::vector<const char*>& b) {
      a.insert(a.end(), b.begin(), b.end());
      return a;
    };
    const FlagGroup connection{"connection", cat({"target", "deadline_ms", "auth_token_file"}, tls)};
    const FlagGroup request{"request", {"prompt", "prompt_ids", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop",
                                        "ignore_eos", "logprobs", "top_logprobs", "prompt_logprobs", "repetition_penalty",
                                        "frequency_penalty", "presence_penalty", "n"}};
    return std::vector<Subcommand>{
        {"generate", "one Generate call; prints the output ids (and text)", {connection, request, {"output", {"json"}}}},
        {"stream", "one GenerateStream call; prints tokens as they arrive", {connection, request}},
        {"info", "GetModelInfo: model, backend, limits, KV cache use (JSON)", {connection}},
        {"health", "the standard gRPC health check: SERVING (exit 0) or NOT_SERVING (exit 1); 3 s deadline",
         {{"connection", cat({"target"}, tls)}, {"health", {"service"}}}},
        {"bench", "drive load and print throughput and latency (exit 0 only if every request succeeded)",
         {connection,
          {"bench", {"api", "requests", "concurrency", "rate", "unary", "prompt_len_min", "prompt_len_max", "shared_prefix_len",
                     "prompts_file", "output_len_min", "output_len_max", "json"}},
          {"request (every bench request)", {"temperature", "ignore_eos", "seed"}}}},
    };
  }();
  return subs;
}

bool IsHelpArg(const std::string& a) { return a == "--help" || a == "-help" || a == "-h" || a == "--helpshort"; }

void PrintFlag(const absl::CommandLineFlag& flag) {
  std::string dashed(flag.Name());
  std::replace(dashed.begin(), dashed.end(), '_', '-');  // both spellings parse; the README uses dashes
  std::string def = flag.DefaultValue();
  if (def.empty()) def = "\"\"";
  std::printf("  --%s (default: %s)\n      %s\n", dashed.c_str(), def.c_str(), flag.Help().c_str());
}

void PrintSubcommandHelp(const Subcommand& sub) {
  std::printf("usage: tinygpt-client %s [flags]\n  %s\n", sub.name, sub.summary);
  std::set<std::string> grouped;
  for (const auto& s : Subcommands())
    for (const auto& g : s.groups) grouped.insert(g.flags.begin(), g.flags.end());
  for (const auto& g : sub.groups) {
    std::printf("\n%s flags:\n", g.title);
    for (const char* name : g.flags)
      if (const absl::CommandLineFlag* f = absl::FindCommandLineFlag(name)) PrintFlag(*f);
  }
  std::vector<const absl::CommandLineFlag*> other;
  for (const auto& [name, flag] : absl::GetAllFlags())
    if (absl::EndsWith(flag->Filename(), "client/tinygpt_client.cc") && !grouped.count(std::string(name))) other.push_back(flag);
  if (other.empty()) return;
  std::sort(other.begin(), other.end(), [](auto* a, auto* b) { return a->Name() < b->Name(); });
  std::printf("\nother flags:\n");
  for (const auto* f : other) PrintFlag(*f);
}

// A whole file; exits the program with a message naming the flag otherwise
// (the client's flags are read once, before any request).
std::string ReadFileOrDie(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open()) {
    std::fprintf(stderr, "--%s: cannot open %s\n", flag, path.c_str());
    std::exit(2);
  }
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// --target, or when it was not given the address a local server wrote to
// $TINYGPT_ADDRESS_FILE (the container image's HEALTHCHECK relies on this).
bool target_given = false;  // set by main from the command line

std::string Target() {
  if (!target_given) {
    const std::string local = tinygpt::ReadAddressFile();
    if (!local.empty()) return local;
  }
  return absl::GetFlag(FLAGS_target);
}

std::shared_ptr<grpc::Channel> Channel() {
  const std::string ca = absl::GetFlag(FLAGS_tls_ca), cert = absl::GetFlag(FLAGS_tls_cert), key = absl::GetFlag(FLAGS_tls_key);
  if (ca.empty() && cert.empty() && key.empty())
    return grpc::CreateChannel(Target(), grpc::InsecureChannelCredentials());
  if (cert.empty() != key.empty()) {
    std::fprintf(stderr, "--tls-cert and --tls-key go together\n");
    std::exit(2);
  }
  grpc::SslCredentialsOptions opts;  // an empty root set means the system's CAs
  if (!ca.empty()) opts.pem_root_certs = ReadFileOrDie(ca, "tls-ca");
  if (!cert.empty()) {
    opts.pem_cert_chain = ReadFileOrDie(cert, "tls-cert");
    opts.pem_private_key = ReadFileOrDie(key, "tls-key");
  }
  grpc::ChannelArguments args;
  if (!absl::GetFlag(FLAGS_tls_server_name).empty())
    args.SetString(GRPC_SSL_TARGET_NAME_OVERRIDE_ARG, absl::GetFlag(FLAGS_tls_server_name));
  return grpc::CreateCustomChannel(Target(), grpc::SslCredentials(opts), args);
}

// The bearer token, read once; empty without --auth-token-file.
const std::string& AuthToken() {
  static const std::string token = [] {
    const std::string path = absl::GetFlag(FLAGS_auth_token_file);
    if (path.empty()) return std::string();
    std::string t = ReadFileOrDie(path, "auth-token-file");
    while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
    return t;
  }();
  return token;
}

// Sent as metadata on each call rather than as call credentials: gRPC only
// sends call credentials over TLS, and a token over loopback or behind a
// TLS-terminating proxy is a setup we support.
void AddAuth(grpc::ClientContext* ctx) {
  if (!AuthToken().empty()) ctx->AddMetadata("authorization", "Bearer " + AuthToken());
}

// Bench mode never waits without a deadline: a request that a broken server
// never finishes is counted as DEADLINE_EXCEEDED instead of hanging the run.
constexpr int kBenchDefaultDeadlineMs = 60000;

void SetDeadline(grpc::ClientContext* ctx, int default_ms = 0) {
  const int ms = absl::GetFlag(FLAGS_deadline_ms) > 0 ? absl::GetFlag(FLAGS_deadline_ms) : default_ms;
  if (ms > 0) ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
}

// Ends a GenerateStream call. The server's last message carries the finish
// reason. When Read() stops before it, either the server ended the call with
// an error (Finish() returns it at once) or a response did not parse or the
// connection broke; then Finish() could wait for a server that never ends the
// call, so the call is cancelled if Finish() has not returned within a second.
grpc::Status FinishStream(grpc::ClientContext* ctx, grpc::ClientReader<tinygpt::v1::GenerateStreamResponse>* reader,
                          bool saw_last) {
  if (saw_last) return reader->Finish();
  std::mutex mu;
  std::condition_variable cv;
  bool done = false, cancelled = false;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(mu);
    if (!cv.wait_for(lock, std::chrono::seconds(1), [&] { return done; })) {
      cancelled = true;
      ctx->TryCancel();
    }
  });
  grpc::Status s = reader->Finish();
  {
    std::lock_guard<std::mutex> lock(mu);
    done = true;
  }
  cv.notify_all();
  watchdog.join();
  if (cancelled)
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        "the stream broke off before its last message (a response that did not parse?); cancelled");
  if (s.ok()) return grpc::Status(grpc::StatusCode::INTERNAL, "the stream ended without its last message");
  return s;
}

std::string CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                                       "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                                       "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i < 17 ? kNames[i] : std::to_string(i);
}

int PrintError(const grpc::Status& s) {
  std::fprintf(stderr, "error: %s: %s\n", CodeName(s.error_code()).c_str(), s.error_message().c_str());
  return 1;
}

bool RequestFromFlags(GenerateRequest* req) {
  if (!absl::GetFlag(FLAGS_prompt_ids).empty()) {
    std::vector<int32_t> ids;
    if (!tinygpt::ParseTokenIds(absl::GetFlag(FLAGS_prompt_ids), &ids)) return false;
    for (int32_t id : ids) req->mutable_token_ids()->add_ids(id);
  } else {
    req->set_text(absl::GetFlag(FLAGS_prompt));
  }
  req->set_max_new_tokens(absl::GetFlag(FLAGS_max_new_tokens));
  req->set_temperature(absl::GetFlag(FLAGS_temperature));
  req->set_top_k(absl::GetFlag(FLAGS_top_k));
  req->mutable_top_p()->set_value(absl::GetFlag(FLAGS_top_p));
  req->set_seed(absl::GetFlag(FLAGS_seed));
  for (const auto& s : absl::GetFlag(FLAGS_stop)) req->add_stop(s);
  req->set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
  req->set_logprobs(absl::GetFlag(FLAGS_logprobs));
  req->set_top_logprobs(absl::GetFlag(FLAGS_top_logprobs));
  if (absl::GetFlag(FLAGS_prompt_logprobs) >= 0) req->mutable_prompt_logprobs()->set_value(absl::GetFlag(FLAGS_prompt_logprobs));
  if (absl::GetFlag(FLAGS_repetition_penalty) != 1.f) req->mutable_repetition_penalty()->set_value(absl::GetFlag(FLAGS_repetition_penalty));
  req->set_frequency_penalty(absl::GetFlag(FLAGS_frequency_penalty));
  req->set_presence_penalty(absl::GetFlag(FLAGS_presence_penalty));
  req->set_n(absl::GetFlag(FLAGS_n));
  return true;
}

nlohmann::json Ids(const google::protobuf::RepeatedField<int32_t>& ids) { return std::vector<int32_t>(ids.begin(), ids.end()); }

nlohmann::json LogprobsJson(const google::protobuf::RepeatedPtrField<tinygpt::v1::TokenLogprob>& lps) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& lp : lps) {
    nlohmann::json top = nlohmann::json::array();
    for (const auto& t : lp.top()) top.push_back({{"token_id", t.token_id()}, {"logprob", t.logprob()}});
    out.push_back({{"token_id", lp.token_id()}, {"logprob", lp.logprob()}, {"top", top}});
  }
  return out;
}

void PrintLogprobs(const google::protobuf::RepeatedPtrField<tinygpt::v1::TokenLogprob>& lps) {
  for (const auto& lp : lps) {
    std::printf("  token %d logprob %.4f", lp.token_id(), lp.logprob());
    for (const auto& t : lp.top()) std::printf(" | %d %.4f", t.token_id(), t.logprob());
    std::printf("\n");
  }
}

int Generate() {
  GenerateRequest req;
  if (!RequestFromFlags(&req)) return std::fprintf(stderr, "--prompt-ids must be integers\n"), 2;
  auto stub = tinygpt::v1::Generation::NewStub(Channel());
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  AddAuth(&ctx);
  tinygpt::v1::GenerateResponse resp;
  grpc::Status s = stub->Generate(&ctx, req, &resp);
  if (!s.ok()) return PrintError(s);
  // Sample 0 is the response's own fields; with n > 1 every sample is in choices.
  std::vector<tinygpt::v1::Choice> choices(resp.choices().begin(), resp.choices().end());
  if (choices.empty()) {
    tinygpt::v1::Choice c;
    *c.mutable_token_ids() = resp.token_ids();
    c.set_text(resp.text());
    c.set_finish_reason(resp.finish_reason());
    *c.mutable_logprobs() = resp.logprobs();
    choices.push_back(c);
  }
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& c : choices)
      out.push_back({{"index", c.index()}, {"output_ids", Ids(c.token_ids())}, {"text", c.text()},
                     {"finish_reason", tinygpt::v1::FinishReason_Name(c.finish_reason())}, {"logprobs", LogprobsJson(c.logprobs())}});
    nlohmann::json j = {{"request_id", resp.request_id()}, {"output_ids", out[0]["output_ids"]}, {"text", resp.text()},
                        {"finish_reason", tinygpt::v1::FinishReason_Name(resp.finish_reason())},
                        {"prompt_tokens", resp.usage().prompt_tokens()}, {"generated_tokens", resp.usage().generated_tokens()},
                        {"ttft_seconds", resp.timings().time_to_first_token_seconds()}, {"total_seconds", resp.timings().total_seconds()}};
    if (absl::GetFlag(FLAGS_logprobs) || absl::GetFlag(FLAGS_top_logprobs) > 0) j["logprobs"] = out[0]["logprobs"];
    if (absl::GetFlag(FLAGS_prompt_logprobs) >= 0) j["prompt_logprobs"] = LogprobsJson(resp.prompt_logprobs());
    if (choices.size() > 1) j["choices"] = out;
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  // No text at all for a token-id prompt: ask whether the model has a
  // tokenizer, so that a model without one (the counting task) does not
  // print an empty `text:` line that looks like a failure.
  bool ids_only = false;
  if (req.has_token_ids() && std::all_of(choices.begin(), choices.end(), [](const auto& c) { return c.text().empty(); })) {
    grpc::ClientContext info_ctx;
    SetDeadline(&info_ctx);
    AddAuth(&info_ctx);
    tinygpt::v1::ModelInfo info;
    ids_only = stub->GetModelInfo(&info_ctx, {}, &info).ok() && info.tokenizer().empty();
  }
  for (const auto& c : choices) {
    std::string ids;
    for (int32_t t : c.token_ids()) ids += (ids.empty() ? "" : ",") + std::to_string(t);
    if (choices.size() > 1) std::printf("[choice %d]\n", c.index());
    std::printf("output_ids: %s\n", ids.c_str());
    if (ids_only) std::printf("(token ids only: the model has no tokenizer)\n");
    else std::printf("text: %s\n", c.text().c_str());
    std::printf("finish_reason: %s\n", tinygpt::v1::FinishReason_Name(c.finish_reason()).c_str());
    PrintLogprobs(c.logprobs());
  }
  if (resp.prompt_logprobs_size() > 0) {
    std::printf("prompt logprobs (tokens 2..%d):\n", resp.prompt_logprobs_size() + 1);
    PrintLogprobs(resp.prompt_logprobs());
  }
  return 0;
}

int Stream() {
  GenerateRequest req;
  if (!RequestFromFlags(&req)) return std::fprintf(stderr, "--prompt-ids must be integers\n"), 2;
  auto stub = tinygpt::v1::Generation::NewStub(Channel());
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  AddAuth(&ctx);
  auto reader = stub->GenerateStream(&ctx, req);
  tinygpt::v1::GenerateStreamResponse m;
  bool saw_last = false;
  while (reader->Read(&m)) {
    // Text as it comes when the model has a tokenizer, else the token ids.
    if (!m.text().empty()) std::printf("%s", m.text().c_str());
    else if (m.finish_reason() == tinygpt::v1::FINISH_REASON_UNSPECIFIED)
      for (int32_t t : m.token_ids()) std::printf("%d ", t);
    if (m.finish_reason() != tinygpt::v1::FINISH_REASON_UNSPECIFIED) {
      saw_last = true;
      std::printf("\n[finish_reason %s, %d tokens, ttft %.4fs]\n", tinygpt::v1::FinishReason_Name(m.finish_reason()).c_str(),
                  m.usage().generated_tokens(), m.timings().time_to_first_token_seconds());
    }
    std::fflush(stdout);
  }
  grpc::Status s = FinishStream(&ctx, reader.get(), saw_last);
  return s.ok() ? 0 : PrintError(s);
}

int Info() {
  auto stub = tinygpt::v1::Generation::NewStub(Channel());
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  AddAuth(&ctx);
  tinygpt::v1::ModelInfo info;
  grpc::Status s = stub->GetModelInfo(&ctx, {}, &info);
  if (!s.ok()) return PrintError(s);
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(info, &out, o);
  std::printf("%s\n", out.c_str());
  return 0;
}

int Health() {
  auto stub = grpc::health::v1::Health::NewStub(Channel());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(absl::GetFlag(FLAGS_service));
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status s = stub->Check(&ctx, req, &resp);
  if (!s.ok()) return PrintError(s);
  std::printf("%s\n", grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status()).c_str());
  return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}

// --prompts_file: one JSON array of token ids per non-empty line. Exits with a
// message naming the line on anything else (bench reads its flags once, up front).
std::vector<std::vector<int32_t>> ReadPromptsFileOrDie(const std::string& path, int vocab_size) {
  std::ifstream in(path);
  if (!in.is_open()) {
    std::fprintf(stderr, "--prompts-file: cannot open %s\n", path.c_str());
    std::exit(2);
  }
  std::vector<std::vector<int32_t>> prompts;
  std::string line;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    std::vector<int32_t> ids;
    bool ok = j.is_array() && !j.empty();
    for (size_t i = 0; ok && i < j.size(); ++i) {
      ok = j[i].is_number_integer() && j[i].get<int64_t>() >= 0 && j[i].get<int64_t>() < vocab_size;
      if (ok) ids.push_back(static_cast<int32_t>(j[i].get<int64_t>()));
    }
    if (!ok) {
      std::fprintf(stderr, "--prompts-file: %s line %d is not a non-empty JSON array of token ids below the vocabulary size %d\n",
                   path.c_str(), lineno, vocab_size);
      std::exit(2);
    }
    prompts.push_back(std::move(ids));
  }
  if (prompts.empty()) {
    std::fprintf(stderr, "--prompts-file: %s holds no prompt\n", path.c_str());
    std::exit(2);
  }
  return prompts;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * (v.size() - 1) + 0.5));
  return v[i];
}

int Bench() {
  auto channel = Channel();
  auto stub = tinygpt::v1::Generation::NewStub(channel);
  tinygpt::v1::ModelInfo info;
  const std::string api = absl::GetFlag(FLAGS_api);
  if (api != "grpc" && api != "openai") return std::fprintf(stderr, "--api must be grpc or openai\n"), 2;
  std::unique_ptr<tinygpt::client::OpenAiCalls> http;
  if (api == "openai") {
    // The model's context and vocabulary from /v1/models (its vocab_size is
    // tinygpt's addition, for clients that send token ids).
    const std::string target = absl::GetFlag(FLAGS_target);
    const size_t colon = target.rfind(':');
    if (colon == std::string::npos) return std::fprintf(stderr, "--target must be host:port\n"), 2;
    const int ms = absl::GetFlag(FLAGS_deadline_ms) > 0 ? absl::GetFlag(FLAGS_deadline_ms) : kBenchDefaultDeadlineMs;
    http = std::make_unique<tinygpt::client::OpenAiCalls>(target.substr(0, colon), target.substr(colon + 1), AuthToken(), ms);
    std::string body;
    if (grpc::Status s = http->Get("/v1/models", &body); !s.ok()) return PrintError(s);
    const nlohmann::json models = nlohmann::json::parse(body, nullptr, false);
    if (!models.is_object() || !models.contains("data") || models["data"].empty() || !models["data"][0].contains("vocab_size"))
      return std::fprintf(stderr, "bench: /v1/models did not list a tinygpt model: %s\n", body.c_str()), 1;
    info.set_max_seq_len(models["data"][0].value("max_model_len", 0));
    info.set_vocab_size(models["data"][0].value("vocab_size", 0));
  } else {
    grpc::ClientContext ctx;
    AddAuth(&ctx);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status s = stub->GetModelInfo(&ctx, {}, &info);
    if (!s.ok()) return PrintError(s);
  }
  const int n = absl::GetFlag(FLAGS_requests);
  std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, std::max(lo, hi))(rng); };
  std::vector<int32_t> prefix(std::min(absl::GetFlag(FLAGS_shared_prefix_len), info.max_seq_len() - 2));
  for (auto& t : prefix) t = uniform(0, info.vocab_size() - 1);
  std::vector<std::vector<int32_t>> file_prompts;
  if (!absl::GetFlag(FLAGS_prompts_file).empty())
    file_prompts = ReadPromptsFileOrDie(absl::GetFlag(FLAGS_prompts_file), info.vocab_size());
  int truncated = 0;
  std::vector<GenerateRequest> reqs(n);
  for (int k = 0; k < n; ++k) {
    auto& r = reqs[k];
    const int room = info.max_seq_len() - 1 - static_cast<int>(prefix.size());
    const std::vector<int32_t>* own = file_prompts.empty() ? nullptr : &file_prompts[k % file_prompts.size()];
    const int want = own ? static_cast<int>(own->size())
                         : uniform(absl::GetFlag(FLAGS_prompt_len_min), absl::GetFlag(FLAGS_prompt_len_max));
    const int plen = std::min(want, room);
    truncated += plen < want;
    const int olen = std::min(uniform(absl::GetFlag(FLAGS_output_len_min), absl::GetFlag(FLAGS_output_len_max)),
                              info.max_seq_len() - static_cast<int>(prefix.size()) - plen);
    r.mutable_token_ids()->mutable_ids()->Add(prefix.begin(), prefix.end());
    if (own) r.mutable_token_ids()->mutable_ids()->Add(own->begin(), own->begin() + plen);
    else for (int i = 0; i < plen; ++i) r.mutable_token_ids()->add_ids(uniform(0, info.vocab_size() - 1));
    r.set_max_new_tokens(std::max(1, olen));
    r.set_temperature(absl::GetFlag(FLAGS_temperature));
    r.set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
    r.set_seed(rng());
  }
  if (truncated > 0)
    std::fprintf(stderr, "bench: %d prompts cut to the model's context (%d tokens, with the prefix and one new token)\n", truncated,
                 info.max_seq_len());
  std::mutex mu;
  std::vector<double> ttft, itl, e2e;
  std::map<std::string, int> errors;
  long generated = 0;
  int ok = 0;
  std::condition_variable all_done;
  int finished = 0;
  auto record = [&](const CallResult& r) {
    std::lock_guard<std::mutex> lock(mu);
    ++finished;
    if (!r.status.ok()) {
      errors[CodeName(r.status.error_code())]++;
    } else {
      ++ok;
      generated += r.tokens;
      ttft.push_back(r.ttft_s);
      itl.insert(itl.end(), r.itl_s.begin(), r.itl_s.end());
      e2e.push_back(r.e2e_s);
    }
    if (finished == n) all_done.notify_all();
  };
  const PrepareContext prepare = [](grpc::ClientContext* ctx) {
    SetDeadline(ctx, kBenchDefaultDeadlineMs);
    AddAuth(ctx);
  };
  const bool unary = absl::GetFlag(FLAGS_unary);
  // Starts request i; when it ends, `then` runs and then the call is
  // recorded (the last call's record lets this function return, so nothing
  // may follow it).
  auto start_call = [&](int i, std::function<void()> then) {
    CallDone done = [&record, then = std::move(then)](const CallResult& r) {
      then();
      record(r);
    };
    if (http) {
      const GenerateRequest& r = reqs[i];
      const nlohmann::json body = {{"prompt", Ids(r.token_ids().ids())}, {"max_tokens", r.max_new_tokens()},
                                   {"temperature", r.temperature()}, {"ignore_eos", r.ignore_eos()}, {"seed", r.seed()},
                                   {"stream", !unary}, {"return_token_ids", true}};
      http->Start(body.dump(), !unary, std::move(done));
    } else if (unary) {
      UnaryCall::Start(stub.get(), reqs[i], prepare, std::move(done));
    } else {
      StreamCall::Start(stub.get(), reqs[i], prepare, std::move(done));
    }
  };
  long prompt_tokens = 0;
  for (const auto& r : reqs) prompt_tokens += r.token_ids().ids_size();
  const double rate = absl::GetFlag(FLAGS_rate);
  const int conc = std::max(1, absl::GetFlag(FLAGS_concurrency));
  // Closed loop: `conc` calls in flight, each ending call starting the next
  // request (from a gRPC thread, until Bench returns).
  std::atomic<int> next{0};
  std::function<void()> chain = [&] {
    const int i = next++;
    if (i < n) start_call(i, chain);
  };
  const auto start = Clock::now();
  if (rate > 0) {  // open loop: Poisson arrivals
    std::exponential_distribution<double> gap(rate);
    auto next = start;
    for (int i = 0; i < n; ++i) {
      std::this_thread::sleep_until(next);
      start_call(i, [] {});
      next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(rng)));
    }
  } else {
    for (int c = 0; c < conc; ++c) chain();
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    all_done.wait(lock, [&] { return finished == n; });
  }
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  nlohmann::json j = {
      {"requests", n}, {"ok", ok}, {"failed", n - ok}, {"concurrency", rate > 0 ? 0 : conc}, {"rate", rate}, {"unary", absl::GetFlag(FLAGS_unary)}, {"client_api", api},
      {"prompt_tokens", prompt_tokens}, {"prompts_file", absl::GetFlag(FLAGS_prompts_file)},
      {"seconds", secs},
      {"generated_tokens", generated}, {"tokens_per_second", generated / secs}, {"requests_per_second", ok / secs},
      {"ttft_seconds", {{"p50", Percentile(ttft, 50)}, {"p90", Percentile(ttft, 90)}, {"p99", Percentile(ttft, 99)}}},
      {"inter_token_seconds", {{"p50", Percentile(itl, 50)}, {"p90", Percentile(itl, 90)}, {"p99", Percentile(itl, 99)}}},
      {"e2e_seconds", {{"p50", Percentile(e2e, 50)}, {"p90", Percentile(e2e, 90)}, {"p99", Percentile(e2e, 99)}}},
      {"errors", errors}};
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("requests %d (ok %d) in %.2fs | %.1f generated tokens/s | %.2f requests/s\n", n, ok, secs, generated / secs, ok / secs);
    std::printf("TTFT        p50 %.4fs p90 %.4fs p99 %.4fs\n", Percentile(ttft, 50), Percentile(ttft, 90), Percentile(ttft, 99));
    std::printf("inter-token p50 %.4fs p90 %.4fs p99 %.4fs\n", Percentile(itl, 50), Percentile(itl, 90), Percentile(itl, 99));
    for (auto& [code, count] : errors) std::printf("failed: %s x%d\n", code.c_str(), count);
  }
  return errors.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  if (argc >= 2 && IsHelpArg(argv[1])) return std::printf("%s\n", kUsage), 0;
  if (argc < 2 || argv[1][0] == '-') return std::fprintf(stderr, "%s\n", kUsage), 2;
  const std::string cmd = argv[1];
  std::vector<std::string> args = tinygpt::SubcommandArgs(argc, argv);
  const Subcommand* sub = nullptr;
  for (const auto& s : Subcommands())
    if (cmd == s.name) sub = &s;
  if (sub == nullptr) return std::fprintf(stderr, "unknown command %s\n%s\n", cmd.c_str(), kUsage), 2;
  target_given = std::any_of(args.begin() + 1, args.end(), [](const std::string& a) {
    return a == "--target" || a.rfind("--target=", 0) == 0 || a == "-target" || a.rfind("-target=", 0) == 0;
  });
  if (std::any_of(args.begin() + 1, args.end(), IsHelpArg)) {
    PrintSubcommandHelp(*sub);
    return 0;
  }
  std::vector<char*> ptrs;
  for (auto& a : args) ptrs.push_back(a.data());
  absl::ParseCommandLine(static_cast<int>(ptrs.size()), ptrs.data());
  if (cmd == "generate") return Generate();
  if (cmd == "stream") return Stream();
  if (cmd == "info") return Info();
  if (cmd == "health") return Health();
  if (cmd == "bench") return Bench();
  std::fprintf(stderr, "unknown command %s\n%s\n", cmd.c_str(), kUsage);
  return 2;
}
