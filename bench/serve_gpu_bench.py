#!/usr/bin/env python3
"""The serving benchmark of issues #12 and #14, in one call: `tinygpt serve
--device cuda` with a random bench-125m checkpoint, driven through gRPC by
`tinygpt-client bench --prompts-file`, beside a PyTorch static-graph decoder
(bench/torch_decode_peer.py) and Hugging Face's `generate_batch`
(bench/hf_generate_peer.py) on the same prompts, with the hardware floor
measured in the same run.

usage: serve_gpu_bench.py BIN_DIR OUT_DIR [--quick] [--device cuda|cpu] [--small]

BIN_DIR holds tinygpt and tinygpt-client (device-stage/bin, or a build tree).
Writes OUT_DIR/serving.md (tables), OUT_DIR/serving.png (throughput and latency
against offered load; needs matplotlib), OUT_DIR/serving.jsonl (every raw
result, one JSON object a line) and OUT_DIR/servers.log (the servers' stderr). Parts run in this order, each with a time
limit; a part that fails is reported with its error and the rest go on:

 0. (steady) issue #20: per flag set, a fresh server's first burst after it listens, the same burst warm, then 1, 16,
    64, 256 and 1024 concurrent calls, streaming and unary, each warmed up at its concurrency first (part_steady).
 1. checkpoint: PyTorch's TinyGPT at bench-125m size, torch.manual_seed(0),
    saved as safetensors with tinygpt's metadata; prompts.jsonl: 2048 prompts,
    lengths uniform in [16, 512], ids uniform below 32000 (seed 12).
 2. tinygpt, default flags: 256 requests at once (streaming, then unary),
    1 request at a time (inter-token latency), a Poisson sweep.
 3. tinygpt, tuned flags (each set in TUNED): 256 at once, streaming and unary;
    the best set also 2048 at once.
 4. tinygpt, 256 requests sharing a 400-token prefix, prefix caching on and off.
 5. the PyTorch static-graph peer at several batch sizes; its first outputs
    compared with tinygpt's greedy outputs of the same prompts.
 6. the HF peer.
 7. the floor: copy bandwidth and bf16 GEMM rate measured with torch, and the
    256-request workload's bytes and FLOPs.

Every tinygpt run scrapes /metrics before and after: engine steps, their mean
duration and tokens, the share of the wall time spent in steps, and (CUDA) the
GPU's busy share sampled by nvidia-smi during the run.

--device cpu --small: the same orchestration at a tiny scale on the CPU (a
small model, few requests, peers without CUDA graphs; the HF peer is skipped
when transformers is missing), to test the script without a GPU."""
import argparse
import json
import math
import os
import queue
import random
import re
import resource
import shutil
import subprocess
import signal
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
from binaries import binary  # noqa: E402

BENCH_125M = dict(vocab_size=32000, d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, ffn_hidden=2048, max_seq_len=2048,
                  pos_encoding="learned", norm_eps=1e-5)
SMALL = dict(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128, max_seq_len=256,
             pos_encoding="learned", norm_eps=1e-5)
# Tuned server flag sets tried beside the defaults (the best one also serves 2048 requests).
TUNED = {
    "seqs256-tok8192": ["--max-seqs=256", "--max-batch-tokens=8192", "--max-queue=4096", "--kv-cache-fraction=0.5"],
    "seqs512-tok16384": ["--max-seqs=512", "--max-batch-tokens=16384", "--max-queue=4096", "--kv-cache-fraction=0.5"],
    # The default set with one notify thread instead of one per 4 cores: what
    # the waker threads (server/channel_waker.h) bring to 256 streams.
    "notify1": ["--notify-threads=1"],
}
T0 = time.time()


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


class Results:
    def __init__(self, out_dir):
        self.path = os.path.join(out_dir, "serving.jsonl")
        self.rows = []
        open(self.path, "w").close()

    def add(self, kind, **row):
        row = dict(kind=kind, **row)
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        return row

    def find(self, kind, **match):
        return [r for r in self.rows if r["kind"] == kind and all(r.get(k) == v for k, v in match.items())]


def time_left(a, reserve=25):
    """Seconds a subprocess may still take: the peer limit, cut so the run ends before --total-seconds (less
    `reserve` for the floor and the report)."""
    return max(20, min(a.peer_timeout, a.total_s - (time.time() - T0) - reserve))


def part(res, name, fn, *args):
    """Runs one part; an exception becomes an error row and the run goes on."""
    log(f"== {name}")
    t = time.time()
    try:
        return fn(*args)
    except Exception as e:
        log(f"!! {name} failed: {type(e).__name__}: {e}")
        res.add("error", part=name, error=f"{type(e).__name__}: {e}"[:2000], traceback=traceback.format_exc(limit=4)[-2000:])
        return None
    finally:
        log(f"== {name}: {time.time() - t:.1f}s")


# ---------------------------------------------------------------- inputs

def make_checkpoint(path, cfg):
    import torch
    from torch_tinygpt import TinyGPT, save_safetensors
    torch.manual_seed(0)
    model = TinyGPT(cfg)
    save_safetensors(path, model.state_dict(), {"tinygpt.config": json.dumps(cfg)})
    return sum(p.numel() for p in model.parameters())


