#!/usr/bin/env python3
"""The server's Prometheus metrics are true: a known set of requests, then
every counter and histogram count read back from /metrics.
usage: metrics_test.py TINYGPT_BIN SOURCE_DIR"""
import sys, tempfile

import grpc
import harness

tinygpt, source = sys.argv[1], sys.argv[2]
pb, pb_grpc = harness.stubs(source)
r = harness.Results()
ckpt = harness.train(tinygpt, tempfile.mkdtemp())
with harness.Server(tinygpt, ckpt, "--debug-step-delay-ms=5") as server:
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(server.address))
    ok_requests = [([1, 2, 3], 5), ([7], 9), ([10, 11, 12, 13, 14, 15], 4), ([30, 31], 3)]
    for ids, n in ok_requests:
        stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids), max_new_tokens=n), timeout=30)
    streamed = list(stub.GenerateStream(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[40, 41]), max_new_tokens=6), timeout=30))
    stop = stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[20]), max_new_tokens=10, stop_token_ids=[23]), timeout=30)
    bad = 0
    for req in [pb.GenerateRequest(text="", max_new_tokens=3), pb.GenerateRequest(text="a", max_new_tokens=0),
                pb.GenerateRequest(token_ids=pb.TokenIds(ids=[99]), max_new_tokens=3)]:
        try:
            stub.Generate(req, timeout=30)
        except grpc.RpcError as e:
            bad += e.code() == grpc.StatusCode.INVALID_ARGUMENT
    r.check("three invalid requests refused", bad == 3)
    try:
        stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1]), max_new_tokens=60), timeout=0.05)
        r.check("deadline request fails", False)
    except grpc.RpcError as e:
        r.check("deadline request fails", e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, str(e.code()))
    harness.wait_for(lambda: harness.value(server.metrics(), "tinygpt_running_sequences") == 0, what="idle")
    m = server.metrics()
    v = lambda name, **l: harness.value(m, name, **l)
    prompt = sum(len(ids) for ids, _ in ok_requests) + 2 + 1 + 1
    generated_ok = sum(n for _, n in ok_requests) + 6 + len(stop.token_ids)
    r.check("OK/length requests", v("tinygpt_requests_total", code="OK", finish_reason="length") == 5)
    r.check("OK/stop requests", v("tinygpt_requests_total", code="OK", finish_reason="stop") == 1)
    r.check("INVALID_ARGUMENT requests", v("tinygpt_requests_total", code="INVALID_ARGUMENT") == 3)
    r.check("DEADLINE_EXCEEDED requests", v("tinygpt_requests_total", code="DEADLINE_EXCEEDED", finish_reason="cancelled") == 1)
    r.check("all requests counted", v("tinygpt_requests_total") == 10)
    r.check("prompt tokens", v("tinygpt_tokens_total", kind="prompt") == prompt, f"{v('tinygpt_tokens_total', kind='prompt')} vs {prompt}")
    gen = v("tinygpt_tokens_total", kind="generated")
    r.check("generated tokens", generated_ok < gen < generated_ok + 60, f"{gen}, {generated_ok} from finished requests")
    r.check("latency histogram counts every request", v("tinygpt_request_duration_seconds_count") == 10)
    r.check("queue histogram counts the scheduled ones", v("tinygpt_queue_duration_seconds_count") == 7)
    r.check("TTFT histogram counts requests with a token", v("tinygpt_time_to_first_token_seconds_count") == 7)
    r.check("inter-token latency count = tokens after the first", v("tinygpt_inter_token_latency_seconds_count") == gen - 7,
            f"{v('tinygpt_inter_token_latency_seconds_count')} vs {gen - 7}")
    # Every step computes prompt tokens and generated tokens fed back (all but each sequence's last).
    # The engine plans step N+1 while step N runs, so a sequence that ends on a
    # stop token or is cancelled may have had one more token computed (the stop
    # request and the deadline one: at most 2).
    extra = v("tinygpt_step_tokens_sum") - (prompt + gen - 7)
    r.check("step tokens sum", 0 <= extra <= 2, f"{v('tinygpt_step_tokens_sum')} vs {prompt + gen - 7} + [0, 2]")
    r.check("step histograms agree", v("tinygpt_step_tokens_count") == v("tinygpt_step_duration_seconds_count") > 0)
    r.check("no preemptions", v("tinygpt_preemptions_total") == 0)
    r.check("gauges back to idle", v("tinygpt_waiting_sequences") == 0 and v("tinygpt_kv_cache_blocks_used") == 0)
    r.check("KV total", v("tinygpt_kv_cache_blocks_total") == 256)
    r.check("build info", v("tinygpt_build_info", backend="cpu", device="cpu", model_preset="seed", version="0.1.0") == 1)
    r.check("streamed request", sum(len(x.token_ids) for x in streamed) == 6)
r.finish()
