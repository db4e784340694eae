#include "server/http/http_server.h"

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include <atomic>
#include <list>
#include <mutex>
#include <thread>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace tinygpt::http {

namespace beast = boost::beast;
namespace net = boost::asio;
namespace ssl = net::ssl;
namespace bhttp = beast::http;
using tcp = net::ip::tcp;
using Request = bhttp::request<bhttp::string_body>;

namespace detail {

// What the server needs of a connection, whatever its stream type.
class SessionBase {
 public:
  virtual ~SessionBase() = default;
  // Closes the connection if it is still waiting for a request (any thread).
  virtual void Evict() = 0;
  // Closes it now (only while no io thread runs: Server::Stop).
  virtual void CloseNow() = 0;
  // Its places in Server::Impl::waiting and ::all; guarded by Server::Impl::mu.
  std::list<std::weak_ptr<SessionBase>>::iterator waiting_it, all_it;
  bool in_waiting = false;
};

}  // namespace detail

// Shared by the sessions, so that a session an Exchange keeps past the
// server's end (a request still in the engine) never sees it freed.
struct Server::Impl : std::enable_shared_from_this<Server::Impl> {
  Impl(ServerOptions o, Handler h) : opt(std::move(o)), handler(std::move(h)) {}

  void Accept();
  void OnAccept(beast::error_code ec, tcp::socket socket);
  // Marks a connection as waiting for its next request (evictable) or not.
  void SetWaiting(const std::shared_ptr<detail::SessionBase>& s, bool waiting);
  // Closes the connection that has waited longest; false when none waits.
  bool EvictOldestWaiting();
  Response ErrorResponse(int status, const std::string& message) const;

  const ServerOptions opt;
  const Handler handler;
  net::io_context ioc;
  std::optional<ssl::context> tls;
  tcp::acceptor acceptor{ioc};
  net::steady_timer accept_retry{ioc};
  std::vector<std::thread> threads;
  std::atomic<int> connections{0};
  std::atomic<bool> stopped{false};
  std::mutex mu;  // guards waiting, all and the sessions' places in them
  std::list<std::weak_ptr<detail::SessionBase>> waiting;  // longest waiting first
  std::list<std::weak_ptr<detail::SessionBase>> all;      // every open session, for Stop
  int port = 0;
};

namespace {

// Bytes read at a time while a response is under way (to notice the client
// closing).
constexpr size_t kWatchBytes = 4096;

template <class Stream>
class Session;

template <class Stream>
class ExchangeImpl final : public Exchange, public std::enable_shared_from_this<ExchangeImpl<Stream>> {
 public:
  ExchangeImpl(std::shared_ptr<Session<Stream>> s, Request req) : s_(std::move(s)), req_(std::move(req)) {}

  std::string_view method() const override { return View(req_.method_string()); }
  std::string_view target() const override { return View(req_.target()); }
  std::string_view body() const override { return req_.body(); }
  std::string_view header(std::string_view name) const override {
    auto it = req_.find(beast::string_view(name.data(), name.size()));
    return it == req_.end() ? std::string_view() : View(it->value());
  }
  void Reply(Response r) override {
    net::post(s_->executor(), [self = this->shared_from_this(), r = std::move(r)]() mutable { self->s_->SendReply(self, std::move(r)); });
  }
  void BeginStream(Response head) override {
    net::post(s_->executor(), [self = this->shared_from_this(), head = std::move(head)]() mutable { self->head_ = std::move(head); });
  }
  void Write(std::string data, bool last, std::function<void(bool)> done) override {
    net::post(s_->executor(), [self = this->shared_from_this(), data = std::move(data), last, done = std::move(done)]() mutable {
      self->s_->SendChunk(self, std::move(data), last, std::move(done));
    });
  }
  void OnGone(std::function<void()> gone) override {
    net::post(s_->executor(), [self = this->shared_from_this(), gone = std::move(gone)]() mutable {
      if (self->gone_) gone();
      else if (!self->done_) self->on_gone_ = std::move(gone);  // once the response is out, never
    });
  }

