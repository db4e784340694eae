#!/usr/bin/env python3
"""tinygpt-client never hangs on a failed call. A fake server written with
grpcio answers GetModelInfo, then fails each GenerateStream mid-stream in one
of three ways: an error status after two tokens, a message whose `text` is not
UTF-8 (which the client cannot parse) followed by silence, and silence after
one token. `tinygpt-client bench` must return promptly, count every failure by
status code and exit non-zero; against a dead server likewise. Last, a fake
server that answers properly and records what it gets: `bench --prompts-file`
sends the file's token ids, cycling through its lines, and a malformed file is
refused with a message naming the line.

usage: client_failure_test.py CLIENT_BIN SOURCE_DIR"""
import json, os, subprocess, sys, threading, time
from concurrent import futures

import grpc

sys.path.insert(0, os.path.dirname(__file__))
import harness

client, source = sys.argv[1], sys.argv[2]
pb, pb_grpc = harness.stubs(source)
r = harness.Results()
release = threading.Event()  # ends the fake server's silences at the end


def token_message(token, text):
    return pb.GenerateStreamResponse(token_ids=[token], text=text).SerializeToString()


def broken_stream(mode):
    def handler(request, context):
        yield token_message(1, "a")
        if mode == "error":
            yield token_message(2, "b")
            context.abort(grpc.StatusCode.INTERNAL, "the engine failed mid-stream")
        elif mode == "bad-utf8":
            # text = "\xff": field 3, length 1. Python's protobuf would not build it.
            yield b"\x10\x02\x1a\x01\xff"
            release.wait(120)
        else:  # silent
            release.wait(120)
    return handler


received = []  # the token ids of every request the "record" server got
received_lock = threading.Lock()


def recording_stream(request, context):
    req = pb.GenerateRequest.FromString(request)
    with received_lock:
        received.append(list(req.token_ids.ids))
    yield token_message(1, "")
    yield pb.GenerateStreamResponse(token_ids=[2], finish_reason=pb.FINISH_REASON_LENGTH).SerializeToString()


def serve(mode):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    info = pb.ModelInfo(vocab_size=64, max_seq_len=64).SerializeToString()
    handlers = {
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: info, request_deserializer=None,
                                                            response_serializer=None),
        "GenerateStream": grpc.unary_stream_rpc_method_handler(
            recording_stream if mode == "record" else broken_stream(mode), request_deserializer=None,
            response_serializer=None),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("tinygpt.v1.Generation", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def bench(target, *flags, limit=60):
    t0 = time.time()
    p = subprocess.run([client, "bench", f"--target={target}", "--requests=6", "--concurrency=3", "--json", *flags],
                       capture_output=True, text=True, timeout=limit)
    return p, time.time() - t0


for mode, flags, code, within in [("error", [], "INTERNAL", 10), ("bad-utf8", [], "INTERNAL", 10),
                                  ("silent", ["--deadline-ms=1500"], "DEADLINE_EXCEEDED", 15)]:
    server, target = serve(mode)
    try:
        p, secs = bench(target, *flags)
        summary = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {}
        errors = summary.get("errors", {})
        r.check(f"{mode}: bench returns within {within}s", secs < within, f"{secs:.1f}s")
        r.check(f"{mode}: exit status 1", p.returncode == 1, str(p.returncode))
        r.check(f"{mode}: all 6 requests counted as failed, by status code",
                summary.get("failed") == 6 and sum(errors.values()) == 6 and (code is None or errors.get(code) == 6), str(errors))
    finally:
        release.set()
        server.stop(0)
        release.clear()

# --prompts-file: 5 requests over a 2-line file (plus a blank line) go out as lines 0, 1, 0, 1, 0.
import tempfile
work = tempfile.mkdtemp(prefix="tinygpt-client-test-")
good, bad = os.path.join(work, "prompts.jsonl"), os.path.join(work, "bad.jsonl")
with open(good, "w") as f:
    f.write("[1, 2, 3]\n\n[63, 0]\n")
with open(bad, "w") as f:
    f.write("[1, 2]\n[4, 64]\n")
server, target = serve("record")
try:
    p = subprocess.run([client, "bench", f"--target={target}", "--requests=5", "--concurrency=1", "--json", f"--prompts-file={good}",
                        "--output-len-min=2", "--output-len-max=2"], capture_output=True, text=True, timeout=60)
    summary = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {}
    r.check("prompts file: bench succeeds", p.returncode == 0 and summary.get("ok") == 5, p.stderr.strip() or f"ok {summary.get('ok')}")
    r.check("prompts file: the file's ids, cycling through its lines", received == [[1, 2, 3], [63, 0]] * 2 + [[1, 2, 3]],
            str(received))
    r.check("prompts file: prompt tokens counted", summary.get("prompt_tokens") == 3 * 3 + 2 * 2, str(summary.get("prompt_tokens")))
    received.clear()
    p = subprocess.run([client, "bench", f"--target={target}", "--requests=2", "--concurrency=1", "--json", f"--prompts-file={good}",
                        "--shared-prefix-len=4"], capture_output=True, text=True, timeout=60)
    r.check("prompts file + shared prefix: the same 4 tokens, then the file's",
            p.returncode == 0 and len(received) == 2 and received[0][:4] == received[1][:4] and
            received[0][4:] == [1, 2, 3] and received[1][4:] == [63, 0], str(received))
    p = subprocess.run([client, "bench", f"--target={target}", "--requests=2", "--json", f"--prompts-file={bad}"],
                       capture_output=True, text=True, timeout=60)
    r.check("prompts file: an id outside the vocabulary is refused, naming the line",
            p.returncode == 2 and "line 2" in p.stderr, f"rc {p.returncode}: {p.stderr.strip()}")
    p = subprocess.run([client, "bench", f"--target={target}", "--requests=2", "--json", f"--prompts-file={work}/missing.jsonl"],
                       capture_output=True, text=True, timeout=60)
    r.check("prompts file: a missing file is refused", p.returncode == 2 and "cannot open" in p.stderr, p.stderr.strip())
finally:
    server.stop(0)

# A dead server: nothing listens on the port.
port = harness.free_port()
p = subprocess.run([client, "bench", f"--target=127.0.0.1:{port}", "--requests=4", "--json"], capture_output=True, text=True,
                   timeout=60)
r.check("dead server: bench fails at once with a message", p.returncode == 1 and "UNAVAILABLE" in p.stderr, p.stderr.strip())
p = subprocess.run([client, "stream", f"--target=127.0.0.1:{port}", "--prompt-ids=1,2"], capture_output=True, text=True, timeout=60)
r.check("dead server: stream fails with UNAVAILABLE", p.returncode == 1 and "UNAVAILABLE" in p.stderr, p.stderr.strip())
r.finish()
