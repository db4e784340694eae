#!/usr/bin/env python3
"""Issue 19, items 4, 5 and 7, against real `tinygpt serve` processes:
- limits on per-request work (INVALID_ARGUMENT naming the field and the
  flag): stop strings by count (16) and total bytes (4 KiB), n x
  max_new_tokens, n x top_logprobs; the flags move them; a request at the
  stop-string limits is served and stops where it should;
- exact status labels in the log and tinygpt_requests_total: a 4 MiB + 1
  byte request with a 0.5 s deadline is RESOURCE_EXHAUSTED (what its client
  gets), GetModelInfo with an unparsable body INVALID_ARGUMENT with details,
  queued calls whose deadline passed DEADLINE_EXCEEDED, including one whose
  client's deadline ran out before the server's copy (a hand-made HTTP/2
  client sends grpc-timeout 1.5 s and cancels at 1.35 s), and a client that
  cancels long before its deadline CANCELLED;
- --nolog-requests drops the per-request line (counts stay), --minloglevel
  drops INFO, then WARNING lines.
usage: limits_and_labels_test.py TINYGPT_BIN SOURCE_DIR"""
import json, math, os, re, socket, struct, subprocess, sys, tempfile, threading, time, urllib.request

import grpc
import harness

tinygpt, source = sys.argv[1], sys.argv[2]
pb, pb_grpc = harness.stubs(source)
r = harness.Results()
work = tempfile.mkdtemp(prefix="tinygpt-limits-")
P = lambda name: os.path.join(work, name)
ids_ckpt = harness.train(tinygpt, work, steps=1)  # the counting task: token ids only
open(P("corpus.txt"), "w").write("the quick brown fox jumps over the lazy dog\n\n" * 20)
subprocess.run([tinygpt, "train", f"--data={P('corpus.txt')}", "--steps=1", "--batch=2", f"--out={P('bytes.safetensors')}"],
               check=True, capture_output=True)
text_ckpt = P("bytes.safetensors")  # byte tokens: text and stop strings


def status_of(call):
    try:
        call()
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details()


