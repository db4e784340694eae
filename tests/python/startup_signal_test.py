#!/usr/bin/env python3
"""SIGTERM at any instant of `tinygpt serve`'s start-up (issue 19, item 6):
50 SIGTERMs at random instants in the first 300 ms after the process is
started (or 1.5 x its start-up time, when that is longer); each run must exit 143 at once with a line ("before serving began")
or, once the model is loaded, 0 after its drain line, and never die by the
signal. Then SIGINT the same way (130 or 0), and SIGTERM to `tinygpt train`
(143 with the line).

The dynamic loader maps tinygpt's ~77 shared libraries before the first
instruction of tinygpt runs (about 60 ms on the loaded 2-core development
machine): no program can catch a signal there. The test blocks the stop
signals across the exec, as a launcher would, so that a signal sent in that
window waits for tinygpt's first instruction (cli/stop_signals.cc installs
the handlers from the executable's .preinit_array and unblocks them), and
everything from there on is tested at every instant.
usage: startup_signal_test.py TINYGPT_BIN SOURCE_DIR"""
import os, random, signal, subprocess, sys, tempfile, time

import harness

tinygpt, source = sys.argv[1], sys.argv[2]
r = harness.Results()
work = tempfile.mkdtemp(prefix="tinygpt-startup-signal-")
ckpt = harness.train(tinygpt, work, steps=1)
rng = random.Random(19)


def blocked():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})


def run_once(argv, sig, delay):
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=blocked)
    t0 = time.monotonic()
    time.sleep(max(0.0, delay - (time.monotonic() - t0)))
    p.send_signal(sig)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        return "hung", err.decode(errors="replace")
    return p.returncode, err.decode(errors="replace")


serve = [tinygpt, "serve", f"--checkpoint={ckpt}", "--port=0", "--metrics-port=0", "--http-port=-1"]
# The window: the first 300 ms, or longer when start-up itself takes longer
# here (a loaded machine), so that both phases are hit.
t0 = time.monotonic()
p = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
p.stdout.readline()
startup = time.monotonic() - t0
p.terminate()
p.wait(timeout=30)
window = max(0.3, 1.5 * startup)
print(f"start-up to listening: {startup * 1e3:.0f} ms; signals at random instants of the first {window * 1e3:.0f} ms")
for sig, early, name in ((signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")):
    tries = 50 if sig == signal.SIGTERM else 10
    outcomes, bad = {}, []
    for i in range(tries):
        delay = rng.uniform(0.0, window)
        rc, err = run_once(serve, sig, delay)
        outcomes[rc] = outcomes.get(rc, 0) + 1
        ok = (rc == early and f"{name}: exiting at once" in err) or \
             (rc == 0 and f"signal {int(sig)}: draining" in err and "stopped" in err)
        if not ok:
            bad.append(f"{delay * 1e3:.0f} ms: rc {rc}: {err.strip()[-200:]}")
    r.check(f"serve: {tries} {name}s at random instants of the first {window * 1e3:.0f} ms: each exits {early} or 0 with its line",
            not bad, f"outcomes {outcomes}" + ("; " + " | ".join(bad[:3]) if bad else ""))
    r.check(f"serve: {name} before the model is loaded exits {early} at once, after it 0 with a drain (both seen)",
            outcomes.get(early, 0) > 0 and outcomes.get(0, 0) > 0, f"outcomes {outcomes}")

# Any other command: exits 143 with the line, whenever it comes.
train = [tinygpt, "train", "--steps=1000000", "--batch=2", f"--out={os.path.join(work, 'long.safetensors')}"]
results = [run_once(train, signal.SIGTERM, d) for d in (0.0, 0.05, 0.3, 1.5)]
r.check("train: SIGTERM at 0, 50, 300 and 1500 ms exits 143 with the line",
        all(rc == 143 and "SIGTERM: exiting at once" in err for rc, err in results), str([rc for rc, _ in results]))
r.finish()
