#!/usr/bin/env python3
"""Prefix caching, on and off, on one workload: REQUESTS requests that share a
PREFIX-token prompt prefix (a system prompt), each with its own 16-64 tokens
after it and 32 new tokens, streamed through gRPC at a fixed concurrency.
Prints TTFT percentiles, throughput and the prefix-cache hit rate for both
runs, and their ratios.

usage: prefix_cache_bench.py BUILD_DIR CHECKPOINT [--prefix=400] [--requests=256] [--concurrency=64] [--server-arg=...]"""
import json, os, re, subprocess, sys, urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from binaries import binary

build_dir, ckpt = sys.argv[1], sys.argv[2]
opts = dict(a[2:].split("=", 1) for a in sys.argv[3:] if a.startswith("--") and "=" in a and not a.startswith("--server-arg="))
server_args = [a.split("=", 1)[1] for a in sys.argv[3:] if a.startswith("--server-arg=")]
prefix, requests, conc = int(opts.get("prefix", 400)), int(opts.get("requests", 256)), int(opts.get("concurrency", 64))
tinygpt, client = binary(build_dir, "tinygpt", "cli"), binary(build_dir, "tinygpt-client", "client")


def run(caching):
    flags = [] if caching else ["--noprefix-caching"]
    p = subprocess.Popen([tinygpt, "serve", f"--checkpoint={ckpt}", "--port=0", "--metrics-port=0", "--http-port=-1", *server_args, *flags],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        target = p.stdout.readline().split("listening on ")[1].split()[0]
        metrics_port = re.search(r":(\d+)/metrics", p.stdout.readline()).group(1)
        out = subprocess.run([client, "bench", f"--target={target}", f"--requests={requests}", f"--concurrency={conc}",
                              f"--shared-prefix-len={prefix}", "--prompt-len-min=16", "--prompt-len-max=64", "--output-len-min=32",
                              "--output-len-max=32", "--ignore-eos", "--json"], capture_output=True, text=True, timeout=1200)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        val = lambda name: float(re.search(rf"^{name} (\S+)", text, re.M).group(1))
        res["hit_rate"] = val("tinygpt_prefix_cache_hits_total") / max(1.0, val("tinygpt_prefix_cache_queries_total"))
        res["computed_tokens"] = val("tinygpt_step_tokens_sum")
        return res
    finally:
        p.terminate()
        p.wait(timeout=60)


on, off = run(True), run(False)
print(f"{requests} requests, {prefix}-token shared prefix + 16-64 own tokens, 32 new tokens each, {conc} concurrent streams")
print("| prefix caching | generated tok/s | TTFT p50 (s) | TTFT p99 (s) | tokens computed | cache hit rate | failed |")
print("|---|---|---|---|---|---|---|")
for name, r in (("on", on), ("off", off)):
    print(f"| {name} | {r['tokens_per_second']:.0f} | {r['ttft_seconds']['p50']:.4f} | {r['ttft_seconds']['p99']:.4f} | "
          f"{r['computed_tokens']:.0f} | {100 * r['hit_rate']:.1f}% | {r['failed']} |")
print(f"on/off: throughput {on['tokens_per_second'] / off['tokens_per_second']:.2f}x, "
      f"TTFT p50 {off['ttft_seconds']['p50'] / on['ttft_seconds']['p50']:.2f}x lower, "
      f"tokens computed {off['computed_tokens'] / on['computed_tokens']:.2f}x fewer")
