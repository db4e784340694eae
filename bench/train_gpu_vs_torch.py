#!/usr/bin/env python3
"""Training throughput on the GPU: `tinygpt train --device cuda` beside the
tutorial's TinyGPT in PyTorch (eager and torch.compile), in one run.

usage: bench/train_gpu_vs_torch.py BIN_DIR [--preset bench-125m] [--seq-len 1024] [--batch 64] [--steps 30]
BIN_DIR is a build tree or a flat folder of binaries (device-stage/bin).

The same model on both sides (bench-125m: d 768, 12 layers, 12 heads over 4
KV heads, SwiGLU 2048, vocab 32000, learned positions), the count task,
AdamW (lr 3e-3, weight decay 0.01 on matrices, fused on PyTorch), global-norm
clipping at 1.0, bf16: tinygpt's --precision bf16 (fp32 masters) and
PyTorch's bf16 autocast over fp32 parameters. PyTorch's attention is
F.scaled_dot_product_attention(is_causal=True, enable_gqa=True) on [B, H, L, D].
MFU uses one formula for both (train/trainer.h TrainFlopsPerToken: 6 N + 12
layers·d·L, position embeddings excluded) against 989.4 TFLOP/s dense bf16.
Peak memory: PyTorch's max_memory_allocated; tinygpt's device memory taken
(free memory before minus its minimum during training).
"""
import argparse, json, math, os, re, subprocess, sys, time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from binaries import binary

PRESETS = {"bench-125m": dict(vocab_size=32000, d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, ffn_hidden=2048,
                              max_seq_len=2048, norm_eps=1e-5)}
PEAK = 989.4e12


class Block(nn.Module):
    def __init__(s, c):
        super().__init__()
        d = c["d_model"]
        s.h, s.hkv, s.k = c["n_heads"], c["n_kv_heads"], d // c["n_heads"]
        s.n1, s.n2 = nn.LayerNorm(d, eps=c["norm_eps"]), nn.LayerNorm(d, eps=c["norm_eps"])
        s.qkv = nn.Linear(d, (s.h + 2 * s.hkv) * s.k)
        s.proj = nn.Linear(d, d)
        s.w12 = nn.Linear(d, 2 * c["ffn_hidden"])
        s.w3 = nn.Linear(c["ffn_hidden"], d)

    def forward(s, x):
        B, L, d = x.shape
        q, k, v = s.qkv(s.n1(x)).split([s.h * s.k, s.hkv * s.k, s.hkv * s.k], -1)
        q = q.view(B, L, s.h, s.k).transpose(1, 2)
        k = k.view(B, L, s.hkv, s.k).transpose(1, 2)
        v = v.view(B, L, s.hkv, s.k).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + s.proj(a.transpose(1, 2).reshape(B, L, d))
        a, g = s.w12(s.n2(x)).chunk(2, -1)
        return x + s.w3(F.silu(a) * g)


class TinyGPT(nn.Module):
    def __init__(s, c):
        super().__init__()
        d = c["d_model"]
        s.tok, s.pos = nn.Embedding(c["vocab_size"], d), nn.Embedding(c["max_seq_len"], d)
        s.blocks = nn.ModuleList(Block(c) for _ in range(c["n_layers"]))
        s.nf, s.head = nn.LayerNorm(d, eps=c["norm_eps"]), nn.Linear(d, c["vocab_size"])

    def forward(s, idx):
        x = s.tok(idx) + s.pos(torch.arange(idx.shape[1], device=idx.device))
        for b in s.blocks:
            x = b(x)
        return s.head(s.nf(x))


def flops_per_token(c, L):
    n = sum(p for p in [c["vocab_size"] * c["d_model"] * 2 + c["vocab_size"] + 2 * c["d_model"]])  # tok, head, nf
    hd = c["d_model"] // c["n_heads"]
    qkv = (c["n_heads"] + 2 * c["n_kv_heads"]) * hd
    per_layer = (4 * c["d_model"] + c["d_model"] * qkv + qkv + c["d_model"] ** 2 + c["d_model"]
                 + c["d_model"] * 2 * c["ffn_hidden"] + 2 * c["ffn_hidden"] + c["ffn_hidden"] * c["d_model"] + c["d_model"])
    n += c["n_layers"] * per_layer
    return 6 * n + 12 * c["n_layers"] * c["d_model"] * L


