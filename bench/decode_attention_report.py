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


def sdpa_ms(backend, B, H, Hkv, C, D):
    q = torch.randn(B, H, 1, D, device="cuda", dtype=torch.float16)
    k = torch.randn(B, Hkv, C, D, device="cuda", dtype=torch.float16)
    v = torch.randn(B, Hkv, C, D, device="cuda", dtype=torch.float16)
    try:
        with sdpa_kernel([backend]):
            f = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            for _ in range(5):
                f()
            torch.cuda.synchronize()
            times = []
            for _ in range(30):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                f()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
        times.sort()
        return times[len(times) // 2]
    except RuntimeError:
        return math.nan
    finally:
        del q, k, v


backends = {}
if torch is not None:
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
lines = [f"### Decode attention, fp16, 16-token blocks: K/V GB/s vs copy bandwidth {copy:,.0f} GB/s, beside PyTorch SDPA (dense cache)", "",
         "| heads (q/kv) D | batch | context | tinygpt ms | splits | K/V GB/s | of copy | best SDPA ms (backend) | tinygpt vs SDPA |",
         "|---|---|---|---|---|---|---|---|---|"]
for r in decode:
    best, name = math.nan, "n/a"
    for n, b in backends.items():
        ms = sdpa_ms(b, r["batch"], r["H"], r["Hkv"], r["ctx"], r["D"])
        if not math.isnan(ms) and (math.isnan(best) or ms < best):
            best, name = ms, n
    ratio = "n/a" if math.isnan(best) else f"{best / r['ms']:.2f}x"
    sd = "n/a" if math.isnan(best) else f"{best:.4f} ({name})"
    lines.append(f"| {r['H']}/{r['Hkv']} D{r['D']} | {r['batch']} | {r['ctx']} | {r['ms']:.4f} | {r['splits']} | {r['kv_gbps']:,.0f} | "
                 f"{100 * r['kv_gbps'] / copy:.0f}% | {sd} | {ratio} |")
text = "\n".join(lines)
print(text)
open(os.path.join(out_dir, "decode_attention.md"), "w").write(text + "\n")
