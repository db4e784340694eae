#!/usr/bin/env python3
"""The Grafana dashboard parses, uses the provisioned datasource, and every
query names a metric the server exports (read from a live /metrics).
usage: grafana_dashboard_test.py TINYGPT_BIN SOURCE_DIR"""
import json, os, re, sys, tempfile

import grpc
import harness

tinygpt, source = sys.argv[1], sys.argv[2]
r = harness.Results()
dash = json.load(open(os.path.join(source, "deploy/grafana/dashboards/tinygpt.json")))
provisioned = open(os.path.join(source, "deploy/grafana/provisioning/datasources/prometheus.yml")).read()
uid = re.search(r"uid:\s*(\S+)", provisioned).group(1)
exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
r.check("dashboard has panels and queries", len(dash["panels"]) >= 6 and len(exprs) >= 10)
r.check("every panel uses the provisioned datasource", all(p["datasource"]["uid"] == uid for p in dash["panels"]))
titles = " ".join(p["title"].lower() for p in dash["panels"])
for topic in ["throughput", "time to first token", "inter-token", "queue", "running", "kv cache", "errors"]:
    r.check(f"a panel for {topic}", topic in titles)
ckpt = harness.train(tinygpt, tempfile.mkdtemp(), steps=5)
pb, pb_grpc = harness.stubs(source)
with harness.Server(tinygpt, ckpt) as server:
    # One request, so the labelled families have samples.
    pb_grpc.GenerationStub(grpc.insecure_channel(server.address)).Generate(
        pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 2]), max_new_tokens=2), timeout=30)
    exported = {n for (n, _) in server.metrics()}
families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported} | exported
for e in exprs:
    names = set(re.findall(r"\btinygpt_[a-z_]+", e))
    missing = [n for n in names if n not in exported and n not in families]
    r.check(f"query names exported metrics: {e}", names and not missing, f"missing {missing}" if missing else "")
r.finish()