class LoggedServer(harness.Server):
    """harness.Server with its stderr in a file."""

    def __init__(self, checkpoint, *flags):
        self.log_path = P(f"serve-{time.monotonic_ns()}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([tinygpt, "serve", f"--checkpoint={checkpoint}", "--port=0", "--metrics-port=0", "--http-port=-1", *flags],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.address = self.proc.stdout.readline().split("listening on ")[1].split()[0]
        self.metrics_port = int(re.search(r":(\d+)/metrics", self.proc.stdout.readline()).group(1))

    def text(self):
        self.log.flush()
        return open(self.log_path).read()


def wait_requests(s, n, timeout=30):
    harness.wait_for(lambda: harness.value(s.metrics(), "tinygpt_requests_total") >= n, timeout, f"{n} requests counted")


# --- 4. limits on per-request work ----------------------------------------------
with LoggedServer(text_ckpt) as s:
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(s.address))
    base = dict(text="the quick", max_new_tokens=8)
    free = stub.Generate(pb.GenerateRequest(**base), timeout=30)
    junk = ["\x01" * 255 + chr(ord("a") + i) for i in range(15)]  # 15 x 256 bytes that never occur
    at_limit = junk + ["\x02" * 256]                               # the 16th: 256 bytes, 4096 in all
    c, d = status_of(lambda: stub.Generate(pb.GenerateRequest(**base, stop=at_limit), timeout=30))
    r.check("16 stop strings, 4096 bytes: accepted", c == grpc.StatusCode.OK, f"{c} {d}")
    # A piece of the unstopped output as the last of 16 stop strings: the
    # output then ends at its first occurrence.
    piece = free.text[len(free.text) // 2:len(free.text) // 2 + 2]
    first = free.text.find(piece) + len(piece)
    resp = stub.Generate(pb.GenerateRequest(**base, stop=junk + [piece]), timeout=30)
    r.check("a stop string among 16 ends the output at its first occurrence",
            len(piece) == 2 and resp.finish_reason == pb.FINISH_REASON_STOP and resp.text.startswith(free.text[:first])
            and len(resp.text) < len(free.text) + 1, f"{piece!r}: {resp.text!r} vs {free.text!r}")
    cases = [
        ("17 stop strings", dict(stop=["x"] * 17), "stop: 17 stop strings, more than the server's limit of 16 (--max-stop-strings)"),
        ("the issue's 10,000 stop strings of 4 characters",
         dict(stop=[f"{i:04d}" for i in range(10000)]), "stop: 10000 stop strings, more than the server's limit of 16"),
        ("4097 bytes of stop strings", dict(stop=["y" * 4000, "z" * 97]),
         "stop: 4097 bytes of stop strings, more than the server's limit of 4096 (--max-stop-bytes)"),
    ]
    for what, extra, want in cases:
        for kind in ("unary", "stream"):
            req = pb.GenerateRequest(**base, **extra)
            call = (lambda: stub.Generate(req, timeout=30)) if kind == "unary" else (lambda: list(stub.GenerateStream(req, timeout=30)))
            c, d = status_of(call)
            r.check(f"{what} ({kind}): INVALID_ARGUMENT naming the field and the flag",
                    c == grpc.StatusCode.INVALID_ARGUMENT and d.startswith(want), f"{c} {d}")
    wait_requests(s, 9)
    m = s.metrics()
    r.check("metrics: the 6 refusals are INVALID_ARGUMENT, the 3 others OK",
            harness.value(m, "tinygpt_requests_total", code="INVALID_ARGUMENT") == 6
            and harness.value(m, "tinygpt_requests_total", code="OK") == 3)

with LoggedServer(ids_ckpt, "--max-total-new-tokens=100", "--max-total-top-logprobs=40", "--max-stop-strings=2",
                  "--max-n=8") as s:
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(s.address))
    ids = pb.TokenIds(ids=[1, 2])
    checks = [
        ("n 4 x max_new_tokens 25 = 100", dict(n=4, max_new_tokens=25), None),
        ("n 4 x max_new_tokens 26 = 104", dict(n=4, max_new_tokens=26),
         "max_new_tokens: n (4) x max_new_tokens (26) = 104 tokens, more than the server's limit of 100 per request "
         "(--max-total-new-tokens)"),
        ("n 2 x top_logprobs 20 = 40", dict(n=2, max_new_tokens=2, top_logprobs=20), None),
        ("n 3 x top_logprobs 20 = 60", dict(n=3, max_new_tokens=2, top_logprobs=20),
         "top_logprobs: n (3) x top_logprobs (20) = 60, more than the server's limit of 40 per request (--max-total-top-logprobs)"),
        ("n 8 x logprobs only", dict(n=8, max_new_tokens=2, logprobs=True), None),
        ("3 stop strings over --max-stop-strings=2 (checked before the tokenizer)", dict(max_new_tokens=2, stop=["a", "b", "c"]),
         "stop: 3 stop strings, more than the server's limit of 2 (--max-stop-strings)"),
    ]
    for what, extra, want in checks:
        c, d = status_of(lambda: stub.Generate(pb.GenerateRequest(token_ids=ids, **extra), timeout=30))
        ok = c == grpc.StatusCode.OK if want is None else (c == grpc.StatusCode.INVALID_ARGUMENT and d == want)
        r.check(f"flags move the limits: {what}: {'OK' if want is None else 'INVALID_ARGUMENT'}", ok, f"{c} {d}")

# --- 5. exact status labels ----------------------------------------------------
h2_ok = True


