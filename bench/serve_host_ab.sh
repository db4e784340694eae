#!/usr/bin/env bash
# The serving host path, two builds side by side on the CPU: each build's
# `tinygpt serve` and `tinygpt-client bench`, alternated, streaming then unary,
# ROUNDS rounds, with the CPU seconds the server and the client spent.
# A small model (the seed preset) makes the host's share of the work visible.
# usage: bench/serve_host_ab.sh BEFORE_BUILD_DIR AFTER_BUILD_DIR CHECKPOINT [ROUNDS]
# (a build dir holds cli/tinygpt and client/tinygpt-client)
set -euo pipefail
before=$1 after=$2 ck=$3 rounds=${4:-3}
port=${AB_PORT:-50998}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
load=(--target "localhost:$port" --concurrency 256 --prompt-len-min 4 --prompt-len-max 8 --output-len-min 40
      --output-len-max 40 --ignore-eos)
run() {  # label build [--unary]
  local label=$1 bin=$2 mode=${3:-}
  "$bin/cli/tinygpt" serve --checkpoint "$ck" --port "$port" --metrics-port -1 --http-port -1 --max-seqs 256 --max-batch-tokens 2048 \
    --max-queue 4096 >"$work/serve.log" 2>&1 &
  local sp=$!
  sleep 1.5
  "$bin/client/tinygpt-client" bench "${load[@]}" --requests 256 >/dev/null 2>&1  # warm-up
  local s0 s1
  s0=$(awk '{print $14 + $15}' "/proc/$sp/stat")
  /usr/bin/time -f "%U %S" -o "$work/time" "$bin/client/tinygpt-client" bench --json "${load[@]}" --requests 2048 $mode \
    >"$work/out.json"
  s1=$(awk '{print $14 + $15}' "/proc/$sp/stat")
  kill "$sp"
  wait "$sp" 2>/dev/null || true
  python3 - "$label" "${mode:-stream}" "$work/out.json" "$work/time" "$((s1 - s0))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
label, mode, out, tm, ticks, hz = sys.argv[1:]
j = json.loads(open(out).read().strip().splitlines()[-1])
u, s = map(float, open(tm).read().split())
print(f"| {label} | {mode.lstrip('-')} | {j['tokens_per_second']:,.0f} | {j['ok']} | {j['inter_token_seconds']['p50'] * 1e3:.2f} | "
      f"{int(ticks) / int(hz):.2f} | {u + s:.2f} | {j['seconds']:.2f} |")
PY
}
echo "| build | API | tok/s | ok | ITL p50 ms | server CPU s | client CPU s | wall s |"
echo "|---|---|---|---|---|---|---|---|"
for ((r = 0; r < rounds; ++r)); do
  for mode in "" --unary; do
    run before "$before" "$mode"
    run after "$after" "$mode"
  done
done
