#!/usr/bin/env python3
"""Logprobs, penalties and n > 1 over gRPC, checked against PyTorch on the
seed model (python3-torch, the tutorial's TinyGPT loaded from the same
checkpoint).

- logprobs / top_logprobs: the log-softmax of PyTorch's logits within 1e-4,
  the top-5 ids in PyTorch's order; unary and streamed alike.
- repetition / frequency / presence penalties: greedy continuations of a
  random model (whose output repeats tokens) equal a PyTorch implementation
  of the same formulas (HF's CTRL form, OpenAI's form), and differ from the
  unpenalized output.
- n samples: each equals the n = 1 request with seed + i; streamed samples
  equal the unary ones; every KV block is free afterwards.
- prompt_logprobs: each prompt token's log-probability given the ones before
  it (and the top N) within 1e-4 of PyTorch's, over a prompt computed in
  three chunks; streamed equal unary; a cached prompt computed in full.
- Out-of-range values get INVALID_ARGUMENT naming the field.

usage: sampling_features_test.py TINYGPT_BIN SOURCE_DIR"""
import json, os, sys, tempfile

import grpc
import torch

sys.path.insert(0, os.path.dirname(__file__))
import harness
from torch_tinygpt import TinyGPT, load_safetensors, save_safetensors

tinygpt, source = sys.argv[1], sys.argv[2]
pb, pb_grpc = harness.stubs(source)
work = tempfile.mkdtemp(prefix="tinygpt-sampling-")
ckpt = harness.train(tinygpt, work, steps=40)  # partly trained: peaked but not one-hot logits
r = harness.Results()

tensors, meta = load_safetensors(ckpt)
model = TinyGPT(json.loads(meta["tinygpt.config"])).eval()
model.load_state_dict(tensors)


def torch_logits(seq):
    with torch.no_grad():
        return model(torch.tensor(seq), [len(seq)])[-1].float()


def torch_greedy(prompt, n, rep=1.0, freq=0.0, pres=0.0):
    seq, out, lps = list(prompt), [], []
    for _ in range(n):
        logits = torch_logits(seq)
        lps.append(torch.log_softmax(logits.double(), -1))
        x = logits.clone()
        seen = sorted(set(prompt) | set(out))
        if rep != 1.0 and seen:  # HF RepetitionPenaltyLogitsProcessor
            idx = torch.tensor(seen)
            v = x[idx]
            x[idx] = torch.where(v > 0, v / rep, v * rep)
        for t in set(out):  # OpenAI frequency / presence
            x[t] -= freq * out.count(t) + pres
        tok = int(torch.argmax(x))
        out.append(tok)
        seq.append(tok)
    return out, lps


