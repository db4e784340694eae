#!/usr/bin/env python3
"""A foreign client: Python's grpcio, with stubs generated from proto/ by
grpc_tools, calls Generate and GenerateStream on a real `tinygpt serve`.

usage: foreign_client_test.py TINYGPT_BIN SOURCE_DIR"""
import os, subprocess, sys, tempfile

import grpc
from grpc_tools import protoc

tinygpt, source = sys.argv[1], sys.argv[2]
work = tempfile.mkdtemp(prefix="tinygpt-pyclient-")
assert protoc.main(["protoc", f"-I{source}/proto", "-I/usr/include", f"--python_out={work}", f"--grpc_python_out={work}",
                    f"{source}/proto/tinygpt.proto"]) == 0
sys.path.insert(0, work)
import tinygpt_pb2 as pb
import tinygpt_pb2_grpc as pb_grpc

ckpt = os.path.join(work, "seed.safetensors")
subprocess.run([tinygpt, "train", "--steps=60", "--batch=16", f"--out={ckpt}"], check=True, capture_output=True)
server = subprocess.Popen([tinygpt, "serve", f"--checkpoint={ckpt}", "--port=0", "--metrics-port=-1", "--http-port=-1"],
                          stdout=subprocess.PIPE, text=True)
try:
    line = server.stdout.readline()
    address = line.split("listening on ")[1].split()[0]
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(address))
    resp = stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[3, 4, 5]), max_new_tokens=5), timeout=10)
    assert list(resp.token_ids) == [6, 7, 8, 9, 10], resp
    assert resp.finish_reason == pb.FINISH_REASON_LENGTH
    tokens, finish = [], None
    for m in stub.GenerateStream(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[48, 49]), max_new_tokens=4), timeout=10):
        tokens += list(m.token_ids)
        finish = m.finish_reason or finish
    assert tokens == [50, 51, 52, 53], tokens
    assert finish == pb.FINISH_REASON_LENGTH
    try:
        stub.Generate(pb.GenerateRequest(text="x", max_new_tokens=0), timeout=10)
        raise AssertionError("expected INVALID_ARGUMENT")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    print("foreign client: 3 passed, 0 failed")
finally:
    server.terminate()
    assert server.wait(timeout=30) == 0
