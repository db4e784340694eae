#!/usr/bin/env python3
"""Where a kernel's code goes, from a cubin alone (no nvdisasm needed: binutils'
readelf reads the section sizes and the DWARF line table of a cubin built with
-lineinfo). For each kernel whose mangled name contains PATTERN: its size,
then its bytes by source file and by innermost source line (an instruction
counts toward the line of the last line-table row at or before it).

Why: issue #23's decode step kernel is persistent, and a layer runs through
most of its code; code past the instruction cache is fetched again every layer
(docs/benchmarks.md). Build a cubin as scripts/stage-device.sh does, e.g.
  nvcc ... -lineinfo -gencode=arch=compute_90a,code=sm_90a -cubin -x cu kernels/cuda/decode_step_launch.cu -o step.cubin

usage: cubin_code_size.py CUBIN [PATTERN [TOP_LINES]]   (markdown on stdout)
"""
import collections
import subprocess
import sys


def readelf(*args):
    return subprocess.run(["readelf", *args], capture_output=True, text=True, check=True).stdout


def kernels(cubin):
    """(name, size) of each .text section, in section order."""
    out = []
    for line in readelf("-SW", cubin).splitlines():
        if "] .text." in line:
            fields = line.split("]", 1)[1].split()
            out.append((fields[0][len(".text."):], int(fields[4], 16)))
    return out


def line_sequences(cubin):
    """The line table's rows (address, file, line), one list per sequence: a
    sequence per .text section, in the same order; an address that falls back
    to the start begins the next."""
    seqs, cur = [], []
    for line in readelf("--debug-dump=decodedline", cubin).splitlines():
        f = line.split()
        if len(f) < 3 or not f[1].isdigit():
            continue
        try:
            addr = int(f[2], 0)
        except ValueError:
            continue
        if cur and addr < cur[-1][0] - 4096:
            seqs.append(cur)
            cur = []
        cur.append((addr, f[0], int(f[1])))
    if cur:
        seqs.append(cur)
    return seqs


def main():
    cubin = sys.argv[1]
    pattern = sys.argv[2] if len(sys.argv) > 2 else ""
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    ks = kernels(cubin)
    seqs = line_sequences(cubin)
    have_lines = len(seqs) == len(ks)
    print("| kernel | bytes |\n|---|---|")
    for name, size in ks:
        if pattern in name:
            print(f"| {name} | {size} |")
    if not have_lines:
        print(f"\n(no per-line sizes: {len(seqs)} line sequences for {len(ks)} kernels; build with -lineinfo)")
        return
    for (name, size), seq in zip(ks, seqs):
        if pattern not in name:
            continue
        at = {}
        for addr, f, ln in seq:
            at[addr] = (f, ln)
        addrs = sorted(at)
        by_line, by_file = collections.Counter(), collections.Counter()
        for i, a in enumerate(addrs):
            n = (addrs[i + 1] if i + 1 < len(addrs) else size) - a
            by_line[at[a]] += n
            by_file[at[a][0]] += n
        print(f"\n### {name}: {size} bytes\n\n| file | bytes |\n|---|---|")
        for f, n in by_file.most_common():
            print(f"| {f} | {n} |")
        print("\n| innermost line | bytes |\n|---|---|")
        for (f, ln), n in by_line.most_common(top):
            print(f"| {f}:{ln} | {n} |")


if __name__ == "__main__":
    main()
