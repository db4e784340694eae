#!/usr/bin/env bash
# deploy/ checks that need no Docker engine: the compose file resolves for
# both profiles, publishes nothing beyond loopback by default (and exactly
# where the override variables say), keeps Grafana closed to anonymous users
# and refuses to start it without its admin password, names every image by a
# variable, retries a failing server a bounded number of times; Prometheus
# accepts its config, HAProxy its. The balancer runs in balancer_lb_test.py,
# the whole deployment in scripts/container-test.sh.
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
# Grafana is optional (profile grafana), so the file resolves without its
# password; Grafana itself refuses to start without one.
out=$(unset GRAFANA_ADMIN_PASSWORD; compose --profile cpu config) || fail "compose needs GRAFANA_ADMIN_PASSWORD even without Grafana"
grafana=$(sed -n '/^  grafana:/,/^  [a-z]/p' <<<"$out")
grep -qx -- '    - grafana' <<<"$grafana" || fail "Grafana is not in its own profile"
guard=$(/usr/bin/python3 -c 'import sys, yaml; e = yaml.safe_load(sys.stdin)["services"]["grafana"]["entrypoint"]
print(e[2].replace("$$", "$").replace("exec /run.sh", "true"))' <<<"$out")
[ -n "$guard" ] || fail "Grafana's entrypoint has no password check"
if msg=$(GF_SECURITY_ADMIN_PASSWORD= sh -c "$guard" 2>&1); then fail "the password check passes without a password"; fi
grep -q GRAFANA_ADMIN_PASSWORD <<<"$msg" || fail "the password check does not say what to set: $msg"
GF_SECURITY_ADMIN_PASSWORD=x sh -c "$guard" || fail "the password check refuses a password"
pass "Grafana optional (profile grafana) and refusing to start without GRAFANA_ADMIN_PASSWORD"
for svc in server server-cpu; do
  sed -n "/^  $svc:/,/^  [a-z]/p" <<<"$out" | grep -q "restart: on-failure:3" || fail "$svc does not stop retrying (restart: on-failure:3)"
done
pass "a server that cannot start is retried 3 times, not forever"
out=$(TINYGPT_IMAGE=img/a:1 TINYGPT_LB_IMAGE=img/b:1 TINYGPT_PROMETHEUS_IMAGE=img/c:1 GRAFANA_IMAGE=img/d:1 compose --profile cpu config)
images=$(grep -E '^    image:' <<<"$out" | sort -u | awk '{print $2}' | tr '\n' ' ')
[[ "$images" == "img/a:1 img/b:1 img/c:1 img/d:1 " ]] || fail "not every image follows its variable: $images"
pass "every image is named by a variable"
out=$(TINYGPT_GRPC_PUBLISH_HOST=0.0.0.0 GRAFANA_PUBLISH_HOST=0.0.0.0 GRAFANA_ANONYMOUS=true compose --profile cpu config)
grep -q -- '- 0.0.0.0:50051:50051/tcp' <<<"$out" || fail "TINYGPT_GRPC_PUBLISH_HOST does not move the balancer"
grep -q -- '- 0.0.0.0:3000:3000/tcp' <<<"$out" || fail "GRAFANA_PUBLISH_HOST does not move Grafana"
grep -q -- '- 127.0.0.1:9090:9090/tcp' <<<"$out" || fail "Prometheus left loopback without being asked"
grep -q 'GF_AUTH_ANONYMOUS_ENABLED: "true"' <<<"$out" || fail "GRAFANA_ANONYMOUS does not turn anonymous access on"
pass "the override variables expose exactly what they name"
promtool check config "$src/deploy/prometheus/prometheus.yml"
pass "promtool check config"
haproxy -c -f "$src/deploy/balancer/haproxy.cfg"
pass "haproxy -c accepts deploy/balancer/haproxy.cfg"
echo "$passed passed, 0 failed"
