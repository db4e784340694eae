#!/usr/bin/env python3
"""Non-finite logits are never an answer (issue 19, item 1), against real
`tinygpt` processes:
- the issue's checkpoint (one element of blocks.1.n1.weight set to 3.4e38) is
  refused at load, naming the tensor, unless --allow-bad-weights (or its old
  name --allow-nonfinite-weights); loaded anyway, `tinygpt generate` exits
  non-zero with "non-finite logits at position N" and the server answers
  every request, greedy, sampled or with logprobs, INTERNAL;
- a checkpoint whose embedding row of token 40 is NaN: requests that reach
  token 40 end INTERNAL at the position where it entered, the requests
  beside them in the same batches go on and give the right tokens, the
  failures are counted (tinygpt_nonfinite_logits_total and
  tinygpt_requests_total{code="INTERNAL"}), the error is logged once with
  the checkpoint's path, and every KV block comes back.
usage: nonfinite_test.py TINYGPT_BIN SOURCE_DIR"""
import json, math, os, struct, subprocess, sys, tempfile, threading, urllib.request

import grpc
import harness

tinygpt, source = sys.argv[1], sys.argv[2]
pb, pb_grpc = harness.stubs(source)
r = harness.Results()
work = tempfile.mkdtemp(prefix="tinygpt-nonfinite-")
ckpt = harness.train(tinygpt, work)


def poisoned(name, tensor, element, value):
    """A copy of the trained checkpoint with one F32 element replaced."""
    data = bytearray(open(ckpt, "rb").read())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    assert header[tensor]["dtype"] == "F32"
    at = 8 + n + header[tensor]["data_offsets"][0] + 4 * element
    data[at:at + 4] = struct.pack("<f", value)
    path = os.path.join(work, name)
    open(path, "wb").write(data)
    return path


def d_model():
    n = struct.unpack("<Q", open(ckpt, "rb").read(8))[0]
    with open(ckpt, "rb") as f:
        f.seek(8)
        return json.loads(f.read(n))["tok.weight"]["shape"][1]


def generate(path, *flags):
    return subprocess.run([tinygpt, "generate", f"--checkpoint={path}", "--prompt-ids=1,2,3", "--max-new-tokens=8", *flags],
                          capture_output=True, text=True, timeout=60)


def status_of(call):
    try:
        return grpc.StatusCode.OK, call()
    except grpc.RpcError as e:
        return e.code(), e.details()


# --- the checkpoint --------------------------------------------------
repro = poisoned("repro.safetensors", "blocks.1.n1.weight", 5, 3.4e38)
out = generate(repro)
r.check("3.4e38 in blocks.1.n1.weight: the loader refuses it, naming the tensor",
        out.returncode != 0 and "blocks.1.n1.weight" in out.stderr and "magnitude above" in out.stderr
        and "--allow-bad-weights" in out.stderr, out.stderr.strip()[-300:])
for flag in ("--allow-bad-weights", "--allow-nonfinite-weights"):
    out = generate(repro, flag)
    r.check(f"generate {flag}: exits non-zero with the position, prints no output",
            out.returncode != 0 and "the model produced non-finite logits at position 3" in out.stderr
            and "output_ids" not in out.stdout, f"rc {out.returncode}: {out.stderr.strip()[-200:]}")
r.check("generate on the clean checkpoint still exits 0", generate(ckpt).returncode == 0)

with harness.Server(tinygpt, repro, "--allow-bad-weights") as s:
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(s.address))
    ids = pb.TokenIds(ids=[1, 2, 3])
    for what, req in (("greedy", pb.GenerateRequest(token_ids=ids, max_new_tokens=8)),
                      ("sampled", pb.GenerateRequest(token_ids=ids, max_new_tokens=8, temperature=1.0, seed=3)),
                      ("greedy with logprobs", pb.GenerateRequest(token_ids=ids, max_new_tokens=8, top_logprobs=2)),
                      ("n=3", pb.GenerateRequest(token_ids=ids, max_new_tokens=8, temperature=0.7, n=3))):
        code, detail = status_of(lambda: stub.Generate(req, timeout=30))
        r.check(f"served, {what}: INTERNAL, not OK", code == grpc.StatusCode.INTERNAL
                and detail == "the model produced non-finite logits at position 3", f"{code} {detail}")
    code, detail = status_of(lambda: list(stub.GenerateStream(pb.GenerateRequest(token_ids=ids, max_new_tokens=8), timeout=30)))
    r.check("served, a stream: INTERNAL", code == grpc.StatusCode.INTERNAL, f"{code} {detail}")

