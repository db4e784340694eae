#!/usr/bin/env python3
"""Decode attention table: tinygpt's paged kernel (the "decode" rows of
tinygpt_attention_bench's JSON lines) beside PyTorch SDPA on the same shapes
in the same call (one query per sequence over a dense [B, Hkv, C, D] cache,
enable_gqa, each SDPA backend that takes the shape), and the copy bandwidth
the bench measured (the floor: every K/V byte read once).

usage: decode_attention_report.py ATTENTION_JSONL OUT_DIR   (writes decode_attention.md)
"""
import json
import math
import os
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
out_dir = sys.argv[2]
copy = next(x for x in rows if x["kind"] == "copy")["gbps"]
decode = [x for x in rows if x["kind"] == "decode"]

try:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
except Exception as e:  # no PyTorch: our column alone
    torch = None
    print("PyTorch unavailable:", e)


CALLS = 20  # calls per graph, as tinygpt_attention_bench times its decode kernels


def sdpa_ms(backend, B, H, Hkv, C, D):
    """Median ms of one SDPA call in steady state: CALLS calls captured in a
    CUDA graph and replayed (the host's launch latency out of the figure, as
    for tinygpt's kernel)."""
    q = torch.randn(B, H, 1, D, device="cuda", dtype=torch.float16)
    k = torch.randn(B, Hkv, C, D, device="cuda", dtype=torch.float16)
    v = torch.randn(B, Hkv, C, D, device="cuda", dtype=torch.float16)
    try:
        with sdpa_kernel([backend]):
            f = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    f()
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(CALLS):
                    f()
            for _ in range(3):
                g.replay()
            torch.cuda.synchronize()
            times = []
            for _ in range(15):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                g.replay()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b) / CALLS)
        times.sort()
        return times[len(times) // 2]
    except RuntimeError:
        return math.nan
    finally:
        del q, k, v


backends = {}
if torch is not None:
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
variants = {}
for x in rows:
    if x["kind"] == "variant":
        variants.setdefault(x["label"], []).append(x)
lines = [f"### Decode attention, fp16, 16-token blocks: K/V GB/s vs copy bandwidth {copy:,.0f} GB/s, beside PyTorch SDPA (dense cache)", "",
         f"Both sides timed in steady state: {CALLS} calls in one CUDA graph, median of 15 replays, divided by {CALLS}.", "",
         "| heads (q/kv) D | batch | context | tinygpt ms | splits | K/V GB/s | of copy | best SDPA ms (backend) | tinygpt vs SDPA | narrow kernel ms | best variant ms (max diff) |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
for r in decode:
    vs = variants.get(r["label"], [])
    narrow = next((f"{v['ms']:.4f}" for v in vs if v["variant"].startswith("narrow")), "n/a")
    best_v = min(vs, key=lambda v: v["ms"], default=None)
    bv = "n/a" if best_v is None else f"{best_v['ms']:.4f} {best_v['variant']} ({best_v['max_diff']:.2g})"
    best, name = math.nan, "n/a"
    for n, b in backends.items():
        ms = sdpa_ms(b, r["batch"], r["H"], r["Hkv"], r["ctx"], r["D"])
        if not math.isnan(ms) and (math.isnan(best) or ms < best):
            best, name = ms, n
    ratio = "n/a" if math.isnan(best) else f"{best / r['ms']:.2f}x"
    sd = "n/a" if math.isnan(best) else f"{best:.4f} ({name})"
    lines.append(f"| {r['H']}/{r['Hkv']} D{r['D']} | {r['batch']} | {r['ctx']} | {r['ms']:.4f} | {r['splits']} | {r['kv_gbps']:,.0f} | "
                 f"{100 * r['kv_gbps'] / copy:.0f}% | {sd} | {ratio} | {narrow} | {bv} |")
text = "\n".join(lines)
print(text)
open(os.path.join(out_dir, "decode_attention.md"), "w").write(text + "\n")