def training_step(c, seq_len, batch, compiled, wrap=None):
    """The PyTorch side's model and one training step on a fresh count-task batch: (model, step).
    wrap: what the model runs under (DistributedDataParallel for the data-parallel bench)."""
    torch.manual_seed(0)
    model = TinyGPT(c).cuda()
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith(("tok", "pos"))]
    other = [p for n, p in model.named_parameters() if not (p.dim() == 2 and not n.startswith(("tok", "pos")))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}], lr=3e-3,
                            fused=True)
    wrapped = wrap(model) if wrap else model
    fwd = torch.compile(wrapped) if compiled else wrapped
    V = c["vocab_size"]

    def step():
        start = torch.randint(0, V, (batch, 1), device="cuda")
        seq = (start + torch.arange(seq_len + 1, device="cuda")) % V
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = fwd(seq[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, V).float(), seq[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    return model, step


def torch_run(c, seq_len, batch, steps, compiled):
    model, step = training_step(c, seq_len, batch, compiled)
    for _ in range(5):  # warm-up (and compilation)
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    tps = steps * batch * seq_len / (time.perf_counter() - t0)
    mem = torch.cuda.max_memory_allocated()
    del model, step
    torch.cuda.empty_cache()
    return tps, mem, loss.item()


def ours(bin_dir, preset, seq_len, batch, steps, out):
    cmd = [binary(bin_dir, "tinygpt", "cli"), "train", "--device=cuda", "--precision=bf16", f"--preset={preset}", "--task=count",
           f"--seq-len={seq_len}", f"--batch={batch}", f"--steps={steps + 5}", "--untimed_steps=5", f"--out={out}", "--warmup=2"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    line = r.stdout.strip().splitlines()[-1]
    tps = float(re.search(r"([\d.]+) tokens/s", line).group(1))
    mem = re.search(r"device memory ([\d.]+) GiB", line)
    return tps, float(mem.group(1)) * 2**30 if mem else float("nan"), line, " ".join(cmd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin_dir")
    ap.add_argument("--preset", default="bench-125m")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default="/tmp/bench-train.safetensors")
    a = ap.parse_args()
    c = PRESETS[a.preset]
    fpt = flops_per_token(c, a.seq_len)
    rows = []
    t, m, line, cmd = ours(a.bin_dir, a.preset, a.seq_len, a.batch, a.steps, a.out)
    print(f"tinygpt: {cmd}\n  {line}", flush=True)
    rows.append(("tinygpt (CUDA, bf16, fp32 masters)", t, m))
    for compiled in (False, True):
        try:
            t2, m2, loss = torch_run(c, a.seq_len, a.batch, a.steps, compiled)
            rows.append((f"PyTorch {torch.__version__} {'torch.compile' if compiled else 'eager'} (bf16 autocast, SDPA GQA, fused AdamW)", t2, m2))
            print(f"torch {'compiled' if compiled else 'eager'}: {t2:,.0f} tok/s, loss {loss:.3f}", flush=True)
        except Exception as e:  # report and keep the other rows
            print(f"torch {'compiled' if compiled else 'eager'} failed: {e}", flush=True)
    best = max((r[1] for r in rows[1:]), default=float("nan"))
    print(f"\n{torch.cuda.get_device_name()}, {a.preset}, seq {a.seq_len}, batch {a.batch}, {a.steps} timed steps; "
          f"FLOPs/token {fpt / 1e6:.0f}M")
    print("| system | tokens/s | vs faster PyTorch | MFU | peak memory |")
    print("|---|---|---|---|---|")
    for name, t, m in rows:
        print(f"| {name} | {t:,.0f} | {t / best:.2f}x | {100 * t * fpt / PEAK:.1f}% | {m / 2**30:.1f} GiB |")


if __name__ == "__main__":
    main()
