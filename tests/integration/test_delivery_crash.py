"""Delivery survives kill -9: kumo-bench inject -> kumod -> kumo-bench sink (--record).
kumod is killed while it relays; after a restart its spool drains, every message it
answered 250 reaches the sink at least once, and only messages in flight at the kill
are delivered twice."""
import collections
import json
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import BENCH, free_port, wait_port

N = 20000
SIZE = 2048
DUP_BOUND = 2000


def read_lines(path):
    try:
        with open(path, errors="replace") as f:
            return [l.rstrip("\n") for l in f if l.strip()]
    except FileNotFoundError:
        return []


def start_sink(tmp_path, record, latency_ms=0):
    port = free_port()
    err = open(str(tmp_path / "sink.stderr"), "ab")
    out = open(str(tmp_path / "sink.stdout"), "ab")
    p = subprocess.Popen([BENCH, "sink", "--listen", "127.0.0.1:%d" % port, "--record", record,
                          "--json", "--stats-interval", "0", "--latency-ms", str(latency_ms)],
                         stdout=out, stderr=err)
    wait_port(port, p)
    return p, port, (out, err)


def stop_sink(p, files):
    if p.poll() is None:
        os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
    for f in files:
        f.close()


def restart(k):
    """Starts a stopped kumod again; a new listener port if its old one was taken."""
    for _ in range(3):
        try:
            return k.start()
        except RuntimeError:
            if "Address already in use" not in k.log_text():
                raise
            old = k.port
            k.port = free_port()
            with open(k.config) as f:
                text = f.read()
            with open(k.config, "w") as f:
                f.write(text.replace('smtp = "127.0.0.1:%d"' % old, 'smtp = "127.0.0.1:%d"' % k.port))
    return k.start()


@pytest.mark.parametrize("backlog", [False, True], ids=["keeping-up", "backlog"])
def test_kill9_while_relaying_delivers_every_acknowledged_message(kumod, tmp_path, backlog):
    """keeping-up: kumod relays as fast as it receives, the spool holds little at the
    kill. backlog: a slow sink and few connections, thousands queued at the kill."""
    record = str(tmp_path / "sink.record")
    accepted = str(tmp_path / "accepted.log")
    sink, sink_port, sink_files = start_sink(tmp_path, record, latency_ms=2 if backlog else 0)
    try:
        extra = ('[delivery]\nenabled = true\nretry_interval = "1s"\nconnect_timeout = "2s"\n'
                 'idle_timeout = "5s"\nconnection_limit = %d\n'
                 '[dns]\nservers = "127.0.0.1:9"\ntimeout = "1s"\n'
                 '[routing]\nsmart_host = "127.0.0.1:%d"\n' % (2 if backlog else 32, sink_port))
        k = kumod(extra=extra)
        inj_out = open(str(tmp_path / "inject.out"), "wb")
        inject = subprocess.Popen(
            [BENCH, "inject", "--host", "127.0.0.1", "--port", str(k.port), "-n", str(N),
             "-s", str(SIZE), "-c", "20", "--domains", "a.test,b.test,c.test",
             "--from", "crash@sender.test", "--accepted-log", accepted, "--json"],
            stdout=inj_out, stderr=subprocess.STDOUT)

        # kill once kumod has acknowledged a good share and the sink is receiving
        deadline = time.time() + 60
        while time.time() < deadline and inject.poll() is None:
            if len(read_lines(accepted)) >= N // 3 and len(read_lines(record)) >= 1000:
                break
            time.sleep(0.05)
        assert inject.poll() is None, "the injection ended before the kill: run too fast"
        k.kill9()
        inject.wait(timeout=60)
        inj_out.close()

        acc_ids = {}
        for line in read_lines(accepted):
            mid, _, reply = line.partition(" ")
            acc_ids[mid] = reply
        assert len(acc_ids) >= 1000, "too few acknowledged before the kill: %d" % len(acc_ids)
        assert len(acc_ids) < N, "every message was acknowledged before the kill"
        time.sleep(1.2)  # the sink's record buffer is flushed every second
        before = len(read_lines(record))

        old_logs = set(os.listdir(k.logdir))
        restart(k)
        # drained: every acknowledged message recorded by the sink, then a quiet second
        deadline = time.time() + 120
        missing = set(acc_ids)
        while time.time() < deadline:
            seen = {l.split(" ", 1)[0] for l in read_lines(record)}
            missing = set(acc_ids) - seen
            if not missing:
                break
            time.sleep(0.5)
        time.sleep(2)
        k.stop()
        left = k.list_spool()
    finally:
        stop_sink(sink, sink_files)

    lines = read_lines(record)
    per_msg = collections.Counter(l.split(" ", 1)[0] for l in lines)
    missing = set(acc_ids) - set(per_msg)
    dups = sum(n - 1 for n in per_msg.values() if n > 1)
    extra_ids = set(per_msg) - set(acc_ids)
    recovered = sum(int(n) for n in re.findall(r"recovered (\d+) messages", k.log_text())[
        -k.threads:])
    print("\nacknowledged %d, recorded before restart %d, recovered at restart %d, "
          "recorded %d lines for %d messages, duplicates %d, unacknowledged but delivered %d, "
          "left in spool %d" % (len(acc_ids), before, recovered, len(lines), len(per_msg), dups,
                                len(extra_ids), len(left)))
    assert not missing, "%d acknowledged messages never reached the sink, e.g. %s" % (
        len(missing), sorted(missing)[:3])
    assert not left, "spool not drained: %d messages, e.g. %s" % (len(left), left[:2])
    assert dups <= DUP_BOUND, "%d duplicate deliveries (bound %d)" % (dups, DUP_BOUND)
    # every line names one recipient of the injected domains
    assert all(l.split(" ", 1)[1].split("@")[1] in ("a.test", "b.test", "c.test") for l in lines)
    # messages the injector saw unanswered may have been stored all the same: at most
    # the ones in flight on its 20 connections at the kill
    assert len(extra_ids) <= 20, len(extra_ids)
    # the restarted kumod delivered (and logged) exactly what it recovered
    after = []
    for name in sorted(set(os.listdir(k.logdir)) - old_logs):
        if name.endswith(".jsonl"):
            with open(os.path.join(k.logdir, name)) as f:
                after.extend(json.loads(l) for l in f if l.strip())
    delivered_after = {r["id"] for r in after if r["type"] == "Delivery"}
    assert len(delivered_after) == recovered, (len(delivered_after), recovered)
    assert not [r for r in after if r["type"] in ("Bounce", "Expiration")]
    if backlog:
        assert recovered >= 1000, "expected a backlog at the kill, recovered %d" % recovered