  // The whole response is queued: the client can no longer be gone for it.
  // (Dropping the callback also frees whatever it holds, often the caller
  // that holds this exchange.)
  void MarkDone() {
    done_ = true;
    on_gone_ = nullptr;
  }

  // The client went away before the response was complete (strand only).
  void Gone() {
    if (gone_ || done_) return;
    gone_ = true;
    if (auto f = std::move(on_gone_)) f();
  }

  static std::string_view View(beast::string_view v) { return {v.data(), v.size()}; }

  // Strand-only state.
  std::shared_ptr<Session<Stream>> s_;
  Request req_;
  Response head_;             // a stream's status and headers
  bool header_sent_ = false;  // a stream's header
  bool done_ = false;         // the whole response is queued
  bool gone_ = false;
  std::function<void()> on_gone_;
};

template <class Stream>
class Session final : public detail::SessionBase, public std::enable_shared_from_this<Session<Stream>> {
 public:
  static constexpr bool kTls = !std::is_same_v<Stream, beast::tcp_stream>;
  using X = ExchangeImpl<Stream>;

  template <class... Args>
  Session(std::shared_ptr<Server::Impl> srv, Args&&... args) : srv_(std::move(srv)), stream_(std::forward<Args>(args)...), idle_timer_(stream_.get_executor()) {}
  ~Session() override {
    {
      std::lock_guard<std::mutex> lock(srv_->mu);
      srv_->all.erase(all_it);
    }
    --srv_->connections;
  }

  auto executor() { return stream_.get_executor(); }

  void Run() {
    {
      std::lock_guard<std::mutex> lock(srv_->mu);
      all_it = srv_->all.insert(srv_->all.end(), this->weak_from_this());
    }
    srv_->SetWaiting(this->shared_from_this(), true);
    net::dispatch(executor(), [self = this->shared_from_this()] {
      self->tcp().expires_after(self->srv_->opt.request_timeout);
      if constexpr (kTls) {
        self->stream_.async_handshake(ssl::stream_base::server, [self](beast::error_code ec) {
          if (ec) return self->Close();
          self->ReadRequest();
        });
      } else {
        self->ReadRequest();
      }
    });
  }

  void CloseNow() override { Close(); }

  void Evict() override {
    net::post(executor(), [self = this->shared_from_this()] {
      if (!self->exchange_) self->Close();
    });
  }

  // --- Strand only from here on ---

  void SendReply(const std::shared_ptr<X>& x, Response r) {
    if (closed_ || x->done_ || x->gone_ || x != exchange_) return;
    x->MarkDone();
    auto res = std::make_shared<bhttp::response<bhttp::string_body>>(static_cast<bhttp::status>(r.status), x->req_.version());
    Fill(r, res.get());
    res->body() = std::move(r.body);
    res->prepare_payload();
    tcp().expires_after(srv_->opt.write_timeout);
    bhttp::async_write(stream_, *res, [self = this->shared_from_this(), res](beast::error_code ec, size_t) {
      if (ec) return self->Close();
      self->ExchangeDone();
    });
  }

  void SendChunk(const std::shared_ptr<X>& x, std::string data, bool last, std::function<void(bool)> done) {
    if (closed_ || x->done_ || x->gone_ || x != exchange_) return done(false);
    if (last) x->MarkDone();
    if (!x->header_sent_) {
      x->header_sent_ = true;
      auto head = std::make_shared<bhttp::response<bhttp::empty_body>>(static_cast<bhttp::status>(x->head_.status), x->req_.version());
      Fill(x->head_, head.get());
      head->chunked(true);
      auto sr = std::make_shared<bhttp::response_serializer<bhttp::empty_body>>(*head);
      tcp().expires_after(srv_->opt.write_timeout);
      bhttp::async_write_header(stream_, *sr,
                                [self = this->shared_from_this(), head, sr, data = std::move(data), last,
                                 done = std::move(done)](beast::error_code ec, size_t) mutable {
                                  if (ec) return self->WriteFailed(std::move(done));
                                  self->WriteChunk(std::move(data), last, std::move(done));
                                });
      return;
    }
    WriteChunk(std::move(data), last, std::move(done));
  }

 private:
  beast::tcp_stream& tcp() { return beast::get_lowest_layer(stream_); }

