#!/usr/bin/env python3
"""Exposure and hostile input, against real `tinygpt serve` processes on
loopback: TLS, mutual TLS and bearer-token auth (gRPC from Python and
tinygpt-client), requests gRPC or protobuf would refuse before the handler
(non-UTF-8 text, over 4 MiB) answered and counted, /metrics answering while
idle connections hold partial requests, and /metrics on its own address.
Test certificates are made with openssl in a temporary folder.
usage: security_test.py TINYGPT_BIN SOURCE_DIR CLIENT_BIN"""
import collections, http.client, json, os, re, shutil, socket, ssl, subprocess, sys, tempfile, time, urllib.error, urllib.request

import grpc
import harness

tinygpt, source, client = sys.argv[1], sys.argv[2], sys.argv[3]
pb, pb_grpc = harness.stubs(source)
r = harness.Results()
work = tempfile.mkdtemp(prefix="tinygpt-security-")
ckpt = harness.train(tinygpt, work)
P = lambda name: os.path.join(work, name)


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", P(f"{name}.key"), "-out", P(f"{name}.crt"))


def make_cert(name, ca, san):
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", P(f"{name}.key"), "-out", P(f"{name}.csr"))
    open(P(f"{name}.ext"), "w").write(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", P(f"{name}.csr"), "-CA", P(f"{ca}.crt"), "-CAkey", P(f"{ca}.key"), "-CAcreateserial",
            "-days", "2", "-extfile", P(f"{name}.ext"), "-out", P(f"{name}.crt"))


make_ca("ca")
make_ca("other-ca")
make_cert("server", "ca", "DNS:localhost,IP:127.0.0.1")
make_cert("renamed", "ca", "DNS:tinygpt.test")  # valid only under its name
make_cert("client", "ca", "DNS:client")
make_cert("stranger", "other-ca", "DNS:stranger")
read = lambda name: open(P(name), "rb").read()
REQ = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 2]), max_new_tokens=3)


def code_of(call):
    try:
        call()
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


def run_client(*args):
    return subprocess.run([client, *args], capture_output=True, text=True, timeout=60)


# --- TLS ---------------------------------------------------------------------
with harness.Server(tinygpt, ckpt, f"--tls-cert={P('server.crt')}", f"--tls-key={P('server.key')}") as s:
    creds = grpc.ssl_channel_credentials(root_certificates=read("ca.crt"))
    stub = pb_grpc.GenerationStub(grpc.secure_channel(s.address, creds))
    r.check("TLS: a client trusting the CA is served", list(stub.Generate(REQ, timeout=30).token_ids) == [3, 4, 5])
    plain = pb_grpc.GenerationStub(grpc.insecure_channel(s.address))
    r.check("TLS: a plaintext client is refused", code_of(lambda: plain.Generate(REQ, timeout=5)) == grpc.StatusCode.UNAVAILABLE)
    other = pb_grpc.GenerationStub(grpc.secure_channel(s.address, grpc.ssl_channel_credentials(root_certificates=read("other-ca.crt"))))
    r.check("TLS: a client trusting another CA refuses the server",
            code_of(lambda: other.Generate(REQ, timeout=5)) == grpc.StatusCode.UNAVAILABLE)
    out = run_client("generate", f"--target={s.address}", f"--tls-ca={P('ca.crt')}", "--prompt-ids=1,2", "--max-new-tokens=3")
    r.check("TLS: tinygpt-client --tls-ca", out.returncode == 0 and "output_ids: 3,4,5" in out.stdout, out.stderr[-300:])
    out = run_client("generate", f"--target={s.address}", "--prompt-ids=1,2", "--max-new-tokens=3")
    r.check("TLS: tinygpt-client without --tls-ca fails", out.returncode != 0)
    # The HTTP API on the same certificate: HTTPS.
    ctx = ssl.create_default_context(cafile=P("ca.crt"))
    body = json.dumps({"prompt": [1, 2], "max_tokens": 3, "temperature": 0, "return_token_ids": True}).encode()  # greedy: OpenAI samples by default
    got = json.loads(urllib.request.urlopen(urllib.request.Request(f"{s.http_url}/v1/completions", data=body), context=ctx, timeout=30).read())
    r.check("TLS: the HTTP API is HTTPS with the same certificate", s.http_url.startswith("https://") and
            got["choices"][0]["token_ids"] == [3, 4, 5], f"{s.http_url} {got['choices'][0].get('token_ids')}")
    refused = 0
    for url, c in [(f"http://127.0.0.1:{s.http_port}/health", None),
                   (f"{s.http_url}/health", ssl.create_default_context(cafile=P("other-ca.crt")))]:
        try:
            urllib.request.urlopen(url, context=c, timeout=5)
        except (OSError, urllib.error.URLError, http.client.HTTPException):
            refused += 1
    r.check("TLS: plain HTTP and a client trusting another CA get nothing from the HTTPS port", refused == 2)

