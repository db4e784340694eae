#!/usr/bin/env python3
"""Data-parallel training on the GPUs of one machine (issue #25): checks,
then tokens/s at 1 and N GPUs beside PyTorch DDP, in one run.

usage: bench/train_data_parallel_gpu.py BIN_DIR OUT_DIR [--ranks N] [--steps 30] [--only checks|bench]
BIN_DIR is a build tree or a flat folder of binaries (device-stage/bin).

The ranks are started as any launcher would (no mpirun on the device
machines): one `tinygpt train` per GPU with TINYGPT_RANK, TINYGPT_WORLD_SIZE
and TINYGPT_INIT_ADDR; each takes the GPU of its local rank and NCCL sums
the gradients (fp32).

Checks (seed preset, count task, bf16):
- N ranks against one process, same global batch (64) and seed, 20 steps:
  each step's loss within 3% (bf16: each rank's GEMMs see other row counts,
  so the rounding differs), the checkpoints' tensors within 5% (relative
  L2 norm of the difference);
- the seed task to >= 99% next-token accuracy with N ranks;
- a rank that dies (SIGKILL at step 5): the others end within 60 s, with
  a message that names it, and no checkpoint is written.
Throughput (bench-125m, seq 1024, 64 sequences per GPU, so the global
batch of N GPUs is 64 N): tinygpt at 1 and N GPUs, PyTorch (torch.compile,
bf16 autocast, fused AdamW) alone and under DistributedDataParallel over
NCCL at N GPUs. Scaling efficiency = tokens/s at N GPUs / (N x tokens/s at 1).
"""
import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "python"))
from binaries import binary
from torch_tinygpt import load_safetensors
from train_gpu_vs_torch import PRESETS, training_step

failures = 0


def check(ok, what):
    global failures
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    failures += 0 if ok else 1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(tinygpt, ranks, flags, env_extra=None, timeout=600):
    """Runs `tinygpt train FLAGS` as `ranks` ranks; [(exit, stdout, stderr)] by rank, and the seconds.
    Each rank writes to files (a pipe that nobody reads would block a rank that prints much, and
    with it the others in their collectives); one deadline for all, after which every rank is killed."""
    port = free_port()
    procs, files = [], []
    t0 = time.monotonic()
    for r in range(ranks):
        env = dict(os.environ, **(env_extra or {}))
        if ranks > 1:
            env.update(TINYGPT_RANK=str(r), TINYGPT_WORLD_SIZE=str(ranks), TINYGPT_INIT_ADDR=f"127.0.0.1:{port}")
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        files.append((out, err))
        procs.append(subprocess.Popen([tinygpt, "train", *flags], stdout=out, stderr=err, text=True, env=env))
    while any(p.poll() is None for p in procs) and time.monotonic() - t0 < timeout:
        time.sleep(0.1)
    timed_out = [p.poll() is None for p in procs]
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    result = []
    for p, (out, err), late in zip(procs, files, timed_out):
        out.seek(0)
        err.seek(0)
        result.append((p.returncode, out.read(), err.read() + ("\n(killed: timed out)" if late else "")))
    return result, time.monotonic() - t0


def tensors(path):
    return {name: t.numpy() for name, t in load_safetensors(path)[0].items()}


def checks(tinygpt, ranks, d):
    seed = ["--device=cuda", "--precision=bf16", "--preset=seed", "--batch=64"]
    one, _ = run_ranks(tinygpt, 1, seed + ["--steps=20", f"--out={d}/one.safetensors", f"--loss-log={d}/one.txt"])
    many, secs = run_ranks(tinygpt, ranks, seed + ["--steps=20", f"--out={d}/many.safetensors", f"--loss-log={d}/many.txt"])
    ok = one[0][0] == 0 and all(rc == 0 for rc, _, _ in many)
    check(ok and f"{ranks} ranks (rendezvous)" in many[0][1],
          f"{ranks} rendezvous ranks train on {ranks} GPUs in {secs:.1f} s (exits {[rc for rc, _, _ in many]}): "
          f"{many[0][1].strip()[-160:]} {''.join(e[-300:] for _, _, e in many if 'error' in e.lower() or 'nccl' in e.lower())}")
    if ok:
        a = [float(x) for x in open(f"{d}/one.txt").read().split()]
        b = [float(x) for x in open(f"{d}/many.txt").read().split()]
        worst = max(abs(x - y) / max(abs(x), 1e-6) for x, y in zip(a, b)) if len(a) == len(b) else float("inf")
        check(worst <= 3e-2, f"{ranks} ranks vs one process, 20 bf16 steps: losses within {worst:.2e} relative (<= 3e-2)")
        ta, tb = tensors(f"{d}/one.safetensors"), tensors(f"{d}/many.safetensors")
        rel = max(float(np.linalg.norm(ta[k] - tb[k]) / max(np.linalg.norm(ta[k]), 1e-12)) for k in ta) if ta.keys() == tb.keys() else 1.0
        check(rel <= 5e-2, f"{ranks} ranks vs one process: checkpoints within {rel:.2e} (largest relative L2 difference of a tensor, <= 5e-2)")
    task, secs = run_ranks(tinygpt, ranks, seed + ["--steps=400", "--min-accuracy=0.99", f"--out={d}/task.safetensors"])
    check(all(rc == 0 for rc, _, _ in task), f"the seed task to >= 99% on {ranks} ranks in {secs:.1f} s: {task[0][1].strip()[-160:]}")
    dead, secs = run_ranks(tinygpt, ranks, seed + ["--steps=100000", f"--out={d}/dead.safetensors", "--dist-timeout=60"],
                           env_extra=dict(TINYGPT_TEST_EXIT_RANK="1", TINYGPT_TEST_EXIT_STEP="5"), timeout=120)
    said = dead[0][2].strip().splitlines()[-1:] if dead[0][2].strip() else []
    check(all(rc != 0 for rc, _, _ in dead) and secs < 70 and not os.path.exists(f"{d}/dead.safetensors"),
          f"a killed rank ends the run in {secs:.1f} s (exits {[rc for rc, _, _ in dead]}), no checkpoint; rank 0 said: {said}")