  template <class Body>
  void Fill(const Response& r, bhttp::response<Body>* res) {
    res->set(bhttp::field::server, "tinygpt");
    res->set(bhttp::field::content_type, r.content_type);
    for (const auto& [k, v] : r.headers) res->set(k, v);
    keep_alive_ = keep_alive_ && !srv_->stopped;
    res->keep_alive(keep_alive_);
  }

  void ReadRequest() {  // the caller has set the read deadline
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(srv_->opt.header_limit));
    parser_->body_limit(srv_->opt.body_limit);
    bhttp::async_read_header(stream_, buffer_, *parser_, [self = this->shared_from_this()](beast::error_code ec, size_t) {
      self->OnHeader(ec);
    });
  }

  void OnHeader(beast::error_code ec) {
    if (ec) return OnReadError(ec);
    srv_->SetWaiting(this->shared_from_this(), false);
    const auto length = parser_->content_length();
    if (length && *length > srv_->opt.body_limit)
      return Fail(413, absl::StrCat("request body of ", *length, " bytes exceeds the limit of ", srv_->opt.body_limit));
    const auto& req = parser_->get();
    if (beast::iequals(req[bhttp::field::expect], "100-continue")) {
      // The client waits for this before it sends the body (curl does for
      // large bodies): a refusal above comes before the upload.
      auto res = std::make_shared<bhttp::response<bhttp::empty_body>>(bhttp::status::continue_, req.version());
      tcp().expires_after(srv_->opt.write_timeout);
      bhttp::async_write(stream_, *res, [self = this->shared_from_this(), res](beast::error_code ec, size_t) {
        if (ec) return self->Close();
        self->tcp().expires_after(self->srv_->opt.request_timeout);
        self->ReadBody();
      });
      return;
    }
    ReadBody();
  }

  void ReadBody() {
    bhttp::async_read(stream_, buffer_, *parser_, [self = this->shared_from_this()](beast::error_code ec, size_t) {
      self->OnRequest(ec);
    });
  }

  void OnReadError(beast::error_code ec) {
    if (ec == bhttp::error::body_limit) return Fail(413, absl::StrCat("request body exceeds the limit of ", srv_->opt.body_limit, " bytes"));
    if (ec == bhttp::error::header_limit)
      return Fail(431, absl::StrCat("request header exceeds the limit of ", srv_->opt.header_limit, " bytes"));
    // Closed, reset, timed out (a half-sent request), or a broken TLS
    // stream: nobody to answer.
    if (ec == bhttp::error::end_of_stream || ec == beast::error::timeout || ec == net::error::operation_aborted ||
        ec.category() == net::error::get_misc_category() || ec.category() == net::error::get_system_category() ||
        ec.category() == net::error::get_ssl_category() || ec == net::ssl::error::stream_truncated)
      return Close();
    Fail(400, absl::StrCat("malformed HTTP request: ", ec.message()));
  }

  // Answers a request the server cannot take, then closes the connection.
  void Fail(int status, const std::string& message) {
    keep_alive_ = false;
    Response r = srv_->ErrorResponse(status, message);
    auto res = std::make_shared<bhttp::response<bhttp::string_body>>(static_cast<bhttp::status>(status), 11);
    Fill(r, res.get());
    res->body() = std::move(r.body);
    res->prepare_payload();
    tcp().expires_after(srv_->opt.write_timeout);
    bhttp::async_write(stream_, *res, [self = this->shared_from_this(), res](beast::error_code, size_t) { self->Close(); });
  }

  void OnRequest(beast::error_code ec) {
    if (ec) return OnReadError(ec);
    auto x = std::make_shared<X>(this->shared_from_this(), parser_->release());
    parser_.reset();
    exchange_ = x;
    keep_alive_ = x->req_.keep_alive();
    StartWatch();
    try {
      srv_->handler(x);
    } catch (const std::exception& e) {
      LOG(ERROR) << srv_->opt.name << ": handler failed: " << e.what();
      SendReply(x, srv_->ErrorResponse(500, "internal error"));
    }
  }

