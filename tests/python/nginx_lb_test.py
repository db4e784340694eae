#!/usr/bin/env python3
"""Two tinygpt replicas behind a real nginx (Debian's) gRPC load balancer on
loopback, configured from deploy/nginx/nginx.conf with the upstream pointed at
the two local replicas: unary and streaming requests through nginx succeed and
both replicas serve some.
usage: nginx_lb_test.py TINYGPT_BIN SOURCE_DIR"""
import os, re, shutil, socket, subprocess, sys, tempfile, time

import grpc
import harness

tinygpt, source = sys.argv[1], sys.argv[2]
pb, pb_grpc = harness.stubs(source)
r = harness.Results()
work = tempfile.mkdtemp(prefix="tinygpt-nginx-")
ckpt = harness.train(tinygpt, work)

lb_port = harness.free_port()

with harness.Server(tinygpt, ckpt) as a, harness.Server(tinygpt, ckpt) as b:
    conf = open(os.path.join(source, "deploy/nginx/nginx.conf")).read()
    # Loopback replicas instead of Docker's DNS; files under the work folder.
    conf = re.sub(r"\n\s*resolver [^\n]*", "", conf)
    conf = conf.replace("    server server:50051 resolve;", f"    server {a.address};\n    server {b.address};")
    conf = conf.replace("listen 50051 http2;", f"listen 127.0.0.1:{lb_port} http2;")
    conf = conf.replace("worker_processes auto;", f"worker_processes 1;\npid {work}/nginx.pid;\nerror_log {work}/error.log;")
    conf = conf.replace("http {", f"http {{\n  access_log off;\n  client_body_temp_path {work};\n  proxy_temp_path {work};\n"
                                  f"  fastcgi_temp_path {work};\n  uwsgi_temp_path {work};\n  scgi_temp_path {work};", 1)
    conf_path = os.path.join(work, "nginx.conf")
    open(conf_path, "w").write(conf)
    t = subprocess.run(["nginx", "-t", "-c", conf_path, "-p", work], capture_output=True, text=True)
    assert t.returncode == 0, t.stderr
    nginx = subprocess.Popen(["nginx", "-c", conf_path, "-p", work, "-g", "daemon off;"])
    try:
        stub = pb_grpc.GenerationStub(grpc.insecure_channel(f"127.0.0.1:{lb_port}"))
        harness.wait_for(lambda: socket.create_connection(("127.0.0.1", lb_port), timeout=1).close() is None, what="nginx")
        ok = 0
        for i in range(20):
            # A fresh channel per call spreads calls over the upstreams too.
            resp = pb_grpc.GenerationStub(grpc.insecure_channel(f"127.0.0.1:{lb_port}")).Generate(
                pb.GenerateRequest(token_ids=pb.TokenIds(ids=[i, i + 1]), max_new_tokens=4), timeout=30)
            ok += list(resp.token_ids) == [i + 2, i + 3, i + 4, i + 5]
        r.check("unary requests through nginx", ok == 20, f"{ok}/20 correct")
        streamed_ok = 0
        for i in range(4):
            msgs = list(stub.GenerateStream(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[i]), max_new_tokens=5), timeout=30))
            tokens = [t for m in msgs for t in m.token_ids]
            streamed_ok += tokens == [i + 1, i + 2, i + 3, i + 4, i + 5] and msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH
        r.check("streaming through nginx", streamed_ok == 4)
        served = [harness.value(s.metrics(), "tinygpt_requests_total", code="OK") for s in (a, b)]
        r.check("both replicas served some", all(n > 0 for n in served) and sum(served) == 24, f"{served}")
    finally:
        nginx.terminate()
        nginx.wait(timeout=30)
shutil.rmtree(work, ignore_errors=True)
r.finish()
