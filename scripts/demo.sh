#!/usr/bin/env bash
# The main job: build, train the seed model (unless seed.safetensors exists),
# start the server, answer a generate request from the client, stop the server,
# and say in words what the model did.
# Runs on the CUDA backend when a GPU and the module are present, else the CPU.
# Environment: CHECKPOINT (seed.safetensors), PORT (50051; 0 picks a free one),
# BUILD_DIR (build) and DEMO_SKIP_BUILD=1 (use BUILD_DIR as it is; tests/demo_test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
[[ "${DEMO_SKIP_BUILD:-0}" == 1 ]] || scripts/build.sh
ckpt=${CHECKPOINT:-seed.safetensors}
if [[ ! -f $ckpt ]]; then
  "$build/cli/tinygpt" train --preset seed --task count --steps "${TRAIN_STEPS:-400}" --batch "${TRAIN_BATCH:-64}" --out "$ckpt"
fi
port=${PORT:-50051}
# The server writes the address it listens on here; the client reads it (so PORT=0 works).
TINYGPT_ADDRESS_FILE=$(mktemp -u "${TMPDIR:-/tmp}/tinygpt-demo.XXXXXX")
export TINYGPT_ADDRESS_FILE
# The demo answers over gRPC; HTTP_PORT=8000 also serves the OpenAI-compatible HTTP API (off here, so that
# a demo beside a running server, or the test suite, finds no port taken).
"$build/cli/tinygpt" serve --checkpoint "$ckpt" --port "$port" --metrics-port -1 --http-port "${HTTP_PORT:--1}" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$TINYGPT_ADDRESS_FILE"' EXIT
for _ in $(seq 300); do
  [[ -s $TINYGPT_ADDRESS_FILE ]] && "$build/client/tinygpt-client" health >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { echo "demo: the server exited before it served" >&2; exit 1; }
  sleep 0.1
done
prompt=10,11,12,13
out=$("$build/client/tinygpt-client" generate --prompt-ids $prompt --max-new-tokens 12)
echo "$out"
kill -TERM $server
wait $server
trap 'rm -f "$TINYGPT_ADDRESS_FILE"' EXIT
# In words: the counting model sees the start of a count and should go on with it.
got=$(sed -n 's/^output_ids: //p' <<<"$out")
want=$(seq -s, 14 25)
if [[ $got == "$want" ]]; then
  echo "demo: the model was given the token ids 10, 11, 12, 13 (the start of a count) and continued the count: 14 to 25, all 12 new tokens right."
else
  right=0
  IFS=, read -ra g <<<"$got"
  for i in "${!g[@]}"; do [[ ${g[$i]} == $((14 + i)) ]] || break; right=$((right + 1)); done
  echo "demo: the model was given the token ids 10, 11, 12, 13 (the start of a count) and answered $got;" \
       "the count would go on 14 to 25 ($right of its 12 new tokens continue it; train longer for all)."
fi
echo "demo: ok"
