#!/usr/bin/env bash
# deploy/ checks that need no Docker engine: the compose file resolves for
# both profiles, publishes nothing beyond loopback by default (and exactly
# where the override variables say), keeps Grafana closed to anonymous users
# and demands its admin password; Prometheus accepts its config. nginx's
# syntax is checked by nginx_lb_test.py (which runs it).
set -euo pipefail
src=$1
compose() { docker-compose -f "$src/deploy/docker-compose.yml" "$@"; }
export GRAFANA_ADMIN_PASSWORD=test-only-password
passed=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; exit 1; }
for profile in gpu cpu; do
  out=$(compose --profile "$profile" config)
  for svc in train lb prometheus grafana; do
    grep -q "^  $svc:" <<<"$out" || fail "profile $profile lacks service $svc"
  done
  pass "docker-compose config --profile $profile"
  # Every published port is on 127.0.0.1 unless an override says otherwise.
  # (compose prints a port without a host address in its long form, which
  # publishes on every interface.)
  if grep -E '^    - (published|target):' <<<"$out"; then fail "profile $profile publishes on every interface (above)"; fi
  ports=$(grep -E '^    - .*[0-9]+/tcp$' <<<"$out" || true)
  [ -n "$ports" ] || fail "profile $profile publishes no ports?"
  if grep -v '^    - 127\.0\.0\.1:' <<<"$ports"; then fail "profile $profile publishes beyond loopback (above)"; fi
  pass "profile $profile publishes on loopback only ($(wc -l <<<"$ports") ports)"
  grep -q 'GF_AUTH_ANONYMOUS_ENABLED: "false"' <<<"$out" || fail "Grafana anonymous access is on by default"
  grep -q 'GF_SECURITY_ADMIN_PASSWORD: test-only-password' <<<"$out" || fail "Grafana admin password not from GRAFANA_ADMIN_PASSWORD"
  pass "profile $profile: Grafana anonymous access off, admin password from the environment"
done
grep -q "capabilities:" <(compose --profile gpu config) || fail "the gpu profile has no GPU reservation"
pass "gpu profile reserves a GPU"
if (unset GRAFANA_ADMIN_PASSWORD; compose --profile cpu config >/dev/null 2>&1); then
  fail "compose resolves without GRAFANA_ADMIN_PASSWORD (Grafana would start with its default password)"
fi
pass "compose refuses to resolve without GRAFANA_ADMIN_PASSWORD"
out=$(TINYGPT_GRPC_PUBLISH_HOST=0.0.0.0 GRAFANA_PUBLISH_HOST=0.0.0.0 GRAFANA_ANONYMOUS=true compose --profile cpu config)
grep -q -- '- 0.0.0.0:50051:50051/tcp' <<<"$out" || fail "TINYGPT_GRPC_PUBLISH_HOST does not move the balancer"
grep -q -- '- 0.0.0.0:3000:3000/tcp' <<<"$out" || fail "GRAFANA_PUBLISH_HOST does not move Grafana"
grep -q -- '- 127.0.0.1:9090:9090/tcp' <<<"$out" || fail "Prometheus left loopback without being asked"
grep -q 'GF_AUTH_ANONYMOUS_ENABLED: "true"' <<<"$out" || fail "GRAFANA_ANONYMOUS does not turn anonymous access on"
pass "the override variables expose exactly what they name"
promtool check config "$src/deploy/prometheus/prometheus.yml"
pass "promtool check config"
echo "$passed passed, 0 failed"
