#!/usr/bin/env python3
"""Instruction mix of the attention kernels, from `cuobjdump --dump-sass`
on stdin: one line per (kernel, dtype) with the counts of the opcodes that
matter for a flash-attention loop (tensor-core MMAs against everything else).
usage: cuobjdump --dump-sass libtinygpt_cuda.so | sass_mix.py [NAME_SUBSTRING]"""
import collections, re, sys

want = sys.argv[1] if len(sys.argv) > 1 else "PagedFlashAttentionKernel"
kernels, name = {}, None
for line in sys.stdin:
    m = re.match(r"\s*Function : (\S+)", line)
    if m:
        name = m.group(1) if want in m.group(1) else None
        if name:
            kernels[name] = collections.Counter()
        continue
    m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(\.[A-Z0-9_.]+)?", line)
    if name and m:
        kernels[name][m.group(1)] += 1

groups = {"HMMA": ["HMMA"], "LDSM": ["LDSM"], "LDGSTS": ["LDGSTS"], "MUFU": ["MUFU"],
          "FP32": ["FADD", "FMUL", "FFMA", "FMNMX", "FSEL", "FSETP"], "INT": ["IMAD", "IADD3", "LOP3", "SHF", "LEA", "ISETP", "SEL", "IABS"],
          "CVT": ["F2FP", "I2F", "F2I", "F2F"], "SHFL": ["SHFL"], "BAR": ["BAR", "DEPBAR", "WARPSYNC", "VOTE"],
          "MEM": ["LDG", "STG", "LDL", "STL", "LDS", "STS", "LDC", "ULDC"], "BRANCH": ["BRA", "BSSY", "BSYNC", "EXIT", "RET", "CALL"]}
print("kernel (traits) | total | " + " | ".join(groups) + " | other")
for name, c in kernels.items():
    m = re.search(r"AttentionTraitsILi(\d+)E(\w+?)Li(\d+)ELi(\d+)ELi(\d+)ELi(\d+)EEELb(\d)E", name)
    label = name[:60] if not m else f"D{m[1]} {'bf16' if 'bfloat' in m[2] else 'f16'} w{m[3]}m{m[4]}n{m[5]}s{m[6]} alibi={m[7]}"
    seen = {op for ops in groups.values() for op in ops}
    cells = [sum(c[o] for o in ops) for ops in groups.values()]
    print(f"{label} | {sum(c.values())} | " + " | ".join(map(str, cells)) + f" | {sum(v for k, v in c.items() if k not in seen)}")