  // While a response is under way, a read that tells when the client goes
  // away (a streaming or long request is then cancelled). Bytes it gets are
  // the start of the next request and are kept.
  void StartWatch() {
    if (watching_ || closed_ || buffer_.size() > 0) return;
    watching_ = true;
    tcp().expires_never();
    stream_.async_read_some(buffer_.prepare(kWatchBytes), [self = this->shared_from_this()](beast::error_code ec, size_t n) {
      self->OnWatch(ec, n);
    });
  }

  void OnWatch(beast::error_code ec, size_t n) {
    watching_ = false;
    if (ec) return Close();
    buffer_.commit(n);
    // The next request has begun while this one's response is still going
    // out (the client has its answer but the last write has not completed
    // here, or it pipelines): stop watching, so that nothing reads but the
    // next request's own read, which starts with these bytes. A client that
    // sends its next request is still there; a write error tells otherwise.
    if (exchange_) return;
    // Idle between requests, and the next one has begun.
    idle_timer_.cancel();
    tcp().expires_after(srv_->opt.request_timeout);
    ReadRequest();
  }

  void WriteChunk(std::string data, bool last, std::function<void(bool)> done) {
    if (data.empty() && !last) return done(true);
    auto buf = std::make_shared<std::string>(std::move(data));
    auto then = [self = this->shared_from_this(), buf, last, done = std::move(done)](beast::error_code ec, size_t) mutable {
      if (ec) return self->WriteFailed(std::move(done));
      done(true);
      if (last) self->ExchangeDone();
    };
    tcp().expires_after(srv_->opt.write_timeout);
    if (buf->empty()) net::async_write(stream_, bhttp::make_chunk_last(), std::move(then));
    else if (last)
      net::async_write(stream_, beast::buffers_cat(bhttp::make_chunk(net::buffer(*buf)), bhttp::make_chunk_last()), std::move(then));
    else net::async_write(stream_, bhttp::make_chunk(net::buffer(*buf)), std::move(then));
  }

  void WriteFailed(std::function<void(bool)> done) {
    Close();
    done(false);
  }

  // The response is written: the next request, or the end.
  void ExchangeDone() {
    exchange_.reset();
    if (!keep_alive_) return Close();
    srv_->SetWaiting(this->shared_from_this(), true);
    if (!watching_) {
      tcp().expires_after(srv_->opt.request_timeout);
      return ReadRequest();
    }
    // The watch read waits for the next request; bound the wait.
    idle_timer_.expires_after(srv_->opt.request_timeout);
    idle_timer_.async_wait([self = this->shared_from_this()](beast::error_code ec) {
      if (!ec) self->Close();
    });
  }

  void Close() {
    if (closed_) return;
    closed_ = true;
    srv_->SetWaiting(this->shared_from_this(), false);
    idle_timer_.cancel();
    if (auto x = std::move(exchange_)) x->Gone();
    beast::error_code ec;
    tcp().socket().shutdown(tcp::socket::shutdown_both, ec);
    tcp().close();
  }

  const std::shared_ptr<Server::Impl> srv_;
  Stream stream_;
  net::steady_timer idle_timer_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  std::shared_ptr<X> exchange_;  // the request being answered
  bool keep_alive_ = true;
  bool watching_ = false;
  bool closed_ = false;
};

}  // namespace

void Server::Impl::SetWaiting(const std::shared_ptr<detail::SessionBase>& s, bool on) {
  std::lock_guard<std::mutex> lock(mu);
  if (on == s->in_waiting) return;
  if (on) s->waiting_it = waiting.insert(waiting.end(), s);
  else waiting.erase(s->waiting_it);
  s->in_waiting = on;
}

bool Server::Impl::EvictOldestWaiting() {
  std::lock_guard<std::mutex> lock(mu);
  while (!waiting.empty()) {
    std::shared_ptr<detail::SessionBase> s = waiting.front().lock();
    waiting.pop_front();
    if (!s) continue;
    s->in_waiting = false;
    s->Evict();
    return true;
  }
  return false;
}

Response Server::Impl::ErrorResponse(int status, const std::string& message) const {
  if (opt.error_response) return opt.error_response(status, message);
  Response r;
  r.status = status;
  r.content_type = "text/plain; charset=utf-8";
  r.body = message + "\n";
  return r;
}

