#!/usr/bin/env bash
# The main job: build, train the seed model (unless seed.safetensors exists),
# start the server, answer a generate request from the client, stop the server.
# Runs on the CUDA backend when a GPU and the module are present, else the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
ckpt=${CHECKPOINT:-seed.safetensors}
if [[ ! -f $ckpt ]]; then
  build/cli/tinygpt train --preset seed --task count --steps 400 --batch 64 --out "$ckpt"
fi
port=${PORT:-50051}
build/cli/tinygpt serve --checkpoint "$ckpt" --port "$port" --metrics-port -1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do build/client/tinygpt-client health --target "127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.1; done
build/client/tinygpt-client generate --target "127.0.0.1:$port" --prompt-ids 10,11,12,13 --max-new-tokens 12
kill -TERM $server
wait $server
trap - EXIT
echo "demo: ok"
