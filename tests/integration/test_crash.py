"""Durability: inject with kumo-bench, kill -9 kumod mid-run, then check that every message
that was answered 250 is enumerated again from the spool with its envelope intact."""
import os
import re
import subprocess
import time

from conftest import BENCH, KUMOD


def test_kill9_loses_no_acknowledged_message(kumod, tmp_path):
    k = kumod()
    accepted = str(tmp_path / "accepted.log")
    bench = subprocess.Popen(
        [BENCH, "inject", "--host", "127.0.0.1", "--port", str(k.port), "-n", "200000",
         "-s", "10240", "-c", "50", "--domains", "a.test,b.test,c.test",
         "--from", "crash@sender.test", "--accepted-log", accepted],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # let a good number of messages through, then crash the server mid-stream
    deadline = time.time() + 30
    while time.time() < deadline:
        if os.path.exists(accepted) and os.path.getsize(accepted) > 0:
            break
        time.sleep(0.05)
    time.sleep(1.5)
    k.kill9()
    bench.communicate(timeout=60)

    with open(accepted) as f:
        lines = [l for l in f if l.strip()]
    ids = set()
    for line in lines:
        m = re.search(r"id=([0-9a-f]{32})", line)
        assert m, line
        ids.add(m.group(1))
    assert len(ids) > 1000, "too few messages acknowledged before the kill: %d" % len(ids)

    listed = {m["id"]: m for m in k.list_spool()}
    missing = ids - set(listed)
    assert not missing, "%d acknowledged messages lost, e.g. %s" % (len(missing), sorted(missing)[:3])
    for i in ids:
        m = listed[i]
        assert m["sender"] == "crash@sender.test"
        assert len(m["recipients"]) == 1
        rcpt = m["recipients"][0]
        assert rcpt["addr"].split("@")[1] in ("a.test", "b.test", "c.test")
        assert rcpt["queue"] == rcpt["addr"].split("@")[1]
        assert m["size"] >= 10240

    # a restart enumerates them again and logs the count
    k.start()
    k.stop()
    found = re.findall(r"recovered (\d+) messages", k.log_text())
    assert sum(int(n) for n in found[-k.threads:]) == len(listed)
