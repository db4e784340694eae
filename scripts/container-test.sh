#!/usr/bin/env bash
# The deployment, run for real (issue #21), on a machine like CI's: Debian 12,
# root, no Docker engine, no registry. Everything comes from Debian's packages
# and this repository:
#  1. installs podman, buildah, mmdebstrap, runc, netavark, docker-compose (idempotent);
#  2. builds the base images with mmdebstrap (deploy/podman/base-images.sh; reused when there);
#  3. builds the CPU variant of the Dockerfile, the balancer and Prometheus
#     images, and (when this machine has the CUDA 13 toolkit) the CUDA variant,
#     its toolkit bound in; compiles go through ccache in a build cache mount;
#  4. the main job in containers: train into a volume as the image's non-root
#     user, serve on a non-default port, the image's own HEALTHCHECK healthy,
#     a request answered over gRPC from the host, /metrics scraped, SIGTERM
#     drains an in-flight stream and exits 0 within the grace period; a missing
#     and a corrupt checkpoint exit non-zero with the loader's message;
#  5. the CUDA image starts without a GPU and serves on the CPU;
#  6. the compose deployment through podman's Docker API: train, two server
#     replicas, the HAProxy balancer, Prometheus; the balancer checks each
#     replica's /health; one-shot clients (one connection each, one or two
#     calls) and a bench over one connection through it are all answered and
#     reach both replicas, with no call retried or redispatched; Prometheus has
#     both as healthy targets, every replica down gives UNAVAILABLE at once,
#     `down -v` leaves nothing;
#  7. the Kubernetes manifests with `podman play kube`: the PVC, the training
#     Job's pod, the server Deployment (read-only root, non-root), answered.
# Everything it starts listens on loopback or on the containers' own networks,
# and is removed at the end (also on failure).
# CONTAINERS_CONF points podman at deploy/podman/containers.conf; nothing in
# /etc is changed. TINYGPT_CT_SKIP_CUDA=1 leaves out the CUDA image.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CONTAINERS_CONF=$root/deploy/podman/containers.conf
t0=$SECONDS
declare -a timings=()
phase_start=$SECONDS
phase() {  # ends the previous phase (its time is reported at the end) and names the next
  [[ -z ${phase_name:-} ]] || timings+=("$(printf '%-44s %4d s' "$phase_name" $((SECONDS - phase_start)))")
  phase_name=$1
  phase_start=$SECONDS
  echo "== $1 (at $((SECONDS - t0)) s)"
}
passed=0
failed=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
check() {  # description, then a command that must succeed
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
die() {
  echo "FAIL: $*"
  failed=$((failed + 1))
  echo "$passed passed, $failed failed"
  exit 1
}

# ---------------------------------------------------------------- 1. install
phase "install (apt-get, only what is missing)"
pkgs=(podman buildah mmdebstrap runc netavark aardvark-dns catatonit uidmap slirp4netns fuse-overlayfs iptables
      docker-compose curl ca-certificates python3 python3-yaml)
installed=$(scripts/apt-install-missing.sh "${pkgs[@]}")
echo "container-test: ${#pkgs[@]} packages present ($installed installed now)"
client=${TINYGPT_CLIENT:-$root/build/client/tinygpt-client}
if [[ ! -x $client ]]; then  # CI runs this after scripts/test.sh, which built it
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build -j"$(nproc)" --target tinygpt-client >/dev/null
fi

# Names this test owns; removed before (a previous run that was killed) and after.
prefix=tinygpt-ct
project=tinygpt-ct   # the compose project
sock=/run/$prefix-podman.sock
service_pid=
work=$(mktemp -d /tmp/$prefix.XXXXXX)
kube_files=()
compose() { DOCKER_HOST=unix://$sock docker-compose -p $project -f "$root/deploy/docker-compose.yml" --profile cpu "$@"; }
cleanup() {
  set +e
  if [[ -n $service_pid ]]; then
    compose down -v --remove-orphans >/dev/null 2>&1
    kill "$service_pid" 2>/dev/null
    wait "$service_pid" 2>/dev/null
  fi
  for f in "${kube_files[@]}"; do podman play kube --down "$f" >/dev/null 2>&1; done
  podman ps -a --format '{{.Names}}' | grep -E "^($prefix-|${project}_)" | xargs -r podman rm -f -t 0 >/dev/null 2>&1
  podman pod ls --format '{{.Name}}' | grep -E "^$prefix-" | xargs -r podman pod rm -f >/dev/null 2>&1
  podman volume ls --format '{{.Name}}' | grep -E "^($prefix-|${project}_)" | xargs -r podman volume rm -f >/dev/null 2>&1
  if [[ ${kube_pvc_made:-0} == 1 ]]; then podman volume rm -f tinygpt-models >/dev/null 2>&1; fi
  rm -rf "$work"
}
trap cleanup EXIT
cleanup
work=$(mktemp -d /tmp/$prefix.XXXXXX)
quiet() { "$@" 2>>"$work/podman-stderr.log"; }  # podman's "no systemd for health check timers" noise
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# The counting model continues a count: 10..13 -> 14..25.
answer_ok() {  # target: a generate call there answers the continued count
  local out
  out=$("$client" generate --target "$1" --prompt-ids 10,11,12,13 --max-new-tokens 12 --deadline-ms 30000 2>&1) || { echo "$out"; return 1; }
  grep -qx "output_ids: 14,15,16,17,18,19,20,21,22,23,24,25" <<<"$out" || { echo "$out"; return 1; }
}
# answer_ok's run makes two calls on its connection (Generate, then GetModelInfo
# to learn that this model has no tokenizer); with --json it makes only the one.
answer_json_ok() {  # target: one Generate call there, its connection's only call, answers the continued count
  local out
  out=$("$client" generate --json --target "$1" --prompt-ids 10,11,12,13 --max-new-tokens 12 --deadline-ms 30000 2>&1) || { echo "$out"; return 1; }
  grep -qF '"output_ids":[14,15,16,17,18,19,20,21,22,23,24,25]' <<<"$out" || { echo "$out"; return 1; }
}
wait_healthy() {  # container: runs the image's HEALTHCHECK command by hand (no systemd timers here) until healthy
  local i
  for i in $(seq 120); do
    # Exit 0 (and no output) when healthy; the container's state records it.
    podman healthcheck run "$1" >/dev/null 2>&1 && [[ "$(podman inspect -f '{{.State.Health.Status}}' "$1")" == healthy ]] && return 0
    [[ "$(podman inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" == true ]] || { podman logs "$1" 2>&1 | tail -5; return 1; }
    sleep 0.5
  done
  return 1
}
not() { ! "$@"; }
failed_with() {  # rc, output, text: a non-zero exit whose output has the text
  [[ $1 != 0 ]] && grep -qF -- "$3" <<<"$2" && return 0
  echo "$2" | tail -5
  return 1
}
metric() {  # url, metric name, label="value"...: the sum of its series that carry every label given (0 when none)
  local url=$1 name=$2; shift 2
  curl -sf --max-time 5 "$url" | awk -v name="$name" -v want="$*" '
    BEGIN { n = split(want, w, " ") }
    index($0, name "{") == 1 || index($0, name " ") == 1 {
      ok = 1; for (i = 1; i <= n; i++) if (index($0, w[i]) == 0) ok = 0
      if (ok) total += $NF
    }
    END { printf "%d\n", total }'
}

# ------------------------------------------------------------ 2. base images
phase "base images (mmdebstrap; reused when present)"
cuda_home=$(readlink -f "${TINYGPT_CUDA_HOME:-/usr/local/cuda}" 2>/dev/null || true)
with_cuda=0
if [[ ${TINYGPT_CT_SKIP_CUDA:-0} != 1 && -x $cuda_home/bin/nvcc && -f $cuda_home/lib64/libcublasLt.so.13 ]]; then with_cuda=1; fi
deploy/podman/base-images.sh $([[ $with_cuda == 1 ]] && echo --cuda)
base=localhost/debian:bookworm

# ----------------------------------------------------------------- 3. images
build() {  # log name, podman build args...
  local name=$1 start=$SECONDS
  shift
  if ! podman build --format docker --layers "$@" >"$work/build-$name.log" 2>&1; then
    tail -30 "$work/build-$name.log"
    die "podman build $name"
  fi
  echo "container-test: built $name in $((SECONDS - start)) s ($(grep -E '^\s+(Hits|Misses):' "$work/build-$name.log" | tr -s ' ' | tr '\n' ' '))"
}
phase "image: tinygpt CPU variant"
build cpu --build-arg VARIANT=cpu --build-arg BUILD_IMAGE=$base --build-arg RUNTIME_IMAGE=$base -t localhost/tinygpt:cpu .
phase "images: balancer and Prometheus"
build lb --build-arg BASE_IMAGE=$base -t localhost/tinygpt-lb:latest -f deploy/balancer/Containerfile deploy/balancer
build prometheus --build-arg BASE_IMAGE=$base -t localhost/tinygpt-prometheus:latest -f deploy/prometheus/Containerfile deploy/prometheus
if [[ $with_cuda == 1 ]]; then
  phase "image: tinygpt CUDA variant (toolkit bound in)"
  # The C++ comes from the CPU variant's ccache entries; nvcc compiles the .cu files (once: ccache keeps them).
  build cuda -v "$cuda_home:/usr/local/cuda:ro" --build-arg VARIANT=cuda --build-arg BUILD_IMAGE=$base \
    --build-arg RUNTIME_IMAGE=localhost/tinygpt-cuda-runtime:13.0 -t localhost/tinygpt:cuda .
fi
podman image prune -f >/dev/null 2>&1 || true  # dangling intermediate images of earlier builds (the layer cache keeps what is reused)

# ---------------------------------------------------- 4. the main job in containers
phase "main job in containers (train, serve, health, drain)"
img=localhost/tinygpt:cpu
vol=$prefix-models
podman volume create $vol >/dev/null
# Training as the image's user: a fresh named volume takes the ownership of
# the image's /models on first use.
if podman run --rm --name $prefix-train --network none -v $vol:/models $img \
     train --preset seed --task count --steps 80 --batch 16 --out /models/seed.safetensors >"$work/train.log" 2>&1; then
  pass "train into a volume as the non-root user ($(tail -1 "$work/train.log" | cut -c1-90))"
else
  tail -5 "$work/train.log"
  die "training in a container"
fi
gport=$(free_port)
mport=$(free_port)
# A non-default port (6000): the HEALTHCHECK must follow it. A small step delay
# keeps a stream in flight while SIGTERM arrives.
podman run -d --name $prefix-serve -v $vol:/models:ro -p 127.0.0.1:$gport:6000 -p 127.0.0.1:$mport:9464 $img \
  serve --checkpoint /models/seed.safetensors --host 0.0.0.0 --port 6000 --metrics-port 9464 --debug-step-delay-ms 20 \
  >/dev/null 2>"$work/run.err"
check "the image's HEALTHCHECK (tinygpt-client health) healthy with the server on port 6000" wait_healthy $prefix-serve
health_without_address_file() { podman exec -e TINYGPT_ADDRESS_FILE= $prefix-serve tinygpt-client health >/dev/null 2>&1; }
check "... because it follows the port: without the address file the check asks 50051 and fails" not health_without_address_file
check "the server runs as uid 10001, not root" test "$(podman exec $prefix-serve id -u)" = 10001
check "a request answered over gRPC from outside the container" answer_ok 127.0.0.1:$gport
check "/metrics scraped from outside: the request counted" \
  test "$(metric "http://127.0.0.1:$mport/metrics" tinygpt_requests_total 'code="OK"' 'finish_reason="length"')" = 1
check "/metrics has tinygpt_build_info" test "$(metric "http://127.0.0.1:$mport/metrics" tinygpt_build_info)" = 1
"$client" stream --target 127.0.0.1:$gport --prompt-ids 1,2,3 --max-new-tokens 60 --deadline-ms 60000 >"$work/stream.out" 2>&1 &
streamer=$!
for _ in $(seq 100); do [[ -s $work/stream.out ]] && break; sleep 0.05; done
stop_start=$SECONDS
quiet podman stop -t 40 $prefix-serve >/dev/null
stop_took=$((SECONDS - stop_start))
stream_rc=0
wait $streamer || stream_rc=$?
check "SIGTERM: the server exits 0 (drained in ${stop_took} s, within the 40 s grace period)" \
  test "$(podman inspect -f '{{.State.ExitCode}}' $prefix-serve)" = 0 -a $stop_took -lt 40
check "SIGTERM: the stream in flight finished all 60 tokens" \
  bash -c "[[ $stream_rc == 0 ]] && grep -q 'finish_reason FINISH_REASON_LENGTH, 60 tokens' '$work/stream.out'"
check "SIGTERM: the drain logged it" bash -c "podman logs $prefix-serve 2>&1 | grep -q 'drain: 1 requests in flight at the signal; 1 finished'"
quiet podman rm $prefix-serve >/dev/null
# Bad input: the loader's message and a non-zero exit, never a server without a model.
rc=0
out=$(podman run --rm --name $prefix-bad --network none -v $vol:/models:ro $img serve --checkpoint /models/missing.safetensors 2>&1) || rc=$?
check "a missing checkpoint: exit $rc and the loader's message" \
  failed_with $rc "$out" "cannot open /models/missing.safetensors: No such file or directory"
head -c 4096 /dev/urandom >"$work/corrupt.safetensors"
chmod 644 "$work/corrupt.safetensors"
rc=0
out=$(podman run --rm --name $prefix-bad --network none -v "$work/corrupt.safetensors:/models/corrupt.safetensors:ro" $img \
        serve --checkpoint /models/corrupt.safetensors 2>&1) || rc=$?
check "a corrupt checkpoint: exit $rc and the loader's message" failed_with $rc "$out" "/models/corrupt.safetensors: safetensors: "

# --------------------------------------------------------------- 5. the CUDA image
if [[ $with_cuda == 1 ]]; then
  phase "CUDA image without a GPU"
  gport=$(free_port)
  podman run -d --name $prefix-cuda -v $vol:/models:ro -p 127.0.0.1:$gport:50051 localhost/tinygpt:cuda >/dev/null 2>"$work/run.err"
  check "CUDA image: healthy without a GPU" wait_healthy $prefix-cuda
  check "CUDA image: serves on the CPU (--device auto fell back)" \
    bash -c "podman logs $prefix-cuda 2>&1 | grep -q 'listening on 0.0.0.0:50051 (backend cpu'"
  check "CUDA image: a request answered" answer_ok 127.0.0.1:$gport
  # The module's libraries are all in the image but the driver, which the
  # NVIDIA container toolkit brings on a GPU host.
  check "CUDA image: libtinygpt_cuda.so finds every library it links (libcublasLt from the runtime base)" \
    bash -c "podman exec $prefix-cuda ldd /opt/tinygpt/bin/libtinygpt_cuda.so | tee '$work/ldd.txt' | grep -q libcublasLt.so.13 &&
             ! grep -q 'not found' '$work/ldd.txt'"
  quiet podman rm -f -t 40 $prefix-cuda >/dev/null
else
  echo "container-test: no CUDA 13 toolkit at ${cuda_home:-/usr/local/cuda} (or TINYGPT_CT_SKIP_CUDA=1): the CUDA image is left out"
fi

# ------------------------------------------------------------ 6. compose
phase "compose deployment (podman's Docker API)"
rm -f $sock
podman system service --time=0 unix://$sock >"$work/podman-service.log" 2>&1 &
service_pid=$!
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
export TINYGPT_IMAGE=localhost/tinygpt:cpu TINYGPT_LB_IMAGE=localhost/tinygpt-lb:latest \
  TINYGPT_PROMETHEUS_IMAGE=localhost/tinygpt-prometheus:latest TINYGPT_DEVICE=cpu \
  TINYGPT_TRAIN_STEPS=80 TINYGPT_TRAIN_BATCH=16
TINYGPT_GRPC_PUBLISH_PORT=$(free_port)
PROMETHEUS_PUBLISH_PORT=$(free_port)
export TINYGPT_GRPC_PUBLISH_PORT PROMETHEUS_PUBLISH_PORT
lb=127.0.0.1:$TINYGPT_GRPC_PUBLISH_PORT
# Bad input first (`compose run` cannot start beside running services here:
# docker-compose asks for links, which podman's API refuses): the server
# without its checkpoint (the volume is still empty) exits with the loader's message.
rc=0
out=$(compose run --rm --no-deps server-cpu serve --checkpoint /models/missing.safetensors 2>&1) || rc=$?
check "compose: a server without its checkpoint exits $rc with the loader's message" \
  failed_with $rc "$out" "cannot open /models/missing.safetensors"
if ! compose up -d --no-build --scale server-cpu=2 >"$work/compose-up.log" 2>&1; then
  cat "$work/compose-up.log"
  compose logs --no-color 2>&1 | tail -30
  die "docker-compose up"
fi
replicas=$(podman ps --filter label=com.docker.compose.project=$project --filter label=com.docker.compose.service=server-cpu --format '{{.Names}}' | sort)
check "compose: train completed, then two server replicas ($(tr '\n' ' ' <<<"$replicas"))" test "$(wc -l <<<"$replicas")" = 2
for r in $replicas; do check "compose: $r healthy (its HEALTHCHECK)" wait_healthy "$r"; done
served_by_replicas() {  # each replica's count of OK calls, from its own /metrics
  local i mp
  for i in 1 2; do
    mp=$(compose port --index=$i server-cpu 9464 | sed 's/.*://')
    printf '%s ' "$(metric "http://127.0.0.1:$mp/metrics" tinygpt_requests_total 'code="OK"')"
  done
}
ok=0
for _ in $(seq 60); do answer_ok $lb >/dev/null 2>&1 && ok=1 && break; sleep 0.5; done  # HAProxy resolves the replicas within a few seconds
check "compose: a request through the balancer answered" test $ok = 1
# HAProxy may have resolved (and checked) only one replica when the first call
# answers: wait until its own metrics (through Prometheus) count both up, so
# the bench below can meet both.
lb_replicas_up() {
  curl -sf --max-time 5 "http://127.0.0.1:$PROMETHEUS_PUBLISH_PORT/api/v1/query?query=haproxy_server_status" | python3 -c '
import json, sys
r = json.load(sys.stdin)["data"]["result"]
up = [x for x in r if x["metric"].get("proxy") == "tinygpt" and x["metric"].get("state") == "UP" and x["value"][1] == "1"]
sys.exit(0 if len(up) == 2 else 1)'
}
ok=0 start=$SECONDS
for _ in $(seq 90); do lb_replicas_up && ok=1 && break; sleep 1; done
check "compose: the balancer has both replicas up (its metrics, in $((SECONDS - start)) s)" test $ok = 1
lb_checks_l7() {  # HAProxy checks each replica's HTTP /health (L7OK, 200), not only its port (L4OK)
  curl -sf --max-time 5 "http://127.0.0.1:$PROMETHEUS_PUBLISH_PORT/api/v1/query?query=haproxy_server_check_status" | python3 -c '
import json, sys
r = json.load(sys.stdin)["data"]["result"]
ok = [x for x in r if x["metric"].get("proxy") == "tinygpt" and x["metric"].get("state") == "L7OK" and x["value"][1] == "1"]
sys.exit(0 if len(ok) == 2 else 1)'
}
ok=0
for _ in $(seq 20); do lb_checks_l7 && ok=1 && break; sleep 1; done
check "compose: the balancer checks both replicas at layer 7 (GET /health: L7OK), so a draining one leaves at once" test $ok = 1
# Every call below must reach a replica at its first try: a call that fails to
# connect is retried (retries 2) and sent elsewhere (redispatch), which the
# replicas' own counters cannot tell apart from a healthy spread. HAProxy's
# counters, before and after (before: the calls answered 503 while the
# replicas were not resolved yet count as its connection errors).
lb_errors() {  # epoch seconds: HAProxy's retries, redispatches, connection errors (backend tinygpt), from a scrape after then
  python3 - "$PROMETHEUS_PUBLISH_PORT" "$1" <<'EOF'
import json, sys, time, urllib.parse, urllib.request
port, since = sys.argv[1], float(sys.argv[2])
def q(expr):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    r = json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]
    return float(r[0]["value"][1]) if r else None
for _ in range(60):
    ts = q('timestamp(haproxy_backend_retry_warnings_total{proxy="tinygpt"})')
    if ts is not None and ts > since:
        break
    time.sleep(0.5)
else:
    sys.exit(1)  # no scrape of the balancer since then
got = [q(f'haproxy_backend_{m}_total{{proxy="tinygpt"}}') for m in ("retry_warnings", "redispatch_warnings", "connection_errors")]
print("retries %g, redispatches %g, connection errors %g" % tuple(got))
EOF
}
lb_before=$(lb_errors "$(date +%s.%N)") || lb_before=
lb_log() { compose logs --no-color --tail=16 lb 2>&1 | sed 's/^/  /'; }  # HAProxy's per-call log: replica, termination state, retries
# One-shot clients, one connection each, one after another: every run must be
# answered and both replicas must serve some of them, by their own counters.
# Both kinds: the two-call run is what roundrobin once served in lockstep (all
# its Generates on replica 1, all its GetModelInfo calls on replica 2, for 7
# minutes in a local run; see haproxy.cfg), the one-call run the plain case.
# HAProxy picks at random (the less busy of two draws): 20 runs all on one
# replica would be a 1-in-500000 event.
spread_over_replicas() {  # what, runs, answer function
  local what=$1 n=$2 fn=$3 i bad=0 a b a2 b2
  read -r a b <<<"$(served_by_replicas)"
  for i in $(seq "$n"); do "$fn" $lb >/dev/null || bad=$((bad + 1)); done
  read -r a2 b2 <<<"$(served_by_replicas)"
  if [[ $bad == 0 && $((a2 - a)) -gt 0 && $((b2 - b)) -gt 0 && $((a2 - a + b2 - b)) -eq $n ]]; then
    pass "compose: $n $what through the balancer, each on a new connection: all answered, both replicas served (served $((a2 - a)) and $((b2 - b)))"
  else
    fail "compose: $n $what through the balancer, each on a new connection: $bad failed, replicas served $((a2 - a)) and $((b2 - b))"
    lb_log
  fi
}
spread_over_replicas "generate runs of two calls (Generate, GetModelInfo)" 20 answer_ok
spread_over_replicas "generate --json runs of one call (Generate)" 20 answer_json_ok
read -r a b <<<"$(served_by_replicas)"
check "compose: 24 more calls through the balancer (bench, one connection) all succeed" \
  "$client" bench --target $lb --requests 24 --concurrency 4 --output-len-min 4 --output-len-max 8
read -r a2 b2 <<<"$(served_by_replicas)"
check "compose: the bench's calls (one connection) spread over both replicas (served $((a2 - a)) and $((b2 - b)))" \
  bash -c "[[ $((a2 - a)) -gt 0 && $((b2 - b)) -gt 0 && $((a2 - a + b2 - b)) -eq 24 ]]"
lb_after=$(lb_errors "$(date +%s.%N)") || lb_after=
if [[ -n $lb_before && $lb_before == "$lb_after" ]]; then
  pass "compose: HAProxy's metrics: none of these calls retried, redispatched or failed to connect (before and after: $lb_after)"
else
  fail "compose: HAProxy's metrics: calls retried, redispatched or failed to connect (before: ${lb_before:-none}, after: ${lb_after:-none})"
  lb_log
fi
targets_up() {  # Prometheus: both replicas (DNS-discovered) and the balancer up
  curl -sf --max-time 5 "http://127.0.0.1:$PROMETHEUS_PUBLISH_PORT/api/v1/targets" | python3 -c '
import json, sys
t = json.load(sys.stdin)["data"]["activeTargets"]
up = [x["labels"]["job"] for x in t if x["health"] == "up"]
sys.exit(0 if up.count("tinygpt") == 2 and up.count("balancer") == 1 else 1)'
}
ok=0
for _ in $(seq 60); do targets_up && ok=1 && break; sleep 1; done
check "compose: Prometheus has both replicas (found by DNS) and the balancer as healthy targets" test $ok = 1
check "compose: the servers restart on failure 3 times at most" \
  bash -c "[[ \$(podman inspect -f '{{.HostConfig.RestartPolicy.Name}}:{{.HostConfig.RestartPolicy.MaximumRetryCount}}' $(head -1 <<<"$replicas")) == on-failure:3 ]]"
compose stop -t 40 server-cpu >/dev/null 2>&1
# Right after the stop the balancer still counts the replicas up: a call
# tries each (1 s connect timeout) and then fails; once its checks (every
# second, 2 failures) mark them down, a call fails at once.
unavailable_within() {  # seconds: a call through the balancer ends UNAVAILABLE within them
  local start=$SECONDS rc=0 out
  out=$("$client" generate --target $lb --prompt-ids 1,2 --max-new-tokens 2 --deadline-ms 20000 2>&1) || rc=$?
  echo "  ($((SECONDS - start)) s: $out)"
  failed_with $rc "$out" "error: UNAVAILABLE" && [[ $((SECONDS - start)) -le $1 ]]
}
check "compose: every replica just stopped: the balancer answers UNAVAILABLE, no hang (within 5 s)" unavailable_within 5
sleep 3
check "compose: every replica down: the balancer answers UNAVAILABLE at once (within 1 s)" unavailable_within 1
compose down -v --remove-orphans >/dev/null 2>&1
left=$(podman ps -a --filter label=com.docker.compose.project=$project --format '{{.Names}}'; \
       podman volume ls --format '{{.Name}}' | grep "^${project}_" || true; \
       podman network ls --format '{{.Name}}' | grep "^${project}_" || true)
check "compose: down -v leaves no container, volume or network${left:+ (left: $left)}" test -z "$left"
kill $service_pid
wait $service_pid 2>/dev/null || true
service_pid=

# --------------------------------------------------------- 7. Kubernetes manifests
phase "Kubernetes manifests (podman play kube)"
kdir=$root/deploy/kubernetes
# podman 4.3 plays Pods, Deployments and PVCs, not Jobs: the training Job runs
# as the Pod of its template. It publishes every containerPort on all host
# interfaces, so the server's ports get loopback hostPorts here; one replica.
gport=$(free_port)
mport=$(free_port)
python3 - "$kdir" "$work" "$gport" "$mport" <<'EOF'
import sys, yaml
kdir, work, gport, mport = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
job = yaml.safe_load(open(f"{kdir}/train-job.yaml"))
spec = job["spec"]["template"]["spec"]
c = spec["containers"][0]
c["args"] = [c["args"][0].replace("--steps 400 --batch 64", "--steps 80 --batch 16")]
yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tinygpt-ct-train"}, "spec": spec},
               open(f"{work}/kube-train.yaml", "w"))
