#!/usr/bin/env python3
"""Seed-task training throughput on the CPU: tinygpt beside PyTorch, in one run.

usage: bench/train_cpu_vs_torch.py BUILD_DIR [--steps N]
Both train the tutorial's TinyGPT (batch 64 × 63 tokens) with AdamW; the
PyTorch side is the seed's model with materialized attention (xFormers has no
CPU kernels) on its packed block-diagonal mask, fp32 as on tinygpt's CPU backend.
"""
import argparse, json, os, statistics, subprocess, sys, time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
import torch
import torch.nn.functional as F
from torch_tinygpt import SEED_CONFIG, TinyGPT, count_batch


def torch_tokens_per_second(steps, batch, threads):
    torch.set_num_threads(threads)
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
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    a = ap.parse_args()

    def ours():
        out = subprocess.run([os.path.join(a.build_dir, "cli", "tinygpt"), "bench", f"--bench-steps={a.steps}",
                              f"--bench-batch={a.batch}"], check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])["tokens_per_second"]

    # Rounds interleave the systems so that a noisy neighbour hits both alike.
    threads = range(1, os.cpu_count() + 1)
    runs = {"tinygpt": [], **{t: [] for t in threads}}
    for _ in range(a.rounds):
        runs["tinygpt"].append(ours())
        for t in threads:
            runs[t].append(torch_tokens_per_second(a.steps, a.batch, t))
    med = {k: statistics.median(v) for k, v in runs.items()}
    best = max(med[t] for t in threads)
    pins = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    print(f"cores {os.cpu_count()}; OpenBLAS pins in the environment: {pins or 'none'}; median of {a.rounds} interleaved rounds")
    print("| system | tokens/s (median) | min–max | ratio vs best PyTorch |")
    print("|---|---|---|---|")
    print(f"| tinygpt (CPU backend, fp32, {os.cpu_count()} threads) | {med['tinygpt']:,.0f} | "
          f"{min(runs['tinygpt']):,.0f}–{max(runs['tinygpt']):,.0f} | {med['tinygpt'] / best:.2f}x |")
    for t in threads:
        print(f"| PyTorch {torch.__version__} (CPU, fp32, {t} thread{'s' if t > 1 else ''}) | {med[t]:,.0f} | "
              f"{min(runs[t]):,.0f}–{max(runs[t]):,.0f} | {med[t] / best:.2f}x |")


if __name__ == "__main__":
    main()
