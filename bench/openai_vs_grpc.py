#!/usr/bin/env python3
"""HTTP (OpenAI API, SSE) streaming beside gRPC streaming on one server:
`tinygpt-client bench --api openai` and `--api grpc` with the same workload
at 64 and 256 concurrent streams, alternated over --rounds rounds (so that
drift in the machine's load hits both alike); prints the median of each and
the ratio HTTP / gRPC, and the server's CPU time per 1000 generated tokens
(from /proc, steadier than throughput on a busy machine). Both APIs go to
the same `tinygpt serve` process.
usage: openai_vs_grpc.py BUILD_DIR CHECKPOINT [--device cpu|cuda] [--requests N] [--rounds R] [--server-arg=...]
BUILD_DIR is a build tree or a flat folder of binaries (device-stage/bin)."""
import argparse, json, os, re, statistics, subprocess

from binaries import binary

ap = argparse.ArgumentParser()
ap.add_argument("build_dir")
ap.add_argument("checkpoint")
ap.add_argument("--device", default="cpu")
ap.add_argument("--requests", type=int, default=0, help="requests per run (0: 8 x the concurrency)")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--concurrency", default="64,256")
ap.add_argument("--output-len", default="16,64", help="min,max new tokens")
ap.add_argument("--server-arg", action="append", default=[], help="extra `tinygpt serve` flag (repeatable)")
a = ap.parse_args()

server = subprocess.Popen([binary(a.build_dir, "tinygpt", "cli"), "serve", f"--checkpoint={a.checkpoint}", f"--device={a.device}",
                           "--port=0", "--metrics-port=-1", "--http-port=0", "--max-queue=4096", *a.server_arg],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
lines = [server.stdout.readline() for _ in range(2)]
grpc_target = lines[0].split("listening on ")[1].split()[0]
http_target = "127.0.0.1:" + re.search(r"OpenAI API on http://[^:]+:(\d+)", lines[1]).group(1)
lo, hi = a.output_len.split(",")
print(f"cores {len(os.sched_getaffinity(0))}; device {a.device}; server flags: {' '.join(a.server_arg) or 'defaults'}; "
      f"{a.rounds} rounds, new tokens {lo}-{hi}, ignore_eos")
results = {}


def server_cpu_seconds():
    fields = open(f"/proc/{server.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


try:
    for c in [int(x) for x in a.concurrency.split(",")]:
        n = a.requests or 8 * c
        for rnd in range(a.rounds):
            for api, target in (("grpc", grpc_target), ("openai", http_target)):
                cmd = [binary(a.build_dir, "tinygpt-client", "client"), "bench", f"--api={api}", f"--target={target}",
                       f"--requests={n}", f"--concurrency={c}", "--prompt-len-min=4", "--prompt-len-max=32",
                       f"--output-len-min={lo}", f"--output-len-max={hi}", "--ignore-eos", f"--seed={rnd + 1}", "--json"]
                cpu0 = server_cpu_seconds()
                out = subprocess.run(cmd, capture_output=True, text=True)
                j = json.loads(out.stdout)
                j["server_cpu_ms_per_1k_tokens"] = 1e6 * (server_cpu_seconds() - cpu0) / max(1, j["generated_tokens"])
                results.setdefault((c, api), []).append(j)
finally:
    server.terminate()
    server.wait()

print("| concurrent streams | API | generated tok/s (median; runs) | server CPU ms / 1k tokens (median) | TTFT p50 / p99 ms | inter-token p50 / p99 ms | errors | HTTP / gRPC tok/s |")
print("|---|---|---|---|---|---|---|---|")
for c in sorted({c for c, _ in results}):
    med = {}
    for api in ("grpc", "openai"):
        runs = results[(c, api)]
        med[api] = statistics.median(r["tokens_per_second"] for r in runs)
        mid = sorted(runs, key=lambda r: r["tokens_per_second"])[len(runs) // 2]
        errors = sum(r["failed"] for r in runs)
        ratio = f"{med['openai'] / med['grpc']:.2f}x" if api == "openai" else ""
        each = ", ".join(f"{r['tokens_per_second']:,.0f}" for r in runs)
        cpu = statistics.median(r["server_cpu_ms_per_1k_tokens"] for r in runs)
        print(f"| {c} | {'HTTP (SSE)' if api == 'openai' else 'gRPC'} | {med[api]:,.0f} ({each}) | {cpu:.0f} | "
              f"{1e3 * mid['ttft_seconds']['p50']:.1f} / {1e3 * mid['ttft_seconds']['p99']:.1f} | "
              f"{1e3 * mid['inter_token_seconds']['p50']:.2f} / {1e3 * mid['inter_token_seconds']['p99']:.2f} | {errors or 'none'} | {ratio} |")
