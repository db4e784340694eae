#!/usr/bin/env python3
"""The Hugging Face peer of the serving benchmark (issue #12): a
LlamaForCausalLM of bench-125m's size (hidden 768, 12 layers, 12 heads, 4 KV
heads, SwiGLU 2048, vocab 32000; random init, bf16, SDPA) generating the
benchmark's prompts through transformers' continuous-batching API,
`model.generate_batch(inputs, generation_config, ...)`: greedy, --new-tokens
new tokens, end-of-sequence disabled. A warm-up call on the same prompts
first (the manager kept when the API allows it, so the timed call finds its
CUDA graphs captured and its cache sized), then the timed call.

Prints JSON lines: {"event": "start", versions...}, then {"event": "result", ...}
or {"event": "error", "error": "..."} (an API mismatch with the installed
transformers is reported, not raised).

usage: hf_generate_peer.py PROMPTS_JSONL [--requests N] [--new-tokens 128] [--device cuda] [--max-batch-tokens N]"""
import argparse
import inspect
import json
import sys
import time
import traceback

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("prompts")
    ap.add_argument("--requests", type=int, default=0)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--max-batch-tokens", type=int, default=0,
                    help="ContinuousBatchingConfig.max_batch_tokens (0: the library's default)")
    ap.add_argument("--small", action="store_true", help="a tiny Llama (CPU smoke test)")
    a = ap.parse_args()
    with open(a.prompts) as f:
        prompts = [json.loads(line) for line in f if line.strip()]
    if a.requests:
        prompts = prompts[:a.requests]
    info = dict(system="hf-generate_batch", torch=torch.__version__, device=a.device, dtype=a.dtype, requests=len(prompts),
                new_tokens=a.new_tokens, max_batch_tokens=a.max_batch_tokens or "default")
    try:
        import transformers
        from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
        info["transformers"] = transformers.__version__
    except Exception as e:
        print(json.dumps(dict(info, event="error", error=f"transformers unavailable: {type(e).__name__}: {e}")), flush=True)
        return 1
    print(json.dumps(dict(info, event="start")), flush=True)
    stage = "model"
    try:
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[a.dtype]
        size = dict(vocab_size=32000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                    intermediate_size=2048, max_position_embeddings=2048)
        if a.small:
            size = dict(vocab_size=max(max(p) for p in prompts) + 1, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256)
        # No token of a random model is special: no BOS/EOS (eos -1 in generation disables stopping).
        cfg = LlamaConfig(**size, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=0)
        try:
            cfg._attn_implementation = "sdpa"
        except Exception as e:  # generate_batch picks its own paged attention anyway
            info["attn_note"] = f"could not set sdpa: {e}"
        torch.manual_seed(0)
        with torch.device(a.device):
            model = LlamaForCausalLM(cfg)
        model = model.to(dtype=dtype).eval()
        info["parameters"] = sum(p.numel() for p in model.parameters())
        stage = "generation config"
        # eos None: generate_batch disables stopping (it sets -1, "disabled"); shortest_output shows if anything stopped early.
        gen = GenerationConfig(max_new_tokens=a.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
        params = inspect.signature(model.generate_batch).parameters
        info["generate_batch_signature"] = str(inspect.signature(model.generate_batch))
        kw = {}
        if "progress_bar" in params:
            kw["progress_bar"] = False
        if a.max_batch_tokens:
            try:
                from transformers.generation import ContinuousBatchingConfig
                kw["continuous_batching_config"] = ContinuousBatchingConfig(max_batch_tokens=a.max_batch_tokens)
            except Exception:  # older API: the manager took it from the generation config
                gen.max_batch_tokens = a.max_batch_tokens
        stage = "warm-up generate_batch"
        warm_kw = dict(kw)
        keep = "persistent_manager" in params
        if keep:
            warm_kw["persistent_manager"] = True
        t0 = time.perf_counter()
        # The same prompts and lengths as the timed call: the manager sizes its cache and graphs from the workload.
        model.generate_batch(inputs=prompts, generation_config=gen, **warm_kw)
        info["warmup_seconds"] = time.perf_counter() - t0
        stage = "timed generate_batch"
        if keep and "warmup" in params:
            kw["warmup"] = False  # the kept manager is warm already
        if keep:
            kw["persistent_manager"] = True
        if "record_timestamps" in params:
            kw["record_timestamps"] = True
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate_batch(inputs=prompts, generation_config=gen, **kw)
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        if keep and hasattr(model, "destroy_cached_continuous_batching_manager"):
            model.destroy_cached_continuous_batching_manager()
        results = list(out.values()) if isinstance(out, dict) else list(out)
        lens = [len(getattr(r, "generated_tokens", None) or []) for r in results]
        gen_tokens = sum(lens)
        lat = {}
        try:  # per-token timestamps (perf_counter), when the API records them: TTFT from each request's creation
            ttft = sorted(r.timestamps[0] - r.created_time for r in results if getattr(r, "timestamps", None))
            itl = sorted(b - a_ for r in results if getattr(r, "timestamps", None) for a_, b in zip(r.timestamps, r.timestamps[1:]))
            pct = lambda v, q: v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))]
            if ttft and itl:
                lat = dict(ttft_seconds=dict(p50=pct(ttft, 0.5), p99=pct(ttft, 0.99)),
                           inter_token_seconds=dict(p50=pct(itl, 0.5), p99=pct(itl, 0.99)))
        except Exception as e:
            lat = dict(latency_error=f"{type(e).__name__}: {e}")
        print(json.dumps(dict(info, event="result", seconds=secs, finished=len(results), generated_tokens=gen_tokens,
                              tokens_per_second=gen_tokens / secs, shortest_output=min(lens) if lens else 0, **lat)), flush=True)
        return 0
    except Exception as e:
        tb = traceback.format_exc(limit=3)
        print(json.dumps(dict(info, event="error", stage=stage, error=f"{type(e).__name__}: {e}"[:1500], traceback=tb[-1500:])),
              flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
