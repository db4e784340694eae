#!/usr/bin/env python3
"""Text in and out over gRPC, checked from Python's grpcio (a strict UTF-8
parser: a response whose `text` is not UTF-8 fails to parse there).

1. A byte-level model whose greedy output is scripted (its weights make
   position p predict a chosen byte): multi-byte characters split over
   tokens, invalid bytes, and a character left unfinished at the end. The
   unary text equals Python's bytes.decode("utf-8", "replace") of the output;
   the stream's texts concatenate to it, and each message carries exactly the
   characters its tokens completed (Python's incremental decoder agrees
   message by message). Stop strings, text prompts, invalid UTF-8 prompts.
2. A 32000-token model with random weights, without a tokenizer (ids only,
   no text) and with a SentencePiece tokenizer of 32000 pieces trained by
   python3-sentencepiece: every response parses, the text equals the pieces'
   bytes decoded, and stream == unary.

usage: text_serving_test.py TINYGPT_BIN SOURCE_DIR"""
import base64, codecs, io, json, os, random, sys, tempfile

import grpc
import sentencepiece as spm
import torch

sys.path.insert(0, os.path.dirname(__file__))
import harness
from torch_tinygpt import TinyGPT, save_safetensors

tinygpt, source = sys.argv[1], sys.argv[2]
pb, pb_grpc = harness.stubs(source)
work = tempfile.mkdtemp(prefix="tinygpt-text-")
r = harness.Results()

PROMPT_LEN = 4
SCRIPT = ("caf\u00e9 \U0001F600 \u65e5\u672c!".encode() + b" \xff\x80 ok \xe2\x82\xac" + b" end\xe2\x82")


def scripted_byte_model(path):
    """TinyGPT whose blocks add nothing and whose head reads the position:
    the token after position p is SCRIPT[p - PROMPT_LEN + 1], whatever the prompt."""
    d, n = 128, 96
    cfg = dict(vocab_size=256, d_model=d, n_layers=1, n_heads=4, n_kv_heads=4, ffn_hidden=64, max_seq_len=n,
               pos_encoding="learned", norm_eps=1e-5)
    m = TinyGPT(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.pos.weight.copy_(torch.eye(n, d))
        m.nf.weight.fill_(1.0)
        for b in m.blocks:  # LayerNorm weights 1 so the blocks stay well defined
            b.n1.weight.fill_(1.0)
            b.n2.weight.fill_(1.0)
        for i, byte in enumerate(SCRIPT):
            e = torch.zeros(d)
            e[PROMPT_LEN - 1 + i] = 1.0
            ln = (e - e.mean()) / torch.sqrt(e.var(unbiased=False) + 1e-5)
            m.head.weight[byte] += 10 * ln / ln.norm()
    save_safetensors(path, m.state_dict(), {"tinygpt.config": json.dumps(cfg), "tinygpt.tokenizer": json.dumps({"type": "bytes"})})


def stream(stub, req):
    msgs = list(stub.GenerateStream(req, timeout=60))
    return msgs, "".join(m.text for m in msgs), [t for m in msgs for t in m.token_ids]


def raw_generate(address, raw):
    """Sends request bytes as they are (Python's protobuf would refuse to build invalid UTF-8)."""
    ch = grpc.insecure_channel(address)
    call = ch.unary_unary("/tinygpt.v1.Generation/Generate", request_serializer=lambda b: b,
                          response_deserializer=pb.GenerateResponse.FromString)
    return call(raw, timeout=30)


def messages_split_ok(msgs):
    """Message by message, the text is what an incremental UTF-8 decoder has
    completed by then: a character is never split over two messages. The
    U+FFFD for the character left unfinished at the end comes with the last
    token's message or a later one (a message may carry text only)."""
    dec = codecs.getincrementaldecoder("utf-8")("replace")
    expected = [dec.decode(bytes(m.token_ids)) for m in msgs]
    tail = dec.decode(b"", final=True)
    placed, seen = False, 0
    for m, want in zip(msgs, expected):
        seen += len(m.token_ids)
        if m.text == want:
            continue
        if not placed and seen == len(SCRIPT) and m.text == want + tail:
            placed = True
            continue
        return False, f"{bytes(m.token_ids)!r} gave {m.text!r}, expected {want!r}"
    return placed or not tail, "the unfinished character's U+FFFD never came"


# --- 1. byte-level, scripted output -----------------------------------------------------------
byte_ckpt = os.path.join(work, "bytes.safetensors")
scripted_byte_model(byte_ckpt)
with harness.Server(tinygpt, byte_ckpt) as server:
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(server.address))
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    r.check("byte model: GetModelInfo names its tokenizer", info.tokenizer == "bytes" and info.eos_token_id == -1, str(info.tokenizer))
    req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 2, 3, 4]), max_new_tokens=len(SCRIPT))
    resp = stub.Generate(req, timeout=60)
    out = bytes(resp.token_ids)
    r.check("byte model: greedy output is the script (bytes >= 0x80 included)", out == SCRIPT and max(out) >= 0x80, repr(out))
    want = SCRIPT.decode("utf-8", "replace")
    r.check("byte model: unary text is the output bytes decoded with U+FFFD for invalid ones", resp.text == want,
            f"{resp.text!r} vs {want!r}")
    msgs, text, ids = stream(stub, req)
    r.check("byte model: stream texts concatenate to the unary text", text == resp.text and bytes(ids) == SCRIPT, repr(text))
    split_ok, detail = messages_split_ok(msgs)
    r.check("byte model: each stream message carries the characters its tokens completed", split_ok, detail)
    r.check("byte model: the unfinished last character became U+FFFD", text.endswith(" end\ufffd"), repr(text[-6:]))

    stop = stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[9, 9, 9, 9]), max_new_tokens=len(SCRIPT),
                                            stop=["\U0001F600"]), timeout=60)
    cut = SCRIPT.index("\U0001F600".encode()) + 4
    r.check("byte model: a stop string spanning 4 tokens ends generation at its last byte",
            stop.finish_reason == pb.FINISH_REASON_STOP and bytes(stop.token_ids) == SCRIPT[:cut] and stop.text.endswith("\U0001F600"),
            repr(stop.text))
    t = stub.Generate(pb.GenerateRequest(text="h\u00e9!", max_new_tokens=3), timeout=60)
    r.check("byte model: a UTF-8 text prompt is encoded as its bytes", t.usage.prompt_tokens == 4 and bytes(t.token_ids) == SCRIPT[:3],
            f"{t.usage.prompt_tokens} {bytes(t.token_ids)!r}")
    for name, raw in [("invalid UTF-8", b"\x0a\x02\xff\xfe\x18\x04"), ("a lone surrogate", b"\x0a\x03\xed\xa0\x80\x18\x04")]:
        try:
            raw_generate(server.address, raw)
            r.check(f"byte model: a text prompt with {name} is refused", False, "accepted")
        except grpc.RpcError as e:
            r.check(f"byte model: a text prompt with {name} gets INVALID_ARGUMENT", e.code() == grpc.StatusCode.INVALID_ARGUMENT,
                    f"{e.code()} {e.details()}")
    r.check("byte model: still serving", bytes(stub.Generate(req, timeout=60).token_ids) == SCRIPT)

