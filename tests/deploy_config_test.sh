#!/usr/bin/env bash
# deploy/ checks that need no Docker engine: the compose file resolves for
# both profiles, Prometheus accepts its config, nginx its syntax is checked by
# nginx_lb_test.py (which runs it).
set -euo pipefail
src=$1
for profile in gpu cpu; do
  out=$(docker-compose -f "$src/deploy/docker-compose.yml" --profile "$profile" config)
  for svc in train lb prometheus grafana; do
    grep -q "^  $svc:" <<<"$out" || { echo "FAIL: profile $profile lacks service $svc"; exit 1; }
  done
  echo "PASS docker-compose config --profile $profile"
done
grep -q "capabilities:" <(docker-compose -f "$src/deploy/docker-compose.yml" --profile gpu config) \
  || { echo "FAIL: the gpu profile has no GPU reservation"; exit 1; }
echo "PASS gpu profile reserves a GPU"
promtool check config "$src/deploy/prometheus/prometheus.yml"
echo "PASS promtool check config"
echo "4 passed, 0 failed"
