"""Shared pieces of the Python integration tests: gRPC stubs generated from
proto/, a freshly trained small checkpoint, `tinygpt serve` processes on
loopback, and a /metrics parser."""
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import grpc


def stubs(source):
    """Generates and imports the tinygpt.v1 Python modules; returns (pb, pb_grpc)."""
    from grpc_tools import protoc
    out = tempfile.mkdtemp(prefix="tinygpt-stubs-")
    rc = protoc.main(["protoc", f"-I{source}/proto", "-I/usr/include", f"--python_out={out}",
                      f"--grpc_python_out={out}", f"{source}/proto/tinygpt.proto"])
    assert rc == 0, "protoc failed"
    sys.path.insert(0, out)
    import tinygpt_pb2, tinygpt_pb2_grpc
    return tinygpt_pb2, tinygpt_pb2_grpc


def train(tinygpt, workdir, steps=60):
    path = os.path.join(workdir, "seed.safetensors")
    subprocess.run([tinygpt, "train", f"--steps={steps}", "--batch=16", f"--out={path}"], check=True, capture_output=True)
    return path


class Server:
    """`tinygpt serve` on a free gRPC port, a free metrics port and a free
    HTTP (OpenAI API) port."""

    def __init__(self, tinygpt, checkpoint, *flags):
        self.proc = subprocess.Popen([tinygpt, "serve", f"--checkpoint={checkpoint}", "--port=0", "--metrics-port=0", "--http-port=0",
                                      *flags], stdout=subprocess.PIPE, text=True)
        self.address = self.proc.stdout.readline().split("listening on ")[1].split()[0]
        self.metrics_port = int(re.search(r":(\d+)/metrics", self.proc.stdout.readline()).group(1))
        m = re.search(r"OpenAI API on (https?)://[^:]+:(\d+)/v1", self.proc.stdout.readline())
        self.http_port = int(m.group(2)) if m else None  # None with --http-port=-1
        self.http_url = f"{m.group(1)}://127.0.0.1:{self.http_port}" if m else None

    def metrics(self):
        return parse_metrics(urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode())

    def stop(self):
        self.proc.terminate()
        return self.proc.wait(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.stop()


def parse_metrics(text):
    """Prometheus text format → {(name, frozenset(labels.items())): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)', line)
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out[(m.group(1), frozenset(labels.items()))] = float(m.group(4))
    return out


def value(metrics, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= set(ls))


def sp_piece_bytes(sp, i):
    """The bytes SentencePiece piece `i` adds to a text (the rule of
    model/tokenizer.h, written here independently of the C++ code): control
    and unused pieces nothing, the unknown piece its surface, a byte-fallback
    piece its byte, any other piece its text with U+2581 as a space."""
    if sp.is_control(i) or sp.is_unused(i):
        return b""
    if sp.is_unknown(i):
        return sp.decode([i]).encode()
    if sp.is_byte(i):
        return bytes([int(sp.id_to_piece(i)[3:5], 16)])
    return sp.id_to_piece(i).replace("\u2581", " ").encode()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=30.0, what="condition"):
    """Polls predicate until it is true; a connection error (the thing waited
    for is not listening yet) counts as false."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Results:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, name, ok, detail=""):
        print(("PASS " if ok else "FAIL ") + name + (f" ({detail})" if detail else ""), flush=True)
        self.passed += bool(ok)
        self.failed += not ok

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed")
        sys.exit(1 if self.failed else 0)