# A stream interval (--stream-interval: tokens a message gathers) changes how
# the tokens are grouped into messages, nothing else: the first token comes
# alone, later messages carry at least the interval (the last one the rest),
# the texts still follow the characters, and stream == unary. Steps of 10 ms
# keep the reactor ahead of the engine here (a reactor that falls behind
# sends what gathered meanwhile in one message, which would blur the sizes).
for interval in (3, 16):
    with harness.Server(tinygpt, byte_ckpt, f"--stream-interval={interval}", "--debug-step-delay-ms=10") as server:
        stub = pb_grpc.GenerationStub(grpc.insecure_channel(server.address))
        req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 2, 3, 4]), max_new_tokens=len(SCRIPT))
        unary = stub.Generate(req, timeout=60)
        msgs, text, ids = stream(stub, req)
        r.check(f"interval {interval}: stream == unary (tokens and text)", bytes(ids) == SCRIPT and text == unary.text == want,
                repr(text))
        sizes = [len(m.token_ids) for m in msgs if m.token_ids]
        r.check(f"interval {interval}: the first token alone, then messages of >= {interval} tokens",
                sizes[0] == 1 and all(n >= interval for n in sizes[1:-1]) and len(sizes) <= 2 + (len(SCRIPT) - 1) // interval,
                str(sizes))
        split_ok, detail = messages_split_ok(msgs)
        r.check(f"interval {interval}: each message carries the characters its tokens completed", split_ok, detail)
        stop = stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[9, 9, 9, 9]), max_new_tokens=len(SCRIPT),
                                                stop=["\U0001F600"]), timeout=60)
        smsgs, stext, sids = stream(stub, pb.GenerateRequest(token_ids=pb.TokenIds(ids=[9, 9, 9, 9]), max_new_tokens=len(SCRIPT),
                                                             stop=["\U0001F600"]))
        r.check(f"interval {interval}: a stop string ends the stream where it ends the unary call",
                sids == list(stop.token_ids) and stext == stop.text and smsgs[-1].finish_reason == pb.FINISH_REASON_STOP,
                f"{stext!r} vs {stop.text!r}")