with harness.Server(tinygpt, ckpt, "--max-n=8") as server:
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(server.address))
    # --- logprobs ---
    worst, top_ok, n_checked = 0.0, True, 0
    for prompt in ([3, 4, 5], [40, 41], [10, 20, 30, 40]):
        resp = stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=prompt), max_new_tokens=8, top_logprobs=5), timeout=60)
        ref_out, ref_lps = torch_greedy(prompt, 8)
        r.check(f"greedy {prompt}: same tokens as PyTorch", list(resp.token_ids) == ref_out, f"{list(resp.token_ids)} vs {ref_out}")
        for lp, ref in zip(resp.logprobs, ref_lps):
            worst = max(worst, abs(lp.logprob - ref[lp.token_id].item()))
            want_top = torch.topk(ref, 5).indices.tolist()
            top_ok &= [t.token_id for t in lp.top] == want_top
            worst = max([worst] + [abs(t.logprob - ref[t.token_id].item()) for t in lp.top])
            n_checked += 1
    r.check(f"logprobs of {n_checked} tokens (sampled and top 5) within 1e-4 of PyTorch's log_softmax", worst < 1e-4, f"max diff {worst:.2e}")
    r.check("top_logprobs ids in PyTorch's order", top_ok)
    resp = stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[7, 8]), max_new_tokens=5, logprobs=True), timeout=60)
    streamed = [lp for m in stub.GenerateStream(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[7, 8]), max_new_tokens=5, logprobs=True),
                                                timeout=60) for lp in m.logprobs]
    r.check("logprobs=true: one per token, no alternatives; streamed equal unary",
            len(resp.logprobs) == 5 and all(len(lp.top) == 0 for lp in resp.logprobs) and
            [(lp.token_id, lp.logprob) for lp in streamed] == [(lp.token_id, lp.logprob) for lp in resp.logprobs])
    plain = stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[7, 8]), max_new_tokens=5), timeout=60)
    r.check("no logprobs unless asked", len(plain.logprobs) == 0 and list(plain.token_ids) == list(resp.token_ids))

    # --- n samples ---
    req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=list(range(20, 45))), max_new_tokens=10, temperature=1.5, seed=11, n=4,
                             logprobs=True)
    resp = stub.Generate(req, timeout=60)
    singles = []
    for i in range(4):
        one = pb.GenerateRequest()
        one.CopyFrom(req)
        one.n, one.seed = 1, 11 + i
        singles.append(list(stub.Generate(one, timeout=60).token_ids))
    got = [list(c.token_ids) for c in resp.choices]
    r.check("n=4: four choices, each equal to the n=1 request with seed + i", got == singles and len(set(map(tuple, got))) > 1,
            f"{got} vs {singles}")
    r.check("n=4: the response's own fields are sample 0; usage counts all samples",
            list(resp.token_ids) == got[0] and resp.usage.generated_tokens == sum(map(len, got)) and
            [c.index for c in resp.choices] == [0, 1, 2, 3] and all(len(c.logprobs) == 10 for c in resp.choices))
    per_index, finished = {}, set()
    for m in stub.GenerateStream(req, timeout=60):
        per_index.setdefault(m.index, []).extend(m.token_ids)
        if m.finish_reason:
            finished.add(m.index)
    r.check("n=4 streamed: tokens by index equal the unary choices, each sample marked finished",
            [per_index.get(i) for i in range(4)] == got and finished == {0, 1, 2, 3}, str(per_index))
    # The prompt (25 tokens, 1 full block of 16) is computed once: 3 samples x 16 tokens fewer.
    before = harness.value(server.metrics(), "tinygpt_step_tokens_sum")
    stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=list(range(1, 34))), max_new_tokens=2, n=4, seed=3,
                                     temperature=1.0), timeout=60)
    computed = harness.value(server.metrics(), "tinygpt_step_tokens_sum") - before
    # Sample 0: 33 prompt tokens + 1 decode; samples 1-3 share 2 blocks (32 tokens): 1 + 1 each.
    r.check("n=4: the other samples share the prompt's full blocks", computed == 34 + 3 * 2, f"{computed} tokens computed")

    # --- validation ---
    def refused(field, **kw):
        rp = kw.pop("repetition_penalty", None)
        q = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 2]), max_new_tokens=3, **kw)
        if rp is not None:
            q.repetition_penalty.value = rp
        try:
            stub.Generate(q, timeout=30)
            return False
        except grpc.RpcError as e:
            return e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details().startswith(field)
    r.check("out-of-range values get INVALID_ARGUMENT naming the field",
            refused("repetition_penalty", repetition_penalty=0.0) and refused("repetition_penalty", repetition_penalty=-1.0) and
            refused("frequency_penalty", frequency_penalty=2.5) and refused("presence_penalty", presence_penalty=-3.0) and
            refused("top_logprobs", top_logprobs=21) and refused("top_logprobs", top_logprobs=-1) and
            refused("n", n=9) and refused("n", n=-2))

    def idle():
        i = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        return i.kv_blocks_free == i.kv_blocks_total and i.running_seqs == 0 and i.waiting_seqs == 0 and i.max_n == 8
    harness.wait_for(idle, what="every block free")
    r.check("every KV block free at the end", True)

# --- prompt logprobs: every prompt token's log-probability given the ones
# before it, against PyTorch's log_softmax over the whole prompt; the prompt
# is computed in chunks of 5 tokens (--max-batch-tokens=5), so rows come from
# three steps. ---
def prompt_request(prompt, top, **kw):
    q = pb.GenerateRequest(token_ids=pb.TokenIds(ids=prompt), max_new_tokens=3, **kw)
    if top is not None:
        q.prompt_logprobs.value = top
    return q