with harness.Server(tinygpt, ckpt, f"--tls-cert={P('renamed.crt')}", f"--tls-key={P('renamed.key')}") as s:
    out = run_client("generate", f"--target={s.address}", f"--tls-ca={P('ca.crt')}", "--prompt-ids=1,2", "--max-new-tokens=3")
    r.check("TLS: a certificate for another name is refused", out.returncode != 0)
    out = run_client("generate", f"--target={s.address}", f"--tls-ca={P('ca.crt')}", "--tls-server-name=tinygpt.test",
                     "--prompt-ids=1,2", "--max-new-tokens=3")
    r.check("TLS: tinygpt-client --tls-server-name", out.returncode == 0 and "output_ids: 3,4,5" in out.stdout, out.stderr[-300:])

# --- mutual TLS --------------------------------------------------------------
with harness.Server(tinygpt, ckpt, f"--tls-cert={P('server.crt')}", f"--tls-key={P('server.key')}",
                    f"--tls-client-ca={P('ca.crt')}") as s:
    def mtls(key=None, cert=None):
        creds = grpc.ssl_channel_credentials(root_certificates=read("ca.crt"), private_key=key and read(key),
                                             certificate_chain=cert and read(cert))
        return pb_grpc.GenerationStub(grpc.secure_channel(s.address, creds))
    r.check("mTLS: a client certificate from the CA is served",
            code_of(lambda: mtls("client.key", "client.crt").Generate(REQ, timeout=30)) == grpc.StatusCode.OK)
    r.check("mTLS: no client certificate is refused", code_of(lambda: mtls().Generate(REQ, timeout=5)) == grpc.StatusCode.UNAVAILABLE)
    r.check("mTLS: a certificate from another CA is refused",
            code_of(lambda: mtls("stranger.key", "stranger.crt").Generate(REQ, timeout=5)) == grpc.StatusCode.UNAVAILABLE)
    out = run_client("generate", f"--target={s.address}", f"--tls-ca={P('ca.crt')}", f"--tls-cert={P('client.crt')}",
                     f"--tls-key={P('client.key')}", "--prompt-ids=1,2", "--max-new-tokens=3")
    r.check("mTLS: tinygpt-client --tls-cert/--tls-key", out.returncode == 0 and "output_ids: 3,4,5" in out.stdout, out.stderr[-300:])
    out = run_client("generate", f"--target={s.address}", f"--tls-ca={P('ca.crt')}", "--prompt-ids=1,2", "--max-new-tokens=3")
    r.check("mTLS: tinygpt-client without a certificate fails", out.returncode != 0)

# A half-configured TLS is refused at start-up, before anything listens.
bad = subprocess.run([tinygpt, "serve", f"--checkpoint={ckpt}", "--port=0", "--metrics-port=-1", "--http-port=-1", f"--tls-cert={P('server.crt')}"],
                     capture_output=True, text=True, timeout=60)
r.check("serve: --tls-cert without --tls-key exits 1", bad.returncode == 1 and "--tls-key" in bad.stderr, bad.stderr[-200:])

