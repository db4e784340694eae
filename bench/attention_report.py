#!/usr/bin/env python3
"""Puts tinygpt's attention timings (tinygpt_attention_bench's JSON lines)
beside PyTorch on the same shapes, in the same run, on the device:
  - the tutorial's table: naive attention (materialized scores) vs ours, causal
    B=2 H=8 D=64 fp16, time and peak memory (forward);
  - prefill TFLOP/s vs SDPA's flash (FlashAttention-2), efficient (xFormers'
    kernel) and cuDNN backends;
  - decode K/V GB/s vs the measured copy bandwidth.
usage: attention_report.py OURS.jsonl OUT_DIR   (writes attention.md, attention_memory.png)"""
import json, math, os, sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ours = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
out_dir = sys.argv[2]
dev = "cuda"
lines = [f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", ""]


def bench_ms(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return sorted(times)[len(times) // 2]


def vanilla_attention(q, k, v):  # the tutorial's, causal; layout [B, M, H, D]
    q, k, v = (t.transpose(1, 2).float() for t in (q, k, v))
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    M = scores.shape[-1]
    scores = scores.masked_fill(torch.triu(torch.ones(M, M, device=dev, dtype=torch.bool), 1), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


# 1. The tutorial's table.
lines += ["### Causal attention, B=2 H=8 D=64 fp16, forward: naive (materialized scores) vs tinygpt", "",
          "| M | naive peak MB | tinygpt MB held | naive ms | tinygpt ms | speed-up |", "|---|---|---|---|---|---|"]
mem_rows = []
for r in (x for x in ours if x["kind"] == "tutorial"):
    M = int(r["label"].split("M")[-1])
    q, k, v = (torch.randn(2, M, 8, 64, device=dev, dtype=torch.float16) for _ in range(3))
    try:
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        vanilla_attention(q, k, v); torch.cuda.synchronize()
        nm = (torch.cuda.max_memory_allocated() - base + 4 * q.numel() * 2) / 1e6  # + q, k, v, out as ours counts them
        nt = bench_ms(lambda: vanilla_attention(q, k, v), 5)
    except torch.OutOfMemoryError:
        nm, nt = float("nan"), float("nan")
    del q, k, v
    torch.cuda.empty_cache()
    om = r["bytes_held"] / 1e6
    mem_rows.append((M, nm, om))
    lines.append(f"| {M} | {nm:,.0f} | {om:,.0f} | {nt:.2f} | {r['ms']:.3f} | {nt / r['ms']:.1f}x |")

# 2. Prefill TFLOP/s beside SDPA backends.
backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
lines += ["", "### Prefill forward TFLOP/s (causal, fp16; FLOPs = 4·B·H·M²·D / 2)", "",
          "| shape | tinygpt | flash | efficient | cuDNN | tinygpt / flash |", "|---|---|---|---|---|---|"]


def sdpa_tflops(backend, B, M, H, Hkv, D, flops):
    q = torch.randn(B, H, M, D, device=dev, dtype=torch.float16)
    k = torch.randn(B, Hkv, M, D, device=dev, dtype=torch.float16)
    v = torch.randn(B, Hkv, M, D, device=dev, dtype=torch.float16)
    try:
        with sdpa_kernel(backend):
            ms = bench_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=H != Hkv))
        return flops / ms / 1e9
    except Exception as e:  # a backend that does not take this shape
        return float("nan")


def varlen_flash_tflops(lens, H, D, flops):
    total = sum(lens)
    q, k, v = (torch.randn(total, H, D, device=dev, dtype=torch.float16) for _ in range(3))
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), device=dev, dtype=torch.int32)
    try:
        fn = lambda: torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, max(lens), max(lens), 0.0, True, False)
        return flops / bench_ms(fn) / 1e9
    except Exception:
        return float("nan")


for r in (x for x in ours if x["kind"] == "prefill"):
    flops = r["tflops"] * r["ms"] * 1e9
    B, H, Hkv, D = r["batch"], r["H"], r["Hkv"], r["D"]
    if r["label"].startswith("packed"):
        # Variable lengths go through the flash backend's varlen op; the
        # bench prints its lengths so the same ones are used here.
        res = {"flash": varlen_flash_tflops(r["lens"], H, D, flops), "efficient": float("nan"), "cudnn": float("nan")}
    else:
        M = r["ctx"]
        res = {n: sdpa_tflops(b, B, M, H, Hkv, D, flops) for n, b in backends.items()}
    fmt = lambda x: "n/a" if math.isnan(x) else f"{x:.1f}"
    ratio = r["tflops"] / res["flash"] if not math.isnan(res["flash"]) else float("nan")
    lines.append(f"| {r['label']} | {r['tflops']:.1f} | {fmt(res['flash'])} | {fmt(res['efficient'])} | {fmt(res['cudnn'])} | "
                 f"{'n/a' if math.isnan(ratio) else f'{ratio:.2f}x'} |")

# 3. Decode bandwidth.
copy = next(x for x in ours if x["kind"] == "copy")["gbps"]
lines += ["", f"### Decode attention (32q/8kv heads, D=128, fp16, 16-token blocks): K/V GB/s vs copy bandwidth {copy:,.0f} GB/s", "",
          "| batch | context | ms | splits | K/V GB/s | of copy |", "|---|---|---|---|---|---|"]
for r in (x for x in ours if x["kind"] == "decode"):
    lines.append(f"| {r['batch']} | {r['ctx']} | {r['ms']:.4f} | {r['splits']} | {r['kv_gbps']:,.0f} | {100 * r['kv_gbps'] / copy:.0f}% |")

# 4. Other tile shapes of the same kernel on some of the shapes above.
variants = [x for x in ours if x["kind"] == "variant"]
if variants:
    chosen = {x["label"]: x for x in ours if x["kind"] in ("prefill", "decode")}
    lines += ["", "### Tile shapes (w warps, m m-tiles per warp, n block N, s stages) vs the backend's choice", "",
              "| shape | variant | ms | TFLOP/s | K/V GB/s | splits | vs chosen | max diff |", "|---|---|---|---|---|---|---|---|"]
    for v in variants:
        c = chosen[v["label"]]
        lines.append(f"| {v['label']} | {v['variant']} | {v['ms']:.4f} | {v['tflops']:.1f} | {v['kv_gbps']:,.0f} | {v['splits']} | "
                     f"{c['ms'] / v['ms']:.2f}x | {v['max_diff']:.2g} |")

text = "\n".join(lines)
print(text)
open(os.path.join(out_dir, "attention.md"), "w").write(text + "\n")
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    Ms = [m for m, _, _ in mem_rows]
    plt.figure(figsize=(6, 4))
    plt.loglog(Ms, [n for _, n, _ in mem_rows], "o-", label="naive (materialized scores)")
    plt.loglog(Ms, [o for _, _, o in mem_rows], "s-", label="tinygpt flash attention")
    plt.xlabel("sequence length M"); plt.ylabel("peak MB (B=2, H=8, D=64, fp16)")
    plt.title("Causal attention memory: quadratic vs linear"); plt.legend(); plt.grid(True, which="both", alpha=0.3)
    plt.tight_layout(); plt.savefig(os.path.join(out_dir, "attention_memory.png"), dpi=120)
except Exception as e:
    print("plot skipped:", e)