def h2_call(address, path, message, grpc_timeout, cancel_after):
    """A minimal HTTP/2 gRPC client: sends one request with the given
    grpc-timeout header, then RST_STREAM(CANCEL) after cancel_after seconds,
    as a client whose own deadline ran out (or that gave up) does."""
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))

    def frame(ftype, flags, stream, payload):
        return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload

    def literal(name, value):  # HPACK literal header field without indexing, new name, no Huffman
        name, value = name.encode(), value.encode()
        assert len(name) < 127 and len(value) < 127
        return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value

    stop = threading.Event()

    def reader():  # acknowledge the server's SETTINGS and PINGs; ignore the rest
        buf = b""
        while not stop.is_set():
            try:
                chunk = sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 9:
                length = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + length:
                    break
                ftype, flags, payload = buf[3], buf[4], buf[9:9 + length]
                buf = buf[9 + length:]
                try:
                    if ftype == 0x4 and not flags & 0x1:
                        sock.sendall(frame(0x4, 0x1, 0, b""))
                    elif ftype == 0x6 and not flags & 0x1:
                        sock.sendall(frame(0x6, 0x1, 0, payload))
                except OSError:
                    return

    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(0x4, 0, 0, b""))
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    headers = b"".join(literal(n, v) for n, v in ((":method", "POST"), (":scheme", "http"), (":path", path),
                                                   (":authority", address), ("content-type", "application/grpc"),
                                                   ("te", "trailers"), ("grpc-timeout", grpc_timeout)))
    sock.sendall(frame(0x1, 0x4, 1, headers) + frame(0x0, 0x1, 1, b"\x00" + struct.pack(">I", len(message)) + message))
    time.sleep(cancel_after)
    sock.sendall(frame(0x3, 0, 1, struct.pack(">I", 0x8)))
    time.sleep(0.2)
    stop.set()
    sock.shutdown(socket.SHUT_RDWR)
    t.join(timeout=5)
    sock.close()


with LoggedServer(ids_ckpt, "--max-seqs=1", "--debug-step-delay-ms=100") as s:
    ch = grpc.insecure_channel(s.address)
    stub = pb_grpc.GenerationStub(ch)
    # 4 MiB + 1 byte: text (field 1) of L bytes, max_new_tokens (field 3) = 1.
    limit = 4 << 20
    L = limit + 1 - 1 - 4 - 2  # tag, 4-byte length varint, then the max_new_tokens field
    big = b"\x0a" + bytes([0x80 | (L & 0x7f), 0x80 | (L >> 7 & 0x7f), 0x80 | (L >> 14 & 0x7f), L >> 21]) + b"a" * L + b"\x18\x01"
    assert len(big) == limit + 1
    raw = ch.unary_unary("/tinygpt.v1.Generation/Generate", request_serializer=lambda b: b,
                         response_deserializer=pb.GenerateResponse.FromString)
    c, d = status_of(lambda: raw(big, timeout=0.5))
    r.check("4 MiB + 1 byte with a 0.5 s deadline: the client gets RESOURCE_EXHAUSTED", c == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{c} {d}")
    wait_requests(s, 1)
    m = s.metrics()
    r.check("... and the server counts RESOURCE_EXHAUSTED, not DEADLINE_EXCEEDED",
            harness.value(m, "tinygpt_requests_total", code="RESOURCE_EXHAUSTED") == 1
            and harness.value(m, "tinygpt_requests_total", code="DEADLINE_EXCEEDED") == 0, str({k: v for k, v in m.items()
                                                                                              if k[0] == "tinygpt_requests_total"}))
    r.check("... and logs it so", "status=RESOURCE_EXHAUSTED (request: message over the receive limit" in s.text())
    info_raw = ch.unary_unary("/tinygpt.v1.Generation/GetModelInfo", request_serializer=lambda b: b,
                              response_deserializer=pb.ModelInfo.FromString)
    c, d = status_of(lambda: info_raw(b"\xff\xff\xff", timeout=10))
    r.check("GetModelInfo with an unparsable body: INVALID_ARGUMENT with details",
            c == grpc.StatusCode.INVALID_ARGUMENT and d == "request: not a valid tinygpt.v1.GetModelInfoRequest message", f"{c} {d}")
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    r.check("GetModelInfo still answers a good request", info.max_seq_len == 64 and info.max_seqs == 1)
    r.check("GetModelInfo with an empty body (a valid empty message) answers", info_raw(b"", timeout=10).max_seq_len == 64)

    # Queued calls: one long request holds the only sequence slot (60 steps
    # of 100 ms); the others wait in the queue until their deadline.
    long_call = stub.Generate.future(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 2]), max_new_tokens=60), timeout=30)
    harness.wait_for(lambda: stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).running_seqs == 1, what="the long request running")
    before = s.metrics()
    queued = [stub.Generate.future(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[3, 4]), max_new_tokens=2), timeout=0.4)
              for _ in range(10)]
    codes = [f.exception().code() if f.exception() else grpc.StatusCode.OK for f in queued]
    r.check("10 queued calls with a 0.4 s deadline: the clients get DEADLINE_EXCEEDED",
            codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 10, str(codes))
    gave_up = stub.Generate.future(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[5, 6]), max_new_tokens=2), timeout=20)
    time.sleep(0.3)
    gave_up.cancel()
    # A client whose deadline ran out 150 ms before the server's copy (as when
    # the server read the headers late): grpc-timeout 1.5 s, cancel at 1.35 s.
    msg = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[7, 8]), max_new_tokens=2).SerializeToString()
    h2_call(s.address, "/tinygpt.v1.Generation/Generate", msg, "1500m", 1.35)
    # And one that gives up 0.3 s into a 10 s deadline: the client's own cancel.
    h2_call(s.address, "/tinygpt.v1.Generation/Generate", msg, "10S", 0.3)
    wait_requests(s, harness.value(before, "tinygpt_requests_total") + 13)
    m = s.metrics()
    delta = lambda code: harness.value(m, "tinygpt_requests_total", code=code) - harness.value(before, "tinygpt_requests_total", code=code)
    r.check("the server counts the 10 queued calls and the late-copy one DEADLINE_EXCEEDED",
            delta("DEADLINE_EXCEEDED") == 11, f"DEADLINE_EXCEEDED {delta('DEADLINE_EXCEEDED')}, CANCELLED {delta('CANCELLED')}")
    r.check("... and the two that gave up early CANCELLED", delta("CANCELLED") == 2, f"CANCELLED {delta('CANCELLED')}")
    log = s.text()
    r.check("the log says DEADLINE_EXCEEDED for 11 calls and 'cancelled by the client' for 2",
            log.count("status=DEADLINE_EXCEEDED (deadline exceeded)") == 11 and log.count("status=CANCELLED (cancelled by the client)") == 2,
            f"{log.count('status=DEADLINE_EXCEEDED')} / {log.count('status=CANCELLED')}")
    r.check("the long request still finishes OK", len(long_call.result(timeout=30).token_ids) == 60)