# --- bearer token ------------------------------------------------------------
token = "s3cret-" + os.urandom(8).hex()
open(P("token"), "w").write(token + "\n")
open(P("wrong-token"), "w").write(token[:-1] + "x\n")
with harness.Server(tinygpt, ckpt, f"--auth-token-file={P('token')}") as s:
    # The HTTP API takes the same token (Authorization: Bearer); /health stays open.
    def http_status(path, auth=None, body=None):
        req = urllib.request.Request(f"{s.http_url}{path}", data=body, headers={"Authorization": auth} if auth else {})
        try:
            return urllib.request.urlopen(req, timeout=30).status
        except urllib.error.HTTPError as e:
            return e.code
    completion = json.dumps({"prompt": [1, 2], "max_tokens": 3}).encode()
    http_codes = [http_status("/v1/completions", a, completion) for a in (None, f"Bearer {token[:-1]}x", token, f"Bearer {token}")]
    http_codes += [http_status("/v1/models"), http_status("/v1/models", f"Bearer {token}"), http_status("/health")]
    r.check("auth: HTTP API 401 without the right bearer token, 200 with it; /health open",
            http_codes == [401, 401, 401, 200, 401, 200, 200], str(http_codes))
    ch = grpc.insecure_channel(s.address)
    stub = pb_grpc.GenerationStub(ch)
    md = lambda t: [("authorization", f"Bearer {t}")]
    unauth = 0
    for name, meta in [("no token", None), ("wrong token", md(token[:-1] + "x")), ("token prefix", md(token[:-1])),
                       ("token without Bearer", [("authorization", token)]), ("empty bearer", md(""))]:
        c = code_of(lambda: stub.Generate(REQ, timeout=10, metadata=meta))
        unauth += 1
        r.check(f"auth: {name} is UNAUTHENTICATED", c == grpc.StatusCode.UNAUTHENTICATED, str(c))
    c = code_of(lambda: list(stub.GenerateStream(REQ, timeout=10)))
    unauth += 1
    r.check("auth: a stream without a token is UNAUTHENTICATED", c == grpc.StatusCode.UNAUTHENTICATED, str(c))
    r.check("auth: GetModelInfo without a token is UNAUTHENTICATED",
            code_of(lambda: stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)) == grpc.StatusCode.UNAUTHENTICATED)
    r.check("auth: the right token is served", list(stub.Generate(REQ, timeout=30, metadata=md(token)).token_ids) == [3, 4, 5])
    msgs = list(stub.GenerateStream(REQ, timeout=30, metadata=md(token)))
    r.check("auth: a stream with the token is served", [t for m in msgs for t in m.token_ids] == [3, 4, 5])
    out = run_client("health", f"--target={s.address}")
    r.check("auth: health checks stay open", out.returncode == 0 and "SERVING" in out.stdout, out.stderr[-200:])
    out = run_client("generate", f"--target={s.address}", f"--auth-token-file={P('token')}", "--prompt-ids=1,2", "--max-new-tokens=3")
    r.check("auth: tinygpt-client --auth-token-file", out.returncode == 0 and "output_ids: 3,4,5" in out.stdout, out.stderr[-300:])
    out = run_client("generate", f"--target={s.address}", f"--auth-token-file={P('wrong-token')}", "--prompt-ids=1,2")
    unauth += 1
    r.check("auth: tinygpt-client with a wrong token fails with UNAUTHENTICATED", out.returncode != 0 and "UNAUTHENTICATED" in out.stderr,
            out.stderr[-200:])
    m = s.metrics()
    got = harness.value(m, "tinygpt_requests_total", code="UNAUTHENTICATED", api="grpc")
    r.check("auth: refusals counted as UNAUTHENTICATED", got == unauth, f"{got} vs {unauth}")
    r.check("auth: served requests counted as OK", harness.value(m, "tinygpt_requests_total", code="OK", api="grpc") == 3)
    r.check("auth: HTTP completions refused and served counted under api=openai",
            harness.value(m, "tinygpt_requests_total", code="UNAUTHENTICATED", api="openai") == 3 and
            harness.value(m, "tinygpt_requests_total", code="OK", api="openai") == 1)

