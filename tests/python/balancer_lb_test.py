#!/usr/bin/env python3
"""Two tinygpt replicas behind a real HAProxy (Debian's 2.6) gRPC load balancer
on loopback, configured from deploy/balancer/haproxy.cfg with its DNS-found
server slots replaced by the two local replicas: unary and streaming requests
through it succeed, both replicas serve some, its Prometheus exporter answers,
and with both replicas gone a call ends UNAVAILABLE at once instead of hanging.
(The DNS discovery itself runs in the compose deployment of
scripts/container-test.sh.)
usage: balancer_lb_test.py TINYGPT_BIN SOURCE_DIR"""
import os, re, shutil, socket, subprocess, sys, tempfile, time, urllib.request

import grpc
import harness

tinygpt, source = sys.argv[1], sys.argv[2]
pb, pb_grpc = harness.stubs(source)
r = harness.Results()
work = tempfile.mkdtemp(prefix="tinygpt-balancer-")
ckpt = harness.train(tinygpt, work)

lb_port, metrics_port = harness.free_port(), harness.free_port()

with harness.Server(tinygpt, ckpt) as a, harness.Server(tinygpt, ckpt) as b:
    conf = open(os.path.join(source, "deploy/balancer/haproxy.cfg")).read()
    # Loopback replicas instead of the "server" name's DNS answers, each checked
    # on its own HTTP API port (its /health); loopback binds.
    template = re.compile(r"\n\s*server-template [^\n]*")
    assert template.search(conf), "haproxy.cfg has no server-template line"
    conf = template.sub(f"\n  server a {a.address} port {a.http_port}\n  server b {b.address} port {b.http_port}", conf)
    conf = conf.replace("bind :50051 proto h2", f"bind 127.0.0.1:{lb_port} proto h2")
    conf = conf.replace("bind :8404", f"bind 127.0.0.1:{metrics_port}")
    conf_path = os.path.join(work, "haproxy.cfg")
    open(conf_path, "w").write(conf)
    t = subprocess.run(["haproxy", "-c", "-f", conf_path], capture_output=True, text=True)
    assert t.returncode == 0, t.stdout + t.stderr
    lb = subprocess.Popen(["haproxy", "-W", "-db", "-f", conf_path], stdout=subprocess.DEVNULL)
    try:
        harness.wait_for(lambda: socket.create_connection(("127.0.0.1", lb_port), timeout=1).close() is None, what="haproxy")
        channel = grpc.insecure_channel(f"127.0.0.1:{lb_port}")
        stub = pb_grpc.GenerationStub(channel)
        ok = 0
        for i in range(20):
            # One client connection: HAProxy balances each call (HTTP/2 stream) on its own.
            resp = stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[i, i + 1]), max_new_tokens=4), timeout=30)
            ok += list(resp.token_ids) == [i + 2, i + 3, i + 4, i + 5]
        r.check("unary requests through HAProxy", ok == 20, f"{ok}/20 correct")
        streamed_ok = 0
        for i in range(4):
            msgs = list(stub.GenerateStream(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[i]), max_new_tokens=5), timeout=30))
            tokens = [t for m in msgs for t in m.token_ids]
            streamed_ok += tokens == [i + 1, i + 2, i + 3, i + 4, i + 5] and msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH
        r.check("streaming through HAProxy", streamed_ok == 4)
        served = [harness.value(s.metrics(), "tinygpt_requests_total", code="OK") for s in (a, b)]
        r.check("both replicas served some, over one client connection", all(n > 0 for n in served) and sum(served) == 24, f"{served}")
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        r.check("HAProxy's Prometheus exporter: the backend up with 2 active replicas",
                'haproxy_backend_status{proxy="tinygpt",state="UP"} 1' in text and
                'haproxy_backend_active_servers{proxy="tinygpt"} 2' in text)
        a.stop()
        b.stop()
        start = time.time()
        try:
            stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1]), max_new_tokens=2), timeout=20)
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
        took = time.time() - start
        r.check("every replica down: UNAVAILABLE at once, not a hang", code == grpc.StatusCode.UNAVAILABLE and took < 5,
                f"{code} after {took:.1f} s")
    finally:
        lb.terminate()
        lb.wait(timeout=30)
shutil.rmtree(work, ignore_errors=True)
r.finish()
