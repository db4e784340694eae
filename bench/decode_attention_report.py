#!/usr/bin/env python3
"""Decode attention table: tinygpt's paged kernel (the "decode" rows of
tinygpt_attention_bench's JSON lines) beside PyTorch SDPA on the same shapes
in the same call (one query per sequence over a dense [B, Hkv, C, D] cache,
enable_gqa, each SDPA backend that takes the shape), and the copy bandwidth
the bench measured (the floor: every K/V byte read once). Both sides on cold
K/V (see kv_copies), the L2-warm figures in the last column.

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


CALLS = 20  # calls per graph at least, as tinygpt_attention_bench times its decode kernels


def kv_copies(copy_bytes, l2_bytes):
    """Copies of the K/V the graph's calls rotate through (call i reads copy
    i % copies), as tinygpt_attention_bench's KvCopies: in the engine's decode
    step the K/V come from DRAM (~250 MB of weights went through the L2 since
    the previous step's attention), while a graph of calls on one K/V reads
    the same bytes every call and, at small shapes, finds them in the H200's
    L2 (~50-60 MB). Enough copies that between two reads of one copy the
    other calls read >= max(2.5 x L2, 150 MB); one when a single copy is that
    large; at most a quarter of the free memory in extra copies."""
    wanted = math.ceil(max(2.5 * l2_bytes, 150e6) / copy_bytes)
    fit = 1 + torch.cuda.mem_get_info()[0] // 4 // copy_bytes
    return max(1, min(wanted, fit, 4096))


def graph_calls(copies):
    """At least CALLS calls, a whole number of rotations (so that a replay's
    first calls also find their copies `copies` calls back)."""
    return copies * math.ceil(CALLS / copies)


def graph_ms(f, calls):
    """Median ms of one call f(i) in steady state: f(0) .. f(calls-1) captured
    in a CUDA graph and replayed (the host's launch latency out of the figure,
    as for tinygpt's kernel)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(3):
            f(i)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(calls):
            f(i)
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
        times.append(a.elapsed_time(b) / calls)
    times.sort()
    return times[len(times) // 2]


def sdpa_ms(backend, B, H, Hkv, C, D, l2_bytes):
    """(cold, warm) median ms of one SDPA call in steady state: cold, the
    graph's calls rotating through kv_copies() copies of the dense K/V (each
    captured call binds its copy's tensors); warm, CALLS calls on copy 0 (the
    figure before the copies; the same graph when there is one copy)."""
    q = torch.randn(B, H, 1, D, device="cuda", dtype=torch.float16)
    k0 = torch.randn(B, Hkv, C, D, device="cuda", dtype=torch.float16)
    v0 = torch.randn(B, Hkv, C, D, device="cuda", dtype=torch.float16)
    copies = kv_copies(2 * k0.nbytes, l2_bytes)
    k_copies = [k0] + [k0.clone() for _ in range(copies - 1)]  # same content: copy 0 cloned
    v_copies = [v0] + [v0.clone() for _ in range(copies - 1)]
    try:
        with sdpa_kernel([backend]):
            cold = graph_ms(lambda i: F.scaled_dot_product_attention(q, k_copies[i % copies], v_copies[i % copies], enable_gqa=True),
                            graph_calls(copies))
            warm = cold if copies == 1 else graph_ms(lambda i: F.scaled_dot_product_attention(q, k0, v0, enable_gqa=True), CALLS)
        return cold, warm
    except RuntimeError:
        return math.nan, math.nan
    finally:
        del q, k0, v0, k_copies, v_copies


def l2_size(row):
    """The L2's bytes: PyTorch's device properties, else the bench's row, else 60 MB."""
    return getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or row.get("l2_bytes") or 60 << 20


backends = {}
if torch is not None:
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
variants = {}
for x in rows:
    if x["kind"] == "variant":
        variants.setdefault(x["label"], []).append(x)
lines = [f"### Decode attention, fp16, 16-token blocks: K/V GB/s vs copy bandwidth {copy:,.0f} GB/s, beside PyTorch SDPA (dense cache)", "",
         f"Both sides timed in steady state: a CUDA graph of at least {CALLS} calls, median of 15 replays, divided by the calls. "
         "Cold K/V, as in the engine's decode step (where the weights went through the L2 in between): the calls rotate through "
         "copies of the K/V, together at least max(2.5 x L2, 150 MB), so that no call finds its K/V in L2 (one copy when a "
         f"single one is that large). The warm column: {CALLS} calls on one copy, K/V warm in L2 where they fit (the figure "
         "before the copies).", "",
         "| heads (q/kv) D | batch | context | tinygpt ms | grid | K/V GB/s | of copy | best SDPA ms (backend) | tinygpt vs SDPA | "
         "stream kernel ms | best variant ms (max diff) | K/V copies | warm: tinygpt / SDPA ms |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for r in decode:
    vs = variants.get(r["label"], [])
    # The stream kernel with the backend's traits (TINYGPT_DECODE_STREAM=1), its max diff from ours in brackets.
    stream = next((f"{v['ms']:.4f} ({v['max_diff']:.2g})" for v in vs if v["variant"] == "stream"), "n/a")
    best_v = min(vs, key=lambda v: v["ms"], default=None)
    bv = "n/a" if best_v is None else f"{best_v['ms']:.4f} {best_v['variant']} ({best_v['max_diff']:.2g})"
    best, best_warm, name = math.nan, math.nan, "n/a"
    for n, b in backends.items():
        ms, warm = sdpa_ms(b, r["batch"], r["H"], r["Hkv"], r["ctx"], r["D"], l2_size(r))
        if not math.isnan(ms) and (math.isnan(best) or ms < best):
            best, name = ms, n
        if not math.isnan(warm) and (math.isnan(best_warm) or warm < best_warm):
            best_warm = warm
    ratio = "n/a" if math.isnan(best) else f"{best / r['ms']:.2f}x"
    sd = "n/a" if math.isnan(best) else f"{best:.4f} ({name})"
    # Rows of a bench before the copies have neither field (their ms is the warm figure).
    ours_warm = f"{r['warm_ms']:.4f}" if "warm_ms" in r else "n/a"
    warm_col = f"{ours_warm} / " + ("n/a" if math.isnan(best_warm) else f"{best_warm:.4f}")
    grid = f"stream {r['stream_blocks']}" if r.get("stream_blocks") else r["splits"]  # stream blocks, or key splits
    lines.append(f"| {r['H']}/{r['Hkv']} D{r['D']} | {r['batch']} | {r['ctx']} | {r['ms']:.4f} | {grid} | {r['kv_gbps']:,.0f} | "
                 f"{100 * r['kv_gbps'] / copy:.0f}% | {sd} | {ratio} | {stream} | {bv} | {r.get('kv_copies', 'n/a')} | {warm_col} |")
text = "\n".join(lines)
print(text)
open(os.path.join(out_dir, "decode_attention.md"), "w").write(text + "\n")
