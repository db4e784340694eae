#!/usr/bin/env python3
"""The PyTorch peer of the serving benchmark (issue #12): the seed tutorial's
TinyGPT, loaded from the same safetensors checkpoint that `tinygpt serve`
serves, generating greedy continuations of the same prompts the way a fast
PyTorch decoder does:

- static batches of --batch prompts, left-padded to the batch's longest;
- a static, pre-allocated KV cache [layers, batch, kv_heads, max_len, head_dim];
- prefill of the padded batch with F.scaled_dot_product_attention (a boolean
  mask for causality and padding), which also gives each sequence's first token;
- the decode step (one token per sequence: embeddings, 12 blocks writing their
  K/V at the current slot, attention over the static cache with a padding
  mask, head, greedy argmax, the token fed back, positions advanced) captured
  once in a CUDA graph on static tensors and replayed for every further token,
  with no host work in between; the host reads the tokens once per batch.

On --device cpu (Debian's PyTorch 1.13 has no SDPA) the same code runs eagerly,
without graphs, with a materialized masked softmax; --check then compares the
first prompts' tokens with the reference TinyGPT's full-recompute greedy
decoding (tests/python/torch_tinygpt.py), which must match exactly in fp32.

Prints one JSON line per batch size tried (tokens/s, prefill and decode
times, TTFT and inter-token latency as a client that submitted every request
at t=0 would see them) and, with --dump-ids FILE, writes the first
--dump-count requests' generated ids (JSONL, in prompt order).

usage: torch_decode_peer.py CHECKPOINT PROMPTS_JSONL [--batch 64,128,256] [--new-tokens 128] [--device cuda|cpu]
                            [--dtype bf16|fp32] [--requests N] [--dump-ids FILE] [--dump-count 8] [--check N]"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "python"))
from torch_tinygpt import TinyGPT, load_safetensors  # noqa: E402

HAVE_SDPA = hasattr(F, "scaled_dot_product_attention")


def attention(q, k, v, mask):
    """q [B,H,T,D], k/v [B,Hkv,S,D], mask bool [B,1,T,S] (True: attend) → [B,H,T,D].
    GQA without copying K/V: the `rep` query heads of a KV head go in as rep·T queries of that head."""
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    rep = H // Hkv
    q = q.reshape(B, Hkv, rep * T, D)
    if rep > 1:
        mask = mask[:, :, None].expand(B, 1, rep, T, S).reshape(B, 1, rep * T, S)
    if HAVE_SDPA:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        s = (q @ k.transpose(-2, -1)) / math.sqrt(D)
        o = s.masked_fill(~mask, float("-inf")).softmax(-1) @ v
    return o.reshape(B, H, T, D)


class StaticDecoder:
    """Greedy decoding of left-padded static batches over a pre-allocated KV cache."""

    def __init__(self, model, batch, max_len, device, dtype, use_graph):
        cfg = model.cfg
        assert cfg["pos_encoding"] == "learned", "the peer implements learned positions only"
        self.m, self.cfg = model, cfg
        self.B, self.S = batch, max_len
        self.H, self.Hkv = cfg["n_heads"], cfg["n_kv_heads"]
        self.D = cfg["d_model"] // self.H
        self.device, self.dtype, self.use_graph = device, dtype, use_graph
        L = cfg["n_layers"]
        self.k_cache = torch.zeros(L, batch, self.Hkv, max_len, self.D, device=device, dtype=dtype)
        self.v_cache = torch.zeros_like(self.k_cache)
        # Decode-step state, static so that a captured graph reads and writes it in place.
        self.tok = torch.zeros(batch, dtype=torch.long, device=device)      # the token to feed
        self.pos = torch.zeros(batch, dtype=torch.long, device=device)      # its position in its own sequence
        self.slot = torch.zeros(1, dtype=torch.long, device=device)         # the cache slot it goes to (same for all)
        self.pad = torch.zeros(batch, dtype=torch.long, device=device)      # left padding of each row
        self.step = torch.zeros(1, dtype=torch.long, device=device)         # index into out
        self.out = torch.zeros(batch, 1, dtype=torch.long, device=device)   # generated tokens (resized per run)
        self.ar = torch.arange(max_len, device=device)
        self.graph = None

    # One block, both phases: x [B,T,d]; K/V of the T new tokens go to the cache at `slots`.
    def _block(self, li, blk, x, mask, write):
        B, T, d = x.shape
        h = blk.qkv(blk.n1(x))
        q, k, v = h.split([self.H * self.D, self.Hkv * self.D, self.Hkv * self.D], -1)
        q = q.view(B, T, self.H, self.D).transpose(1, 2)
        k = k.view(B, T, self.Hkv, self.D).transpose(1, 2)
        v = v.view(B, T, self.Hkv, self.D).transpose(1, 2)
        kc, vc = write(li, k, v)
        a = attention(q, kc, vc, mask).transpose(1, 2).reshape(B, T, d)
        x = x + blk.proj(a)
        return x + blk.ff(blk.n2(x))

    def _logits_last(self, x):
        return self.m.head(self.m.nf(x[:, -1]))

    @torch.no_grad()
    def prefill(self, prompts):
        """Left-pads `prompts` (≤ B lists of ids; missing rows are copies of the last) into the cache's
        first P slots; returns each row's first generated token and P."""
        rows = list(prompts) + [prompts[-1]] * (self.B - len(prompts))
        P = (max(len(p) for p in rows) + 15) // 16 * 16  # aligned rows for the fused attention kernels
        assert P + 1 <= self.S, (P, self.S)
        pad = torch.tensor([P - len(p) for p in rows], dtype=torch.long)
        ids = torch.zeros(self.B, P, dtype=torch.long)
        for i, p in enumerate(rows):
            ids[i, P - len(p):] = torch.tensor(p, dtype=torch.long)
        ids, pad = ids.to(self.device), pad.to(self.device)
        ar = torch.arange(P, device=self.device)
        pos = (ar[None, :] - pad[:, None]).clamp(min=0)
        # Query i sees keys j <= i that are not padding; a padding row sees itself (no empty softmax rows).
        mask = (ar[None, :] <= ar[:, None])[None] & (ar[None, None, :] >= pad[:, None, None])
        mask = (mask | torch.eye(P, dtype=torch.bool, device=self.device)[None])[:, None]
        x = self.m.tok(ids) + self.m.pos(pos)

        def write(li, k, v):
            self.k_cache[li, :, :, :P] = k
            self.v_cache[li, :, :, :P] = v
            return k, v

        for li, blk in enumerate(self.m.blocks):
            x = self._block(li, blk, x, mask, write)
        first = self._logits_last(x).argmax(-1)
        # Decode state: feed the first token at slot P, position P - pad.
        self.tok.copy_(first)
        self.pos.copy_(P - pad)
        self.slot.fill_(P)
        self.pad.copy_(pad)
        self.step.fill_(0)
        return first, P

    def _decode_step(self):
        """One token per row; in place on the static state (capturable)."""
        x = (self.m.tok(self.tok) + self.m.pos(self.pos))[:, None]          # [B,1,d]
        valid = (self.ar[None, :] >= self.pad[:, None]) & (self.ar[None, :] <= self.slot)  # [B,S]
        mask = valid[:, None, None, :]

        def write(li, k, v):
            self.k_cache[li].index_copy_(2, self.slot, k)
            self.v_cache[li].index_copy_(2, self.slot, v)
            return self.k_cache[li], self.v_cache[li]

        for li, blk in enumerate(self.m.blocks):
            x = self._block(li, blk, x, mask, write)
        nxt = self._logits_last(x).argmax(-1)
        self.out.index_copy_(1, self.step, nxt[:, None])
        self.tok.copy_(nxt)
        self.pos.add_(1)
        self.slot.add_(1)
        self.step.add_(1)

    @torch.no_grad()
    def capture(self):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):  # warm-up outside the graph (cuBLAS handles, SDPA kernel choice)
            for _ in range(2):
                self._decode_step()
        torch.cuda.current_stream().wait_stream(s)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._decode_step()

    @torch.no_grad()
    def generate(self, prompts, new_tokens):
        """→ (tokens [len(prompts), new_tokens] on the host, prefill seconds, decode seconds)."""
        if self.out.shape[1] != new_tokens - 1 and self.graph is not None:
            raise ValueError("the captured graph writes a fixed number of tokens")
        if self.out.shape[1] != max(1, new_tokens - 1):
            self.out = torch.zeros(self.B, max(1, new_tokens - 1), dtype=torch.long, device=self.device)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        first, P = self.prefill(prompts)
        sync()
        t1 = time.perf_counter()
        for _ in range(new_tokens - 1):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._decode_step()
        toks = torch.cat([first[:, None], self.out[:, :new_tokens - 1]], 1)[:len(prompts)].cpu()
        t2 = time.perf_counter()
        return toks, t1 - t0, t2 - t1


