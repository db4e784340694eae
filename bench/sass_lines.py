#!/usr/bin/env python3
"""Where a kernel's code goes: instruction counts by source line, from
`nvdisasm -g` of a cubin built with -lineinfo. For each function whose name
matches PATTERN: the total, then the bytes by the line of the kernel's own
file that each instruction was inlined from (the phase's call site), and the
top innermost source lines. Used to see whether a persistent kernel's code
outgrows the instruction cache (issue #23's decode step kernel).

usage: sass_lines.py NVDISASM_OUTPUT PATTERN KERNEL_FILE   (markdown on stdout)
"""
import collections
import re
import sys

path, pattern, kernel_file = sys.argv[1], sys.argv[2], sys.argv[3]
loc_re = re.compile(r'"([^"]+)", line (\d+)')
funcs = collections.OrderedDict()
cur, where = None, None
for line in open(path, errors="replace"):
    m = re.match(r"\s*\.text\.(\S+):", line) or re.search(r"\.section\s+\.text\.(\S+?),", line)
    if m:
        cur, where = m.group(1), None
        funcs.setdefault(cur, [])
        continue
    if "//##" in line:
        where = loc_re.findall(line)
        continue
    if cur and re.search(r"/\*[0-9a-f]{4,}\*/", line):
        funcs[cur].append(where or [])
for name, instrs in funcs.items():
    if not re.search(pattern, name):
        continue
    print(f"### {name}: {len(instrs)} instructions, {16 * len(instrs)} bytes\n")
    site = collections.Counter()
    inner = collections.Counter()
    for w in instrs:
        own = [f"{kernel_file.split('/')[-1]}:{ln}" for f, ln in w if f.endswith(kernel_file)]
        site[own[-1] if own else "(no line)"] += 1
        inner[f"{w[0][0].split('/')[-1]}:{w[0][1]}" if w else "(no line)"] += 1
    print("| kernel line (outermost call site) | instructions | bytes |\n|---|---|---|")
    for k, v in site.most_common(30):
        print(f"| {k} | {v} | {16 * v} |")
    print("\n| innermost source line | instructions |\n|---|---|")
    for k, v in inner.most_common(25):
        print(f"| {k} | {v} |")
    print()
