// An asynchronous HTTP/1.1 server (Boost.Beast on Boost.Asio) for the OpenAI
// API and /metrics. A few io_context threads serve every connection: no
// thread per connection, so idle or slow clients cost a socket and a few
// kilobytes, never a worker. Each connection has a deadline for its request
// (the TLS handshake and the whole header and body), size limits on the
// header and the body, and a deadline for each write, so a client that
// trickles bytes or stops reading is dropped. Beyond max_connections the
// connection that has waited longest for its next request is closed to make
// room, so no number of idle connections can lock out a new client.
//
// This header keeps Beast out of its users: a handler sees an Exchange, one
// request and its response, which it may answer from any thread.
#pragma once
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace tinygpt::http {

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra header fields
};

// One request on a connection and its response. Every method may be called
// from any thread; the callbacks run on one of the server's io threads.
class Exchange {
 public:
  virtual ~Exchange() = default;
  virtual std::string_view method() const = 0;
  virtual std::string_view target() const = 0;  // path and query, as sent
  virtual std::string_view body() const = 0;
  // The value of header field `name` (case-insensitive); empty when absent.
  virtual std::string_view header(std::string_view name) const = 0;
  // Sends a whole response; the exchange ends once it is written.
  virtual void Reply(Response response) = 0;
  // Starts a chunked response with `head`'s status and headers (its body is
  // not used); the header goes out with the first Write.
  virtual void BeginStream(Response head) = 0;
  // Sends `data` as one chunk; `last` ends the response after it. One Write
  // at a time: `done(ok)` runs once it is written, ok false when the client
  // is gone.
  virtual void Write(std::string data, bool last, std::function<void(bool ok)> done) = 0;
  // `gone` runs once if the client goes away (closes, resets, or stops
  // reading past the write timeout) before the response is complete.
  virtual void OnGone(std::function<void()> gone) = 0;
};

using Handler = std::function<void(std::shared_ptr<Exchange>)>;

// PEM contents (not paths) of the certificate chain, its key and, for mutual
// TLS, the CAs that client certificates must chain to (empty: none asked).
struct TlsConfig {
  std::string cert_pem, key_pem, client_ca_pem;
};

struct ServerOptions {
  std::string name = "http";  // for log lines ("OpenAI API", "metrics")
  std::string host = "127.0.0.1";
  int port = 0;  // 0: any free port
  int threads = 1;
  int max_connections = 1024;
  // From accepting a connection (or finishing its previous response) to
  // having its whole next request, TLS handshake included.
  std::chrono::milliseconds request_timeout{5000};
  // For one write to complete (a client that does not read is dropped).
  std::chrono::milliseconds write_timeout{30000};
  size_t header_limit = 16 * 1024;  // 431 beyond
  size_t body_limit = 4 << 20;      // 413 beyond
  std::optional<TlsConfig> tls;
  // The body of the responses the server itself makes (400 for a request
  // that is not HTTP, 413, 431); plain text when unset.
  std::function<Response(int status, const std::string& message)> error_response;
};

class Server {
 public:
  // Binds, listens and starts the io threads. INVALID_ARGUMENT for bad TLS
  // material, UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<Server>> Start(ServerOptions options, Handler handler);
  ~Server();  // Stop(), then frees everything
  // Stops accepting, closes every connection and joins the io threads.
  void Stop();
  int port() const;
  int connections() const;  // open now

  struct Impl;

 private:
  explicit Server(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;
};

}  // namespace tinygpt::http
