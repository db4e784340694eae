#!/usr/bin/env python3
"""tinygpt-client never hangs on a failed call. A fake server written with
grpcio answers GetModelInfo, then fails each GenerateStream mid-stream in one
of three ways: an error status after two tokens, a message whose `text` is not
UTF-8 (which the client cannot parse) followed by silence, and silence after
one token. `tinygpt-client bench` must return promptly, count every failure by
status code and exit non-zero; against a dead server likewise.

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


def serve(mode):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    info = pb.ModelInfo(vocab_size=64, max_seq_len=64).SerializeToString()
    handlers = {
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: info, request_deserializer=None,
                                                            response_serializer=None),
        "GenerateStream": grpc.unary_stream_rpc_method_handler(broken_stream(mode), request_deserializer=None,
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

# A dead server: nothing listens on the port.
port = harness.free_port()
p = subprocess.run([client, "bench", f"--target=127.0.0.1:{port}", "--requests=4", "--json"], capture_output=True, text=True,
                   timeout=60)
r.check("dead server: bench fails at once with a message", p.returncode == 1 and "UNAVAILABLE" in p.stderr, p.stderr.strip())
p = subprocess.run([client, "stream", f"--target=127.0.0.1:{port}", "--prompt-ids=1,2"], capture_output=True, text=True, timeout=60)
r.check("dead server: stream fails with UNAVAILABLE", p.returncode == 1 and "UNAVAILABLE" in p.stderr, p.stderr.strip())
r.finish()
