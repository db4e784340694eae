#!/usr/bin/env python3
"""Serving throughput of the continuous batcher on the CPU (seed model):
`tinygpt-client bench` at 1, 8 and 64 concurrent streams against the same
requests sent one at a time, in one run; prints a table with ratios.
usage: serve_cpu.py BUILD_DIR CHECKPOINT [--requests N] [--server-arg=--threads=8 ...]
BUILD_DIR is a build tree or a flat folder of binaries (device-stage/bin)."""
import argparse, json, os, subprocess

from binaries import binary

ap = argparse.ArgumentParser()
ap.add_argument("build_dir")
ap.add_argument("checkpoint")
ap.add_argument("--requests", type=int, default=1024)
ap.add_argument("--server-arg", action="append", default=[], help="extra `tinygpt serve` flag (repeatable)")
a = ap.parse_args()

server = subprocess.Popen([binary(a.build_dir, "tinygpt", "cli"), "serve", f"--checkpoint={a.checkpoint}", "--device=cpu", "--port=0",
                           "--metrics-port=-1", "--http-port=-1", *a.server_arg], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
target = server.stdout.readline().split("listening on ")[1].split()[0]
print(f"cores {len(os.sched_getaffinity(0))}; server flags: {' '.join(a.server_arg) or 'defaults'}")
rows = []
try:
    for unary in (False, True):
        for c in (1, 8, 64):
            cmd = [binary(a.build_dir, "tinygpt-client", "client"), "bench", f"--target={target}", f"--requests={a.requests}",
                   f"--concurrency={c}", "--prompt-len-min=4", "--prompt-len-max=32", "--output-len-min=8",
                   "--output-len-max=32", "--seed=1", "--json"] + (["--unary"] if unary else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out))
finally:
    server.terminate()
    server.wait()
print(f"| API | concurrent streams | generated tok/s | requests/s | vs one at a time | TTFT p50 / p99 ms | inter-token p50 / p99 ms | errors |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    base = next(x for x in rows if x["unary"] == r["unary"] and x["concurrency"] == 1)["tokens_per_second"]
    print(f"| {'unary' if r['unary'] else 'stream'} | {r['concurrency']} | {r['tokens_per_second']:,.0f} | {r['requests_per_second']:,.0f} | "
          f"{r['tokens_per_second'] / base:.2f}x | {1e3 * r['ttft_seconds']['p50']:.2f} / {1e3 * r['ttft_seconds']['p99']:.2f} | "
          f"{1e3 * r['inter_token_seconds']['p50']:.3f} / {1e3 * r['inter_token_seconds']['p99']:.3f} | {r['errors'] or 'none'} |")