def ours(tinygpt, ranks, steps, d):
    flags = ["--device=cuda", "--precision=bf16", "--preset=bench-125m", "--task=count", "--seq-len=1024", f"--batch={64 * ranks}",
             f"--steps={steps + 5}", "--untimed_steps=5", "--warmup=2", f"--out={d}/bench{ranks}.safetensors"]
    got, _ = run_ranks(tinygpt, ranks, flags)
    if got[0][0] != 0:
        raise RuntimeError(f"tinygpt on {ranks} GPUs failed: {got[0][2][-1500:]}")
    line = got[0][1].strip().splitlines()[-1]
    return float(re.search(r"([\d.]+) tokens/s", line).group(1)), line


def torch_rank(rank, world, port, c, steps, result):
    """One rank of the PyTorch peer: TinyGPT under DDP (world > 1), torch.compile, bf16 autocast, fused AdamW."""
    torch.cuda.set_device(rank)
    if world > 1:
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    wrap = (lambda m: torch.nn.parallel.DistributedDataParallel(m, device_ids=[rank])) if world > 1 else None
    _, step = training_step(c, 1024, 64, True, wrap)
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    if world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    if world > 1:
        dist.barrier()
    secs = time.perf_counter() - t0
    if rank == 0:
        result.put(world * 64 * 1024 * steps / secs)
    if world > 1:
        dist.destroy_process_group()


def torch_peer(ranks, steps):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    mp.spawn(torch_rank, args=(ranks, free_port(), PRESETS["bench-125m"], steps, q), nprocs=ranks, join=True)
    return q.get()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--ranks", type=int, default=torch.cuda.device_count())
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--only", choices=["all", "checks", "bench"], default="all",
                    help="the checks, the throughput table, or both (a device call of 10 minutes may not hold both)")
    a = ap.parse_args()
    tinygpt = binary(a.bin_dir, "tinygpt", "cli")
    if a.ranks < 2:
        check(False, f"this needs 2 or more GPUs (found {torch.cuda.device_count()})")
        return
    os.makedirs(a.out_dir, exist_ok=True)
    d = "/tmp/tinygpt-dp"
    os.makedirs(d, exist_ok=True)
    if a.only != "bench":
        checks(tinygpt, a.ranks, d)
    if a.only == "checks":
        return
    rows = []
    t1, l1 = ours(tinygpt, 1, a.steps, d)
    tn, ln = ours(tinygpt, a.ranks, a.steps, d)
    print(f"tinygpt 1 GPU: {l1}\ntinygpt {a.ranks} GPUs: {ln}", flush=True)
    rows.append(("tinygpt (NCCL, fp32 gradients, per-block sums during the backward)", t1, tn))
    try:
        p1 = torch_peer(1, a.steps)
        pn = torch_peer(a.ranks, a.steps)
        rows.append((f"PyTorch {torch.__version__} DDP (NCCL, torch.compile, bf16 autocast, fused AdamW)", p1, pn))
    except Exception as e:  # report and keep our row
        print(f"PyTorch DDP peer failed: {e}", flush=True)
    n = a.ranks
    lines = [f"{torch.cuda.get_device_name()} x {n}, bench-125m, seq 1024, 64 sequences per GPU, {a.steps} timed steps",
             "", f"| system | tokens/s, 1 GPU | tokens/s, {n} GPUs | scaling efficiency | {n} GPUs vs PyTorch DDP |", "|---|---|---|---|---|"]
    peer = rows[1][2] if len(rows) > 1 else float("nan")
    for name, one, many in rows:
        lines.append(f"| {name} | {one:,.0f} | {many:,.0f} | {100 * many / (n * one):.1f}% | {many / peer:.2f}x |")
    table = "\n".join(lines)
    print("\n" + table, flush=True)
    open(os.path.join(a.out_dir, "data_parallel.md"), "w").write(table + "\n")


if __name__ == "__main__":
    main()
    print(f"{'FAILED' if failures else 'OK'}: {failures} failure(s)")
    sys.exit(1 if failures else 0)
