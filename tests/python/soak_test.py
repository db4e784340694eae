#!/usr/bin/env python3
"""Soak: mixed traffic against one real `tinygpt serve` on loopback, then
checks that it held up.

Traffic, from CONCURRENCY client threads for SECONDS: unary and streaming
requests (greedy prompts repeated from a small set, seeded sampled ones),
streams the client cancels after its first message, requests with 1-50 ms
deadlines, invalid requests (bad fields, non-UTF-8 text sent as raw bytes),
GetModelInfo calls, and a scraper reading /metrics once a second.

Asserted: the server never dies and exits 0 on SIGTERM; every request gets an
expected status (valid ones OK, or DEADLINE_EXCEEDED/CANCELLED where the
client asked for it, or RESOURCE_EXHAUSTED; invalid ones INVALID_ARGUMENT);
every repeated greedy or seeded prompt gives the same tokens each time; every
OK stream's tokens match its final usage; at the end every KV block is free
and nothing is running or waiting; RSS grows less than RSS_BOUND_MB from the
end of the warm-up (the first 20%) to the end; every /metrics scrape
succeeds within 2 s; and tinygpt_requests_total agrees with what the client
saw (exactly for INVALID_ARGUMENT and RESOURCE_EXHAUSTED; requests that ended
by deadline or client cancel may be counted OK by the server when they
finished just before, or missed when they never reached it).

usage: soak_test.py TINYGPT_BIN SOURCE_DIR [--seconds N] [--concurrency N] [--server-flag=--FLAG=V ...]
TINYGPT_SOAK_SECONDS overrides the default duration (90 s; CI runs that).
Prints one JSON line of figures at the end (docs/reliability.md quotes it)."""
import argparse, collections, json, os, random, signal, sys, tempfile, threading, time, urllib.request

import grpc
import harness

ap = argparse.ArgumentParser()
ap.add_argument("tinygpt")
ap.add_argument("source")
ap.add_argument("--seconds", type=float, default=float(os.environ.get("TINYGPT_SOAK_SECONDS", "90")))
ap.add_argument("--concurrency", type=int, default=32)
ap.add_argument("--rss-bound-mb", type=float, default=64)
ap.add_argument("--server-flag", action="append", default=[], help="an extra flag for tinygpt serve (repeatable)")
args = ap.parse_args()

pb, pb_grpc = harness.stubs(args.source)
r = harness.Results()
work = tempfile.mkdtemp(prefix="tinygpt-soak-")
ckpt = harness.train(args.tinygpt, work)
SC = grpc.StatusCode

# (ids, max_new_tokens): the repeated greedy prompts.
GREEDY = [([i, i + 1, i + 2], 4 + i % 13) for i in range(0, 48, 4)]


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return -1.0


class Stats:
    def __init__(self):
        self.mu = threading.Lock()
        self.codes = collections.Counter()        # every Generate/GenerateStream call, by the status the client saw
        self.kinds = collections.Counter()
        self.unexpected = []                      # (kind, code, details)
        self.outputs = {}                         # determinism key -> tokens
        self.mismatches = []
        self.ok_tokens = 0
        self.info_calls = 0

    def record(self, kind, code, details="", expected=(SC.OK,)):
        with self.mu:
            self.codes[code.name] += 1
            self.kinds[kind] += 1
            if code not in expected and len(self.unexpected) < 20:
                self.unexpected.append((kind, code.name, details))
            elif code not in expected:
                self.unexpected.append(None)

    def same(self, key, tokens):
        with self.mu:
            first = self.outputs.setdefault(key, tokens)
            if first != tokens and len(self.mismatches) < 20:
                self.mismatches.append((key, first, tokens))


stats = Stats()
stop = threading.Event()