with harness.Server(tinygpt, ckpt, "--max-batch-tokens=5", "--max-n=4") as server:
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(server.address))
    prompt = [5, 9, 2, 31, 17, 8, 40, 3, 3, 12, 60, 7, 1]
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor(prompt), [len(prompt)]).double(), -1)  # row i predicts token i + 1
    resp = stub.Generate(prompt_request(prompt, 3), timeout=60)
    lps = list(resp.prompt_logprobs)
    worst = max((abs(lp.logprob - ref[i][prompt[i + 1]].item()) for i, lp in enumerate(lps)), default=1.0)
    worst = max([worst] + [abs(t.logprob - ref[i][t.token_id].item()) for i, lp in enumerate(lps) for t in lp.top])
    r.check("prompt_logprobs=3: one per prompt token after the first, naming it",
            [lp.token_id for lp in lps] == prompt[1:], str([lp.token_id for lp in lps]))
    r.check("prompt logprobs (token and top 3) within 1e-4 of PyTorch's log_softmax over the prompt", worst < 1e-4,
            f"max diff {worst:.2e}")
    r.check("prompt top-3 ids in PyTorch's order",
            all([t.token_id for t in lp.top] == torch.topk(ref[i], 3).indices.tolist() for i, lp in enumerate(lps)))
    first = next(m for m in stub.GenerateStream(prompt_request(prompt, 3), timeout=60) if m.token_ids)
    r.check("streamed: the first message carries the same prompt logprobs",
            [(lp.token_id, lp.logprob) for lp in first.prompt_logprobs] == [(lp.token_id, lp.logprob) for lp in lps])
    again = stub.Generate(prompt_request(prompt, 0), timeout=60)  # its blocks are cached now: computed in full anyway
    r.check("a cached prompt still gets every prompt logprob (0 alternatives)",
            [(lp.token_id, lp.logprob) for lp in again.prompt_logprobs] == [(lp.token_id, lp.logprob) for lp in lps] and
            all(len(lp.top) == 0 for lp in again.prompt_logprobs))
    two = stub.Generate(prompt_request(prompt, 1, n=2, seed=5, temperature=1.0), timeout=60)
    r.check("n=2: the prompt logprobs once, the samples as without them",
            len(two.prompt_logprobs) == len(prompt) - 1 and len(two.choices) == 2)
    plain = stub.Generate(prompt_request(prompt, None), timeout=60)
    r.check("no prompt logprobs unless asked; the same output", len(plain.prompt_logprobs) == 0 and
            list(plain.token_ids) == list(resp.token_ids))
    try:
        stub.Generate(prompt_request(prompt, 21), timeout=30)
        refused = False
    except grpc.RpcError as e:
        refused = e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details().startswith("prompt_logprobs")
    r.check("prompt_logprobs=21 gets INVALID_ARGUMENT naming the field", refused)

# --- penalties, on a random model (the counting model never repeats a token,
# so penalties would not change its output): its greedy output loops. ---
cfg = dict(json.loads(meta["tinygpt.config"]), n_layers=2)
torch.manual_seed(3)
model = TinyGPT(cfg).eval()
with torch.no_grad():
    model.head.weight.mul_(4.0)  # wider margins between the top logits
random_ckpt = os.path.join(work, "random.safetensors")
save_safetensors(random_ckpt, model.state_dict(), {"tinygpt.config": json.dumps(cfg)})
with harness.Server(tinygpt, random_ckpt) as server:
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(server.address))
    prompt = [5, 6, 7, 8, 9, 5, 6]
    base, _ = torch_greedy(prompt, 24)
    got_base = list(stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=prompt), max_new_tokens=24), timeout=60).token_ids)
    r.check("random model: greedy equals PyTorch and repeats tokens", got_base == base and len(set(base)) < len(base), str(base))
    changed = 0
    for rep, freq, pres in [(1.5, 0, 0), (0.6, 0, 0), (1, 1.0, 0), (1, 0, 2.0), (1.3, 0.5, 0.5), (1, -1.0, 0), (1, 0, -2.0)]:
        req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=prompt), max_new_tokens=24, frequency_penalty=freq, presence_penalty=pres)
        if rep != 1:
            req.repetition_penalty.value = rep
        got = list(stub.Generate(req, timeout=60).token_ids)
        want, _ = torch_greedy(prompt, 24, rep, freq, pres)
        changed += want != base
        r.check(f"penalties rep={rep} freq={freq} pres={pres}: greedy equals PyTorch's implementation", got == want,
                f"{got} vs {want}")
    r.check("the penalties change the greedy output in most cases", changed >= 5, f"{changed} of 7")
r.finish()