def make_prompts(path, n, lo, hi, vocab, seed=12):
    rng = random.Random(seed)
    prompts = [[rng.randrange(vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]
    with open(path, "w") as f:
        for p in prompts:
            f.write(json.dumps(p) + "\n")
    return prompts


def fresh_prompts(a, tag):
    """A prompts file of its own for one run (same lengths' distribution, other ids): the server keeps the KV blocks of
    prompts it has seen (prefix caching, on by default), so a run that reused another run's prompts would skip their
    prefill. Only the 256-at-once streaming run uses a.prompts, the file the peers get."""
    path = os.path.join(a.work, f"prompts-{tag}.jsonl")
    if not os.path.exists(path):
        make_prompts(path, max(a.n2048, a.n256), a.prompt_min, a.prompt_max, a.cfg["vocab_size"],
                     seed=sum(map(ord, tag)) * 7919 + 1)
    return path


# ---------------------------------------------------------------- the server

def parse_metrics(text):
    """Prometheus text → {name{labels}: value} (label sets kept as text)."""
    out = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = re.match(r"^(\S+?)(\{[^}]*\})?\s+(\S+)", line)
        if m:
            try:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


class GpuSampler:
    """nvidia-smi's utilization.gpu (share of time a kernel ran) every 100 ms while running."""

    def __init__(self, enabled):
        self.samples, self.proc, self.thread = [], None, None
        if enabled and shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100",
                                          "-i", os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                pass

    def stop(self):
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        # The first sample covers time before the run; drop it when there are others.
        s = self.samples[1:] if len(self.samples) > 2 else self.samples
        return (sum(s) / len(s) / 100.0, len(s)) if s else (None, 0)


class Server:
    def __init__(self, bin_dir, checkpoint, device, flags, log_path, start_timeout, label):
        with open(log_path, "a") as f:  # one log for every server of the run, each under its own header
            f.write(f"\n===== [{time.time() - T0:.1f}s] {label}: tinygpt serve {' '.join(flags)}\n")
        self.proc = subprocess.Popen([binary(bin_dir, "tinygpt", "cli"), "serve", f"--checkpoint={checkpoint}", f"--device={device}",
                                      "--port=0", "--metrics-port=0", "--http-port=0", *flags],
                                     stdout=subprocess.PIPE, stderr=open(log_path, "a"), text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.target = self.metrics_port = self.http_target = None
        t_start = time.time()
        deadline = t_start + start_timeout
        while self.target is None or self.metrics_port is None or self.http_target is None:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.time()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"tinygpt serve did not start within {start_timeout}s (see {log_path})")
            if line is None:
                raise RuntimeError(f"tinygpt serve exited with {self.proc.wait()} (see {log_path})")
            if "listening on " in line:
                self.target = line.split("listening on ")[1].split()[0]
                self.banner = line.strip()
            m = re.search(r":(\d+)/metrics", line)
            if m:
                self.metrics_port = int(m.group(1))
            m = re.search(r"OpenAI API on http://[^:]+:(\d+)", line)  # the line after these two
            if m:
                self.http_target = f"127.0.0.1:{m.group(1)}"
        self.start_seconds = time.time() - t_start  # process start to listening (loading, warm-up)

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def metrics(self):
        return parse_metrics(urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def engine_stats(before, after, wall):
    d = lambda k: after.get(k, 0.0) - before.get(k, 0.0)
    steps = d("tinygpt_step_duration_seconds_count")
    s = dict(steps=steps)
    if steps > 0:
        s["step_ms_mean"] = 1e3 * d("tinygpt_step_duration_seconds_sum") / steps
        s["tokens_per_step"] = d("tinygpt_step_tokens_sum") / steps
        s["computed_tokens"] = d("tinygpt_step_tokens_sum")
        s["step_share_of_wall"] = d("tinygpt_step_duration_seconds_sum") / wall if wall > 0 else None
    s["preemptions"] = d("tinygpt_preemptions_total")
    q = d("tinygpt_prefix_cache_queries_total")
    s["prefix_hit_rate"] = d("tinygpt_prefix_cache_hits_total") / q if q > 0 else None
    # The engine's device time (events around each step) and how steps ran.
    s["device_seconds"] = d("tinygpt_step_device_seconds_total")
    s["device_share_of_wall"] = s["device_seconds"] / wall if wall > 0 else None
    s["graph_steps"] = d('tinygpt_steps_total{mode="graph"}')
    s["eager_steps"] = d('tinygpt_steps_total{mode="eager"}')
    s["graph_captures"] = d("tinygpt_graph_captures_total")
    s["graph_capture_seconds"] = d("tinygpt_graph_capture_seconds_total")
    # One-time backend work after the warm-up (0 for a warmed-up server on the shapes it plans).
    s["gemm_searches"] = d("tinygpt_gemm_algorithm_searches_total")
    s["workspace_allocations"] = d("tinygpt_workspace_allocations_total")
    return s


def thread_cpu(pid):
    """CPU seconds of each thread of process `pid` so far, summed by thread name (/proc/PID/task/*/stat; the
    engine names its scheduler tg-scheduler and its notify threads tg-notify, gRPC names its own)."""
    out, hz = {}, os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            st = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:
            continue
        name, fields = st[st.index("(") + 1:st.rindex(")")], st[st.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / hz  # utime + stime
    return out


def cpu_delta(before, after):
    return {k: round(after.get(k, 0.0) - before.get(k, 0.0), 3) for k in after if after.get(k, 0.0) - before.get(k, 0.0) > 0}


def client_bench(a, server, name, res, flags, timeout, gpu=False, **extra):
    # --api=openai drives the same server's HTTP API (the OpenAI part).
    target = server.http_target if "--api=openai" in flags else server.target
    cmd = [binary(a.bin_dir, "tinygpt-client", "client"), "bench", f"--target={target}", "--json", "--ignore-eos",
           "--temperature=0", "--deadline-ms=300000", *flags]
    before = server.metrics()
    threads0, child0 = thread_cpu(server.proc.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    sampler = GpuSampler(gpu and a.device == "cuda")
    t = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    finally:
        busy, nsamples = sampler.stop()
    wall = time.time() - t
    threads, child1 = cpu_delta(threads0, thread_cpu(server.proc.pid)), resource.getrusage(resource.RUSAGE_CHILDREN)
    extra = dict(extra, server_threads_cpu=threads, server_cpu=round(sum(threads.values()), 3),
                 client_cpu=round(child1.ru_utime + child1.ru_stime - child0.ru_utime - child0.ru_stime, 3))
    after = server.metrics()
    lines = p.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{name}: tinygpt-client rc {p.returncode}, no output; stderr: {p.stderr.strip()[-800:]}")
    r = json.loads(lines[-1])
    row = res.add("tinygpt", name=name, client_rc=p.returncode, client_stderr=p.stderr.strip()[-500:], cmd=" ".join(cmd[1:]),
                  engine=engine_stats(before, after, r.get("seconds", wall)), gpu_busy=busy, gpu_samples=nsamples, **extra, **r)
    e = row["engine"]
    log(f"   {name}: {r['tokens_per_second']:,.0f} tok/s, ok {r['ok']}/{r['requests']}, TTFT p50 {1e3 * r['ttft_seconds']['p50']:.1f} ms, "
        f"ITL p50 {1e3 * r['inter_token_seconds']['p50']:.3f} ms, steps {e.get('steps', 0):.0f} x {e.get('step_ms_mean', 0):.3f} ms, "
        f"{e.get('tokens_per_step', 0):.1f} tok/step" + (f", GPU busy {100 * busy:.0f}%" if busy is not None else "")
        + (f", errors {r['errors']}" if r.get("errors") else ""))
    return row


# ---------------------------------------------------------------- parts

def workload_flags(a, n, conc, prompts_file, new_tokens):
    return [f"--requests={n}", f"--concurrency={conc}", f"--prompts-file={prompts_file}", f"--output-len-min={new_tokens}",
            f"--output-len-max={new_tokens}"]


def run_server_set(a, res, label, flags, plan, more=None):
    """Starts tinygpt serve with `flags`, runs the (name, client flags, timeout, extra) runs of `plan`, then those
    that more() returns (it sees the results so far), and stops it."""
    server = Server(a.bin_dir, a.checkpoint, a.device, flags, a.server_log, a.start_timeout, label)
    log(f"   {server.banner}")
    try:
        # Warm-up (GEMM algorithm choice, first allocations) outside any timing.
        client_bench(a, server, f"{label}: warm-up", res, workload_flags(a, a.n256 // 4 or 1, 64, fresh_prompts(a, "warm-up"), a.new_tokens), 120,
                     server_flags=flags, config=label, warmup=True)
        todo = list(plan)
        while todo or more:
            if not todo:
                todo, more = list(more()), None
                continue
            name, cflags, timeout, extra = todo.pop(0)
            try:
                client_bench(a, server, f"{label}: {name}", res, cflags, timeout, gpu=extra.pop("gpu", False), server_flags=flags,
                             config=label, **extra)
            except Exception as e:
                log(f"!! {label}: {name}: {type(e).__name__}: {e}")
                res.add("error", part=f"{label}: {name}", error=f"{type(e).__name__}: {e}"[:2000])
    finally:
        server.stop()


def headline_plan(a, unary=True):
    plan = [(f"{a.n256} at once, streaming", workload_flags(a, a.n256, a.n256, a.prompts, a.new_tokens), 180,
             dict(workload="256", api="stream", gpu=True))]
    if unary:
        plan.append((f"{a.n256} at once, unary", workload_flags(a, a.n256, a.n256, fresh_prompts(a, "unary"), a.new_tokens) + ["--unary"], 180,
                     dict(workload="256", api="unary")))
    return plan


def part_default(a, res):
    plan = headline_plan(a)
    plan.append((f"1 at a time x {a.n_single}", workload_flags(a, a.n_single, 1, fresh_prompts(a, "single"), a.new_tokens), 180,
                 dict(workload="single", api="stream")))
    run_server_set(a, res, "default", [], plan, more=lambda: sweep_plan(a, res))


def sweep_plan(a, res):
    """Poisson arrivals at fractions of the default server's measured capacity (its 256-at-once run)."""
    base = res.find("tinygpt", config="default", workload="256", api="stream")
    cap = base[0]["requests_per_second"] if base else a.sweep_fallback_rate
    plan = []
    for frac in a.sweep_fracs:
        rate = max(0.5, frac * cap)
        n = int(min(a.sweep_max_requests, max(a.sweep_min_requests, rate * a.sweep_seconds)))
        plan.append((f"Poisson {rate:.1f} req/s", workload_flags(a, n, 1, fresh_prompts(a, f"sweep-{frac}"), a.new_tokens)
                     + [f"--rate={rate:.3f}", "--seed=7"],
                     int(60 + 3 * n / rate), dict(workload="sweep", api="stream", offered_rate=rate, offered_frac=frac)))
    return plan


def part_steady(a, res):
    """Issue #20: for each flag set of a.steady_sets, a fresh server's first burst right after it listens (cold start:
    a.n256 streaming requests at once), the same burst again (warm), then at every concurrency of a.concurrencies a
    warm-up run at that concurrency followed by the measured run of 3x as many requests, streaming and unary (steady
    state). Prompts come from the client's generator with a seed of their own per run, so no run reuses another's
    prompts through the prefix cache. Every run records the graph captures and GEMM algorithm searches that happened
    after the server started (a warmed-up server makes none) and the CPU seconds of each server thread."""
    seeds = iter(range(1000, 10 ** 6))

    def wl(n, conc, api):
        return ([f"--requests={n}", f"--concurrency={conc}", f"--prompt-len-min={a.prompt_min}", f"--prompt-len-max={a.prompt_max}",
                 f"--output-len-min={a.new_tokens}", f"--output-len-max={a.new_tokens}", f"--seed={next(seeds)}"]
                + (["--unary"] if api == "unary" else []))

    for label, (flags, sweep) in a.steady_sets.items():
        server = Server(a.bin_dir, a.checkpoint, a.device, flags, a.server_log, a.start_timeout, label)
        log(f"   {server.banner} (listening {server.start_seconds:.1f} s after start)")
        try:
            m = server.metrics()
            res.add("start", config=label, server_flags=flags, start_seconds=server.start_seconds,
                    warmup_seconds=m.get("tinygpt_warmup_seconds"), warmup_graphs=m.get("tinygpt_warmup_graphs"),
                    warmup_gemm_searches=m.get("tinygpt_warmup_gemm_algorithm_searches"))
            common = dict(server_flags=flags, config=label)
            for workload in ("cold", "burst"):
                client_bench(a, server, f"{label}: {workload} burst of {a.n256}", res, wl(a.n256, a.n256, "stream"), 180, gpu=True,
                             workload=workload, api="stream", **common)
            for conc in a.concurrencies if sweep else []:
                for api in ("stream", "unary"):
                    client_bench(a, server, f"{label}: warm-up, {conc} {api}", res, wl(max(conc, 4), conc, api), 300, warmup=True,
                                 workload="warm-up", api=api, **common)
                    client_bench(a, server, f"{label}: {conc} concurrent, {api}", res, wl(3 * conc, conc, api), 300, gpu=True,
                                 workload="steady", api=api, **common)
        finally:
            server.stop()
        # The check of the warm start: a warm-started server does no one-time work after it listens.
        if "--nowarm-start" not in flags:
            left = [(r["name"], r["engine"].get("graph_captures", 0), r["engine"].get("gemm_searches", 0),
                     r["engine"].get("workspace_allocations", 0)) for r in res.rows
                    if r["kind"] == "tinygpt" and r.get("config") == label and any(r["engine"].get(k, 0) > 0 for k in
                                                                                  ("graph_captures", "gemm_searches", "workspace_allocations"))]
            if left:
                res.add("error", part=f"{label}: warm start", error="one-time work after start (run, captures, searches, allocations): "
                        + "; ".join(map(str, left)))
                log(f"!! {label}: one-time work after the warm start: {left}")
            else:
                log(f"   {label}: no graph capture, GEMM algorithm search or workspace allocation after start")


def steady_report(a, res, peer):
    """The report's section of part_steady: one table per flag set, the targets, the server threads' CPU."""
    R = res.rows
    rows = [r for r in R if r["kind"] == "tinygpt" and r.get("workload") in ("cold", "burst", "steady")]
    if not rows:
        return []
    na = "n/a"

    def tps(r):
        return na if r is None else f"{r['tokens_per_second']:,.0f}"

    def p50(r, key):
        return na if r is None else f"{1e3 * r[key]['p50']:.2f}"

    def busy(r):
        return na if r is None or r.get("gpu_busy") is None else f"{100 * r['gpu_busy']:.0f}%"

    def cpu(r):
        return na if r is None else f"{r['server_cpu']:.1f}"

    def after(r):
        if r is None:
            return na
        e = r["engine"]
        return f"{e.get('graph_captures', 0):.0f} / {e.get('gemm_searches', 0):.0f} / {e.get('workspace_allocations', 0):.0f}"

    def vs_peer(r):
        return na if r is None or not peer else f"{r['tokens_per_second'] / peer['tokens_per_second']:.2f}x"

    L = ["", "## Steady state and cold start, streaming beside unary (issue #20)", "",
         f"Each flag set: a fresh `tinygpt serve`; its first burst of {a.n256} streaming requests right after it listens "
         "(**cold**), the same burst again (**warm burst**), then at each concurrency a warm-up run at that concurrency and "
         f"the measured run of 3x as many requests (**steady state**). Prompts of {a.prompt_min}-{a.prompt_max} random ids "
         f"(a fresh seed per run), {a.new_tokens} new tokens, greedy, end of sequence ignored. 'After start' counts the graph "
         "captures / GEMM algorithm searches / workspace allocations the server made during the run (its warm-up made them "
         "before it listened).", ""]
    for st in [r for r in R if r["kind"] == "start"]:
        flags = " ".join(st["server_flags"]) or "default flags"
        L.append(f"- {st['config']} (`{flags}`): listening {st['start_seconds']:.1f} s after the process started; warm-up "
                 f"{st['warmup_seconds'] or 0:.1f} s ({st['warmup_graphs'] or 0:.0f} decode graphs, "
                 f"{st['warmup_gemm_searches'] or 0:.0f} GEMM algorithm choices).")
    for label in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == label]

        def get(workload, api, conc=None):
            return next((r for r in mine if r["workload"] == workload and r["api"] == api
                         and (conc is None or r["concurrency"] == conc)), None)

        L += ["", f"### {label}", "",
              "| run | concurrent calls | requests | streaming tok/s | unary tok/s | streaming / unary | streaming vs PyTorch peer | "
              "ITL p50 ms stream / unary | TTFT p50 ms stream / unary | GPU busy stream / unary | server CPU s stream / unary | "
              "after start, stream ; unary |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for workload, name in (("cold", "cold: first burst after start"), ("burst", "warm burst")):
            r = get(workload, "stream")
            if r:
                L.append(f"| {name} | {r['concurrency']} | {r['requests']} | {tps(r)} | | | {vs_peer(r)} | "
                         f"{p50(r, 'inter_token_seconds')} | {p50(r, 'ttft_seconds')} | {busy(r)} | {cpu(r)} | {after(r)} |")
        for conc in a.concurrencies:
            s_, u_ = get("steady", "stream", conc), get("steady", "unary", conc)
            if not s_ and not u_:
                continue
            ratio = f"**{s_['tokens_per_second'] / u_['tokens_per_second']:.2f}**" if s_ and u_ else na
            L.append(f"| steady state | {conc} | {(s_ or u_)['requests']} | {tps(s_)} | {tps(u_)} | {ratio} | {vs_peer(s_)} | "
                     f"{p50(s_, 'inter_token_seconds')} / {p50(u_, 'inter_token_seconds')} | "
                     f"{p50(s_, 'ttft_seconds')} / {p50(u_, 'ttft_seconds')} | {busy(s_)} / {busy(u_)} | {cpu(s_)} / {cpu(u_)} | "
                     f"{after(s_)} ; {after(u_)} |")
        L.append("")
        for conc in (256, 1024) if not a.small else a.concurrencies[-2:]:
            s_, u_ = get("steady", "stream", conc), get("steady", "unary", conc)
            if s_ and u_:
                L.append(f"- streaming / unary at {conc} concurrent calls: "
                         f"**{s_['tokens_per_second'] / u_['tokens_per_second']:.2f}** (target >= 0.9).")
        s256 = get("steady", "stream", a.n256)
        if s256 and peer:
            L.append(f"- streaming at {a.n256} concurrent calls beside the PyTorch static-graph peer's best "
                     f"({peer['tokens_per_second']:,.0f} tok/s, batch {peer['batch']}): **{vs_peer(s256)}** (target >= 1.6x).")
        cold, burst = get("cold", "stream"), get("burst", "stream")
        if cold and burst and s256:
            L.append(f"- the first {a.n256}-request burst after start: {tps(cold)} tok/s = "
                     f"**{cold['tokens_per_second'] / burst['tokens_per_second']:.2f}** of the same burst warm ({tps(burst)}) and "
                     f"{cold['tokens_per_second'] / s256['tokens_per_second']:.2f} of the steady state at {a.n256} calls "
                     "(target: within 10%).")
        for r in (s256, get("steady", "unary", a.n256)):
            if r and r.get("server_threads_cpu"):
                top = sorted(r["server_threads_cpu"].items(), key=lambda kv: -kv[1])[:8]
                L.append(f"- server threads' CPU seconds, {a.n256} {r['api']} calls over {r['seconds']:.2f} s: "
                         + ", ".join(f"{k} {v:.2f}" for k, v in top) + f"; the client process {r['client_cpu']:.2f} s.")
    return L


def part_openai(a, res):
    """HTTP (OpenAI API, SSE) streaming beside gRPC streaming at 64 and 256 concurrent streams, on one server with
    default flags, in steady state: each measured run (3x as many requests as streams, so that each HTTP/1.1
    connection the client opens carries several) follows a warm-up run of the same API at the same concurrency;
    each run with prompts of its own (the prefix cache would favour the second of two runs)."""
    plan = []
    for conc in (64, a.n256):
        for api in ("grpc", "openai"):
            plan.append((f"warm-up, {conc} at once, {api} streaming",
                         workload_flags(a, conc, conc, fresh_prompts(a, f"{api}-{conc}-warm-up"), a.new_tokens) + [f"--api={api}"],
                         180, dict(workload=f"api-{conc}-warm-up", api=f"{api}-stream", warmup=True)))
            plan.append((f"{3 * conc} requests, {conc} at once, {api} streaming",
                         workload_flags(a, 3 * conc, conc, fresh_prompts(a, f"{api}-{conc}"), a.new_tokens) + [f"--api={api}"], 180,
                         dict(workload=f"api-{conc}", api=f"{api}-stream", gpu=True)))
    run_server_set(a, res, "default (HTTP vs gRPC)", [], plan)


def part_tuned(a, res):
    for label, flags in a.tuned.items():
        run_server_set(a, res, label, flags, headline_plan(a))
    rows = [r for r in res.find("tinygpt", workload="256", api="stream") if r["config"] in a.tuned]
    if not rows:
        return
    best = max(rows, key=lambda r: r["tokens_per_second"])
    log(f"   best tuned flags: {best['config']}")
    run_server_set(a, res, best["config"], a.tuned[best["config"]],
                   [(f"{a.n2048} at once, streaming", workload_flags(a, a.n2048, a.n2048, a.prompts, a.new_tokens), 400,
                     dict(workload="2048", api="stream", gpu=True))])


def part_prefix(a, res):
    for caching in (True, False):
        flags = [] if caching else ["--noprefix-caching"]
        label = "prefix caching " + ("on" if caching else "off")
        cflags = [f"--requests={a.n256}", f"--concurrency={a.n256}", f"--shared-prefix-len={a.prefix_len}", "--prompt-len-min=16",
                  "--prompt-len-max=64", f"--output-len-min={a.new_tokens}", f"--output-len-max={a.new_tokens}", "--seed=14"]
        run_server_set(a, res, label, flags, [("shared prefix", cflags, 180, dict(workload="prefix", api="stream", caching=caching))])


def part_torch_peer(a, res):
    dump = os.path.join(a.work, "torch_peer_ids.jsonl")
    cmd = [sys.executable, os.path.join(HERE, "torch_decode_peer.py"), a.checkpoint, a.prompts, f"--batch={a.peer_batches}",
           f"--new-tokens={a.new_tokens}", f"--device={a.device}", f"--requests={a.n256}", f"--dump-ids={dump}",
           f"--dump-count={a.compare}"]
    if a.small:
        cmd.append("--check=4")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=time_left(a))
    for line in p.stdout.splitlines():
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("event") in ("result", "error", "check", "best"):
            res.add("torch", **j)
            if j["event"] == "result":
                log(f"   PyTorch static graph, batch {j['batch']}: {j['tokens_per_second']:,.0f} tok/s "
                    f"(prefill {j['prefill_seconds']:.3f}s, decode step {j['decode_step_ms']:.3f} ms)")
            elif j["event"] != "best":
                log(f"   PyTorch peer: {line[:300]}")
    if p.returncode != 0:
        res.add("error", part="torch peer", error=f"rc {p.returncode}: {p.stderr.strip()[-1500:]}")
        log(f"!! torch peer rc {p.returncode}: {p.stderr.strip()[-600:]}")
    # tinygpt's greedy outputs of the same first prompts, one request at a time, against the peer's.
    if not os.path.exists(dump):
        return
    with open(dump) as f:
        peer = [json.loads(l) for l in f if l.strip()]
    with open(a.prompts) as f:
        prompts = [json.loads(l) for l, _ in zip(f, range(len(peer)))]
    server = Server(a.bin_dir, a.checkpoint, a.device, [], a.server_log, a.start_timeout, "compare")
    try:
        same, ours_all = [], []
        for prompt, theirs in zip(prompts, peer):
            p = subprocess.run([binary(a.bin_dir, "tinygpt-client", "client"), "generate", f"--target={server.target}", "--json",
                                "--ignore-eos", f"--max-new-tokens={a.new_tokens}", "--prompt-ids=" + ",".join(map(str, prompt))],
                               capture_output=True, text=True, timeout=60)
            ours = json.loads(p.stdout)["output_ids"]
            ours_all.append(ours)
            same.append(next((i for i in range(min(len(ours), len(theirs))) if ours[i] != theirs[i]), min(len(ours), len(theirs))))
        res.add("compare", prompts=len(same), matching_prefix=same, new_tokens=a.new_tokens, torch_ids=peer, tinygpt_ids=ours_all)
        log(f"   tinygpt vs PyTorch greedy tokens, matching prefix of {a.new_tokens}: {same}")
    finally:
        server.stop()


def part_hf_peer(a, res):
    cmd = [sys.executable, os.path.join(HERE, "hf_generate_peer.py"), a.prompts, f"--requests={a.n256}", f"--new-tokens={a.new_tokens}",
           f"--device={a.device}"] + (["--small", "--dtype=fp32"] if a.small else [])
    for i, mbt in enumerate(a.hf_batch_tokens):
        if i > 0 and time.time() - T0 > a.budget_s:
            log(f"   HF max_batch_tokens {mbt}: skipped, past the {a.budget_s}s budget")
            continue
        try:
            limit = time_left(a)
            p = subprocess.run(cmd + [f"--max-batch-tokens={mbt}"], capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            res.add("hf", event="error", max_batch_tokens=mbt or "default", error=f"timed out after {limit:.0f}s")
            log(f"!! HF peer timed out after {limit:.0f}s")
            continue
        got = False
        for line in p.stdout.splitlines():
            try:
                j = json.loads(line)
            except ValueError:
                continue
            if j.get("event") in ("result", "error"):
                got = True
                res.add("hf", **j)
                log(f"   HF generate_batch (transformers {j.get('transformers')}, max_batch_tokens {j.get('max_batch_tokens')}): "
                    + (f"{j['tokens_per_second']:,.0f} tok/s" if j["event"] == "result" else f"error: {j['error'][:300]}"))
        if not got:
            res.add("hf", event="error", max_batch_tokens=mbt or "default", error=f"rc {p.returncode}: {p.stderr.strip()[-1500:]}")
            log(f"!! HF peer rc {p.returncode}: {p.stderr.strip()[-400:]}")


def workload_floor(cfg, prompt_lens, new_tokens, batch, bw, gemm, dtype_bytes=2):
    """Bytes and FLOPs of serving `prompt_lens` with `new_tokens` each, `batch` sequences at a time, as a
    decoder that reads each weight once per step and each sequence's K/V once per step must move/compute."""
    d, L, V, F_ = cfg["d_model"], cfg["n_layers"], cfg["vocab_size"], cfg["ffn_hidden"]
    H, Hkv = cfg["n_heads"], cfg["n_kv_heads"]
    hd = d // H
    layer = d * (H + 2 * Hkv) * hd + d * d + d * 2 * F_ + F_ * d   # qkv, proj, w12, w3 (matmul weights)
    matmul = L * layer                                            # per token, without the head
    head = d * V
    weight_bytes = (matmul + head) * dtype_bytes                  # the embeddings are gathered, a few rows a step
    kv_per_token = 2 * L * Hkv * hd * dtype_bytes
    tot_bytes = tot_flops = dec_bytes = dec_flops = 0.0
    steps = dec_steps = 0
    for i in range(0, len(prompt_lens), batch):
        group = prompt_lens[i:i + batch]
        # Prefill (one step per group: weights once, K/V written, the head for the last token of each).
        toks = sum(group)
        tot_flops += 2 * matmul * toks + 2 * head * len(group) + sum(4 * L * d * n * (n + 1) / 2 for n in group)
        tot_bytes += weight_bytes + kv_per_token * toks
        steps += 1
        # Decode: new_tokens - 1 steps; step s reads every sequence's K/V of length n + s and writes one row.
        for s in range(1, new_tokens):
            ctx = sum(n + s for n in group)
            fl = len(group) * (2 * matmul + 2 * head) + 4 * L * d * ctx
            by = weight_bytes + kv_per_token * (ctx + len(group))
            tot_flops += fl
            tot_bytes += by
            dec_flops += fl
            dec_bytes += by
            steps += 1
            dec_steps += 1
    t_bytes, t_flops = tot_bytes / bw, tot_flops / gemm
    gen = len(prompt_lens) * new_tokens
    return dict(batch=batch, steps=steps, bytes=tot_bytes, flops=tot_flops, seconds_bytes=t_bytes, seconds_flops=t_flops,
                floor_seconds=max(t_bytes, t_flops), ceiling_tokens_per_second=gen / max(t_bytes, t_flops),
                decode_step_bytes=dec_bytes / max(1, dec_steps), decode_step_flops=dec_flops / max(1, dec_steps),
                decode_step_floor_ms=1e3 * max(dec_bytes / bw, dec_flops / gemm) / max(1, dec_steps),
                weight_bytes_per_step=weight_bytes, kv_bytes_per_token=kv_per_token)


def part_floor(a, res):
    import torch
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n = (1 << 30) if dev.type == "cuda" else (1 << 24)           # bytes of bf16 per buffer (1 GiB on the GPU)
    x = torch.empty(n // 2, dtype=torch.bfloat16, device=dev)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync()
    reps = 20 if dev.type == "cuda" else 3
    t = time.perf_counter()
    for _ in range(reps):
        y.copy_(x)
    sync()
    bw = 2 * n * reps / (time.perf_counter() - t)                # read + write
    del x, y
    m = 8192 if dev.type == "cuda" else 512
    gdt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    A = torch.randn(m, m, dtype=gdt, device=dev)
    B = torch.randn(m, m, dtype=gdt, device=dev)
    for _ in range(3):
        A @ B
    sync()
    reps = 20 if dev.type == "cuda" else 3
    t = time.perf_counter()
    for _ in range(reps):
        A @ B
    sync()
    gemm = 2 * m ** 3 * reps / (time.perf_counter() - t)
    del A, B
    with open(a.prompts) as f:
        lens = [len(json.loads(l)) for l, _ in zip(f, range(a.n256))]
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    res.add("hardware", device=name, copy_bytes_per_second=bw, copy_buffer_bytes=n, gemm_flops_per_second=gemm, gemm_size=m,
            gemm_dtype=str(gdt).replace("torch.", ""))
    log(f"   {name}: copy {bw / 1e9:,.0f} GB/s, GEMM {gemm / 1e12:,.1f} TFLOP/s")
    for batch in sorted({len(lens), min(64, len(lens))}, reverse=True):  # all at once; 64 a step (the default --max-seqs)
        f = workload_floor(a.cfg, lens, a.new_tokens, batch, bw, gemm, 2 if a.device == "cuda" else 4)
        res.add("floor", workload="256", **f)
        log(f"   floor, {f['batch']} sequences per step: {f['floor_seconds'] * 1e3:.1f} ms "
            f"(bytes {f['seconds_bytes'] * 1e3:.1f} ms, FLOPs {f['seconds_flops'] * 1e3:.1f} ms) = {f['ceiling_tokens_per_second']:,.0f} tok/s")


# ---------------------------------------------------------------- report

def ms(x):
    return "n/a" if x is None else f"{1e3 * x:.3f}" if x < 1e-3 else f"{1e3 * x:.2f}"


def write_report(a, res):
    R = res.rows
    tiny = [r for r in R if r["kind"] == "tinygpt" and not r.get("warmup")]
    torch_rows = [r for r in R if r["kind"] == "torch" and r.get("event") == "result"]
    peer = max(torch_rows, key=lambda r: r["tokens_per_second"]) if torch_rows else None
    hf_rows = [r for r in R if r["kind"] == "hf"]
    hw = next((r for r in R if r["kind"] == "hardware"), None)
    ratio = lambda tps: f"{tps / peer['tokens_per_second']:.2f}x" if peer else "n/a"
    L = [f"# Serving benchmark ({'bench-125m' if not a.small else 'small test model'}, {a.device})", ""]
    L.append(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; device: {hw['device'] if hw else a.device}; "
             f"{a.n256} requests, prompts of {a.prompt_min}-{a.prompt_max} random token ids, {a.new_tokens} new tokens each "
             f"(end of sequence ignored), greedy. Command: `python3 bench/serve_gpu_bench.py BIN_DIR OUT_DIR"
             f"{' --quick' if a.quick else ''}{' --device cpu --small' if a.small else ''}`.")
    L += ["", f"## {a.n256} requests at once", "",
          "| system | flags | API | generated tok/s | vs PyTorch static graph | TTFT p50 / p99 ms | ITL p50 / p99 ms | engine steps x ms, tok/step | failed |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in tiny:
        if r.get("workload") not in ("256", "2048"):
            continue
        e = r["engine"]
        steps = f"{e.get('steps', 0):.0f} x {e.get('step_ms_mean', 0):.3f}, {e.get('tokens_per_step', 0):.0f}" if e.get("steps") else "n/a"
        L.append(f"| tinygpt{' (' + r['workload'] + ' requests)' if r['workload'] == '2048' else ''} | {r['config']} | {r['api']} | "
                 f"{r['tokens_per_second']:,.0f} | {ratio(r['tokens_per_second'])} | {ms(r['ttft_seconds']['p50'])} / {ms(r['ttft_seconds']['p99'])} | "
                 f"{ms(r['inter_token_seconds']['p50'])} / {ms(r['inter_token_seconds']['p99'])} | {steps} | {r['failed']} |")
    api_rows = {(r["workload"], r["api"]): r for r in tiny if str(r.get("workload", "")).startswith("api-")}
    if api_rows:  # the openai part: HTTP (SSE) beside gRPC streaming
        L += ["", "## HTTP (OpenAI API, SSE) vs gRPC streaming (steady state: each run after a warm-up of its API at its concurrency)", "",
              "| concurrent streams | API | requests | generated tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | failed | HTTP / gRPC |",
              "|---|---|---|---|---|---|---|---|"]
        for (w, api), r in sorted(api_rows.items()):
            g = api_rows.get((w, "grpc-stream"))
            vs = f"{r['tokens_per_second'] / g['tokens_per_second']:.2f}x" if api == "openai-stream" and g else ""
            L.append(f"| {w[4:]} | {api} | {r['requests']} | {r['tokens_per_second']:,.0f} | {ms(r['ttft_seconds']['p50'])} / {ms(r['ttft_seconds']['p99'])} | "
                     f"{ms(r['inter_token_seconds']['p50'])} / {ms(r['inter_token_seconds']['p99'])} | {r['failed']} | {vs} |")
        L += ["", "| system | flags | API | generated tok/s | vs PyTorch static graph | TTFT p50 / p99 ms | ITL p50 / p99 ms | engine steps x ms, tok/step | failed |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in torch_rows:
        L.append(f"| PyTorch {r['torch']} static batches, {'CUDA-graphed decode' if r.get('cuda_graph') else 'eager decode (no graph)'}, {r['dtype']} | "
                 f"batch {r['batch']} | in-process | {r['tokens_per_second']:,.0f} | {ratio(r['tokens_per_second'])} | "
                 f"{ms(r['ttft_seconds']['p50'])} / {ms(r['ttft_seconds']['p99'])} | {ms(r['inter_token_seconds']['p50'])} (decode step) | "
                 f"{(a.new_tokens - 1) * math.ceil(r['requests'] / r['batch'])} x {r['decode_step_ms']:.3f} + prefill {r['prefill_seconds'] * 1e3:.0f} ms | 0 |")
    for r in [r for r in R if r["kind"] == "torch" and r.get("event") == "error"]:
        L.append(f"| PyTorch static graph | batch {r.get('batch')} | in-process | error: {r['error'][:200]} | | | | | |")
    for r in hf_rows:
        if r.get("event") == "result":
            tt, it = r.get("ttft_seconds"), r.get("inter_token_seconds")
            L.append(f"| HF transformers {r.get('transformers')} generate_batch (Llama, {r['dtype']}) | max_batch_tokens "
                     f"{r.get('max_batch_tokens')} | in-process | {r['tokens_per_second']:,.0f} | {ratio(r['tokens_per_second'])} | "
                     f"{ms(tt['p50']) + ' / ' + ms(tt['p99']) if tt else 'n/a'} | {ms(it['p50']) + ' / ' + ms(it['p99']) if it else 'n/a'} | "
                     f"shortest output {r.get('shortest_output')} | {r['requests'] - r.get('finished', 0)} |")
        else:
            L.append(f"| HF transformers {r.get('transformers', '?')} generate_batch | max_batch_tokens {r.get('max_batch_tokens')} | "
                     f"in-process | error ({r.get('stage', '')}): {str(r.get('error'))[:300]} | | | | | |")
    # Targets.
    st = [r for r in tiny if r.get("workload") == "256" and r["api"] == "stream"]
    L += ["", "### Targets", ""]
    if st and peer:
        best = max(st, key=lambda r: r["tokens_per_second"])
        L.append(f"- >= 2x the PyTorch static-graph peer at {a.n256} requests: best tinygpt {best['tokens_per_second']:,.0f} tok/s "
                 f"({best['config']}) = **{ratio(best['tokens_per_second'])}** of PyTorch's best ({peer['tokens_per_second']:,.0f} tok/s, "
                 f"batch {peer['batch']}).")
    dflt = [r for r in st if r["config"] == "default"]
    if st and dflt:
        best = max(st, key=lambda r: r["tokens_per_second"])
        L.append(f"- default flags within 10% of the best: default {dflt[0]['tokens_per_second']:,.0f} tok/s = "
                 f"**{dflt[0]['tokens_per_second'] / best['tokens_per_second']:.2f}** of the best ({best['config']}).")
    one = [r for r in tiny if r.get("workload") == "single"]
    if one:
        L.append(f"- 1 concurrent request: inter-token latency p50 **{ms(one[0]['inter_token_seconds']['p50'])} ms**, p99 "
                 f"{ms(one[0]['inter_token_seconds']['p99'])} ms (target p50 <= 0.4 ms); TTFT p50 {ms(one[0]['ttft_seconds']['p50'])} ms; "
                 f"engine step {one[0]['engine'].get('step_ms_mean', 0):.3f} ms mean over {one[0]['engine'].get('steps', 0):.0f} steps.")
    un = {r["config"]: r for r in tiny if r.get("workload") == "256" and r["api"] == "unary"}
    for r in st:
        if r["config"] in un:
            L.append(f"- unary vs streaming at {a.n256} concurrent calls ({r['config']}): {un[r['config']]['tokens_per_second']:,.0f} vs "
                     f"{r['tokens_per_second']:,.0f} tok/s ({un[r['config']]['tokens_per_second'] / r['tokens_per_second']:.2f}x).")
    cmp_ = next((r for r in R if r["kind"] == "compare"), None)
    if cmp_:
        L.append(f"- tinygpt's and PyTorch's greedy tokens for the first {cmp_['prompts']} prompts agree for the first "
                 f"{cmp_['matching_prefix']} of {cmp_['new_tokens']} tokens"
                 + (" (bf16 on both sides: they may part after a near tie)." if a.device == "cuda" else "."))
    chk = next((r for r in R if r["kind"] == "torch" and r.get("event") == "check"), None)
    if chk:
        L.append(f"- the PyTorch peer against the reference TinyGPT (full recompute, fp32): matching prefix {chk['matching_prefix']}.")
    # GPU share and floor.
    L += ["", "### Where a step's time goes, and the floor", ""]
    for r in tiny:
        if r.get("workload") in ("256", "2048") and r["api"] == "stream":
            e = r["engine"]
            L.append(f"- {r['config']}, {r['requests']} requests: {e.get('steps', 0):.0f} engine steps of {e.get('step_ms_mean', 0):.3f} ms "
                     f"mean, {e.get('tokens_per_step', 0):.1f} tokens per step; steps fill "
                     f"{100 * (e.get('step_share_of_wall') or 0):.0f}% of the run's wall time"
                     + (f"; the GPU was busy (nvidia-smi utilization.gpu, {r['gpu_samples']} samples) {100 * r['gpu_busy']:.0f}% of the wall "
                        f"time, so about **{100 * r['gpu_busy'] / e['step_share_of_wall']:.0f}% of the step time on the GPU**"
                        if r.get("gpu_busy") is not None and e.get("step_share_of_wall") else "; GPU busy share not measured")
                     + (f"; the engine's own device time (CUDA events around each step) is **{100 * e['device_share_of_wall']:.0f}% "
                        f"of the wall time**" if e.get("device_share_of_wall") else "")
                     + f"; {e.get('graph_steps', 0):.0f} steps replayed graphs, {e.get('eager_steps', 0):.0f} ran op by op"
                     + (f", {e.get('graph_captures', 0):.0f} graphs captured in {e.get('graph_capture_seconds', 0) * 1e3:.0f} ms"
                        if e.get("graph_captures") else "") + ".")
    if hw:
        L.append(f"- measured here: copy bandwidth {hw['copy_bytes_per_second'] / 1e9:,.0f} GB/s ({hw['copy_buffer_bytes'] / 2**20:,.0f} MiB "
                 f"tensor copy, bytes read + written), "
                 f"GEMM {hw['gemm_flops_per_second'] / 1e12:,.1f} TFLOP/s ({hw['gemm_size']}^3 {hw['gemm_dtype']}).")
    for f in [r for r in R if r["kind"] == "floor"]:
        L.append(f"- floor of the {a.n256}-request workload at {f['batch']} sequences per step ({f['steps']} steps: weights "
                 f"{f['weight_bytes_per_step'] / 1e6:.0f} MB per step, K/V {f['kv_bytes_per_token'] / 1e3:.1f} KB per token read every step): "
                 f"{f['bytes'] / 1e9:.1f} GB / bandwidth = {f['seconds_bytes'] * 1e3:.1f} ms, {f['flops'] / 1e12:.2f} TFLOP / GEMM rate = "
                 f"{f['seconds_flops'] * 1e3:.1f} ms; a decode step moves {f['decode_step_bytes'] / 1e6:,.0f} MB and "
                 f"{f['decode_step_flops'] / 1e9:,.0f} GFLOP on average, floor {f['decode_step_floor_ms']:.3f} ms; "
                 f"**ceiling {f['ceiling_tokens_per_second']:,.0f} tok/s**"
                 + (f" (best tinygpt run: {max(r['tokens_per_second'] for r in st) / f['ceiling_tokens_per_second']:.0%} of it)" if st else "") + ".")
    # Sweep.
    sw = sorted([r for r in tiny if r.get("workload") == "sweep"], key=lambda r: r["offered_rate"])
    if sw:
        L += ["", "## Poisson arrivals (default flags)", "",
              "| offered req/s | offered tok/s | requests | achieved tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | tok/step | failed |",
              "|---|---|---|---|---|---|---|---|"]
        for r in sw:
            L.append(f"| {r['offered_rate']:.1f} | {r['offered_rate'] * a.new_tokens:,.0f} | {r['requests']} | {r['tokens_per_second']:,.0f} | "
                     f"{ms(r['ttft_seconds']['p50'])} / {ms(r['ttft_seconds']['p99'])} | {ms(r['inter_token_seconds']['p50'])} / "
                     f"{ms(r['inter_token_seconds']['p99'])} | {r['engine'].get('tokens_per_step', 0):.1f} | {r['failed']} |")
    pf = {r["caching"]: r for r in tiny if r.get("workload") == "prefix"}
    if pf:
        L += ["", f"## Shared prefix (issue #14): {a.n256} requests, {a.prefix_len}-token shared prefix + 16-64 own tokens, "
              f"{a.new_tokens} new tokens, all at once, default flags", "",
              "| prefix caching | generated tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | tokens computed | hit rate | failed |",
              "|---|---|---|---|---|---|---|"]
        for c in (True, False):
            if c in pf:
                r = pf[c]
                hr = r["engine"].get("prefix_hit_rate")
                L.append(f"| {'on' if c else 'off'} | {r['tokens_per_second']:,.0f} | {ms(r['ttft_seconds']['p50'])} / {ms(r['ttft_seconds']['p99'])} | "
                         f"{ms(r['inter_token_seconds']['p50'])} / {ms(r['inter_token_seconds']['p99'])} | "
                         f"{r['engine'].get('computed_tokens', 0):,.0f} | {'n/a' if hr is None else f'{100 * hr:.1f}%'} | {r['failed']} |")
        if True in pf and False in pf:
            on, off = pf[True], pf[False]
            L.append(f"\nOn/off: throughput {on['tokens_per_second'] / off['tokens_per_second']:.2f}x, TTFT p50 "
                     f"{off['ttft_seconds']['p50'] / max(1e-9, on['ttft_seconds']['p50']):.2f}x lower.")
    L += steady_report(a, res, peer)
    errs = [r for r in R if r["kind"] == "error"]
    if errs:
        L += ["", "## Errors", ""] + [f"- {r['part']}: {r['error'][:500]}" for r in errs]
    L.append("")
    with open(os.path.join(a.out, "serving.md"), "w") as f:
        f.write("\n".join(L))
    return sw


def plot(a, res, sw):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        log(f"   no plot: {e}")
        return
    if not sw:
        log("   no plot: no sweep results")
        return
    x = [r["offered_rate"] * a.new_tokens for r in sw]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(x, [r["tokens_per_second"] for r in sw], "o-", label="tinygpt (default flags), Poisson")
    ax1.plot(x, x, ":", color="gray", label="offered")
    for r in res.find("tinygpt", workload="256", api="stream"):
        ax1.axhline(r["tokens_per_second"], ls="--", lw=0.8, color="tab:green" if r["config"] == "default" else "tab:olive")
    torch_rows = [r for r in res.rows if r["kind"] == "torch" and r.get("event") == "result"]
    if torch_rows:
        ax1.axhline(max(r["tokens_per_second"] for r in torch_rows), ls="--", color="tab:red", label="PyTorch static graph (all at once)")
    ax1.set_xlabel("offered load (generated tokens/s)")
    ax1.set_ylabel("achieved generated tokens/s")
    ax1.set_title("throughput (dashed green: tinygpt, all at once)")
    ax1.legend(fontsize=8)
    for key, color, name in (("ttft_seconds", "tab:blue", "TTFT"), ("inter_token_seconds", "tab:orange", "inter-token")):
        for pct, style in (("p50", "o-"), ("p99", "s--")):
            ax2.plot(x, [max(1e-3, 1e3 * r[key][pct]) for r in sw], style, color=color, label=f"{name} {pct}")
    ax2.set_yscale("log")
    ax2.set_xlabel("offered load (generated tokens/s)")
    ax2.set_ylabel("ms")
    ax2.set_title("latency")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "serving.png"), dpi=120)
    log(f"   wrote {os.path.join(a.out, 'serving.png')}")


# ---------------------------------------------------------------- main

def on_sigterm(*_):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the clean-up and the report must not be cut short
    raise KeyboardInterrupt("SIGTERM")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bin_dir")
    ap.add_argument("out")
    ap.add_argument("--quick", action="store_true", help="fewer runs (one tuned flag set, 3 sweep rates, 1 peer batch size)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="a tiny model and few requests (CPU test of the script)")
    ap.add_argument("--total-seconds", type=float, default=540, dest="total_s",
                    help="the peers' time limits are cut so that the whole run ends by then")
    ap.add_argument("--parts", default="steady,default,tuned,prefix,torch,hf,floor",
                    help="which parts to run (default includes 1-at-a-time and the Poisson sweep; openai: HTTP vs gRPC streaming)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    a.out = os.path.abspath(a.out)
    a.bin_dir = os.path.abspath(a.bin_dir)
    res = Results(a.out)
    a.cfg = SMALL if a.small else BENCH_125M
    a.new_tokens = 16 if a.small else 128
    a.prompt_min, a.prompt_max = (4, 48) if a.small else (16, 512)
    a.n256, a.n2048, a.n_single = (16, 48, 4) if a.small else (256, 2048, 32)
    a.prefix_len = 100 if a.small else 400
    a.compare = 3 if a.small else 8
    a.tuned = dict(TUNED)
    # Issue #20's sets: (server flags, whether the concurrency sweep runs after the cold and warm bursts).
    a.steady_sets = {"default": ([], True), "one token per message": (["--stream-interval=1"], True),
                     "no warm start": (["--nowarm-start"], False)}
    a.concurrencies = [1, 16, 64, 256, 1024]
    a.sweep_fracs = [0.25, 0.5, 0.75, 0.9, 1.1]
    a.sweep_seconds, a.sweep_min_requests, a.sweep_max_requests, a.sweep_fallback_rate = 6, 64, 768, 100.0
    a.peer_batches = "64,128,256"
    a.hf_batch_tokens = [0, 8192]
    a.peer_timeout, a.start_timeout = 240, 180
    a.budget_s = 330  # optional runs (a second HF configuration) only before this many seconds
    if a.quick:
        a.tuned = dict(list(TUNED.items())[:1])
        a.sweep_fracs = [0.3, 0.7, 1.1]
        a.sweep_seconds, a.sweep_max_requests = 3, 384
        a.peer_batches = "128,256"
        a.hf_batch_tokens = [0]
        a.budget_s = 0
    if a.small:
        a.concurrencies = [1, 4, 16]
        a.tuned = {"seqs16-tok1024": ["--max-seqs=16", "--max-batch-tokens=1024", "--max-queue=4096"]}
        a.sweep_fracs = [0.5, 1.0]
        a.sweep_seconds, a.sweep_min_requests, a.sweep_max_requests, a.sweep_fallback_rate = 2, 8, 24, 20.0
        a.peer_batches = "4,16"
        a.hf_batch_tokens = [0]
        a.peer_timeout, a.start_timeout = 120, 60
    parts = set(a.parts.split(","))
    # A SIGTERM (the device script's `timeout`) unwinds like an exception, so servers are stopped and the report written.
    signal.signal(signal.SIGTERM, on_sigterm)
    log(f"serve_gpu_bench: out {a.out}, bins {a.bin_dir}, device {a.device}, {'small' if a.small else 'bench-125m'}"
        f"{', quick' if a.quick else ''}; python {sys.version.split()[0]}")
    if a.device == "cuda" and shutil.which("nvidia-smi"):
        p = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        log(f"   GPU: {p.stdout.strip()}")
        res.add("gpu", nvidia_smi=p.stdout.strip())
    # Inputs go to a scratch folder, not OUT_DIR: the checkpoint is 0.5 GB and both are reproducible (fixed seeds).
    a.work = work = tempfile.mkdtemp(prefix="tinygpt-serve-bench-")
    a.server_log = os.path.join(a.out, "servers.log")
    a.checkpoint = os.path.join(work, "bench-125m.safetensors" if not a.small else "small.safetensors")
    a.prompts = os.path.join(work, "prompts.jsonl")
    log("== inputs")
    nparams = make_checkpoint(a.checkpoint, a.cfg)
    make_prompts(a.prompts, max(a.n2048, a.n256), a.prompt_min, a.prompt_max, a.cfg["vocab_size"])
    res.add("inputs", config=a.cfg, parameters=nparams, checkpoint=a.checkpoint, prompts=a.prompts)
    log(f"   checkpoint {nparams / 1e6:.1f}M parameters, {os.path.getsize(a.checkpoint) / 1e6:.0f} MB; prompts {a.prompts}")
    try:
        for key, title, run in [("steady", "tinygpt, steady state and cold start", part_steady),
                                ("default", "tinygpt, default flags", part_default),
                                ("tuned", "tinygpt, tuned flags", part_tuned),
                                ("openai", "tinygpt, HTTP (OpenAI API) vs gRPC streaming", part_openai),
                                ("prefix", "tinygpt, shared prefix", part_prefix),
                                ("torch", "PyTorch static-graph peer", part_torch_peer),
                                ("hf", "HF generate_batch peer", part_hf_peer),
                                ("floor", "hardware floor", part_floor)]:
            if key in parts:
                part(res, title, run, a, res)
    finally:
        sw = part(res, "report", write_report, a, res)
        part(res, "plot", plot, a, res, sw)
        shutil.rmtree(work, ignore_errors=True)
        log(f"done in {time.time() - T0:.0f}s: {a.out}/serving.md")
    md = os.path.join(a.out, "serving.md")
    if os.path.exists(md):
        print(open(md).read(), flush=True)
    return 1 if res.find("error") else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        log(f"stopped by {e or 'an interrupt'}; the report holds what had run")
        sys.exit(2)
