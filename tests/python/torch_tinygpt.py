"""The seed tutorial's TinyGPT in PyTorch (CPU), extended with the config
fields tinygpt supports (GQA, ALiBi, ffn_hidden), with the same module names,
so its state_dict is a tinygpt checkpoint. Attention is the tutorial's
`vanilla_attention` (materialized scores) with a block-diagonal causal mask,
since xFormers does not run on the CPU; with `sdpa=True` (PyTorch >= 2.0,
learned positions) each sequence goes through F.scaled_dot_product_attention
with is_causal, PyTorch's own fused CPU kernel, for benchmarks."""
import json
import math
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F


class SwiGLU(nn.Module):
    def __init__(s, d, hidden):
        super().__init__()
        s.w12 = nn.Linear(d, 2 * hidden)
        s.w3 = nn.Linear(hidden, d)

    def forward(s, x):
        a, b = s.w12(x).chunk(2, -1)
        return s.w3(F.silu(a) * b)


def alibi_slopes(h):
    return (2.0 ** (-8.0 / h)) ** torch.arange(1, h + 1, dtype=torch.float32)


class Block(nn.Module):
    def __init__(self, cfg, sdpa=False):
        super().__init__()
        d = cfg["d_model"]
        self.sdpa = sdpa
        self.h, self.hkv, self.k = cfg["n_heads"], cfg["n_kv_heads"], d // cfg["n_heads"]
        self.alibi = cfg["pos_encoding"] == "alibi"
        self.n1, self.n2 = nn.LayerNorm(d, eps=cfg["norm_eps"]), nn.LayerNorm(d, eps=cfg["norm_eps"])
        self.qkv = nn.Linear(d, (self.h + 2 * self.hkv) * self.k)
        self.proj = nn.Linear(d, d)
        self.ff = SwiGLU(d, cfg["ffn_hidden"])

    def forward(self, x, seqlens):
        # x: [T, d] packed. Sequences attend block-diagonally and causally;
        # each is handled as its own [H, n, n] score matrix (the tutorial's
        # vanilla attention), batched when all lengths are equal.
        T, d = x.shape
        qkv = self.qkv(self.n1(x))
        groups = [qkv.view(len(seqlens), seqlens[0], -1)] if len(set(seqlens)) == 1 else \
            [t[None] for t in qkv.split(list(seqlens), 0)]
        a = torch.cat([self.attend(g).reshape(-1, d) for g in groups], 0)
        x = x + self.proj(a)
        return x + self.ff(self.n2(x))

    def attend(self, qkv):
        B, n, _ = qkv.shape
        q, k, v = qkv.split([self.h * self.k, self.hkv * self.k, self.hkv * self.k], -1)
        q = q.view(B, n, self.h, self.k).transpose(1, 2)
        k = k.view(B, n, self.hkv, self.k).transpose(1, 2).repeat_interleave(self.h // self.hkv, 1)
        v = v.view(B, n, self.hkv, self.k).transpose(1, 2).repeat_interleave(self.h // self.hkv, 1)
        if self.sdpa:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.k)
        pos = torch.arange(n)
        if self.alibi:
            rel = (pos[None, :] - pos[:, None]).clamp(max=0).float()
            scores = scores + alibi_slopes(self.h)[:, None, None] * rel[None]
        scores = scores.masked_fill(pos[None, :] > pos[:, None], float("-inf"))
        return (scores.softmax(-1) @ v).transpose(1, 2)


class TinyGPT(nn.Module):
    def __init__(self, cfg, sdpa=False):
        super().__init__()
        assert not (sdpa and cfg["pos_encoding"] == "alibi"), "the SDPA path has no ALiBi bias"
        self.cfg = cfg
        d = cfg["d_model"]
        self.tok = nn.Embedding(cfg["vocab_size"], d)
        if cfg["pos_encoding"] == "learned":
            self.pos = nn.Embedding(cfg["max_seq_len"], d)
        self.blocks = nn.ModuleList(Block(cfg, sdpa) for _ in range(cfg["n_layers"]))
        self.nf, self.head = nn.LayerNorm(d, eps=cfg["norm_eps"]), nn.Linear(d, cfg["vocab_size"])

    def forward(self, tokens, seqlens):
        """tokens: [T] packed sequences of the given lengths → logits [T, V]."""
        pos = torch.cat([torch.arange(n) for n in seqlens])
        x = self.tok(tokens)
        if hasattr(self, "pos"):
            x = x + self.pos(pos)
        for b in self.blocks:
            x = b(x, seqlens)
        return self.head(self.nf(x))


SEED_CONFIG = dict(vocab_size=64, d_model=128, n_layers=3, n_heads=8, n_kv_heads=8, ffn_hidden=512,
                   max_seq_len=64, pos_encoding="learned", norm_eps=1e-5)


def save_safetensors(path, state_dict, metadata):
    """safetensors' format written by hand (Debian ships no python3-safetensors)."""
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, t in sorted(state_dict.items()):
        b = t.detach().to(torch.float32).contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - (len(h) + 8) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def load_safetensors(path):
    import numpy as np
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    tensors = {}
    for name, e in header.items():
        assert e["dtype"] == "F32", e["dtype"]
        b, end = e["data_offsets"]
        tensors[name] = torch.from_numpy(np.frombuffer(data[base + b:base + end], dtype=np.float32).copy()).view(e["shape"])
    return tensors, meta


def count_batch(batch, vocab, seq, gen):
    start = torch.randint(0, vocab, (batch, 1), generator=gen)
    return (start + torch.arange(seq)[None]) % vocab
