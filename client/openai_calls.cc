#include "client/openai_calls.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <vector>

namespace tinygpt::client {

namespace beast = boost::beast;
namespace net = boost::asio;
namespace bhttp = beast::http;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// An HTTP error as the gRPC code the bench tallies failures by.
grpc::Status StatusOfHttp(int status, const std::string& body) {
  std::string message = body;
  const nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_object() && j.contains("error") && j["error"].is_object() && j["error"].value("message", "") != "")
    message = j["error"]["message"].get<std::string>();
  message = "HTTP " + std::to_string(status) + ": " + message;
  grpc::StatusCode code = grpc::StatusCode::INTERNAL;
  if (status == 400) code = grpc::StatusCode::INVALID_ARGUMENT;
  else if (status == 401) code = grpc::StatusCode::UNAUTHENTICATED;
  else if (status == 404) code = grpc::StatusCode::NOT_FOUND;
  else if (status == 413 || status == 429) code = grpc::StatusCode::RESOURCE_EXHAUSTED;
  else if (status == 503) code = grpc::StatusCode::UNAVAILABLE;
  return grpc::Status(code, message);
}

grpc::Status StatusOfError(const beast::error_code& ec) {
  if (ec == beast::error::timeout) return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline exceeded");
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, ec.message());
}

// Counts the token ids in an event's choices without building the JSON (on a
// machine the client shares with the server, its own cost is taken from the
// server's), and notes an "error" member.
struct TokenCounter : nlohmann::json_sax<nlohmann::json> {
  long tokens = 0;
  bool error = false;
  int depth = 0, ids_depth = -1;
  bool ids_key = false;  // the last key was "token_ids"
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return Count(); }
  bool number_unsigned(number_unsigned_t) override { return Count(); }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return ++depth, true; }
  bool end_object() override { return --depth, true; }
  bool key(string_t& k) override {
    ids_key = k == "token_ids";
    error = error || (depth == 1 && k == "error");
    return true;
  }
  bool start_array(std::size_t) override {
    ++depth;
    if (ids_key) ids_depth = depth;
    return true;
  }
  bool end_array() override {
    if (depth == ids_depth) ids_depth = -1;
    return --depth, true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }
  bool Count() {
    tokens += depth == ids_depth;
    return true;
  }
};

}  // namespace

struct OpenAiCalls::Impl : std::enable_shared_from_this<OpenAiCalls::Impl> {
  struct Conn {
    explicit Conn(net::io_context& ioc) : stream(ioc) {}
    beast::tcp_stream stream;
    beast::flat_buffer buffer;
    bool connected = false;
  };

  // One completion on one connection (io thread only).
  struct Call : std::enable_shared_from_this<Call> {
    std::shared_ptr<Impl> impl;
    std::shared_ptr<Conn> conn;
    bhttp::request<bhttp::string_body> req;
    std::optional<bhttp::response_parser<bhttp::string_body>> parser;
    bool stream = false, saw_done = false;
    size_t scanned = 0;  // body bytes already split into events
    CallDone done;
    CallResult r;
    Clock::time_point t0 = Clock::now(), prev = t0;

    void Run() {
      conn->stream.expires_after(std::chrono::milliseconds(impl->deadline_ms));
      reused = conn->connected;
      if (conn->connected) return Send();
      conn->stream.async_connect(impl->endpoint, [self = shared_from_this()](beast::error_code ec) {
        if (ec) return self->End(StatusOfError(ec), false);
        beast::error_code ignored;
        self->conn->stream.socket().set_option(tcp::no_delay(true), ignored);
        self->conn->connected = true;
        self->Send();
      });
    }

    // A kept-alive connection the server has closed meanwhile fails at once:
    // the request goes again on a new one.
    bool Retry(const beast::error_code& ec) {
      if (!reused || got_bytes || ec == beast::error::timeout) return false;
      reused = false;
      conn = std::make_shared<Conn>(impl->ioc);
      Run();
      return true;
    }

    void Send() {
      bhttp::async_write(conn->stream, req, [self = shared_from_this()](beast::error_code ec, size_t) {
        if (ec && self->Retry(ec)) return;
        if (ec) return self->End(StatusOfError(ec), false);
        self->parser.emplace();
        self->parser->body_limit(64 << 20);
        self->Read();
      });
    }

    void Read() {
      bhttp::async_read_some(conn->stream, conn->buffer, *parser, [self = shared_from_this()](beast::error_code ec, size_t) {
        self->OnRead(ec);
      });
    }

    void OnRead(beast::error_code ec) {
      if (ec && Retry(ec)) return;
      if (ec) return End(StatusOfError(ec), false);
      got_bytes = true;
      const bool ok_status = !parser->is_header_done() || parser->get().result_int() == 200;
      if (stream && ok_status) Events();
      if (!parser->is_done()) return Read();
      const auto& res = parser->get();
      const bool keep = res.keep_alive();
      if (res.result_int() != 200) return End(StatusOfHttp(res.result_int(), res.body()), keep);
      if (stream) {
        if (!saw_done) return End(grpc::Status(grpc::StatusCode::INTERNAL, "the stream ended without data: [DONE]"), false);
        if (!error.empty()) return End(grpc::Status(grpc::StatusCode::INTERNAL, error), keep);
        return End(grpc::Status::OK, keep);
      }
      // Unary: the client sees only the end (TTFT is the whole request).
      const nlohmann::json j = nlohmann::json::parse(res.body(), nullptr, false);
      if (!j.is_object() || !j.contains("usage")) return End(grpc::Status(grpc::StatusCode::INTERNAL, "a response that did not parse"), keep);
      r.tokens = j["usage"].value("completion_tokens", 0L);
      r.ttft_s = Seconds(Clock::now() - t0);
      End(grpc::Status::OK, keep);
    }