# --- requests refused before the handler in gRPC's generated code -------------
with harness.Server(tinygpt, ckpt) as s:
    ch = grpc.insecure_channel(s.address, options=[("grpc.max_send_message_length", 16 << 20)])
    stub = pb_grpc.GenerationStub(ch)
    raw_unary = ch.unary_unary("/tinygpt.v1.Generation/Generate", request_serializer=lambda b: b,
                               response_deserializer=pb.GenerateResponse.FromString)
    raw_stream = ch.unary_stream("/tinygpt.v1.Generation/GenerateStream", request_serializer=lambda b: b,
                                 response_deserializer=pb.GenerateStreamResponse.FromString)

    def status(call):
        try:
            call()
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details()

    # text = b"\xff\xfe" (field 1), max_new_tokens = 3 (field 3): a string that is not UTF-8.
    bad_text = b"\x0a\x02\xff\xfe\x18\x03"
    c, d = status(lambda: raw_unary(bad_text, timeout=10))
    r.check("non-UTF-8 text: unary INVALID_ARGUMENT naming the field", c == grpc.StatusCode.INVALID_ARGUMENT and d.startswith("text:"),
            f"{c} {d}")
    c, d = status(lambda: list(raw_stream(bad_text, timeout=10)))
    r.check("non-UTF-8 text: stream INVALID_ARGUMENT", c == grpc.StatusCode.INVALID_ARGUMENT and d.startswith("text:"), f"{c} {d}")
    bad_stop = bytes(REQ.SerializeToString()) + b"\x4a\x01\xc3"  # stop (field 9) = a cut-off 2-byte sequence
    c, d = status(lambda: raw_unary(bad_stop, timeout=10))
    r.check("non-UTF-8 stop string: INVALID_ARGUMENT naming the field", c == grpc.StatusCode.INVALID_ARGUMENT and d.startswith("stop:"),
            f"{c} {d}")
    # A client-streaming call on the same path closes without sending a message.
    no_message = ch.stream_unary("/tinygpt.v1.Generation/Generate", request_serializer=lambda b: b,
                                 response_deserializer=pb.GenerateResponse.FromString)
    c, d = status(lambda: no_message(iter([]), timeout=10))
    r.check("no message at all: INVALID_ARGUMENT", c == grpc.StatusCode.INVALID_ARGUMENT and d == "request: no message", f"{c} {d}")
    # A flood of such calls: each waits up to 2 s to learn whether gRPC
    # refused its message; one thread watches them all (a thread each would
    # add 200 to the server's).
    def threads():
        return int(re.search(r"^Threads:\s+(\d+)", open(f"/proc/{s.proc.pid}/status").read(), re.M).group(1))
    before, peak = threads(), 0
    calls = [no_message.future(iter([]), timeout=10) for _ in range(200)]
    while not all(f.done() for f in calls):
        peak = max(peak, threads())
        time.sleep(0.05)
    codes = collections.Counter(f.code() for f in calls)
    r.check("200 calls without a message at once: each INVALID_ARGUMENT", codes == {grpc.StatusCode.INVALID_ARGUMENT: 200}, str(codes))
    r.check("... without a thread each", peak - before < 50, f"threads {before} -> peak {peak}")
    c, d = status(lambda: raw_unary(b"\xff\xff\xff", timeout=10))
    r.check("unparseable bytes: INVALID_ARGUMENT", c == grpc.StatusCode.INVALID_ARGUMENT, f"{c} {d}")
    # Valid UTF-8 passes the wire check; the seed model's 64-token vocabulary
    # then refuses its bytes (>= 64) as prompt tokens.
    c, d = status(lambda: stub.Generate(pb.GenerateRequest(text="é✓", max_new_tokens=2), timeout=10))
    r.check("valid multi-byte UTF-8 text passes the UTF-8 check", c == grpc.StatusCode.INVALID_ARGUMENT and d.startswith("prompt"),
            f"{c} {d}")
    big = pb.GenerateRequest(text="a" * (5 << 20), max_new_tokens=1)
    c, d = status(lambda: stub.Generate(big, timeout=30))
    r.check("over 4 MiB: RESOURCE_EXHAUSTED", c == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{c} {d}")
    c, d = status(lambda: list(stub.GenerateStream(big, timeout=30)))
    r.check("over 4 MiB stream: RESOURCE_EXHAUSTED", c == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{c} {d}")
    r.check("still serving after all that", list(stub.Generate(REQ, timeout=30).token_ids) == [3, 4, 5])
    m = s.metrics()
    v = lambda **l: harness.value(m, "tinygpt_requests_total", **l)
    r.check("metrics: 206 INVALID_ARGUMENT", v(code="INVALID_ARGUMENT") == 206, str(v(code="INVALID_ARGUMENT")))
    r.check("metrics: 2 RESOURCE_EXHAUSTED (over 4 MiB)", v(code="RESOURCE_EXHAUSTED") == 2, str(v(code="RESOURCE_EXHAUSTED")))
    r.check("metrics: every request counted", v() == 209, str(v()))
    r.check("no INTERNAL anywhere", v(code="INTERNAL") == 0)

# --- /metrics under idle connections, and on its own address ---------------------
with harness.Server(tinygpt, ckpt, "--metrics-host=127.0.0.2", "--metrics-request-timeout-ms=2000") as s:
    url = f"http://127.0.0.2:{s.metrics_port}/metrics"
    idle = []
    for _ in range(6):  # a slowloris: request lines and a header, never the blank line
        k = socket.create_connection(("127.0.0.2", s.metrics_port))
        k.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        idle.append(k)
    slow, failed = 0, 0
    worst = 0.0
    for _ in range(50):
        t0 = time.time()
        try:
            body = urllib.request.urlopen(url, timeout=2).read().decode()
            failed += "tinygpt_kv_cache_blocks_total" not in body
        except OSError:
            failed += 1
        dt = time.time() - t0
        worst = max(worst, dt)
        slow += dt > 1.0
    r.check("metrics: 50 scrapes beside 6 idle connections all succeed", failed == 0, f"{failed} failed")
    r.check("metrics: every scrape under 1 s (a held server waits the 2 s timeout)", slow == 0, f"worst {worst:.3f}s")
    time.sleep(2.5)  # past --metrics-request-timeout-ms
    closed = 0
    for k in idle:
        k.settimeout(2)
        try:
            closed += k.recv(1024) is not None  # b"" (closed) or an error response: either way not held
        except (socket.timeout, OSError):
            pass
        k.close()
    r.check("metrics: idle connections are dropped after the request timeout", closed == 6, f"{closed}/6")
    refused = False
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=2)
    except OSError:
        refused = True
    r.check("metrics: --metrics-host binds only that address", refused)
    r.check("metrics: gRPC still on --host", s.address.startswith("127.0.0.1:"))
shutil.rmtree(work, ignore_errors=True)
r.finish()
