#!/usr/bin/env python3
"""Automatic prefix caching against a real `tinygpt serve`.

- A request sharing a 40-token prefix (5 blocks of 8) with an earlier one
  computes only its remaining tokens: tinygpt_prefix_cache_hits_total grows by
  40 and the step token counts by 40 fewer than with --noprefix-caching, and
  it returns exactly the tokens it returns with caching off.
- A mixed workload with shared prefixes, sampled and greedy requests,
  cancellations and a cache small enough to preempt ends with every block
  free and nothing running, and its greedy outputs equal caching-off ones.

usage: prefix_cache_test.py TINYGPT_BIN SOURCE_DIR"""
import os, random, sys, tempfile, threading

import grpc

sys.path.insert(0, os.path.dirname(__file__))
import harness

tinygpt, source = sys.argv[1], sys.argv[2]
pb, pb_grpc = harness.stubs(source)
work = tempfile.mkdtemp(prefix="tinygpt-prefix-")
ckpt = harness.train(tinygpt, work)
r = harness.Results()

random.seed(4)
prefix = [random.randrange(64) for _ in range(40)]
a = prefix + [random.randrange(64) for _ in range(10)]
b = prefix + [random.randrange(64) for _ in range(10)]


def req(ids, n=8, **kw):
    return pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids), max_new_tokens=n, **kw)


def step_tokens(server):
    return harness.value(server.metrics(), "tinygpt_step_tokens_sum")


def idle(stub):
    def check():
        i = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        return i.kv_blocks_free == i.kv_blocks_total and i.running_seqs == 0 and i.waiting_seqs == 0
    harness.wait_for(check, what="every KV block free")
    return True


outputs, computed = {}, {}
for caching in (True, False):
    flags = ["--kv-block-size=8"] + ([] if caching else ["--noprefix-caching"])
    with harness.Server(tinygpt, ckpt, *flags) as server:
        stub = pb_grpc.GenerationStub(grpc.insecure_channel(server.address))
        out_a = list(stub.Generate(req(a), timeout=60).token_ids)
        before_steps = step_tokens(server)
        before_hits = harness.value(server.metrics(), "tinygpt_prefix_cache_hits_total")
        out_b = list(stub.Generate(req(b), timeout=60).token_ids)
        computed[caching] = step_tokens(server) - before_steps
        hits = harness.value(server.metrics(), "tinygpt_prefix_cache_hits_total") - before_hits
        outputs[caching] = (out_a, out_b)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        if caching:
            r.check("the second request found its 40-token prefix in the cache", hits == 40, f"hits {hits}")
            r.check("GetModelInfo reports prefix caching and cached blocks", info.prefix_caching and info.kv_blocks_cached >= 5,
                    f"{info.prefix_caching} {info.kv_blocks_cached}")
        else:
            r.check("--noprefix-caching: no hits, nothing cached", hits == 0 and not info.prefix_caching and info.kv_blocks_cached == 0)
r.check("with caching the second request computed 40 tokens fewer (step token counts)",
        computed[False] - computed[True] == 40, f"{computed[True]} vs {computed[False]}")
r.check("cached and uncached outputs are the same tokens", outputs[True] == outputs[False], str(outputs))

# Mixed workload: 4 shared prefixes, greedy and sampled, some cancelled, a
# cache of 24 blocks of 8 tokens (preemption under load).
prompts = []
for i in range(48):
    p = [random.randrange(64) for _ in range(random.choice([16, 24, 32]))]
    prompts.append(([17 + i % 4] * 16 + p)[:48])  # 4 shared 16-token prefixes
results = {}
for caching in (True, False):
    flags = ["--kv-block-size=8", "--kv-cache-tokens=192", "--max-seqs=16"] + ([] if caching else ["--noprefix-caching"])
    with harness.Server(tinygpt, ckpt, *flags) as server:
        stub = pb_grpc.GenerationStub(grpc.insecure_channel(server.address))
        got = {}

        def run(i):
            temp = 0.0 if i % 3 else 0.9
            rq = req(prompts[i], n=12, temperature=temp, seed=i)
            if i % 7 == 0:  # cancelled mid-stream
                it = stub.GenerateStream(rq, timeout=60)
                next(it)
                it.cancel()
                return
            got[i] = list(stub.Generate(rq, timeout=120).token_ids)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results[caching] = got
        r.check(f"mixed workload (caching {'on' if caching else 'off'}): every block free and nothing running at the end", idle(stub))
        if caching:
            m = server.metrics()
            r.check("mixed workload: the cache was hit", harness.value(m, "tinygpt_prefix_cache_hits_total") > 0)
        r.check(f"mixed workload (caching {'on' if caching else 'off'}): sequences were preempted",
                harness.value(server.metrics(), "tinygpt_preemptions_total") > 0)
r.check("mixed workload: every answered request gives the same tokens with caching on and off",
        results[True] == results[False] and len(results[True]) == len([i for i in range(48) if i % 7]),
        f"{len(results[True])} answered")
r.finish()
