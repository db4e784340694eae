#!/usr/bin/env python3
"""/metrics that no number of idle or slow connections can stall (issue #19,
item 3): 100 connections that send nothing and 100 that trickle a request a
byte at a time (each reopened as soon as the server drops it, as an attacker
would), and a scrape every 100 ms for 30 s on a new connection each time:
every scrape succeeds, in under 100 ms. Then more idle connections than the
server's cap (512): scrapes still get in, because the connection that has
waited longest for a request makes room.
usage: metrics_stall_test.py TINYGPT_BIN SOURCE_DIR"""
import os, socket, sys, tempfile, threading, time, urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness

tinygpt, source = sys.argv[1], sys.argv[2]
r = harness.Results()
ckpt = harness.train(tinygpt, tempfile.mkdtemp(prefix="tinygpt-metrics-stall-"), steps=10)
SECONDS = float(os.environ.get("TINYGPT_METRICS_STALL_SECONDS", "30"))


def connect(port):
    k = socket.create_connection(("127.0.0.1", port))
    k.setblocking(False)
    return k


def alive(k):
    try:
        return k.recv(1) != b""  # data (an error response) or b"" (closed): either way dropped
    except BlockingIOError:
        return True
    except OSError:
        return False


def scrape(port):
    t0 = time.perf_counter()
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "tinygpt_kv_cache_blocks_total" in body
    return time.perf_counter() - t0


with harness.Server(tinygpt, ckpt, "--metrics-request-timeout-ms=2000") as s:
    port = s.metrics_port
    stop = threading.Event()
    reopened = [0]

    def attacker():
        idle = [connect(port) for _ in range(100)]
        trickle = [connect(port) for _ in range(100)]
        sent = [0] * len(trickle)
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100000
        while not stop.is_set():
            for i, k in enumerate(idle):
                if not alive(k):
                    k.close()
                    idle[i] = connect(port)
                    reopened[0] += 1
            for i, k in enumerate(trickle):
                try:
                    k.send(request[sent[i]:sent[i] + 1])
                    sent[i] += 1
                except OSError:
                    k.close()
                    trickle[i], sent[i] = connect(port), 0
                    reopened[0] += 1
            time.sleep(0.05)
        for k in idle + trickle:
            k.close()

    t = threading.Thread(target=attacker)
    t.start()
    time.sleep(1)  # every attacking connection open
    times, failures = [], 0
    end = time.time() + SECONDS
    while time.time() < end:
        try:
            times.append(scrape(port))
        except Exception:
            failures += 1
        time.sleep(0.1)
    stop.set()
    t.join()
    times.sort()
    worst = times[-1] if times else float("inf")
    r.check(f"{len(times) + failures} scrapes in {SECONDS:.0f} s beside 100 idle and 100 trickling connections: none failed",
            failures == 0 and len(times) > SECONDS * 5, f"{failures} failed")
    r.check("every scrape under 100 ms", worst < 0.1,
            f"p50 {1e3 * times[len(times) // 2]:.1f} ms, p99 {1e3 * times[int(len(times) * 0.99)]:.1f} ms, worst {1e3 * worst:.1f} ms")
    r.check("the attacker's connections were dropped and reopened (the request timeout)", reopened[0] >= 100, f"{reopened[0]} reopened")

    # More idle connections than the cap.
    flood = [connect(port) for _ in range(700)]
    time.sleep(0.5)
    worst, failures = 0.0, 0
    for _ in range(20):
        try:
            worst = max(worst, scrape(port))
        except Exception:
            failures += 1
    dropped = sum(not alive(k) for k in flood)
    r.check("700 idle connections (cap 512): 20 scrapes all succeed", failures == 0, f"{failures} failed, worst {1e3 * worst:.1f} ms")
    r.check("the idle ones beyond the cap were closed to make room", dropped >= 188, f"{dropped} of 700 closed")
    for k in flood:
        k.close()
r.finish()