void Server::Impl::Accept() {
  acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) { OnAccept(ec, std::move(socket)); });
}

void Server::Impl::OnAccept(beast::error_code ec, tcp::socket socket) {
  if (stopped || ec == net::error::operation_aborted) return;
  if (ec) {
    // Out of file descriptors, most likely: try again shortly rather than spin.
    LOG(WARNING) << opt.name << ": accept failed: " << ec.message();
    accept_retry.expires_after(std::chrono::milliseconds(50));
    accept_retry.async_wait([this](beast::error_code ec) {
      if (!ec) Accept();
    });
    return;
  }
  beast::error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);  // a stream's tokens go out as they come
  // At the cap, the connection that has waited longest for a request makes
  // room; when every connection has a request under way the new one is
  // turned away.
  if (connections.load() >= opt.max_connections && !EvictOldestWaiting()) {
    socket.close(ignored);
    return Accept();
  }
  ++connections;
  if (tls) std::make_shared<Session<beast::ssl_stream<beast::tcp_stream>>>(shared_from_this(), std::move(socket), *tls)->Run();
  else std::make_shared<Session<beast::tcp_stream>>(shared_from_this(), std::move(socket))->Run();
  Accept();
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(ServerOptions options, Handler handler) {
  auto impl = std::make_shared<Impl>(std::move(options), std::move(handler));
  const ServerOptions& opt = impl->opt;
  if (opt.tls) {
    try {
      impl->tls.emplace(ssl::context::tls_server);
      impl->tls->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                             ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
      impl->tls->use_certificate_chain(net::buffer(opt.tls->cert_pem));
      impl->tls->use_private_key(net::buffer(opt.tls->key_pem), ssl::context::pem);
      if (!opt.tls->client_ca_pem.empty()) {
        impl->tls->add_certificate_authority(net::buffer(opt.tls->client_ca_pem));
        impl->tls->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
      }
    } catch (const boost::system::system_error& e) {
      return absl::InvalidArgumentError(absl::StrCat(opt.name, ": TLS certificate or key: ", e.what()));
    }
  }
  beast::error_code ec;
  tcp::resolver resolver(impl->ioc);
  auto endpoints = resolver.resolve(opt.host, std::to_string(opt.port), tcp::resolver::passive, ec);
  if (ec || endpoints.empty()) return absl::UnavailableError(absl::StrCat(opt.name, ": cannot resolve ", opt.host, ": ", ec.message()));
  const tcp::endpoint ep = endpoints.begin()->endpoint();
  auto& a = impl->acceptor;
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
  if (ec) return absl::UnavailableError(absl::StrCat(opt.name, ": cannot listen on ", opt.host, ":", opt.port, ": ", ec.message()));
  impl->port = a.local_endpoint().port();
  impl->Accept();
  for (int i = 0; i < std::max(1, opt.threads); ++i)
    impl->threads.emplace_back([p = impl.get()] {
      // A handler's exception must not take the thread (and the server) down.
      while (!p->stopped) {
        try {
          p->ioc.run();
          break;
        } catch (const std::exception& e) {
          LOG(ERROR) << p->opt.name << ": " << e.what();
        }
      }
    });
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

void Server::Stop() {
  if (impl_->stopped.exchange(true)) return;
  impl_->ioc.stop();
  for (auto& t : impl_->threads) t.join();
  impl_->threads.clear();
  // With no io thread left, close every connection and run what that aborts
  // here: the sessions' pending handlers hold them (and they the server), so
  // left queued they would never be freed.
  std::vector<std::shared_ptr<detail::SessionBase>> open;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    for (auto& w : impl_->all)
      if (auto s = w.lock()) open.push_back(std::move(s));
  }
  beast::error_code ignored;
  impl_->acceptor.close(ignored);
  impl_->accept_retry.cancel();
  for (auto& s : open) s->CloseNow();
  open.clear();
  impl_->ioc.restart();
  impl_->ioc.poll();
}

Server::~Server() { Stop(); }
int Server::port() const { return impl_->port; }
int Server::connections() const { return impl_->connections.load(); }

}  // namespace tinygpt::http
