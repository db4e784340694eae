#!/usr/bin/env bash
# Streaming against unary through gRPC on one build, for one or more server
# flag sets: each set's `tinygpt serve` is warmed up at the measured
# concurrency, then serves REQUESTS streaming calls and REQUESTS unary calls
# (CONCURRENCY at a time, alternated over ROUNDS rounds); prints tokens/s,
# the streaming/unary ratio, and the CPU seconds of the server and the client.
# The server, the load generator and gRPC share this machine's cores, so a
# small model (the seed preset) shows the host's share of the work.
# usage: bench/stream_vs_unary.sh BUILD_DIR CHECKPOINT [FLAGSET ...]
#   FLAGSET: server flags in one word, comma-separated ("--stream-interval=1"; "" for the defaults)
#   env: ROUNDS (3), REQUESTS (2048), CONCURRENCY (256), NEW_TOKENS (40), SERVER_FLAGS (added to every set:
#        default "--max-seqs=256 --max-batch-tokens=2048 --max-queue=4096")
set -euo pipefail
bin=$1 ck=$2
shift 2
sets=("$@")
((${#sets[@]})) || sets=("")
rounds=${ROUNDS:-3} requests=${REQUESTS:-2048} conc=${CONCURRENCY:-256} new=${NEW_TOKENS:-40}
read -r -a common <<< "${SERVER_FLAGS:---max-seqs=256 --max-batch-tokens=2048 --max-queue=4096}"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
load=(--concurrency "$conc" --prompt-len-min 4 --prompt-len-max 8 --output-len-min "$new" --output-len-max "$new" --ignore-eos
      --deadline-ms 300000)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() {  # run FLAGSET MODE(stream|unary) -> one table row
  local set=$1 mode=$2 extra=()
  [[ $mode == unary ]] && extra=(--unary)
  local flags=()
  [[ -n $set ]] && IFS=, read -r -a flags <<< "$set"
  "$bin/cli/tinygpt" serve --checkpoint "$ck" --port 0 --metrics-port -1 --http-port -1 "${common[@]}" "${flags[@]}" >"$work/serve.out" 2>"$work/serve.log" &
  local sp=$! target=
  for _ in $(seq 200); do
    target=$(grep -o 'listening on [^ ]*' "$work/serve.out" 2>/dev/null | awk '{print $3}') && [[ -n $target ]] && break
    sleep 0.05
  done
  [[ -n $target ]] || { echo "server did not start: $(tail -3 "$work/serve.log")" >&2; exit 1; }
  "$bin/client/tinygpt-client" bench --target "$target" "${load[@]}" --requests "$conc" "${extra[@]}" >/dev/null 2>&1  # warm-up
  local s0 s1
  s0=$(ticks "$sp")
  /usr/bin/time -f "%U %S" -o "$work/time" "$bin/client/tinygpt-client" bench --target "$target" --json "${load[@]}" \
    --requests "$requests" "${extra[@]}" >"$work/out.json"
  s1=$(ticks "$sp")
  kill "$sp"
  wait "$sp" 2>/dev/null || true
  python3 - "${set:-defaults}" "$mode" "$work/out.json" "$work/time" "$((s1 - s0))" "$(getconf CLK_TCK)" >>"$work/rows" <<'PY'
import json, sys
label, mode, out, tm, ticks, hz = sys.argv[1:]
j = json.loads(open(out).read().strip().splitlines()[-1])
u, s = map(float, open(tm).read().split())
print(json.dumps(dict(set=label, mode=mode, tps=j["tokens_per_second"], ok=j["ok"], requests=j["requests"],
                      itl_p50_ms=j["inter_token_seconds"]["p50"] * 1e3, server_cpu=int(ticks) / int(hz), client_cpu=u + s)))
PY
}
for ((r = 0; r < rounds; ++r)); do
  for set in "${sets[@]}"; do
    run "$set" stream
    run "$set" unary
  done
done
python3 - "$work/rows" "$conc" "$requests" "$new" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
conc, requests, new = sys.argv[2:]
print(f"{requests} requests of {new} tokens, {conc} at a time; steady state (each server warmed up at that concurrency first)")
print("| server flags | streaming tok/s | unary tok/s | streaming / unary | ITL p50 ms stream / unary | server CPU s stream / unary | client CPU s stream / unary | failed |")
print("|---|---|---|---|---|---|---|---|")
for label in dict.fromkeys(r["set"] for r in rows):
    st = [r for r in rows if r["set"] == label and r["mode"] == "stream"]
    un = [r for r in rows if r["set"] == label and r["mode"] == "unary"]
    rng = lambda xs, f="{:,.0f}": f.format(min(xs)) + ("" if len(xs) == 1 else "-" + f.format(max(xs)))
    ratios = [s["tps"] / u["tps"] for s, u in zip(st, un)]
    med = lambda xs: statistics.median(xs)
    failed = sum(r["requests"] - r["ok"] for r in st + un)
    print(f"| {label} | {rng([r['tps'] for r in st])} | {rng([r['tps'] for r in un])} | {rng(ratios, '{:.2f}')} (median {med(ratios):.2f}) | "
          f"{med([r['itl_p50_ms'] for r in st]):.2f} / {med([r['itl_p50_ms'] for r in un]):.2f} | "
          f"{med([r['server_cpu'] for r in st]):.2f} / {med([r['server_cpu'] for r in un]):.2f} | "
          f"{med([r['client_cpu'] for r in st]):.2f} / {med([r['client_cpu'] for r in un]):.2f} | {failed} |")
PY
