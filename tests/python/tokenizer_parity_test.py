#!/usr/bin/env python3
"""The C++ tokenizer against python3-sentencepiece on the same models and
texts: identical ids, identical decoding, and the continuation text (what a
response's `text` holds) equal to the pieces' bytes decoded as Python does.

Models: a BPE model trained by `tinygpt train --tokenizer-vocab` (C++ → Python),
and a unigram model trained by python3-sentencepiece and handed to
`tinygpt train --tokenizer FILE.model` (Python → C++, as a Llama-style
tokenizer.model would be).

usage: tokenizer_parity_test.py TINYGPT_BIN TOKENIZE_BIN"""
import base64, json, os, random, subprocess, sys, tempfile

import sentencepiece as spm

sys.path.insert(0, os.path.dirname(__file__))
import harness
from torch_tinygpt import load_safetensors

tinygpt, tokenize = sys.argv[1], sys.argv[2]
work = tempfile.mkdtemp(prefix="tinygpt-tokparity-")
r = harness.Results()

random.seed(1)
words = ["the", "cat", "sat", "on", "mat", "caf\u00e9", "na\u00efve", "\u03b1\u03b2\u03b3", "\u65e5\u672c\u8a9e", "\U0001F600",
         "2026", "don't", "\u0441\u043b\u043e\u0432\u043e", "stra\u00dfe", "x\u0301"]
letters = "abcdefghijklmnopqrstuvwxyzäöüéαβ日本"
words += ["".join(random.choice(letters) for _ in range(random.randint(2, 6))) for _ in range(400)]
corpus = os.path.join(work, "corpus.txt")
with open(corpus, "w", encoding="utf-8") as f:
    for doc in range(60):
        for line in range(12):
            f.write(" ".join(random.choice(words) for _ in range(random.randint(3, 14))) + "\n")
        f.write("\n")
TEXTS = ["the cat sat on the mat", "caf\u00e9 na\u00efve \U0001F600\U0001F680", "  leading and  double  spaces\tand tabs ",
         "\u65e5\u672c\u8a9e\u3068\u4e2d\u6587", "never seen: \u0416\u0436 \u05e9\u05dc\u05d5\u05dd \U0001F9D9\u200d\u2642\ufe0f",
         "control \x01\x7f bytes", "line\nbreaks\n\n", "digits 1234567890", "x", "\u00e9" * 40]


def tokenize_all(ckpt, requests):
    out = subprocess.run([tokenize, ckpt], input="".join(json.dumps(q) + "\n" for q in requests), capture_output=True,
                         text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def piece_bytes(sp, i):
    if sp.is_control(i) or sp.is_unused(i):
        return b""
    if sp.is_unknown(i):
        return sp.decode([i]).encode()
    if sp.is_byte(i):
        return bytes([int(sp.id_to_piece(i)[3:5], 16)])
    return sp.id_to_piece(i).replace("\u2581", " ").encode()


def compare(name, ckpt, sp):
    got = tokenize_all(ckpt, [{"text": t} for t in TEXTS])
    bad = [t for t, g in zip(TEXTS, got) if g["ids"] != sp.encode(t)]
    r.check(f"{name}: ids equal python3-sentencepiece's on {len(TEXTS)} texts", not bad, repr(bad[:2]))
    bad = [t for t, g in zip(TEXTS, got) if g["decode"] != sp.decode(sp.encode(t))]
    r.check(f"{name}: decoding equals python3-sentencepiece's", not bad, repr(bad[:2]))
    # Random id sequences (stray byte pieces, control and unknown ids included).
    seqs = [[random.randrange(sp.get_piece_size()) for _ in range(random.randint(1, 30))] for _ in range(300)]
    got = tokenize_all(ckpt, [{"ids": s} for s in seqs])
    bad = [s for s, g in zip(seqs, got) if g["decode"] != sp.decode(s)]
    r.check(f"{name}: decoding of 300 random id sequences equals python3-sentencepiece's", not bad, repr(bad[:1]))
    bad = [s for s, g in zip(seqs, got) if g["continuation"] != b"".join(piece_bytes(sp, i) for i in s).decode("utf-8", "replace")]
    r.check(f"{name}: continuation text equals the pieces' bytes decoded with U+FFFD", not bad, repr(bad[:1]))


# C++-trained BPE, read back by Python from the checkpoint's metadata.
bpe_ckpt = os.path.join(work, "bpe.safetensors")
out = subprocess.run([tinygpt, "train", f"--data={corpus}", "--tokenizer-vocab=600", "--steps=2", "--batch=2", f"--out={bpe_ckpt}"],
                     capture_output=True, text=True)
r.check("train --tokenizer-vocab 600 trains a tokenizer and the model with it", out.returncode == 0 and "tokenized" in out.stderr,
        out.stderr[-300:])
tensors, meta = load_safetensors(bpe_ckpt)
tok = json.loads(meta["tinygpt.tokenizer"])
sp = spm.SentencePieceProcessor(model_proto=base64.b64decode(tok["model"]))
cfg = json.loads(meta["tinygpt.config"])
r.check("the checkpoint's vocabulary is the tokenizer's", cfg["vocab_size"] == sp.get_piece_size() == 600 and tok["type"] == "sentencepiece",
        f"{cfg['vocab_size']} {sp.get_piece_size()}")
compare("C++-trained BPE", bpe_ckpt, sp)

# Python-trained unigram model file, used by `tinygpt train --tokenizer`.
prefix = os.path.join(work, "uni")
spm.SentencePieceTrainer.train(input=corpus, model_prefix=prefix, model_type="unigram", vocab_size=500, byte_fallback=True, character_coverage=0.99,
                               minloglevel=2)
uni_ckpt = os.path.join(work, "uni.safetensors")
subprocess.run([tinygpt, "train", f"--data={corpus}", f"--tokenizer={prefix}.model", "--steps=2", "--batch=2", f"--out={uni_ckpt}"],
               check=True, capture_output=True)
compare("python-trained unigram via --tokenizer", uni_ckpt, spm.SentencePieceProcessor(model_file=prefix + ".model"))

# Refusals with a clear message and a non-zero exit.
bad = subprocess.run([tinygpt, "train", f"--data={corpus}", f"--tokenizer={corpus}", "--steps=1", f"--out={work}/x.safetensors"],
                     capture_output=True, text=True)
r.check("a file that is not a SentencePiece model is refused", bad.returncode != 0 and "not a SentencePiece model" in bad.stderr,
        bad.stderr.strip())
bad = subprocess.run([tinygpt, "train", "--tokenizer-vocab=500", "--steps=1", f"--out={work}/x.safetensors"], capture_output=True, text=True)
r.check("--tokenizer-vocab without --data is refused", bad.returncode == 2 and "need --data" in bad.stderr, bad.stderr.strip())
r.finish()
