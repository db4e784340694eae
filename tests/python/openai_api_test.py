#!/usr/bin/env python3
"""The OpenAI-compatible HTTP API (POST /v1/completions, GET /v1/models,
/health) against a real `tinygpt serve`, beside gRPC from grpcio:

- greedy tokens, text and logprobs equal gRPC's answer to the same request
  (unary and streamed); n samples with a seed equal gRPC's n samples; echo
  with logprobs and max_tokens 0 gives gRPC's prompt logprobs, first null;
- SSE framing seen by curl: `data: {json}` events, blank-line separated,
  then `data: [DONE]`; include_usage's last chunk; keep-alive;
- a text model (byte tokens, random weights): text prompts, stop strings,
  UTF-8 valid text and logprob tokens, stream == unary == gRPC;
- error bodies and codes: 400 (bad JSON, wrong types, NaN, naming the
  field), 404 (path, model), 405, 413 (10 MB body), 431 (header flood), 429
  (queue full), 503 and /health 503 while draining, 400 for chat;
- a client that disconnects mid-stream cancels its request (every KV block
  back, CANCELLED in the metrics); half a request is dropped at the request
  timeout; 1000 concurrent streams all complete; the server answers after all.

usage: openai_api_test.py TINYGPT_BIN SOURCE_DIR"""
import asyncio, http.client, json, os, signal, socket, subprocess, sys, tempfile, time

import grpc
import torch

sys.path.insert(0, os.path.dirname(__file__))
import harness
from torch_tinygpt import TinyGPT, save_safetensors

tinygpt, source = sys.argv[1], sys.argv[2]
pb, pb_grpc = harness.stubs(source)
work = tempfile.mkdtemp(prefix="tinygpt-openai-")
r = harness.Results()
ckpt = harness.train(tinygpt, work, steps=40)


