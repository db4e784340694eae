#include "server/service.h"

#include <algorithm>
#include <atomic>
#include <string_view>

#include "common/bearer_token.h"
#include "common/log.h"
#include "absl/strings/str_cat.h"
#include "server/request_wire.h"
#include "server/responses.h"

namespace tinygpt {
namespace {

std::atomic<long> g_request_counter{0};

const char* GrpcCodeName(grpc::StatusCode c) {
  switch (c) {
    case grpc::OK: return "OK";
    case grpc::CANCELLED: return "CANCELLED";
    case grpc::UNKNOWN: return "UNKNOWN";
    case grpc::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::NOT_FOUND: return "NOT_FOUND";
    case grpc::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::UNAUTHENTICATED: return "UNAUTHENTICATED";
    case grpc::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::ABORTED: return "ABORTED";
    case grpc::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::INTERNAL: return "INTERNAL";
    case grpc::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::DATA_LOSS: return "DATA_LOSS";
    default: return "UNKNOWN";
  }
}

}  // namespace

absl::StatusOr<SequenceRequest> ToSequenceRequest(const v1::GenerateRequest& req, size_t max_request_bytes, bool stream,
                                                  const Tokenizer* tokenizer) {
  const size_t bytes = req.ByteSizeLong();
  if (bytes > max_request_bytes)
    return absl::InvalidArgumentError(absl::StrCat("request: ", bytes, " bytes exceeds the limit of ", max_request_bytes));
  SequenceRequest r;
  r.id = req.request_id().empty() ? absl::StrCat("req-", ++g_request_counter) : req.request_id();
  if (req.has_token_ids()) {
    r.prompt.assign(req.token_ids().ids().begin(), req.token_ids().ids().end());
  } else {
    if (!tokenizer)
      return absl::InvalidArgumentError("prompt: this model has no tokenizer, so it takes token_ids, not text");
    auto ids = tokenizer->Encode(req.text());
    if (!ids.ok()) return absl::InvalidArgumentError(absl::StrCat("prompt: ", ids.status().message()));
    r.prompt = std::move(*ids);
  }
  GenerateOptions& o = r.options;
  o.max_new_tokens = req.max_new_tokens();
  o.temperature = req.temperature();
  o.top_k = req.top_k();
  o.top_p = req.has_top_p() ? req.top_p().value() : 1.f;
  o.seed = req.seed();
  o.stop_ids.assign(req.stop_token_ids().begin(), req.stop_token_ids().end());
  r.stop_strings.assign(req.stop().begin(), req.stop().end());
  r.ignore_eos = req.ignore_eos();
  r.penalties.repetition = req.has_repetition_penalty() ? req.repetition_penalty().value() : 1.f;
  r.penalties.frequency = req.frequency_penalty();
  r.penalties.presence = req.presence_penalty();
  r.top_logprobs = req.top_logprobs() != 0 ? req.top_logprobs() : (req.logprobs() ? 0 : -1);
  if (req.top_logprobs() < 0) return absl::InvalidArgumentError("top_logprobs: must be in [0, 20]");
  if (req.has_prompt_logprobs()) {
    r.prompt_logprobs = req.prompt_logprobs().value();
    if (r.prompt_logprobs < 0 || r.prompt_logprobs > kMaxTopLogprobs)
      return absl::InvalidArgumentError(absl::StrCat("prompt_logprobs: must be in [0, ", kMaxTopLogprobs, "]"));
  }
  r.n = req.n() == 0 ? 1 : req.n();
  r.stream = stream;
  return r;
}

CallOutcome GenerationService::Start(const v1::GenerateRequest& req, bool stream) {
  CallOutcome o;
  auto sr = ToSequenceRequest(req, opt_.max_request_bytes, stream, opt_.tokenizer);
  if (!sr.ok()) {
    o.status = ToGrpc(sr.status());
    return o;
  }
  o.id = sr->id;
  o.prompt_tokens = static_cast<int>(sr->prompt.size());
  if (sr->prompt_logprobs >= 0) o.prompt = sr->prompt;
  auto submitted = engine_->Submit(std::move(*sr));
  if (!submitted.ok()) {
    o.status = ToGrpc(submitted.status());
    return o;
  }
  o.submitted = std::move(*submitted);
  o.choices.resize(o.submitted.samples.size());
  o.unfinished = static_cast<int>(o.choices.size());
  return o;
}

void GenerationService::Finish(const CallOutcome& o) {
  const grpc::Status& status = o.status;
  if (draining_) {
    // A sequence cut off by the drain deadline carries the shutdown message;
    // a request without a sequence never reached the engine.
    if (o.submitted.samples.empty()) ++drain_refused_;
    else if (status.error_code() == grpc::UNAVAILABLE && status.error_message() == kShutdownMessage) ++drain_cut_off_;
    else ++drain_finished_;
  }
  const double total = Seconds(Clock::now() - o.start);
  double queued = -1, ttft = -1;
  const Sequence* first = o.first();
  if (first && first->scheduled_once) queued = Seconds(first->first_scheduled - first->arrival);
  if (first && first->num_generated() > 0 && !o.choices.empty() && !o.choices[0].tokens.empty())
    ttft = Seconds(first->first_token - first->arrival);
  const FinishReason reason = o.choices.empty() ? FinishReason::kNone : o.choices[0].reason;
  const char* code = GrpcCodeName(status.error_code());
  // Token counters count what reached the engine; refused requests add none.
  if (metrics_)
    metrics_->OnRequestDone(code, FinishReasonName(reason), first ? o.prompt_tokens : 0, o.generated(), total, queued, ttft, o.api);
  if (!opt_.log_requests) return;
  LOG(INFO) << "request " << (o.id.empty() ? "-" : o.id) << " status=" << code
            << (status.ok() ? "" : absl::StrCat(" (", status.error_message(), ")")) << " finish=" << FinishReasonName(reason)
            << " n=" << std::max<size_t>(1, o.choices.size()) << " prompt_tokens=" << o.prompt_tokens << " generated=" << o.generated() << " queued_s=" << queued
            << " ttft_s=" << ttft << " total_s=" << total;
}

GenerationService::GenerationService(Engine* engine, ServerMetrics* metrics, ServiceOptions opt)
    : engine_(engine), metrics_(metrics), opt_(std::move(opt)) {
  // Methods 0 and 1 of tinygpt.v1.Generation, as raw bidi callbacks:
  // MarkMethodStreamed makes a method bidi-streaming on the server side (the
  // client still calls it unary or server-streaming), so that the reactor
  // reads the one message itself and a message gRPC refuses (over the receive
  // limit) or protobuf cannot parse (a non-UTF-8 string) still reaches us;
  // MarkMethodRawCallback then puts the reactor behind it.
  MarkMethodStreamed(0, new grpc::internal::StreamedUnaryHandler<grpc::ByteBuffer, v1::GenerateResponse>(
                            [](grpc::ServerContext*, grpc::ServerUnaryStreamer<grpc::ByteBuffer, v1::GenerateResponse>*) {
                              return grpc::Status(grpc::INTERNAL, "replaced below");
                            }));
  MarkMethodStreamed(1, new grpc::internal::SplitServerStreamingHandler<grpc::ByteBuffer, v1::GenerateStreamResponse>(
                            [](grpc::ServerContext*, grpc::ServerSplitStreamer<grpc::ByteBuffer, v1::GenerateStreamResponse>*) {
                              return grpc::Status(grpc::INTERNAL, "replaced below");
                            }));
  MarkMethodRawCallback(0, new grpc::internal::CallbackBidiHandler<grpc::ByteBuffer, grpc::ByteBuffer>(
                               [this](grpc::CallbackServerContext* ctx) { return NewCallReactor(ctx, /*stream=*/false); }));
  MarkMethodRawCallback(1, new grpc::internal::CallbackBidiHandler<grpc::ByteBuffer, grpc::ByteBuffer>(
                               [this](grpc::CallbackServerContext* ctx) { return NewCallReactor(ctx, /*stream=*/true); }));
  // GetModelInfo reads its request itself too: gRPC's generated code answers
  // bytes that are no GetModelInfoRequest with INTERNAL and no message.
  MarkMethodRawCallback(2, new grpc::internal::CallbackUnaryHandler<grpc::ByteBuffer, grpc::ByteBuffer>(
                               [this](grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
                                 grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
                                 v1::ModelInfo info;
                                 grpc::Status s = ParseGetModelInfoRequest(*request);
                                 if (s.ok()) s = ModelInfoFor(*ctx, &info);
                                 if (s.ok()) {
                                   bool own = false;
                                   s = grpc::SerializationTraits<v1::ModelInfo>::Serialize(info, response, &own);
                                 }
                                 reactor->Finish(s);
                                 return reactor;
                               }));
}

grpc::Status GenerationService::CheckAuth(const grpc::ServerContextBase& ctx) const {
  if (opt_.auth_token.empty()) return grpc::Status::OK;
  const auto& md = ctx.client_metadata();
  const auto it = md.find("authorization");
  if (it != md.end() && BearerTokenMatches(std::string_view(it->second.data(), it->second.size()), opt_.auth_token))
    return grpc::Status::OK;
  return grpc::Status(grpc::UNAUTHENTICATED, "missing or wrong bearer token (metadata 'authorization: Bearer <token>')");
}

grpc::Status GenerationService::Refuse(grpc::Status status) {
  CallOutcome o;
  o.status = std::move(status);
  Finish(o);
  return o.status;
}

grpc::Status GenerationService::GetModelInfo(grpc::ServerContext* ctx, const v1::GetModelInfoRequest*, v1::ModelInfo* info) {
  return ModelInfoFor(*ctx, info);
}

grpc::Status GenerationService::ModelInfoFor(const grpc::ServerContextBase& ctx, v1::ModelInfo* info) {
  if (grpc::Status s = CheckAuth(ctx); !s.ok()) return s;
  const ModelRunner& r = engine_->runner();
  const EngineStats s = engine_->Stats();
  info->set_config_json(opt_.config_json);
  info->set_checkpoint(opt_.checkpoint);
  info->set_backend(r.backend()->name());
  info->set_device(r.backend()->device_name());
  info->set_dtype(DTypeName(r.backend()->dtype()));
  info->set_max_seq_len(r.config().max_seq_len);
  info->set_vocab_size(r.config().vocab_size);
  info->set_max_new_tokens_limit(engine_->options().max_new_tokens_limit);
  info->set_max_batch_tokens(r.options().max_batch_tokens);
  info->set_max_seqs(r.options().max_seqs);
  info->set_max_queue(engine_->options().max_queue);
  info->set_kv_block_size(r.options().block_size);
  info->set_kv_blocks_total(s.kv_blocks_total);
  info->set_kv_blocks_free(s.kv_blocks_free);
  info->set_running_seqs(s.running);
  info->set_waiting_seqs(s.waiting);
  info->set_preemptions(s.preemptions);
  info->set_tokenizer(opt_.tokenizer ? opt_.tokenizer->type() : "");
  info->set_tokenizer_vocab_size(opt_.tokenizer ? opt_.tokenizer->vocab_size() : 0);
  info->set_eos_token_id(opt_.tokenizer ? opt_.tokenizer->eos_id() : -1);
  info->set_prefix_caching(engine_->options().prefix_caching);
  info->set_kv_blocks_cached(s.kv_blocks_cached);
  info->set_max_n(engine_->options().max_n);
  return grpc::Status::OK;
}

}  // namespace tinygpt
