#!/usr/bin/env python3
"""Seed-task training throughput on the CPU: tinygpt beside PyTorch, in one run.

usage: bench/train_cpu_vs_torch.py BUILD_DIR [--steps N]
Both train the tutorial's TinyGPT (batch 64 × 63 tokens) with AdamW; the
PyTorch side is the seed's model with materialized attention (xFormers has no
CPU kernels) on its packed block-diagonal mask, fp32 as on tinygpt's CPU backend.
"""
import argparse, json, os, subprocess, sys, time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
import torch
import torch.nn.functional as F
from torch_tinygpt import SEED_CONFIG, TinyGPT, count_batch


def torch_tokens_per_second(steps, batch):
    torch.manual_seed(0)
    model = TinyGPT(SEED_CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    seqlens = [SEED_CONFIG["max_seq_len"] - 1] * batch

    def step():
        seq = count_batch(batch, 64, 64, gen)
        inp, tgt = seq[:, :-1].reshape(-1), seq[:, 1:].reshape(-1)
        loss = F.cross_entropy(model(inp, seqlens), tgt)
        opt.zero_grad(); loss.backward(); opt.step()
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch * 63 / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build_dir")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    out = subprocess.run([os.path.join(a.build_dir, "cli", "tinygpt"), "bench", f"--bench-steps={a.steps}",
                          f"--bench-batch={a.batch}"], check=True, capture_output=True, text=True).stdout
    ours = json.loads(out.strip().splitlines()[-1])["tokens_per_second"]
    theirs = torch_tokens_per_second(a.steps, a.batch)
    print(f"threads: torch {torch.get_num_threads()}, cores {os.cpu_count()}")
    print(f"| system | tokens/s | ratio vs PyTorch |")
    print(f"|---|---|---|")
    print(f"| tinygpt (CPU, fp32) | {ours:,.0f} | {ours / theirs:.2f}x |")
    print(f"| PyTorch {torch.__version__} (CPU, fp32) | {theirs:,.0f} | 1.00x |")


if __name__ == "__main__":
    main()
