#!/usr/bin/env python3
"""PyTorch parity, both directions, with Debian's python3-torch on the CPU.

1. The seed's TinyGPT built in PyTorch (learned positions, and a GQA + ALiBi
   variant) is saved as safetensors; `tinygpt generate --json` must reproduce
   PyTorch's greedy continuation, and tinygpt's logits (through the
   `score` helper binary) must match PyTorch's within 1e-4.
2. A checkpoint trained by `tinygpt train` loads into the PyTorch TinyGPT with
   load_state_dict and scores the same next-token accuracy.

3. A checkpoint with a tokenizer (trained by `tinygpt train --tokenizer-vocab`)
   goes through PyTorch (load_state_dict, then saved again with its metadata)
   and comes back with the same tensors, the same tokenizer and the same
   greedy text.

usage: torch_parity_test.py TINYGPT_BIN LOGITS_BIN TOKENIZE_BIN"""
import json, os, subprocess, sys, tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from torch_tinygpt import SEED_CONFIG, TinyGPT, count_batch, load_safetensors, save_safetensors

tinygpt, logits_bin, tokenize_bin = sys.argv[1], sys.argv[2], sys.argv[3]
work = tempfile.mkdtemp(prefix="tinygpt-parity-")
failed = passed = 0


def check(name, ok, detail=""):
    global failed, passed
    print(("PASS " if ok else "FAIL ") + name + (f": {detail}" if detail else ""))
    passed += ok
    failed += not ok


torch.manual_seed(0)
variants = {
    "seed": SEED_CONFIG,
    "gqa-alibi": dict(SEED_CONFIG, n_kv_heads=2, pos_encoding="alibi", ffn_hidden=200, n_layers=2),
}
for name, cfg in variants.items():
    model = TinyGPT(cfg).eval()
    path = os.path.join(work, f"{name}.safetensors")
    save_safetensors(path, model.state_dict(), {"tinygpt.config": json.dumps(cfg)})
    seqlens = [37, 1, 20]
    tokens = torch.randint(0, cfg["vocab_size"], (sum(seqlens),))
    with torch.no_grad():
        ref = model(tokens, seqlens).numpy()
    out = subprocess.run([logits_bin, path, ",".join(map(str, seqlens)), ",".join(map(str, tokens.tolist()))],
                         check=True, capture_output=True, text=True).stdout
    ours = np.array([float(x) for x in out.split()], dtype=np.float64).reshape(ref.shape)
    err = np.abs(ours - ref).max()
    check(f"{name}: packed logits match PyTorch", err < 1e-4, f"max abs diff {err:.2e}")
    prompt = tokens[:5].tolist()
    gen = json.loads(subprocess.run([tinygpt, "generate", f"--checkpoint={path}", "--prompt-ids=" + ",".join(map(str, prompt)),
                                     "--max-new-tokens=8", "--json", "--device=cpu"],
                                    check=True, capture_output=True, text=True).stdout)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            seq.append(int(model(torch.tensor(seq), [len(seq)])[-1].argmax()))
    check(f"{name}: greedy generation matches PyTorch", gen["output_ids"] == seq[5:], f"{gen['output_ids']} vs {seq[5:]}")

# Reverse direction: tinygpt-trained checkpoint in PyTorch.
path = os.path.join(work, "trained.safetensors")
subprocess.run([tinygpt, "train", "--steps=80", "--batch=16", f"--out={path}"], check=True, capture_output=True)
tensors, meta = load_safetensors(path)
cfg = json.loads(meta["tinygpt.config"])
model = TinyGPT(cfg).eval()
model.load_state_dict(tensors)  # strict: every name and shape must match
seq = count_batch(64, 64, 64, torch.Generator().manual_seed(1))
inp, tgt = seq[:, :-1].reshape(-1), seq[:, 1:].reshape(-1)
with torch.no_grad():
    acc = (model(inp, [63] * 64).argmax(-1) == tgt).float().mean().item()
check("tinygpt checkpoint loads in PyTorch and scores the counting task", acc > 0.95, f"accuracy {acc:.4f}")
# A checkpoint with a tokenizer, through PyTorch and back.
corpus = os.path.join(work, "corpus.txt")
with open(corpus, "w", encoding="utf-8") as f:
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "caf\u00e9", "\u65e5\u672c", "\U0001F600", "gamma", "delta", "x\u0301"] + \
            ["".join(rng.choice(list("abcdefghijklmnop\u00e9\u00fc"), 4)) for _ in range(300)]
    for doc in range(40):
        f.write("\n".join(" ".join(rng.choice(words, 10)) for _ in range(8)) + "\n\n")
text_ck = os.path.join(work, "text.safetensors")
subprocess.run([tinygpt, "train", f"--data={corpus}", "--tokenizer-vocab=400", "--steps=20", "--batch=4", f"--out={text_ck}"],
               check=True, capture_output=True)
tensors, meta = load_safetensors(text_ck)
model = TinyGPT(json.loads(meta["tinygpt.config"])).eval()
model.load_state_dict(tensors)
back = os.path.join(work, "text-from-torch.safetensors")
save_safetensors(back, model.state_dict(), meta)
tensors2, meta2 = load_safetensors(back)
check("tokenizer checkpoint: metadata survives PyTorch", meta2 == meta and "tinygpt.tokenizer" in meta2)
check("tokenizer checkpoint: tensors unchanged through PyTorch",
      all(torch.equal(tensors[k], tensors2[k]) for k in tensors) and tensors.keys() == tensors2.keys())
gen = [json.loads(subprocess.run([tinygpt, "generate", f"--checkpoint={p}", "--prompt=alpha caf\u00e9", "--max-new-tokens=12",
                                  "--json", "--device=cpu", "--ignore-eos"], check=True, capture_output=True, text=True).stdout)
       for p in (text_ck, back)]
check("tokenizer checkpoint: same prompt ids and greedy text before and after PyTorch",
      gen[0] == gen[1] and len(gen[0]["prompt_ids"]) > 0, f"{gen[0]} vs {gen[1]}")
enc = [subprocess.run([tokenize_bin, p], input=json.dumps({"text": "beta \U0001F600 delta"}) + "\n", capture_output=True,
                      text=True, check=True).stdout for p in (text_ck, back)]
check("tokenizer checkpoint: the tokenizer encodes the same after PyTorch", enc[0] == enc[1], enc[0])
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
