#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora (fuzz/corpus/{checkpoint,request}/).

checkpoint/: small TinyGPT checkpoints (learned and ALiBi positions, F32, F16
and BF16 tensors) and a few near-misses of the loader's checks, so mutations
start from every branch. request/: GenerateRequest messages in protobuf wire
form, encoded by protoc from the text protos below. Run it again after
changing either format; regression inputs (crashes found) live beside these
under their own names and are not rewritten.
"""
import json
import os
import random
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def layout(cfg):
    d = cfg["d_model"]
    hd = d // cfg["n_heads"]
    qkv = (cfg["n_heads"] + 2 * cfg["n_kv_heads"]) * hd
    t = [("tok.weight", [cfg["vocab_size"], d])]
    if cfg["pos_encoding"] == "learned":
        t.append(("pos.weight", [cfg["max_seq_len"], d]))
    for i in range(cfg["n_layers"]):
        p = f"blocks.{i}."
        t += [(p + "n1.weight", [d]), (p + "n1.bias", [d]), (p + "qkv.weight", [qkv, d]), (p + "qkv.bias", [qkv]),
              (p + "proj.weight", [d, d]), (p + "proj.bias", [d]), (p + "n2.weight", [d]), (p + "n2.bias", [d]),
              (p + "ff.w12.weight", [2 * cfg["ffn_hidden"], d]), (p + "ff.w12.bias", [2 * cfg["ffn_hidden"]]),
              (p + "ff.w3.weight", [d, cfg["ffn_hidden"]]), (p + "ff.w3.bias", [d])]
    t += [("nf.weight", [d]), ("nf.bias", [d]), ("head.weight", [cfg["vocab_size"], d]), ("head.bias", [cfg["vocab_size"]])]
    return t


def safetensors(tensors, metadata):
    """tensors: {name: (dtype, shape, bytes)}; sorted by name like the writers."""
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - (len(h) + 8) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


def checkpoint(cfg, dtypes, rng):
    tensors = {}
    for i, (name, shape) in enumerate(layout(cfg)):
        n = 1
        for s in shape:
            n *= s
        dtype = dtypes[i % len(dtypes)]
        vals = [rng.uniform(-1, 1) for _ in range(n)]
        if dtype == "F32":
            raw = struct.pack(f"<{n}f", *vals)
        elif dtype == "F16":
            raw = struct.pack(f"<{n}e", *vals)
        else:  # BF16: the top half of the F32 bits
            raw = b"".join(struct.pack("<f", v)[2:] for v in vals)
        tensors[name] = (dtype, shape, raw)
    return tensors


def write(folder, name, data):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def checkpoints():
    out = os.path.join(HERE, "corpus", "checkpoint")
    rng = random.Random(1)
    base = {"vocab_size": 5, "d_model": 4, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 4,
            "max_seq_len": 6, "pos_encoding": "learned", "norm_eps": 1e-5}
    alibi = dict(base, pos_encoding="alibi", n_layers=2, n_kv_heads=2)
    for name, cfg, dtypes in [("learned_f32", base, ["F32"]), ("alibi_mixed", alibi, ["F32", "F16", "BF16"])]:
        t = checkpoint(cfg, dtypes, rng)
        meta = {"tinygpt.config": json.dumps(cfg)}
        write(out, name, safetensors(t, meta))
    t = checkpoint(base, ["F32"], rng)
    meta = {"tinygpt.config": json.dumps(base)}
    good = safetensors(t, meta)
    n = struct.unpack("<Q", good[:8])[0]
    write(out, "trailing_byte", good + b"\0")
    write(out, "header_short", struct.pack("<Q", n - 1) + good[8:])
    nan = bytearray(good)
    nan[8 + n:8 + n + 4] = struct.pack("<f", float("nan"))
    write(out, "nan", bytes(nan))
    write(out, "huge_max_seq_len",
          safetensors(t, {"tinygpt.config": json.dumps(dict(base, max_seq_len=2 ** 30))}))
    write(out, "no_config", safetensors(t, {"other": "x"}))
    write(out, "config.json", json.dumps(base).encode())


REQUESTS = {
    "greedy_ids": "token_ids { ids: [1, 2, 3] } max_new_tokens: 4",
    "text_sampled": 'text: "Once upon" max_new_tokens: 8 temperature: 0.8 top_k: 40 top_p { value: 0.95 } seed: 7',
    "stops": 'text: "ab" max_new_tokens: 20 stop_token_ids: [10, 32] stop: ["\\n", "end"] request_id: "r1"',
    "full_context": "token_ids { ids: [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20] } max_new_tokens: 16",
    "bad_top_p": "token_ids { ids: [1] } max_new_tokens: 2 top_p { value: 0 }",
    "bad_token": "token_ids { ids: [1, 300, -2] } max_new_tokens: 2",
    "top_k_large": "token_ids { ids: [1] } max_new_tokens: 3 temperature: 2 top_k: 100000 top_p { value: 1e-30 }",
}


def requests():
    out = os.path.join(HERE, "corpus", "request")
    os.makedirs(out, exist_ok=True)
    for name, text in REQUESTS.items():
        data = subprocess.run(["protoc", f"--proto_path={ROOT}/proto", "--encode=tinygpt.v1.GenerateRequest", "tinygpt.proto"],
                              input=text.encode(), capture_output=True, check=True).stdout
        write(out, name + ".pb", data)


if __name__ == "__main__":
    checkpoints()
    requests()
    print("seed corpora written under", os.path.join(HERE, "corpus"), file=sys.stderr)