def load_model(checkpoint, device, dtype):
    tensors, meta = load_safetensors(checkpoint)
    cfg = json.loads(meta["tinygpt.config"])
    model = TinyGPT(cfg)
    model.load_state_dict(tensors)
    return model.to(device=device, dtype=dtype).eval(), cfg


@torch.no_grad()
def reference_greedy(model, prompt, new_tokens):
    """The tutorial TinyGPT's greedy decoding, recomputing the whole sequence each token."""
    seq = list(prompt)
    for _ in range(new_tokens):
        logits = model(torch.tensor(seq), [len(seq)])
        seq.append(int(logits[-1].argmax()))
    return seq[len(prompt):]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("prompts")
    ap.add_argument("--batch", default="64,128,256", help="batch sizes to try (comma separated)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="bf16 (default on cuda) or fp32 (default on cpu)")
    ap.add_argument("--requests", type=int, default=0, help="use the first N prompts (0: all)")
    ap.add_argument("--no-graph", action="store_true", help="run the decode step eagerly on CUDA too")
    ap.add_argument("--dump-ids", default="", help="write the first --dump-count requests' generated ids here (JSONL)")
    ap.add_argument("--dump-count", type=int, default=8)
    ap.add_argument("--check", type=int, default=0, help="compare N prompts with the reference full-recompute greedy")
    a = ap.parse_args()

    device = torch.device(a.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[a.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    use_graph = device.type == "cuda" and not a.no_graph
    with open(a.prompts) as f:
        prompts = [json.loads(line) for line in f if line.strip()]
    if a.requests:
        prompts = prompts[:a.requests]
    model, cfg = load_model(a.checkpoint, device, dtype)
    # The longest padded prompt, the new tokens and the graph capture's 3 warm-up steps, rounded to 64 (aligned mask rows).
    max_len = ((max(len(p) for p in prompts) + 15) // 16 * 16 + a.new_tokens + 3 + 63) // 64 * 64
    info = dict(system="pytorch-static-graph", torch=torch.__version__, device=str(device), dtype=str(dtype).replace("torch.", ""),
                cuda_graph=use_graph, sdpa=HAVE_SDPA, requests=len(prompts), new_tokens=a.new_tokens, cache_len=max_len)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    print(json.dumps(dict(info, event="start")), flush=True)

    if a.check:
        ref_model = TinyGPT(cfg)
        ref_model.load_state_dict(model.state_dict())
        ref_model = ref_model.float().cpu().eval()
        n = min(a.check, len(prompts))
        dec = StaticDecoder(model, n, max_len, device, dtype, False)
        toks, _, _ = dec.generate(prompts[:n], a.new_tokens)
        same = []
        for i in range(n):
            ref = reference_greedy(ref_model, prompts[i], a.new_tokens)
            got = toks[i].tolist()
            same.append(next((j for j in range(len(ref)) if ref[j] != got[j]), len(ref)))
        print(json.dumps(dict(event="check", prompts=n, matching_prefix=same, all_equal=all(s == a.new_tokens for s in same))),
              flush=True)

    best = None
    for bs in [int(x) for x in a.batch.split(",") if x]:
        bs = min(bs, len(prompts))
        try:
            dec = StaticDecoder(model, bs, max_len, device, dtype, use_graph)
            # Warm-up (kernels, cuBLAS, the graph capture) on the first batch, outside the timing.
            dec.prefill(prompts[:bs])
            if use_graph:
                dec.out = torch.zeros(bs, a.new_tokens - 1, dtype=torch.long, device=device)
                dec.capture()
            dec.generate(prompts[:bs], a.new_tokens)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            outs, ttft, prefill_s, decode_s = [], [], 0.0, 0.0
            t0 = time.perf_counter()
            for i in range(0, len(prompts), bs):
                toks, p_s, d_s = dec.generate(prompts[i:i + bs], a.new_tokens)
                # A client that sent everything at t=0 gets this batch's first tokens after the earlier batches and this prefill.
                ttft += [time.perf_counter() - t0 - d_s] * toks.shape[0]
                prefill_s += p_s
                decode_s += d_s
                outs.append(toks)
            secs = time.perf_counter() - t0
            toks = torch.cat(outs)
            gen = toks.numel()
            steps = (a.new_tokens - 1) * ((len(prompts) + bs - 1) // bs)
            itl = decode_s / max(1, steps)
            ttft.sort()
            r = dict(info, event="result", batch=bs, seconds=secs, generated_tokens=gen, tokens_per_second=gen / secs,
                     prefill_seconds=prefill_s, decode_seconds=decode_s, decode_step_ms=1e3 * itl,
                     ttft_seconds=dict(p50=ttft[len(ttft) // 2], p99=ttft[min(len(ttft) - 1, int(0.99 * (len(ttft) - 1) + 0.5))]),
                     inter_token_seconds=dict(p50=itl, p99=itl),
                     peak_memory_gib=(torch.cuda.max_memory_allocated(device) / 2**30) if device.type == "cuda" else None)
            print(json.dumps(r), flush=True)
            if best is None or r["tokens_per_second"] > best[0]["tokens_per_second"]:
                best = (r, toks)
            del dec
            if device.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as e:  # e.g. out of memory at a large batch: report it, try the next size
            print(json.dumps(dict(info, event="error", batch=bs, error=f"{type(e).__name__}: {e}"[:2000])), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if best and a.dump_ids:
        with open(a.dump_ids, "w") as f:
            for row in best[1][:a.dump_count].tolist():
                f.write(json.dumps(row) + "\n")
    if best:
        print(json.dumps(dict(best[0], event="best")), flush=True)
    return 0 if best else 1


if __name__ == "__main__":
    sys.exit(main())
