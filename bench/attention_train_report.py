#!/usr/bin/env python3
"""The tutorial's attention memory/speed table (section 2: causal, B=2, H=8,
D=64, fp16, M = 512 … 16384) as forward + backward: tinygpt's training
attention (tinygpt_attention_train_bench's JSON lines) beside the tutorial's
naive attention (materialized scores) and PyTorch SDPA's flash and efficient
backends, in the same run. Memory: peak bytes of one forward+backward with
its inputs, output, output gradient and input gradients (PyTorch:
max_memory_allocated from before the inputs exist; tinygpt: its buffers).
usage: attention_train_report.py OURS.jsonl OUT_DIR   (writes attention_train.md, attention_train_memory.png)"""
import json, math, os, sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn.functional as F

ours = {r["M"]: r for r in (json.loads(l) for l in open(sys.argv[1]) if l.startswith("{"))}
out_dir = sys.argv[2]
B, H, D = 2, 8, 64


def naive(q, k, v):  # the tutorial's vanilla attention, causal; [B, H, M, D]
    s = (q @ k.transpose(-2, -1)) / math.sqrt(D)
    M = s.shape[-1]
    s = s.masked_fill(torch.triu(torch.ones(M, M, device="cuda", dtype=torch.bool), 1), float("-inf"))
    return s.softmax(-1) @ v


def sdpa(backend):
    def f(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return f


def run(fn, M):
    """(median ms of forward+backward, peak MB) or (nan, nan) when it does not fit / has no kernel."""
    try:
        torch.cuda.empty_cache(); torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
        q, k, v = (torch.randn(B, H, M, D, device="cuda", dtype=torch.float16, requires_grad=True) for _ in range(3))
        do = torch.randn(B, H, M, D, device="cuda", dtype=torch.float16)

        def step():
            q.grad = k.grad = v.grad = None
            fn(q, k, v).backward(do)
        step(); torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 1e6
        times = []
        for _ in range(10):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record(); step(); e.record(); torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        return sorted(times)[len(times) // 2], peak
    except (torch.OutOfMemoryError, RuntimeError):
        return float("nan"), float("nan")


rows = []
for M in sorted(ours):
    r = {"M": M, "ours_ms": ours[M]["ms"], "ours_fwd_ms": ours[M].get("fwd_ms", float("nan")), "ours_mb": ours[M]["bytes_held"] / 1e6}
    for name, fn in (("naive", naive), ("flash", sdpa(SDPBackend.FLASH_ATTENTION)), ("efficient", sdpa(SDPBackend.EFFICIENT_ATTENTION))):
        r[name + "_ms"], r[name + "_mb"] = run(fn, M)
    rows.append(r)
lines = [f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", "",
         "### Causal attention forward + backward, B=2 H=8 D=64 fp16 (tutorial section 2 shapes)", "",
         "| M | tinygpt ms | (its forward) | naive ms | flash ms | efficient ms | tinygpt / flash time | tinygpt MB | naive MB | flash MB | efficient MB |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    lines.append(f"| {r['M']} | {r['ours_ms']:.3f} | {r['ours_fwd_ms']:.3f} | {r['naive_ms']:.3f} | {r['flash_ms']:.3f} | {r['efficient_ms']:.3f} | "
                 f"{r['ours_ms'] / r['flash_ms']:.2f} | {r['ours_mb']:.0f} | {r['naive_mb']:.0f} | {r['flash_mb']:.0f} | {r['efficient_mb']:.0f} |")
open(os.path.join(out_dir, "attention_train.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    Ms = [r["M"] for r in rows]
    for key, label in (("ours", "tinygpt"), ("naive", "naive"), ("flash", "SDPA flash"), ("efficient", "SDPA efficient")):
        ax[0].plot(Ms, [r[key + "_mb"] for r in rows], marker="o", label=label)
        ax[1].plot(Ms, [r[key + "_ms"] for r in rows], marker="o", label=label)
    for a, y in zip(ax, ("peak memory (MB)", "forward+backward (ms)")):
        a.set_xscale("log", base=2); a.set_yscale("log"); a.set_xlabel("sequence length M"); a.set_ylabel(y); a.legend()
    fig.suptitle("causal attention fwd+bwd, B=2 H=8 D=64 fp16")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "attention_train_memory.png"), dpi=100)
except ImportError as e:
    print(f"no plot: {e}")