dep = yaml.safe_load(open(f"{kdir}/server.yaml"))
dep["metadata"]["name"] = "tinygpt-ct-server"
dep["spec"]["replicas"] = 1
for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]:
    p.update(hostIP="127.0.0.1", hostPort=gport if p["name"] == "grpc" else mport)
yaml.safe_dump(dep, open(f"{work}/kube-server.yaml", "w"))
EOF
kube_files=("$work/kube-server.yaml" "$work/kube-train.yaml" "$kdir/pvc.yaml")
podman volume exists tinygpt-models && die "a volume tinygpt-models exists already (not this test's): remove it first"
quiet podman play kube "$kdir/pvc.yaml" >/dev/null
kube_pvc_made=1
check "kube: the PVC became the volume tinygpt-models" podman volume exists tinygpt-models
quiet podman play kube "$work/kube-train.yaml" >/dev/null
status=
for _ in $(seq 600); do
  status=$(podman inspect -f '{{.State.Status}}:{{.State.ExitCode}}' tinygpt-ct-train-train 2>/dev/null || true)
  [[ $status == exited:* ]] && break
  sleep 0.5
done
check "kube: the training Job's pod completed ($status)" test "$status" = exited:0
quiet podman play kube "$work/kube-server.yaml" >/dev/null
server_ctr=$(podman ps --filter label=io.kubernetes.pod.name --format '{{.Names}}' | grep '^tinygpt-ct-server-pod-0-server' | head -1)
[[ -n $server_ctr ]] || server_ctr=$(podman ps --format '{{.Names}}' | grep 'tinygpt-ct-server.*-server$' | head -1)
ok=0
for _ in $(seq 120); do answer_ok 127.0.0.1:$gport >/dev/null 2>&1 && ok=1 && break; sleep 0.5; done
check "kube: the Deployment's pod answers over gRPC" test $ok = 1
check "kube: the health service says SERVING (what its readiness/liveness probes ask)" \
  bash -c "[[ \$('$client' health --target 127.0.0.1:$gport) == SERVING ]]"
check "kube: /metrics on the annotated port" test "$(metric "http://127.0.0.1:$mport/metrics" tinygpt_build_info)" = 1
check "kube: read-only root filesystem, non-root" \
  bash -c "[[ \$(podman inspect -f '{{.HostConfig.ReadonlyRootfs}}' $server_ctr) == true ]] &&
           [[ \$(podman exec $server_ctr id -u) == 10001 ]] && ! podman exec $server_ctr touch /opt/x 2>/dev/null"
check "kube: the checkpoint volume is mounted read-only" \
  bash -c "! podman exec $server_ctr touch /models/x 2>/dev/null"
for f in "${kube_files[@]}"; do podman play kube --down "$f" >/dev/null 2>&1 || true; done
podman volume rm -f tinygpt-models >/dev/null 2>&1 || true
kube_files=()
kube_pvc_made=0
phase "done"

echo "container-test timings:"
printf '  %s\n' "${timings[@]}"
echo "  total                                        $((SECONDS - t0)) s"
echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
