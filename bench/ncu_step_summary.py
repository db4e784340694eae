#!/usr/bin/env python3
"""Per-kernel table of decode steps from Nsight Compute's raw CSV
(`ncu --csv --page raw --metrics gpu__time_duration.sum,dram__bytes_read.sum,
dram__bytes_write.sum,launch__grid_size ...`): for each kernel, launches per
step, mean time, time per step and DRAM traffic; then the step's kernel count
and the sum of kernel times (ncu runs kernels one at a time, so the sum leaves
out the gaps between kernels that a step's graph has).

usage: ncu_step_summary.py NCU_CSV STEPS TITLE   (markdown on stdout)
"""
import collections
import csv
import re
import sys

path, steps, title = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lines = [l for l in open(path, errors="replace") if l.startswith('"')]
rows = [r for r in csv.DictReader(lines) if r.get("ID", "").isdigit()]
if not rows:
    print(f"### {title}: no kernels in the profile\n")
    sys.exit(0)


def short(name):
    name = name.replace("(anonymous namespace)::", "")
    name = re.sub(r"\(.*", "", name)  # drop the argument list
    name = re.sub(r"^void ", "", name)
    name = name.replace("tinygpt::cuda::", "")
    return name[:90]


def num(r, key):
    v = r.get(key, "").replace(",", "")
    try:
        return float(v)
    except ValueError:
        return 0.0


by = collections.OrderedDict()
for r in rows:
    k = short(r["Kernel Name"])
    e = by.setdefault(k, {"n": 0, "ns": 0.0, "rd": 0.0, "wr": 0.0, "grid": r.get("launch__grid_size", "")})
    e["n"] += 1
    e["ns"] += num(r, "gpu__time_duration.sum")
    e["rd"] += num(r, "dram__bytes_read.sum")
    e["wr"] += num(r, "dram__bytes_write.sum")
total_ns = sum(e["ns"] for e in by.values())
print(f"### {title}: {len(rows) / steps:.0f} kernels per step, {total_ns / steps / 1e3:.1f} us of kernel time per step "
      f"(ncu, one kernel at a time, caches not flushed)\n")
print("| kernel | per step | mean us | us per step | share | DRAM MB read per step | DRAM GB/s | grid (last) |")
print("|---|---|---|---|---|---|---|---|")
for k, e in sorted(by.items(), key=lambda kv: -kv[1]["ns"]):
    gbs = (e["rd"] + e["wr"]) / e["ns"] if e["ns"] else 0.0  # bytes per ns = GB/s
    print(f"| `{k}` | {e['n'] / steps:.0f} | {e['ns'] / e['n'] / 1e3:.2f} | {e['ns'] / steps / 1e3:.1f} | {100 * e['ns'] / total_ns:.0f}% | "
          f"{e['rd'] / steps / 1e6:.1f} | {gbs:,.0f} | {e['grid']} |")
print()