with harness.Server(args.tinygpt, ckpt, "--max-queue=256", *args.server_flag) as server:
    pid = server.proc.pid
    channel = grpc.insecure_channel(server.address)
    stub = pb_grpc.GenerationStub(channel)
    raw_unary = channel.unary_unary("/tinygpt.v1.Generation/Generate", request_serializer=lambda b: b,
                                    response_deserializer=pb.GenerateResponse.FromString)
    BUSY = (SC.OK, SC.RESOURCE_EXHAUSTED)  # the queue may refuse under load

    def unary_greedy(rng):
        ids, n = rng.choice(GREEDY)
        try:
            resp = stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids), max_new_tokens=n), timeout=120)
        except grpc.RpcError as e:
            return stats.record("unary_greedy", e.code(), e.details(), BUSY)
        stats.record("unary_greedy", SC.OK)
        stats.same(("greedy", tuple(ids), n), list(resp.token_ids))
        with stats.mu:
            stats.ok_tokens += len(resp.token_ids)

    def unary_sampled(rng):
        seed = rng.randrange(8)  # few seeds, so each repeats
        ids = [seed, seed + 3]
        req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids), max_new_tokens=12, temperature=0.9, top_k=20, seed=seed)
        req.top_p.value = 0.95
        try:
            resp = stub.Generate(req, timeout=120)
        except grpc.RpcError as e:
            return stats.record("unary_sampled", e.code(), e.details(), BUSY)
        stats.record("unary_sampled", SC.OK)
        stats.same(("sampled", seed), list(resp.token_ids))
        with stats.mu:
            stats.ok_tokens += len(resp.token_ids)

    def stream_full(rng):
        ids, n = rng.choice(GREEDY)
        tokens, last = [], None
        try:
            for m in stub.GenerateStream(pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids), max_new_tokens=n), timeout=120):
                tokens += list(m.token_ids)
                last = m
        except grpc.RpcError as e:
            return stats.record("stream", e.code(), e.details(), BUSY)
        ok = last is not None and last.usage.generated_tokens == len(tokens) == n and last.finish_reason == pb.FINISH_REASON_LENGTH
        stats.record("stream", SC.OK if ok else SC.DATA_LOSS, "" if ok else f"{len(tokens)} tokens, last {last}")
        stats.same(("greedy", tuple(ids), n), tokens)  # a stream gives what the unary call gives
        with stats.mu:
            stats.ok_tokens += len(tokens)

    def stream_cancelled(rng):
        call = stub.GenerateStream(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[rng.randrange(60)]), max_new_tokens=60), timeout=120)
        try:
            for _ in call:
                call.cancel()
                break
        except grpc.RpcError:
            pass
        stats.record("stream_cancelled", call.code(), call.details() or "", (SC.CANCELLED, SC.RESOURCE_EXHAUSTED))

    def short_deadline(rng):
        timeout = rng.uniform(0.001, 0.05)
        req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[rng.randrange(60)]), max_new_tokens=rng.randrange(1, 40))
        expected = (SC.OK, SC.DEADLINE_EXCEEDED, SC.RESOURCE_EXHAUSTED)
        try:
            if rng.random() < 0.5:
                stub.Generate(req, timeout=timeout)
            else:
                for _ in stub.GenerateStream(req, timeout=timeout):
                    pass
            stats.record("deadline", SC.OK)
        except grpc.RpcError as e:
            stats.record("deadline", e.code(), e.details(), expected)

    INVALID = [
        pb.GenerateRequest(token_ids=pb.TokenIds(ids=[]), max_new_tokens=3),
        pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 64]), max_new_tokens=3),
        pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1]), max_new_tokens=0),
        pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1]), max_new_tokens=500),
        pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1]), max_new_tokens=3, temperature=-1),
        pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1]), max_new_tokens=3, top_k=-2),
        pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1]), max_new_tokens=3, stop_token_ids=[99]),
        pb.GenerateRequest(text="", max_new_tokens=3),
    ]

    def invalid(rng):
        try:
            if rng.random() < 0.2:  # text = b"\xff\xfe": not UTF-8, only sendable as raw bytes
                raw_unary(b"\x0a\x02\xff\xfe\x18\x03", timeout=60)
            else:
                stub.Generate(rng.choice(INVALID), timeout=60)
            stats.record("invalid", SC.OK, "an invalid request was served", ())
        except grpc.RpcError as e:
            stats.record("invalid", e.code(), e.details(), (SC.INVALID_ARGUMENT,))

    def info(rng):
        stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60)
        with stats.mu:
            stats.info_calls += 1

    MIX = [(unary_greedy, 25), (unary_sampled, 10), (stream_full, 20), (stream_cancelled, 10), (short_deadline, 15),
           (invalid, 15), (info, 5)]
    funcs = [f for f, w in MIX for _ in range(w)]

    def worker(i):
        rng = random.Random(i)
        while not stop.is_set():
            try:
                rng.choice(funcs)(rng)
            except Exception as e:  # a failure of the client itself (e.g. the server died): record it
                with stats.mu:
                    stats.unexpected.append(("client", type(e).__name__, str(e)[:200]))

    scrapes = {"ok": 0, "failed": 0, "worst": 0.0}

    def scraper():
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        while not stop.is_set():
            t0 = time.time()
            try:
                ok = b"tinygpt_kv_cache_blocks_total" in urllib.request.urlopen(url, timeout=2).read()
            except OSError:
                ok = False
            scrapes["ok" if ok else "failed"] += 1
            scrapes["worst"] = max(scrapes["worst"], time.time() - t0)
            stop.wait(1.0)

    rss_start = rss_mb(pid)
    t_start = time.time()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrency)] + [threading.Thread(target=scraper)]
    for t in threads:
        t.start()
    stop.wait(args.seconds * 0.2)
    rss_warm = rss_mb(pid)
    alive = True
    while time.time() - t_start < args.seconds:
        alive = alive and server.proc.poll() is None
        stop.wait(1.0)
    stop.set()
    for t in threads:
        t.join(timeout=180)
    elapsed = time.time() - t_start
    rss_end = rss_mb(pid)
    r.check("server alive through the soak", alive and server.proc.poll() is None)

    # The server settles: cancelled and timed-out sequences are freed within a step.
    def settled():
        i = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        return i.kv_blocks_free == i.kv_blocks_total and i.running_seqs == 0 and i.waiting_seqs == 0
    try:
        harness.wait_for(settled, timeout=30, what="the engine to settle")
    except AssertionError:
        pass
    info_end = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    r.check("every KV block free at the end", info_end.kv_blocks_free == info_end.kv_blocks_total,
            f"{info_end.kv_blocks_free}/{info_end.kv_blocks_total}")
    r.check("nothing running or waiting at the end", info_end.running_seqs == 0 and info_end.waiting_seqs == 0,
            f"running {info_end.running_seqs}, waiting {info_end.waiting_seqs}")
    unexpected = [u for u in stats.unexpected]
    r.check("every request got an expected status", not unexpected, f"{len(unexpected)} unexpected, first: {unexpected[:5]}")
    r.check("repeated greedy and seeded prompts give identical tokens", not stats.mismatches, str(stats.mismatches[:3]))
    r.check(f"RSS growth after warm-up under {args.rss_bound_mb:.0f} MB", rss_end - rss_warm < args.rss_bound_mb,
            f"{rss_start:.0f} -> {rss_warm:.0f} (warm) -> {rss_end:.0f} MB")
    r.check("every /metrics scrape succeeded within 2 s", scrapes["failed"] == 0 and scrapes["ok"] > 0, str(scrapes))

    m = server.metrics()
    srv = collections.Counter()
    for (name, labels), v in m.items():
        if name == "tinygpt_requests_total":
            srv[dict(labels)["code"]] += int(v)
    cli = stats.codes
    total_cli, total_srv = sum(cli.values()), sum(srv.values())
    racy = cli["DEADLINE_EXCEEDED"] + cli["CANCELLED"]
    r.check("metrics: INVALID_ARGUMENT equal", srv["INVALID_ARGUMENT"] == cli["INVALID_ARGUMENT"],
            f"server {srv['INVALID_ARGUMENT']}, client {cli['INVALID_ARGUMENT']}")
    r.check("metrics: RESOURCE_EXHAUSTED equal", srv["RESOURCE_EXHAUSTED"] == cli["RESOURCE_EXHAUSTED"],
            f"server {srv['RESOURCE_EXHAUSTED']}, client {cli['RESOURCE_EXHAUSTED']}")
    r.check("metrics: OK at least the client's and beyond it only by deadline/cancel races",
            cli["OK"] <= srv["OK"] <= cli["OK"] + racy, f"server {srv['OK']}, client {cli['OK']}, racy {racy}")
    allowed = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "CANCELLED", "DEADLINE_EXCEEDED"}
    r.check("metrics: only the expected status codes", set(srv) <= allowed, str(dict(srv)))
    # A deadline that runs out can reach the server as a cancel just before its
    # own copy of the deadline passes; then it counts CANCELLED.
    r.check("metrics: CANCELLED + DEADLINE_EXCEEDED within the client's",
            srv["CANCELLED"] + srv["DEADLINE_EXCEEDED"] <= racy, f"server {srv['CANCELLED'] + srv['DEADLINE_EXCEEDED']}, client {racy}")
    r.check("metrics: total within the requests that could end before reaching the server",
            total_cli - racy <= total_srv <= total_cli, f"server {total_srv}, client {total_cli}")
    gen = harness.value(m, "tinygpt_tokens_total", kind="generated")
    r.check("metrics: generated tokens cover every token the client got", gen >= stats.ok_tokens, f"{gen} vs {stats.ok_tokens}")
    rc = server.stop()
    r.check("server exits 0 on SIGTERM", rc == 0, str(rc))
    figures = {"seconds": round(elapsed, 1), "concurrency": args.concurrency, "requests": total_cli, "by_kind": dict(stats.kinds),
               "client_codes": dict(cli), "server_codes": dict(srv), "info_calls": stats.info_calls,
               "requests_per_second": round(total_cli / elapsed, 1), "ok_tokens": stats.ok_tokens,
               "rss_mb": [round(rss_start), round(rss_warm), round(rss_end)], "scrapes": scrapes,
               "distinct_outputs_checked": len(stats.outputs)}
    print("SOAK " + json.dumps(figures), flush=True)
r.finish()
