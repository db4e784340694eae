#!/usr/bin/env python3
"""Seed-task training throughput on the CPU: tinygpt beside PyTorch, in one run.

usage: bench/train_cpu_vs_torch.py BUILD_DIR [--steps N] [--threads 1,2,4]
BUILD_DIR is a build tree or a flat folder of binaries (device-stage/bin).
Both train the tutorial's TinyGPT (batch 64 × 63 tokens) with AdamW, fp32 as on
tinygpt's CPU backend. The PyTorch side is the seed's model with the tutorial's
materialized attention (xFormers has no CPU kernels) and, where PyTorch has it,
also with F.scaled_dot_product_attention (its fused CPU kernel). Both run at
several thread counts; the best PyTorch run of all is the peer.
"""
import argparse, json, os, statistics, subprocess, sys, time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
import torch
import torch.nn.functional as F
from torch_tinygpt import SEED_CONFIG, TinyGPT, count_batch

from binaries import binary


def torch_tokens_per_second(steps, batch, threads, sdpa):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = TinyGPT(SEED_CONFIG, sdpa=sdpa)
    try:  # PyTorch >= 2.4 has a fused CPU AdamW; older ones fall back to the default
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)
    except (TypeError, RuntimeError):
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
    ap.add_argument("--threads", default="", help="thread counts to run both systems at (default: 1..cores up to 4, "
                    "then powers of two and the core count)")
    a = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    tinygpt = binary(a.build_dir, "tinygpt", "cli")

    blas_core, linear_isa = set(), set()

    def ours(t):
        out = subprocess.run([tinygpt, "bench", f"--bench-steps={a.steps}", f"--bench-batch={a.batch}", f"--threads={t}"],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        blas_core.add(r["blas_core"])
        linear_isa.add(r.get("linear_isa", "?"))
        return r["tokens_per_second"]

    if a.threads:
        threads = [int(t) for t in a.threads.split(",")]
    else:
        threads = sorted({t for t in range(1, cores + 1) if t <= 4 or t & (t - 1) == 0} | {cores})
    variants = [(t, sdpa) for sdpa in ([False, True] if hasattr(F, "scaled_dot_product_attention") else [False])
                for t in threads]
    # Rounds interleave the systems so that a noisy neighbour hits both alike.
    runs = {**{t: [] for t in threads}, **{v: [] for v in variants}}
    for _ in range(a.rounds):
        for t in threads:
            runs[t].append(ours(t))
        for t, sdpa in variants:
            runs[(t, sdpa)].append(torch_tokens_per_second(a.steps, a.batch, t, sdpa))
    med = {k: statistics.median(v) for k, v in runs.items()}
    best = max(med[v] for v in variants)
    pins = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_VERBOSE") if k in os.environ}
    print(f"cores {cores}; OpenBLAS kernels {', '.join(blas_core)}, linear kernel {', '.join(linear_isa)}, pins in the environment: {pins or 'none'}; "
          f"median of {a.rounds} interleaved rounds")
    print("| system | tokens/s (median) | min–max | ratio vs best PyTorch |")
    print("|---|---|---|---|")
    for t in threads:
        print(f"| tinygpt (CPU backend, fp32, {t} thread{'s' if t > 1 else ''}) | {med[t]:,.0f} | "
              f"{min(runs[t]):,.0f}–{max(runs[t]):,.0f} | {med[t] / best:.2f}x |")
    for t, sdpa in variants:
        r = runs[(t, sdpa)]
        print(f"| PyTorch {torch.__version__} (CPU, fp32, {'SDPA' if sdpa else 'materialized'} attention, "
              f"{t} thread{'s' if t > 1 else ''}) | {med[(t, sdpa)]:,.0f} | {min(r):,.0f}–{max(r):,.0f} | "
              f"{med[(t, sdpa)] / best:.2f}x |")


if __name__ == "__main__":
    main()