# --- 2. 32000 tokens, without and with a tokenizer ---------------------------------------------
random.seed(0)
alphabet = list("abcdefghijklmnopqrstuvwxyz") + list("\u00e4\u00f6\u00fc\u00df\u00e9\u00e8\u00e7\u00f1\u03b1\u03b2\u03b3\u03b4\u65e5\u672c\u8a9e") + ["\U0001F600", "\U0001F680"]
lines = [" ".join("".join(random.choice(alphabet) for _ in range(random.randint(2, 7))) for _ in range(random.randint(3, 12)))
         for _ in range(12000)]
model_io = io.BytesIO()
spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model_io, model_type="bpe", vocab_size=32000,
                               byte_fallback=True, minloglevel=2)
sp = spm.SentencePieceProcessor(model_proto=model_io.getvalue())
assert sp.get_piece_size() == 32000


cfg = dict(vocab_size=32000, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128, max_seq_len=128,
           pos_encoding="learned", norm_eps=1e-5)
torch.manual_seed(0)
model = TinyGPT(cfg)
byte_ids = [i for i in range(32000) if sp.is_byte(i)]
with torch.no_grad():
    model.head.weight.mul_(8.0)  # spread the logits so greedy output wanders over the vocabulary
    model.head.bias[byte_ids] += 2.0  # and make byte-fallback pieces (partial characters) common in it
plain = os.path.join(work, "v32k.safetensors")
with_tok = os.path.join(work, "v32k-sp.safetensors")
save_safetensors(plain, model.state_dict(), {"tinygpt.config": json.dumps(cfg)})
save_safetensors(with_tok, model.state_dict(), {"tinygpt.config": json.dumps(cfg), "tinygpt.tokenizer": json.dumps(
    {"type": "sentencepiece", "model": base64.b64encode(model_io.getvalue()).decode()})})
prompts = [[random.randrange(32000) for _ in range(random.randint(4, 40))] for _ in range(8)]

with harness.Server(tinygpt, plain) as server:
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(server.address))
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    r.check("32k without tokenizer: GetModelInfo says ids only", info.tokenizer == "" and info.vocab_size == 32000)
    ok = True
    for p in prompts:
        resp = stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=p), max_new_tokens=48), timeout=60)
        _, text, ids = stream(stub, pb.GenerateRequest(token_ids=pb.TokenIds(ids=p), max_new_tokens=48))
        ok &= len(resp.token_ids) == 48 and resp.text == "" and text == "" and ids == list(resp.token_ids)
    r.check("32k without tokenizer: 8 prompts answered with ids and empty text, stream == unary", ok)
    try:
        stub.Generate(pb.GenerateRequest(text="hello", max_new_tokens=4), timeout=30)
        r.check("32k without tokenizer: a text prompt is refused", False)
    except grpc.RpcError as e:
        r.check("32k without tokenizer: a text prompt gets INVALID_ARGUMENT saying there is no tokenizer",
                e.code() == grpc.StatusCode.INVALID_ARGUMENT and "no tokenizer" in e.details(), e.details())

with harness.Server(tinygpt, with_tok) as server:
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(server.address))
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    r.check("32k with tokenizer: GetModelInfo", info.tokenizer == "sentencepiece" and info.tokenizer_vocab_size == 32000
            and info.eos_token_id == sp.eos_id(), f"{info.tokenizer} {info.eos_token_id}")
    texts_ok, stream_ok, any_high = True, True, False
    for p in prompts:
        req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=p), max_new_tokens=48, ignore_eos=True)
        resp = stub.Generate(req, timeout=60)
        want = b"".join(harness.sp_piece_bytes(sp, i) for i in resp.token_ids).decode("utf-8", "replace")
        texts_ok &= resp.text == want and len(resp.token_ids) == 48
        any_high |= any(sp.is_byte(i) and int(sp.id_to_piece(i)[3:5], 16) >= 0x80 for i in resp.token_ids)
        _, text, ids = stream(stub, req)
        stream_ok &= text == resp.text and ids == list(resp.token_ids)
    r.check("32k with tokenizer: text equals the pieces' bytes decoded (U+FFFD for stray byte pieces)", texts_ok)
    r.check("32k with tokenizer: the outputs include byte-fallback pieces >= 0x80", any_high)
    r.check("32k with tokenizer: stream == unary for 8 prompts", stream_ok)
    text = "na\u00efve caf\u00e9 \u65e5\u672c\U0001F600 zz\u00df"
    resp = stub.Generate(pb.GenerateRequest(text=text, max_new_tokens=4, ignore_eos=True), timeout=60)
    r.check("32k with tokenizer: a text prompt is encoded as python3-sentencepiece encodes it",
            resp.usage.prompt_tokens == len(sp.encode(text)), f"{resp.usage.prompt_tokens} vs {len(sp.encode(text))}")
r.finish()