# --- 7. logging ----------------------------------------------------------------
for flags, lines in (((), True), (("--nolog-requests",), False), (("--log-requests=false",), False)):
    with LoggedServer(ids_ckpt, *flags) as s:
        stub = pb_grpc.GenerationStub(grpc.insecure_channel(s.address))
        for _ in range(3):
            stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 2]), max_new_tokens=2), timeout=30)
        wait_requests(s, 3)
        counted = harness.value(s.metrics(), "tinygpt_requests_total", code="OK")
        s.stop()
        n = len(re.findall(r"\] request req-\d+ status=OK", s.text()))
        r.check(f"serve {' '.join(flags) or '(default)'}: {'one line per request' if lines else 'no request lines'}, still counted",
                n == (3 if lines else 0) and counted == 3, f"{n} lines, {counted} counted")
bad = P("nan.safetensors")
data = bytearray(open(ids_ckpt, "rb").read())
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
at = 8 + n + header["blocks.0.proj.weight"]["data_offsets"][0]
data[at:at + 4] = struct.pack("<f", math.nan)
open(bad, "wb").write(data)
for level, want_i, want_w in ((0, True, True), (1, False, True), (2, False, False)):
    with LoggedServer(bad, "--allow-bad-weights", f"--minloglevel={level}") as s:
        s.stop()
        text = s.text()
        has_i = re.search(r"^I\d{4} ", text, re.M) is not None
        has_w = re.search(r"^W\d{4} .*blocks\.0\.proj\.weight has 1 non-finite value", text, re.M) is not None
        r.check(f"--minloglevel={level}: INFO lines {'kept' if want_i else 'dropped'}, WARNING lines {'kept' if want_w else 'dropped'}",
                has_i == want_i and has_w == want_w, f"INFO {has_i}, WARNING {has_w}")
r.finish()
