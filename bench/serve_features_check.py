#!/usr/bin/env python3
"""The serving features on two backends side by side: `tinygpt serve` on the
CPU and on CUDA, the same requests through tinygpt-client --json (greedy,
top_logprobs, penalties, n samples, prefix-cache reuse), then a comparison:
the same tokens, logprobs within the GPU dtype's tolerance.

usage: serve_features_check.py BUILD_DIR CHECKPOINT [--gpu-flags=...]   (BUILD_DIR: a build tree or device-stage/bin)"""
import json, os, subprocess, sys, time

sys.path.insert(0, os.path.dirname(__file__))
from binaries import binary

build_dir, ckpt = sys.argv[1], sys.argv[2]
tinygpt, client = binary(build_dir, "tinygpt", "cli"), binary(build_dir, "tinygpt-client", "client")
gpu_flags = next((a.split("=", 1)[1].split() for a in sys.argv[3:] if a.startswith("--gpu-flags=")), ["--device=cuda"])
REQUESTS = [
    ["--prompt-ids=3,4,5", "--max-new-tokens=8", "--top-logprobs=3"],
    ["--prompt-ids=10,11,12,13", "--max-new-tokens=12", "--repetition-penalty=1.3", "--frequency-penalty=0.5", "--logprobs"],
    ["--prompt-ids=" + ",".join(map(str, range(20, 45))), "--max-new-tokens=6", "--n=3", "--temperature=0.8", "--seed=5"],
    ["--prompt-ids=" + ",".join(map(str, range(20, 45))), "--max-new-tokens=6"],  # the previous prompt's blocks are cached
]


def run(flags):
    p = subprocess.Popen([tinygpt, "serve", f"--checkpoint={ckpt}", "--port=0", "--metrics-port=-1", "--http-port=-1", *flags],
                         stdout=subprocess.PIPE, text=True)
    target = p.stdout.readline().split("listening on ")[1].split()[0]
    try:
        out = []
        for r in REQUESTS:
            c = subprocess.run([client, "generate", f"--target={target}", "--json", *r], capture_output=True, text=True, timeout=60)
            out.append(json.loads(c.stdout) if c.returncode == 0 else {"error": c.stderr})
        info = subprocess.run([client, "info", f"--target={target}"], capture_output=True, text=True, timeout=30).stdout
        return out, json.loads(info)
    finally:
        p.terminate()
        p.wait(timeout=30)


t0 = time.time()
cpu, cpu_info = run(["--device=cpu"])
gpu, gpu_info = run(gpu_flags)
failed = 0
for i, (a, b) in enumerate(zip(cpu, gpu)):
    same = a.get("output_ids") == b.get("output_ids") and [c["output_ids"] for c in a.get("choices", [])] == \
        [c["output_ids"] for c in b.get("choices", [])]
    worst = max([abs(x["logprob"] - y["logprob"]) for x, y in zip(a.get("logprobs", []), b.get("logprobs", []))] or [0.0])
    ok = same and worst < 5e-2 and "error" not in a and "error" not in b
    failed += not ok
    print(f"{'PASS' if ok else 'FAIL'} request {i}: tokens {'equal' if same else 'DIFFER'}, max logprob diff {worst:.2e}"
          + ("" if ok else f"\n  cpu {a}\n  gpu {b}"))
cached = int(gpu_info.get("kvBlocksCached", 0))
print(f"{'PASS' if cached > 0 else 'FAIL'} prefix cache on {gpu_info.get('backend')} ({gpu_info.get('dtype')}): {cached} cached blocks")
failed += cached == 0
print(f"{len(REQUESTS) + 1 - failed} passed, {failed} failed ({time.time() - t0:.1f}s)")
sys.exit(1 if failed else 0)