    // Splits the body read so far into events and times their tokens.
    void Events() {
      const std::string& body = parser->get().body();
      for (size_t end; (end = body.find("\n\n", scanned)) != std::string::npos; scanned = end + 2) {
        std::string_view event(body.data() + scanned, end - scanned);
        if (event.substr(0, 6) != "data: ") continue;
        event.remove_prefix(6);
        if (event == "[DONE]") {
          saw_done = true;
          continue;
        }
        TokenCounter counter;
        if (!nlohmann::json::sax_parse(event.begin(), event.end(), &counter)) {
          error = "an event that did not parse";
          continue;
        }
        if (counter.error) {
          const nlohmann::json j = nlohmann::json::parse(event);
          error = j["error"].is_object() ? j["error"].value("message", "an error event") : "an error event";
        }
        const long tokens = counter.tokens;
        if (tokens == 0) continue;
        const auto now = Clock::now();
        if (r.ttft_s < 0) r.ttft_s = Seconds(now - t0);
        else r.itl_s.push_back(Seconds(now - prev) / tokens);
        prev = now;
        r.tokens += tokens;
      }
    }

    void End(grpc::Status status, bool keep_alive) {
      r.status = std::move(status);
      r.e2e_s = Seconds(Clock::now() - t0);
      if (keep_alive && parser && parser->is_done()) impl->Release(conn);
      CallDone d = std::move(done);
      const CallResult result = std::move(r);
      d(result);
    }

    std::string error;  // an error event in the stream
    bool reused = false;     // on a kept-alive connection
    bool got_bytes = false;  // of the response
  };

  net::io_context ioc;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work{ioc.get_executor()};
  std::thread thread;
  std::string host, port, auth;
  int deadline_ms;
  tcp::endpoint endpoint;
  std::vector<std::shared_ptr<Conn>> idle;  // io thread only

  void Release(const std::shared_ptr<Conn>& c) { idle.push_back(c); }
  std::shared_ptr<Conn> Take() {
    if (idle.empty()) return std::make_shared<Conn>(ioc);
    auto c = std::move(idle.back());
    idle.pop_back();
    return c;
  }
};

OpenAiCalls::OpenAiCalls(std::string host, std::string port, std::string auth_token, int deadline_ms) : impl_(std::make_shared<Impl>()) {
  impl_->host = std::move(host);
  impl_->port = std::move(port);
  impl_->auth = std::move(auth_token);
  impl_->deadline_ms = deadline_ms;
  impl_->thread = std::thread([impl = impl_.get()] { impl->ioc.run(); });
}

OpenAiCalls::~OpenAiCalls() {
  impl_->work.reset();
  impl_->ioc.stop();
  impl_->thread.join();
}

grpc::Status OpenAiCalls::Get(const std::string& path, std::string* body) {
  try {
    net::io_context ioc;
    tcp::resolver resolver(ioc);
    const auto results = resolver.resolve(impl_->host, impl_->port);
    impl_->endpoint = results.begin()->endpoint();
    beast::tcp_stream stream(ioc);
    stream.expires_after(std::chrono::seconds(10));
    stream.connect(results);
    bhttp::request<bhttp::empty_body> req(bhttp::verb::get, path, 11);
    req.set(bhttp::field::host, impl_->host);
    if (!impl_->auth.empty()) req.set(bhttp::field::authorization, "Bearer " + impl_->auth);
    bhttp::write(stream, req);
    beast::flat_buffer buffer;
    bhttp::response<bhttp::string_body> res;
    bhttp::read(stream, buffer, res);
    if (res.result_int() != 200) return StatusOfHttp(res.result_int(), res.body());
    *body = std::move(res.body());
    return grpc::Status::OK;
  } catch (const boost::system::system_error& e) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, e.what());
  }
}

void OpenAiCalls::Start(std::string body, bool stream, CallDone done) {
  net::post(impl_->ioc, [impl = impl_, body = std::move(body), stream, done = std::move(done)]() mutable {
    auto call = std::make_shared<Impl::Call>();
    call->impl = impl;
    call->conn = impl->Take();
    call->stream = stream;
    call->done = std::move(done);
    call->req = bhttp::request<bhttp::string_body>(bhttp::verb::post, "/v1/completions", 11);
    call->req.set(bhttp::field::host, impl->host);
    call->req.set(bhttp::field::content_type, "application/json");
    if (!impl->auth.empty()) call->req.set(bhttp::field::authorization, "Bearer " + impl->auth);
    call->req.body() = std::move(body);
    call->req.prepare_payload();
    call->Run();
  });
}

}  // namespace tinygpt::client
