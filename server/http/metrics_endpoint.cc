#include "server/http/metrics_endpoint.h"

#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <sstream>

namespace tinygpt::http {

Handler MetricsHandler(std::shared_ptr<prometheus::Registry> registry) {
  return [registry = std::move(registry)](std::shared_ptr<Exchange> x) {
    const std::string_view target = x->target();
    const std::string_view path = target.substr(0, target.find('?'));
    Response r;
    r.content_type = "text/plain; charset=utf-8";
    if (path != "/metrics") {
      r.status = 404;
      r.body = "not found: the metrics are at /metrics\n";
    } else if (x->method() != "GET") {
      r.status = 405;
      r.headers = {{"Allow", "GET"}};
      r.body = "method not allowed\n";
    } else {
      // Prometheus's text exposition format, version 0.0.4.
      r.content_type = "text/plain; version=0.0.4; charset=utf-8";
      std::ostringstream out;
      prometheus::TextSerializer().Serialize(out, registry->Collect());
      r.body = out.str();
    }
    x->Reply(std::move(r));
  };
}

}  // namespace tinygpt::http
