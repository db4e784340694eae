#!/usr/bin/env python3
"""Runs tests/node/openai_sdk_test.mjs, the official OpenAI Node SDK, against
`tinygpt serve` (a byte-token model with random weights, a bearer token),
with the answers it must match taken from gRPC. `npm install openai` goes
into CACHE_DIR (under the build tree: a clean checkout installs it once).
usage: openai_sdk_test.py TINYGPT_BIN SOURCE_DIR CACHE_DIR"""
import json, os, subprocess, sys, tempfile

import grpc
import torch

sys.path.insert(0, os.path.dirname(__file__))
import harness
from torch_tinygpt import TinyGPT, save_safetensors

tinygpt, source, cache = sys.argv[1], sys.argv[2], sys.argv[3]
pb, pb_grpc = harness.stubs(source)
work = tempfile.mkdtemp(prefix="tinygpt-openai-sdk-")
if not os.path.isfile(os.path.join(cache, "node_modules", "openai", "package.json")):
    os.makedirs(cache, exist_ok=True)
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", cache, "openai@4"], check=True)

torch.manual_seed(1)
cfg = dict(vocab_size=256, d_model=64, n_layers=1, n_heads=4, n_kv_heads=4, ffn_hidden=128, max_seq_len=128,
           pos_encoding="learned", norm_eps=1e-5)
ckpt = os.path.join(work, "bytes.safetensors")
save_safetensors(ckpt, TinyGPT(cfg).state_dict(), {"tinygpt.config": json.dumps(cfg), "tinygpt.tokenizer": json.dumps({"type": "bytes"})})
open(os.path.join(work, "token"), "w").write("sdk-test-token\n")
with harness.Server(tinygpt, ckpt, f"--auth-token-file={os.path.join(work, 'token')}", "--debug-step-delay-ms=5") as s:
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(s.address))
    md = [("authorization", "Bearer sdk-test-token")]
    prompt = "The quick brown fox"
    gen = lambda **kw: stub.Generate(pb.GenerateRequest(text=prompt, **kw), timeout=60, metadata=md)
    greedy = gen(max_new_tokens=24)
    sampled = gen(max_new_tokens=12, temperature=1.0, n=3, seed=5)
    stop = greedy.text[8:10]
    scored = pb.GenerateRequest(text=prompt, max_new_tokens=1)
    scored.prompt_logprobs.value = 0
    scored = stub.Generate(scored, timeout=60, metadata=md)
    want = {"model": "bytes", "token": "sdk-test-token", "prompt": prompt, "prompt_tokens": len(prompt.encode()),
            "greedy_text": greedy.text, "sampled_texts": [c.text for c in sampled.choices], "stop": stop,
            "stop_text": gen(max_new_tokens=24, stop=[stop]).text, "prompt_logprobs": [p.logprob for p in scored.prompt_logprobs]}
    env = {**os.environ, "NODE_PATH": os.path.join(cache, "node_modules")}
    # An .mjs resolves bare imports from its own folder up, not NODE_PATH: run a copy beside the cache.
    script = os.path.join(cache, "openai_sdk_test.mjs")
    open(script, "w").write(open(os.path.join(source, "tests", "node", "openai_sdk_test.mjs")).read())
    rc = subprocess.run(["node", script, f"{s.http_url}/v1", json.dumps(want)], env=env, timeout=300).returncode
sys.exit(rc)