# --- one poisoned token: only the requests that meet it fail -----------------
CLEAN = [[i, i + 1] for i in (1, 5, 9, 13, 17)]  # their outputs (20 tokens) stay below 40
with harness.Server(tinygpt, ckpt) as s:
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(s.address))
    expected = {p[0]: list(stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=p), max_new_tokens=20), timeout=30).token_ids)
                for p in CLEAN}
r.check("the clean model's outputs for the clean prompts avoid token 40", all(40 not in v for v in expected.values()), str(expected))
nan40 = poisoned("nan40.safetensors", "tok.weight", 40 * d_model() + 7, math.nan)
log_path = os.path.join(work, "serve.log")
with open(log_path, "w") as log:
    proc = subprocess.Popen([tinygpt, "serve", f"--checkpoint={nan40}", "--port=0", "--metrics-port=0", "--http-port=-1", "--allow-bad-weights",
                             "--debug-step-delay-ms=10"], stdout=subprocess.PIPE, stderr=log, text=True)
    address = proc.stdout.readline().split("listening on ")[1].split()[0]
    metrics_port = int(proc.stdout.readline().rsplit(":", 1)[1].split("/")[0])
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(address))
    results = {}

    def unary(key, prompt, n):
        results[key] = status_of(lambda: list(stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=prompt), max_new_tokens=n),
                                                            timeout=60).token_ids))

    def stream(key, prompt, n):
        got = []

        def run():
            for m in stub.GenerateStream(pb.GenerateRequest(token_ids=pb.TokenIds(ids=prompt), max_new_tokens=n), timeout=60):
                got.extend(m.token_ids)
            return got
        code, detail = status_of(run)
        results[key] = (code, detail if code != grpc.StatusCode.OK else got, list(got))

    # Clean requests run 20 steps; the poisoned ones fail in the middle of them.
    jobs = [(unary, ("clean-unary", i), [i, i + 1], 20) for i in (1, 5, 9)]
    jobs += [(stream, ("clean-stream", i), [i, i + 1], 20) for i in (13, 17)]
    jobs += [(unary, "prompt-has-40", [39, 40], 10),      # the prompt itself: fails at its first token, position 2
             (unary, "reaches-40", [36, 37, 38], 10),     # generates 39, 40, then fails at position 5
             (stream, "stream-reaches-40", [37, 38], 10)]  # gets 39 and 40 first, then fails at position 4
    threads = [threading.Thread(target=f, args=a) for f, *a in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in (1, 5, 9):
        code, toks = results[("clean-unary", i)]
        r.check(f"clean unary request beside them is OK with the clean model's tokens ({i}, {i + 1})",
                code == grpc.StatusCode.OK and toks == expected[i], f"{code} {toks}")
    for i in (13, 17):
        code, toks, _ = results[("clean-stream", i)]
        r.check(f"clean stream beside them is OK with the clean model's tokens ({i})", code == grpc.StatusCode.OK and toks == expected[i],
                f"{code} {toks}")
    want = {"prompt-has-40": 2, "reaches-40": 5}
    for key, pos in want.items():
        code, detail = results[key]
        r.check(f"{key}: INTERNAL at position {pos}", code == grpc.StatusCode.INTERNAL
                and detail == f"the model produced non-finite logits at position {pos}", f"{code} {detail}")
    code, detail, got = results["stream-reaches-40"]
    r.check("a stream that reaches token 40: its tokens up to 40, then INTERNAL at position 4",
            code == grpc.StatusCode.INTERNAL and detail == "the model produced non-finite logits at position 4" and got == [39, 40],
            f"{code} {detail} {got}")
    m = harness.parse_metrics(urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode())
    r.check("tinygpt_nonfinite_logits_total counts the 3 failed samples", harness.value(m, "tinygpt_nonfinite_logits_total") == 3,
            str(harness.value(m, "tinygpt_nonfinite_logits_total")))
    r.check("tinygpt_requests_total: 3 INTERNAL, 5 OK", harness.value(m, "tinygpt_requests_total", code="INTERNAL") == 3
            and harness.value(m, "tinygpt_requests_total", code="OK") == 5)
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    r.check("every KV block is back", info.kv_blocks_free == info.kv_blocks_total and info.running_seqs == 0)
    proc.terminate()
    r.check("the server exits 0", proc.wait(timeout=30) == 0)

log = open(log_path).read()
named = [l for l in log.splitlines() if "produced non-finite logits (request" in l]
r.check("logged once, with the checkpoint's path", len(named) == 1 and nan40 in named[0], "\n".join(named)[:400])
r.check("each failed request's line says INTERNAL and the position",
        log.count("status=INTERNAL (the model produced non-finite logits at position") == 3)
r.finish()
