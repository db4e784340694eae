#!/usr/bin/env python3
"""A real Prometheus server (Debian's) on loopback scrapes a real tinygpt
server under a short load; its HTTP API must report the request counter equal
to the requests sent and a populated TTFT histogram. The scrape job is the one
in deploy/prometheus/prometheus.yml with its DNS discovery swapped for a static
loopback target.
usage: prometheus_scrape_test.py TINYGPT_BIN SOURCE_DIR"""
import json, os, shutil, subprocess, sys, tempfile, urllib.parse, urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import harness

tinygpt, source = sys.argv[1], sys.argv[2]
pb, pb_grpc = harness.stubs(source)
r = harness.Results()
work = tempfile.mkdtemp(prefix="tinygpt-prom-")
ckpt = harness.train(tinygpt, work)


with harness.Server(tinygpt, ckpt) as server:
    deploy_cfg = open(os.path.join(source, "deploy/prometheus/prometheus.yml")).read()
    cfg = deploy_cfg.replace("scrape_interval: 5s", "scrape_interval: 1s")
    start = cfg.index("    dns_sd_configs:")
    cfg = cfg[:start] + f"    static_configs:\n      - targets: ['127.0.0.1:{server.metrics_port}']\n"
    cfg_path = os.path.join(work, "prometheus.yml")
    open(cfg_path, "w").write(cfg)
    subprocess.run(["promtool", "check", "config", cfg_path], check=True, capture_output=True)
    port = harness.free_port()
    prom = subprocess.Popen(["prometheus", f"--config.file={cfg_path}", f"--storage.tsdb.path={work}/data",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def query(q):
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
            try:
                res = json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]
            except OSError:
                return None
            return float(res[0]["value"][1]) if res else None

        stub = pb_grpc.GenerationStub(grpc.insecure_channel(server.address))
        sent = 24
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[i % 60, i % 60 + 1]),
                                                                     max_new_tokens=8), timeout=30), range(sent)))
        harness.wait_for(lambda: query("sum(tinygpt_requests_total)") == sent, timeout=60, what="Prometheus to scrape the counter")
        r.check("request counter in Prometheus equals requests sent", query("sum(tinygpt_requests_total)") == sent)
        r.check("TTFT histogram populated", query("sum(tinygpt_time_to_first_token_seconds_count)") == sent)
        r.check("TTFT buckets scraped", (query('sum(tinygpt_time_to_first_token_seconds_bucket{le="+Inf"})') or 0) == sent)
        r.check("generated tokens", query('sum(tinygpt_tokens_total{kind="generated"})') == sent * 8)
        r.check("target up", query('up{job="tinygpt"}') == 1)
    finally:
        prom.terminate()
        prom.wait(timeout=30)
shutil.rmtree(work, ignore_errors=True)
r.finish()
