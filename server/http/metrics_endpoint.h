// GET /metrics: the Prometheus text rendering of a prometheus-cpp registry,
// as the handler of an http::Server (server/http/http_server.h) on the
// metrics port.
#pragma once
#include <memory>

#include "server/http/http_server.h"

namespace prometheus {
class Registry;
}

namespace tinygpt::http {

Handler MetricsHandler(std::shared_ptr<prometheus::Registry> registry);

}  // namespace tinygpt::http