def post(port, body, path="/v1/completions", headers=None, timeout=60):
    """(status, parsed JSON body) of one request."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    c.request("POST", path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = c.getresponse()
    raw = resp.read()
    c.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw


def get(port, path, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path, headers=headers or {})
    resp = c.getresponse()
    raw = resp.read()
    c.close()
    return resp.status, json.loads(raw)


def sse(port, body):
    """The raw event stream as curl receives it (chunked encoding undone)."""
    out = subprocess.run(["curl", "-sN", "--max-time", "60", f"http://127.0.0.1:{port}/v1/completions", "-H",
                          "Content-Type: application/json", "-d", json.dumps({**body, "stream": True})],
                         capture_output=True, check=True)
    return out.stdout.decode()


def events(raw):
    """Parsed `data:` events of an SSE body; asserts the framing."""
    assert raw.endswith("data: [DONE]\n\n"), raw[-200:]
    parts = raw.split("\n\n")
    assert parts[-1] == "" and parts[-2] == "data: [DONE]", parts[-3:]
    out = []
    for p in parts[:-2]:
        assert p.startswith("data: ") and "\n" not in p, p[:200]
        out.append(json.loads(p[len("data: "):]))
    return out


def error_of(status_body):
    status, body = status_body
    e = body.get("error", {}) if isinstance(body, dict) else {}
    return status, e.get("param"), e.get("message", ""), set(e) == {"message", "type", "param", "code"}


def grpc_generate(stub, ids, prompt_logprobs=None, **kw):
    req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids), **kw)
    if prompt_logprobs is not None:
        req.prompt_logprobs.value = prompt_logprobs
    return stub.Generate(req, timeout=60)


# --- The seed model (token ids only) -------------------------------------------
with harness.Server(tinygpt, ckpt, "--max-n=4", "--max-queue=1000") as s:
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(s.address))
    port = s.http_port

    status, models = get(port, "/v1/models")
    m = models["data"][0] if status == 200 else {}
    r.check("models: the checkpoint's name, object list, max_model_len",
            models.get("object") == "list" and m.get("id") == "seed" and m.get("max_model_len") == 64, str(models))
    r.check("models/{id}: 200, and 404 for another", get(port, "/v1/models/seed")[0] == 200 and
            error_of((lambda x: x)(get(port, "/v1/models/gpt-4")))[0] == 404)
    r.check("health: 200 while serving", get(port, "/health")[0] == 200)

    # Greedy tokens and logprobs equal gRPC's.
    same, lp_same = 0, 0
    prompts = [[1, 2, 3], [10, 11], [5], [20, 21, 22, 23, 24, 25]]
    for ids in prompts:
        g = grpc_generate(stub, ids, max_new_tokens=8, top_logprobs=3)
        status, h = post(port, {"model": "seed", "prompt": ids, "max_tokens": 8, "temperature": 0, "logprobs": 3, "return_token_ids": True})
        c = h["choices"][0]
        same += c["token_ids"] == list(g.token_ids) and c["finish_reason"] == "length"
        lp = c["logprobs"]
        ok = lp["tokens"] == [f"token_id:{t}" for t in g.token_ids] and len(lp["text_offset"]) == len(g.token_ids)
        for i, glp in enumerate(g.logprobs):
            top = {f"token_id:{t.token_id}": t.logprob for t in glp.top}
            top[f"token_id:{glp.token_id}"] = glp.logprob
            ok = ok and abs(lp["token_logprobs"][i] - glp.logprob) < 1e-6 and lp["top_logprobs"][i].keys() == top.keys() and \
                all(abs(lp["top_logprobs"][i][k] - v) < 1e-6 for k, v in top.items())
        lp_same += ok
        usage_ok = h["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 8, "total_tokens": len(ids) + 8}
    r.check("greedy tokens equal gRPC's", same == len(prompts), f"{same}/{len(prompts)}")
    r.check("logprobs (token, top 3 and the chosen one) equal gRPC's", lp_same == len(prompts), f"{lp_same}/{len(prompts)}")
    r.check("usage counts prompt and completion tokens", usage_ok, str(h["usage"]))
    r.check("id, object, created, model", h["id"].startswith("cmpl-") and h["object"] == "text_completion" and
            abs(h["created"] - time.time()) < 60 and h["model"] == "seed")

    # n samples with a seed: gRPC's n samples (sample i uses seed + i).
    g = grpc_generate(stub, [3, 4], max_new_tokens=6, temperature=1.0, seed=11, n=3)
    status, h = post(port, {"prompt": [3, 4], "max_tokens": 6, "temperature": 1.0, "seed": 11, "n": 3, "return_token_ids": True})
    r.check("n = 3 with a seed: gRPC's samples, indexes 0..2",
            [c["index"] for c in h["choices"]] == [0, 1, 2] and [c["token_ids"] for c in h["choices"]] == [list(c.token_ids) for c in g.choices])
    status, h2 = post(port, {"prompt": [3, 4], "max_tokens": 6, "temperature": 1.0, "seed": 11, "n": 3, "return_token_ids": True})
    r.check("the same seed gives the same samples", h2["choices"] == h["choices"])
    # A list of prompts: one choice set per prompt, indexes prompt * n + sample.
    status, h = post(port, {"prompt": [[1, 2], [7, 8, 9]], "max_tokens": 3, "temperature": 0, "n": 2, "return_token_ids": True})
    want = [list(grpc_generate(stub, p, max_new_tokens=3).token_ids) for p in ([1, 2], [7, 8, 9])]
    r.check("two prompts x n = 2: four choices in order", [c["index"] for c in h["choices"]] == [0, 1, 2, 3] and
            [c["token_ids"] for c in h["choices"]] == [want[0], want[0], want[1], want[1]] and h["usage"]["prompt_tokens"] == 5)

    # echo + logprobs + max_tokens 0 (how harnesses score a continuation).
    ids = [2, 3, 4, 5, 6]
    g = grpc_generate(stub, ids, max_new_tokens=1, prompt_logprobs=2)
    status, h = post(port, {"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 2})
    c = h["choices"][0] if status == 200 else {}
    lp = c.get("logprobs") or {}
    ok = status == 200 and lp.get("token_logprobs", [1])[0] is None and lp["top_logprobs"][0] is None and \
        lp["tokens"] == [f"token_id:{t}" for t in ids] and h["usage"]["completion_tokens"] == 0 and c["finish_reason"] == "length"
    for i, glp in enumerate(g.prompt_logprobs):
        ok = ok and abs(lp["token_logprobs"][i + 1] - glp.logprob) < 1e-6 and \
            set(lp["top_logprobs"][i + 1]) == {f"token_id:{t.token_id}" for t in glp.top} | {f"token_id:{ids[i + 1]}"}
    r.check("echo + logprobs + max_tokens 0: the prompt's logprobs (gRPC's), the first null, no completion", ok, str(h)[:300])
    # The engine's scoring request, over gRPC: max_new_tokens 0 takes prompt_logprobs; without them it stays refused.
    try:
        grpc_generate(stub, ids, max_new_tokens=0)
        refused = False
    except grpc.RpcError as e:
        refused = e.code() == grpc.StatusCode.INVALID_ARGUMENT
    scored = grpc_generate(stub, ids, max_new_tokens=0, prompt_logprobs=2)
    r.check("gRPC: max_new_tokens 0 with prompt_logprobs scores the prompt (no token); without, INVALID_ARGUMENT",
            refused and list(scored.token_ids) == [] and len(scored.prompt_logprobs) == len(ids) - 1 and
            [p.logprob for p in scored.prompt_logprobs] == [p.logprob for p in g.prompt_logprobs] and
            scored.timings.time_to_first_token_seconds == 0)
    status, h = post(port, {"prompt": ids, "max_tokens": 0})
    r.check("max_tokens 0 without echo: an empty completion", status == 200 and h["choices"][0]["text"] == "" and
            h["choices"][0]["logprobs"] is None and h["usage"]["completion_tokens"] == 0, str(h)[:200])

    # Streaming: SSE framing through curl, tokens equal the unary answer.
    raw = sse(port, {"prompt": [1, 2, 3], "max_tokens": 8, "temperature": 0, "return_token_ids": True, "logprobs": 1,
                     "stream_options": {"include_usage": True}})
    ev = events(raw)
    streamed = [t for e in ev for c in e["choices"] for t in c["token_ids"]]
    offsets = [o for e in ev for c in e["choices"] for o in c["logprobs"]["text_offset"]]
    r.check("stream: tokens concatenate to the unary answer", streamed == list(grpc_generate(stub, [1, 2, 3], max_new_tokens=8).token_ids))
    r.check("stream: text_offset runs on across chunks", offsets == sorted(offsets) and len(set(offsets)) == 8, str(offsets))
    r.check("stream: finish_reason on the last token's chunk, usage null until the usage chunk",
            [c["finish_reason"] for e in ev[:-1] for c in e["choices"]][-1] == "length" and all(e["usage"] is None for e in ev[:-1]))
    r.check("stream: include_usage's last chunk has no choices and the usage",
            ev[-1]["choices"] == [] and ev[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11})
    ev = events(sse(port, {"prompt": [3, 4], "max_tokens": 4, "temperature": 1.0, "seed": 11, "n": 3, "return_token_ids": True}))
    per = {i: [t for e in ev for c in e["choices"] if c["index"] == i for t in c["token_ids"]] for i in range(3)}
    g = grpc_generate(stub, [3, 4], max_new_tokens=4, temperature=1.0, seed=11, n=3)
    r.check("stream n = 3: each choice's tokens equal gRPC's sample", [per[i] for i in range(3)] == [list(c.token_ids) for c in g.choices])
    ev = events(sse(port, {"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1}))
    r.check("stream echo + logprobs + max_tokens 0: one chunk with the prompt's logprobs",
            len(ev) == 1 and ev[0]["choices"][0]["logprobs"]["token_logprobs"][0] is None and
            len(ev[0]["choices"][0]["logprobs"]["tokens"]) == len(ids) and ev[0]["choices"][0]["finish_reason"] == "length")

    # Keep-alive: several requests on one connection.
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    answers = []
    for _ in range(3):
        c.request("POST", "/v1/completions", body=json.dumps({"prompt": [1], "max_tokens": 2}))
        resp = c.getresponse()
        answers.append((resp.status, resp.getheader("Connection"), json.loads(resp.read())["usage"]["completion_tokens"]))
    sock_same = c.sock is not None
    c.close()
    r.check("keep-alive: three requests on one connection", answers == [(200, None, 2)] * 3 and sock_same, str(answers))

    # Bad requests: clear errors naming the field.
    bad = [
        (b"{not json", 400, None), (b"[1, 2]", 400, None), (b'{"prompt": [1, 2], "temperature": NaN}', 400, None),
        ({"prompt": [1, 2], "temperature": "hot"}, 400, "temperature"), ({"prompt": [1, 2], "max_tokens": 2.5}, 400, "max_tokens"),
        ({"prompt": [1, 2], "max_tokens": -1}, 400, "max_tokens"), (b'{"prompt": [1, 2], "temperature": 1e999}', 400, None),  # out of double's range: not JSON to nlohmann
        ({"prompt": [1, 2], "n": True}, 400, "n"), ({"prompt": [1, 2], "logprobs": 6}, 400, "logprobs"),
        ({"prompt": [1, 2], "stream": "yes"}, 400, "stream"), ({"prompt": [1, 2], "stop": [1]}, 400, "stop"),
        ({"prompt": [1, "a"]}, 400, "prompt[1]"), ({"prompt": []}, 400, "prompt"), ({"prompt": [[1], "a"]}, 400, "prompt"),
        ({"max_tokens": 3}, 400, "prompt"), ({"prompt": "text"}, 400, "prompt"), ({"prompt": [1, 2], "max_tokens": 100}, 400, "max_tokens"),
        ({"prompt": [99]}, 400, "prompt"), ({"prompt": [1], "n": 5}, 400, "n"), ({"prompt": [1], "top_p": 0}, 400, "top_p"),
        ({"prompt": [1], "stream_options": {"include_usage": True}}, 400, "stream_options"),
        ({"prompt": [1], "logit_bias": {"1": 5}}, 400, "logit_bias"), ({"prompt": [1], "model": "gpt-4"}, 404, "model"),
        ({"prompt": [1], "best_of": 3}, 400, "best_of"), ({"prompt": [1], "presence_penalty": 3}, 400, "presence_penalty"),
    ]
    wrong = []
    for body, want_status, want_param in bad:
        status, param, msg, shape = error_of(post(port, body))
        if status != want_status or param != want_param or not shape or not msg:
            wrong.append((body, status, param, msg))
    r.check(f"{len(bad)} bad requests: OpenAI error bodies, status and param", not wrong, str(wrong)[:600])
    status, param, msg, shape = error_of(post(port, {"prompt": [1, 2], "max_tokens": 100}))
    r.check("engine messages use the HTTP field names", "max_tokens" in msg and "max_new_tokens" not in msg, msg)
    status, param, msg, shape = error_of(post(port, {"model": "seed", "messages": [{"role": "user", "content": "hi"}]},
                                              path="/v1/chat/completions"))
    r.check("chat completions: 400, no chat template", status == 400 and "chat template" in msg and shape, msg)
    r.check("unknown path: 404", error_of(post(port, {}, path="/v1/embeddings"))[0] == 404)
    r.check("wrong method: 405", error_of(get(port, "/v1/completions"))[0] == 405)
    big = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30", "-H", "Expect:",
                          "--data-binary", "@-", f"http://127.0.0.1:{port}/v1/completions"],
                         input=b'{"prompt": "' + b"a" * (10 << 20) + b'"}', capture_output=True)
    r.check("a 10 MB body: 413 or a dropped connection", big.stdout.decode() in ("413", "000"), big.stdout.decode())
    flood = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30",
                            *[a for i in range(400) for a in ("-H", f"X-Flood-{i}: {'x' * 100}")], f"http://127.0.0.1:{port}/health"],
                           capture_output=True)
    r.check("a header flood (40 KB): 431", flood.stdout.decode() == "431", flood.stdout.decode())
    k = socket.create_connection(("127.0.0.1", port))
    k.sendall(b"GARBAGE\r\n\r\n")
    k.settimeout(10)
    r.check("not HTTP at all: 400", k.recv(100).startswith(b"HTTP/1.1 400"))
    k.close()

    m = s.metrics()
    ok, ttft = (harness.value(m, "tinygpt_requests_total", api="openai", code="OK"),
                harness.value(m, "tinygpt_time_to_first_token_seconds_count", api="openai"))
    r.check("metrics: openai requests counted by api, with their TTFT", ok >= 15 and ttft >= 10 and
            harness.value(m, "tinygpt_requests_total", api="openai", code="INVALID_ARGUMENT") >= 20, f"OK {ok}, TTFT {ttft}")

    # 1000 concurrent streams, each on its own connection.
    async def one(i):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps({"prompt": [1 + i % 50], "max_tokens": 4, "stream": True, "return_token_ids": True}).encode()
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        data = b""
        while b"data: [DONE]" not in data:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
        writer.close()
        return data.count(b'"token_ids":[') if b"data: [DONE]" in data else -1

    async def many(n):
        return await asyncio.gather(*[one(i) for i in range(n)])
    t0 = time.time()
    counts = asyncio.run(many(1000))
    r.check("1000 concurrent streams all complete", all(c >= 1 for c in counts), f"{sum(c < 1 for c in counts)} failed, {time.time() - t0:.1f}s")
    r.check("still serving after all that", post(port, {"prompt": [1], "max_tokens": 1})[0] == 200)

# --- Queue full (429), half a request, draining (503) ------------------------------
with harness.Server(tinygpt, ckpt, "--max-queue=1", "--max-seqs=1", "--debug-step-delay-ms=30", "--http-request-timeout-ms=1000") as s:
    port = s.http_port
    # A client that goes away mid-stream cancels its request (30 ms steps: the
    # stream is still running when the server notices).
    before = harness.value(s.metrics(), "tinygpt_requests_total", api="openai", code="CANCELLED")
    k = socket.create_connection(("127.0.0.1", port))
    body = json.dumps({"prompt": [1, 2, 3], "max_tokens": 60, "stream": True, "ignore_eos": True}).encode()
    k.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    got = b""
    while got.count(b"data: ") < 2:
        got += k.recv(4096)
    k.close()
    harness.wait_for(lambda: harness.value(s.metrics(), "tinygpt_requests_total", api="openai", code="CANCELLED") == before + 1,
                     timeout=20, what="the cancelled stream counted")
    # The call is counted when it ends; the engine lets go of the sequence at
    # its next step (up to a 30 ms step later, more on a loaded machine).
    def released():
        m = s.metrics()
        return harness.value(m, "tinygpt_kv_cache_blocks_used") == 0 and harness.value(m, "tinygpt_running_sequences") == 0
    t0 = time.time()
    try:
        harness.wait_for(released, timeout=10, what="the cancelled sequence released")
        ok = True
    except AssertionError:
        ok = False
    r.check("disconnect mid-stream: CANCELLED, every KV block back", ok, f"{time.time() - t0:.2f}s after it was counted")
    long_req = json.dumps({"prompt": [1], "max_tokens": 60, "ignore_eos": True}).encode()
    socks = []
    for gauge in ("tinygpt_running_sequences", "tinygpt_waiting_sequences"):  # one running, one waiting: the queue is full
        k = socket.create_connection(("127.0.0.1", port))
        k.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(long_req), long_req))
        socks.append(k)
        harness.wait_for(lambda: harness.value(s.metrics(), gauge) == 1, what=gauge)
    status, param, msg, shape = error_of(post(port, {"prompt": [1], "max_tokens": 1}))
    r.check("queue full: 429 with an error body", status == 429 and shape, f"{status} {msg}")
    half = socket.create_connection(("127.0.0.1", port))
    half.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\":")
    t0 = time.time()
    half.settimeout(10)
    dropped = half.recv(100) == b""
    r.check("half a request: dropped at the request timeout (1 s)", dropped and 0.5 < time.time() - t0 < 5, f"{time.time() - t0:.2f}s")
    s.proc.send_signal(signal.SIGTERM)
    harness.wait_for(lambda: get(port, "/health")[0] == 503, timeout=10, what="/health 503")
    status, param, msg, shape = error_of(post(port, {"prompt": [1], "max_tokens": 1}))
    r.check("draining: new requests 503, /health 503", status == 503 and shape, f"{status} {msg}")
    done = [json.loads(k.makefile("rb").read().split(b"\r\n\r\n", 1)[1])["usage"]["completion_tokens"] for k in socks]
    r.check("draining: the requests in flight finish", done == [60, 60], str(done))
    r.check("draining: exit 0", s.proc.wait(timeout=30) == 0)

# --- A text model: byte tokens, random weights ---------------------------------------
torch.manual_seed(0)
cfg = dict(vocab_size=256, d_model=64, n_layers=1, n_heads=4, n_kv_heads=4, ffn_hidden=128, max_seq_len=128,
           pos_encoding="learned", norm_eps=1e-5)
text_ckpt = os.path.join(work, "bytes.safetensors")
save_safetensors(text_ckpt, TinyGPT(cfg).state_dict(), {"tinygpt.config": json.dumps(cfg), "tinygpt.tokenizer": json.dumps({"type": "bytes"})})
with harness.Server(tinygpt, text_ckpt, "--served-model-name=bytes-test") as s:
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(s.address))
    port = s.http_port
    g = stub.Generate(pb.GenerateRequest(text="Hello, wor", max_new_tokens=40, top_logprobs=2), timeout=60)
    status, h = post(port, {"model": "bytes-test", "prompt": "Hello, wor", "max_tokens": 40, "temperature": 0, "logprobs": 2})
    c = h["choices"][0]
    r.check("text prompt: the text equals gRPC's", status == 200 and c["text"] == g.text and len(c["text"]) > 0, repr(c["text"][:40]))
    r.check("logprob tokens are the tokens' text (U+FFFD for a partial character)",
            c["logprobs"]["tokens"] == [bytes([t]).decode("utf-8", "replace") for t in g.token_ids])
    ev = events(sse(port, {"prompt": "Hello, wor", "max_tokens": 40, "temperature": 0}))
    r.check("stream: the texts concatenate to the unary text", "".join(c["text"] for e in ev for c in e["choices"]) == g.text)
    status, h = post(port, {"prompt": "Hello, wor", "max_tokens": 40, "temperature": 0, "echo": True})
    r.check("echo: the prompt before the completion", h["choices"][0]["text"] == "Hello, wor" + g.text)
    # A stop string taken from the middle of the greedy text.
    stop = g.text[len(g.text) // 2: len(g.text) // 2 + 2]
    status, h = post(port, {"prompt": "Hello, wor", "max_tokens": 40, "temperature": 0, "stop": stop})
    gs = stub.Generate(pb.GenerateRequest(text="Hello, wor", max_new_tokens=40, stop=[stop]), timeout=60)
    r.check("stop string: finish_reason stop, the text gRPC gives",
            h["choices"][0]["finish_reason"] == "stop" and h["choices"][0]["text"] == gs.text and len(gs.text) < len(g.text),
            f"{stop!r} {h['choices'][0]['text']!r}")
    status, h = post(port, {"prompt": ["ab", "cd"], "max_tokens": 3, "temperature": 0})
    r.check("a list of text prompts", [c["index"] for c in h["choices"]] == [0, 1] and h["usage"]["prompt_tokens"] == 4)
    status, h = post(port, {"prompt": [72, 105], "max_tokens": 0, "echo": True})
    r.check("token id prompt with echo: the prompt's text", status == 200 and h["choices"][0]["text"] == "Hi", str(h)[:200])
# --- A reader that stops reading ------------------------------------------------------
with harness.Server(tinygpt, text_ckpt, "--http-write-timeout-ms=1000", "--max-n=16", "--max-queue=1000") as s:
    port = s.http_port
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # fills after a few chunks
    slow.connect(("127.0.0.1", port))
    # 8 prompts x 16 samples x 120 tokens with logprobs: about 6 MB of events, more than the kernel buffers hold.
    body = json.dumps({"prompt": [[1 + i] for i in range(8)], "max_tokens": 120, "n": 16, "stream": True, "ignore_eos": True,
                       "logprobs": 5, "return_token_ids": True}).encode()
    slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    t0 = time.time()
    times = []
    for _ in range(5):  # meanwhile others are served as usual
        t = time.time()
        ok = post(port, {"prompt": "ab", "max_tokens": 20})[0] == 200
        times.append(time.time() - t if ok else 99)
    r.check("a client that stops reading holds no one else up", max(times) < 5, f"worst {max(times):.2f}s")
    harness.wait_for(lambda: harness.value(s.metrics(), "tinygpt_requests_total", api="openai", code="CANCELLED") == 8, timeout=60,
                     what="the stalled stream cancelled")
    m = s.metrics()
    r.check("it is dropped at the write timeout and cancelled, every KV block back",
            harness.value(m, "tinygpt_kv_cache_blocks_used") == 0 and time.time() - t0 < 60, f"{time.time() - t0:.1f}s")
    slow.close()

r.finish()
