#include "server/http/openai_api.h"

#include <ctime>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/bearer_token.h"
#include "server/http/completion_call.h"
#include "server/http/openai_request.h"
#include "server/http/openai_response.h"

namespace tinygpt::http {

using nlohmann::json;

OpenAiApi::OpenAiApi(GenerationService* service, Engine* engine, OpenAiOptions options)
    : service_(service), engine_(engine), opt_(std::move(options)), created_(std::time(nullptr)),
      id_salt_(std::random_device{}() * 0x100000000ull + std::random_device{}()) {}

Response OpenAiServerError(int status, const std::string& message) {
  return ErrorResponse(status, message, "invalid_request_error", "", status == 413 ? "request_too_large" : "");
}

std::string OpenAiApi::NewId() { return absl::StrFormat("cmpl-%016x%08x", id_salt_, ++counter_); }

void OpenAiApi::Refuse(const std::shared_ptr<Exchange>& x, const grpc::Status& status, Response response) {
  CallOutcome o;
  o.status = status;
  o.api = "openai";
  service_->Finish(o);
  x->Reply(std::move(response));
}

void OpenAiApi::Handle(const std::shared_ptr<Exchange>& x) {
  // std::string: this Abseil's StrCat takes absl::string_view, not std's.
  const std::string target(x->target());
  const std::string path = target.substr(0, target.find('?'));
  const std::string method(x->method());
  auto wrong_method = [&](const char* allow) {
    Response r = ErrorResponse(405, absl::StrCat("Method ", method, " is not allowed on ", path, " (", allow, ")"),
                               "invalid_request_error");
    r.headers = {{"Allow", allow}};
    x->Reply(std::move(r));
  };
  if (path == "/health") {  // for probes: no token needed
    if (method != "GET") return wrong_method("GET");
    Response r;
    r.status = draining_ ? 503 : 200;
    r.body = draining_ ? R"({"status":"draining"})" : R"({"status":"ok"})";
    return x->Reply(std::move(r));
  }
  const bool api = path.rfind("/v1/", 0) == 0;
  if (api && !opt_.auth_token.empty() && !BearerTokenMatches(x->header("Authorization"), opt_.auth_token)) {
    const std::string message = "missing or wrong bearer token (header 'Authorization: Bearer <token>')";
    Response r = ErrorFromStatus(grpc::Status(grpc::UNAUTHENTICATED, message));
    if (path == "/v1/completions") return Refuse(x, grpc::Status(grpc::UNAUTHENTICATED, message), std::move(r));
    return x->Reply(std::move(r));
  }
  if (path == "/v1/completions") {
    if (method != "POST") return wrong_method("POST");
    return Completions(x);
  }
  if (path == "/v1/models") {
    if (method != "GET") return wrong_method("GET");
    json list = {{"object", "list"}, {"data", json::array({ModelJson(opt_.model_name, created_, opt_.max_model_len)})}};
    list["data"][0]["vocab_size"] = opt_.vocab_size;  // for clients that send token ids (tinygpt-client bench)
    return x->Reply({200, "application/json", Dump(list), {}});
  }
  if (path.rfind("/v1/models/", 0) == 0) {
    if (method != "GET") return wrong_method("GET");
    const std::string id = path.substr(11);
    if (id != opt_.model_name)
      return x->Reply(ErrorResponse(404, absl::StrCat("The model `", id, "` does not exist."), "invalid_request_error", "model",
                                    "model_not_found"));
    return x->Reply({200, "application/json", Dump(ModelJson(opt_.model_name, created_, opt_.max_model_len)), {}});
  }
  if (path == "/v1/chat/completions") {
    if (method != "POST") return wrong_method("POST");
    return x->Reply(ErrorResponse(400,
                                  absl::StrCat("The model `", opt_.model_name,
                                               "` has no chat template, so it cannot serve chat completions; "
                                               "use /v1/completions with a prompt"),
                                  "invalid_request_error", "messages", "chat_template_missing"));
  }
  x->Reply(ErrorResponse(404, absl::StrCat("Invalid URL (", method, " ", path, ")"), "invalid_request_error", "", "unknown_url"));
}

void OpenAiApi::Completions(const std::shared_ptr<Exchange>& x) {
  auto req = ParseCompletionRequest(x->body());
  if (!req.ok()) {
    const grpc::Status s(static_cast<grpc::StatusCode>(req.status().code()), std::string(req.status().message()));
    return Refuse(x, s, ErrorFromStatus(s));
  }
  if (!req->model.empty() && req->model != opt_.model_name) {
    const std::string message = absl::StrCat("The model `", req->model, "` does not exist (this server serves `", opt_.model_name, "`).");
    return Refuse(x, grpc::Status(grpc::NOT_FOUND, message),
                  ErrorResponse(404, message, "invalid_request_error", "model", "model_not_found"));
  }
  CompletionMeta meta{NewId(), static_cast<long>(std::time(nullptr)), opt_.model_name};
  StartCompletion({service_, engine_, opt_.tokenizer, &in_flight_}, x, std::move(*req), std::move(meta));
}

}  // namespace tinygpt::http
