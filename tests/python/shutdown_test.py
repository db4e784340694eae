#!/usr/bin/env python3
"""Draining with a deadline: on SIGTERM with --drain-timeout 1, a request
that can finish in time ends OK; unary requests and streams cut off by the
deadline end UNAVAILABLE "server shut down before the request finished" (a
stream after the tokens it already got), each is logged (and counted in
tinygpt_requests_total by the same call) with that status, and the drain logs
how many finished and how many were cut off.
usage: shutdown_test.py TINYGPT_BIN SOURCE_DIR"""
import os, re, signal, subprocess, sys, tempfile, threading, time

import grpc
import harness

tinygpt, source = sys.argv[1], sys.argv[2]
pb, pb_grpc = harness.stubs(source)
r = harness.Results()
work = tempfile.mkdtemp(prefix="tinygpt-shutdown-")
ckpt = harness.train(tinygpt, work)
SHUTDOWN = "server shut down before the request finished"

log_path = os.path.join(work, "serve.log")
with open(log_path, "w") as log:
    # 40 ms steps: 60 tokens take 2.4 s or more, 3 tokens about 0.12 s, and
    # the drain deadline is 1 s.
    proc = subprocess.Popen([tinygpt, "serve", f"--checkpoint={ckpt}", "--port=0", "--metrics-port=0", "--http-port=-1", "--debug-step-delay-ms=40",
                             "--drain-timeout=1"], stdout=subprocess.PIPE, stderr=log, text=True)
    address = proc.stdout.readline().split("listening on ")[1].split()[0]
    proc.stdout.readline()
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(address))
    results = {}

    def unary(i):
        try:
            resp = stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[i]), max_new_tokens=60), timeout=60)
            results[("unary", i)] = (grpc.StatusCode.OK, "", len(resp.token_ids))
        except grpc.RpcError as e:
            results[("unary", i)] = (e.code(), e.details(), 0)

    def stream(i):
        tokens = 0
        try:
            for m in stub.GenerateStream(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[i]), max_new_tokens=60), timeout=60):
                tokens += len(m.token_ids)
            results[("stream", i)] = (grpc.StatusCode.OK, "", tokens)
        except grpc.RpcError as e:
            results[("stream", i)] = (e.code(), e.details(), tokens)

    def short(i):
        try:
            resp = stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[i]), max_new_tokens=3), timeout=60)
            results[("short", i)] = (grpc.StatusCode.OK, "", len(resp.token_ids))
        except grpc.RpcError as e:
            results[("short", i)] = (e.code(), e.details(), 0)

    threads = [threading.Thread(target=f, args=(i,)) for f in (unary, stream) for i in range(8)]
    for t in threads:
        t.start()
    harness.wait_for(lambda: stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).running_seqs == 16, what="16 running")
    shorts = [threading.Thread(target=short, args=(i,)) for i in (1, 2)]
    for t in shorts:
        t.start()
    # Poll without sleeping: the short ones are only briefly in flight.
    deadline = time.time() + 30
    while time.time() < deadline:
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        if info.running_seqs + info.waiting_seqs == 18:
            break
    proc.send_signal(signal.SIGTERM)
    for t in threads + shorts:
        t.join(timeout=60)
    rc = proc.wait(timeout=60)

r.check("server exits 0", rc == 0, str(rc))
cut = [k for k, (c, d, _) in results.items() if c == grpc.StatusCode.UNAVAILABLE and d == SHUTDOWN]
r.check("every long unary request cut off with UNAVAILABLE and the shutdown message",
        all(results[("unary", i)][:2] == (grpc.StatusCode.UNAVAILABLE, SHUTDOWN) for i in range(8)),
        str([results[("unary", i)][0].name for i in range(8)]))
r.check("every long stream cut off with UNAVAILABLE and the shutdown message",
        all(results[("stream", i)][:2] == (grpc.StatusCode.UNAVAILABLE, SHUTDOWN) for i in range(8)))
r.check("cut-off streams got some tokens first, not all", all(0 < results[("stream", i)][2] < 60 for i in range(8)),
        str([results[("stream", i)][2] for i in range(8)]))
r.check("short requests finished OK within the deadline", all(results[("short", i)] == (grpc.StatusCode.OK, "", 3) for i in (1, 2)),
        str([results.get(("short", i)) for i in (1, 2)]))
log = open(log_path).read()
logged = len(re.findall(r"status=UNAVAILABLE \(" + SHUTDOWN + r"\) finish=cancelled", log))
r.check("each cut-off request logged (and counted) as UNAVAILABLE", logged == 16, f"{logged} log lines")
m = re.search(r"drain: (\d+) requests in flight at the signal; (\d+) finished, (\d+) cut off", log)
r.check("drain logs finished and cut-off counts", m is not None and m.groups() == ("18", "2", "16"), m and str(m.groups()))
r.finish()
