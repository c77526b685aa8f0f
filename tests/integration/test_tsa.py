"""tsa-daemon on loopback: posted log records trigger a shaping file's automation rules; the
suspension lists and the shaping overlay (which kumod loads) show the actions, which survive a
restart and expire; bad requests get 4xx answers with a JSON body."""
import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
import tomllib

import pytest

from conftest import BUILD, KUMOD

TSA = os.path.join(BUILD, "daemons", "tsa-daemon", "tsa-daemon")

SHAPING = r'''
["default"]
connection_limit = 10

[["rate.test".automation]]
regex = "\\[TSS04\\]"
action = "Suspend"
duration = "3s"

[["rate.test".automation]]
regex = "(?<=code=)RL\\d+"
action = {SetConfig = {name = "max_connection_rate", value = "10/h"}}
trigger = {Threshold = "2/min"}
duration = "4s"

[["tenant.test".automation]]
regex = ["^5\\d\\d 5\\.7\\.1 ", "never"]
action = ["SuspendTenant", "SuspendCampaign", "BounceCampaign",
          {SetDomainConfig = {name = "connection_limit", value = 1}}]
duration = "1 hour"

[["tenant.test".automation]]
regex = "internal trouble"
action = "Bounce"
duration = "1 hour"
'''


class Tsa:
    """A tsa-daemon with its own config, shaping file and state database."""

    def __init__(self, tmp, shaping=SHAPING, extra=""):
        self.tmp = str(tmp)
        os.makedirs(self.tmp, exist_ok=True)
        self.port = None
        self.shaping = os.path.join(self.tmp, "shaping.toml")
        self.state = os.path.join(self.tmp, "tsa.sqlite")
        self.config = os.path.join(self.tmp, "tsa.toml")
        with open(self.shaping, "w") as f:
            f.write(shaping)
        # Port 0: the daemon binds a free port and logs it, so no other process can take the
        # port between choosing and binding it.
        with open(self.config, "w") as f:
            f.write('listen = "127.0.0.1:0"\nshaping_files = ["%s"]\nstate = "%s"\n%s'
                    % (self.shaping, self.state, extra))
        self.proc = None
        self.stderr_path = os.path.join(self.tmp, "tsa.stderr")

    def start(self):
        offset = os.path.getsize(self.stderr_path) if os.path.exists(self.stderr_path) else 0
        self.stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([TSA, "--config", self.config],
                                     stdout=self.stderr, stderr=self.stderr)
        deadline = time.time() + 20
        while time.time() < deadline:
            m = re.search(r"listening on \S+ \(port (\d+)\)", self.log_text()[offset:])
            if m:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError("tsa-daemon exited: %s" % self.log_text())
            time.sleep(0.02)
        raise TimeoutError("tsa-daemon not listening")

    def stop(self, timeout=10):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc:
            self.stderr.close()
            rc, self.proc = self.proc.returncode, None
            return rc
        return None

    def log_text(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def request(self, method, path, body=None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def publish(self, records, raw=None):
        body = raw if raw is not None else json.dumps(records).encode()
        return self.request("POST", "/publish_log_v1", body,
                            {"Content-Type": "application/json"})

    def suspensions(self):
        status, headers, body = self.request("GET", "/get_suspension_v1/suspended.json")
        assert status == 200 and headers["Content-Type"] == "application/json"
        return json.loads(body)

    def bounces(self):
        status, _, body = self.request("GET", "/get_bounce_v1/bounced.json")
        assert status == 200
        return json.loads(body)

    def overlay(self):
        status, _, body = self.request("GET", "/get_config_v1/shaping.toml")
        assert status == 200
        return body.decode()


@pytest.fixture
def tsa(tmp_path):
    started = []

    def make(**kw):
        t = Tsa(tmp_path / ("t%d" % len(started)), **kw)
        started.append(t)
        return t.start()

    yield make
    for t in started:
        t.stop()


def record(content, code=421, enhanced=(4, 7, 0), rtype="TransientFailure",
           recipient="user@rate.test", queue="rate.test",
           site="mx1.rate.test,mx2.rate.test", source="ip-1"):
    return {
        "type": rtype, "id": "0123456789abcdef0123456789abcdef",
        "sender": "bounce@sender.example", "recipient": recipient, "queue": queue,
        "site": site, "size": 1024,
        "response": {"code": code,
                     "enhanced_code": None if enhanced is None else
                     {"class": enhanced[0], "subject": enhanced[1], "detail": enhanced[2]},
                     "content": content, "command": "RCPT TO:<%s>" % recipient},
        "peer_address": {"name": "mx1.rate.test", "addr": "10.0.0.1"},
        "timestamp": time.time(), "created": int(time.time()), "num_attempts": 1,
        "egress_pool": "pool", "egress_source": source, "bounce_classification":
        "Uncategorized", "meta": {}, "headers": {}, "nodeid": "n1",
    }


def wait_for(pred, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    return pred()


def test_actions_overlay_restart_and_expiry(tsa, tmp_path):
    t = tsa()
    # A delivery and a response no rule matches change nothing.
    st, _, body = t.publish([record("250 ok", code=250, enhanced=(2, 0, 0), rtype="Delivery"),
                             record("mailbox busy")])
    assert st == 200, body
    assert json.loads(body) == {"records": 2, "matches": 0, "actions": 0}
    assert t.suspensions() == {"ready_q": [], "sched_q": []}

    # Immediate: the first [TSS04] suspends the site's ready queue.
    st, _, body = t.publish(record("[TSS04] Messages from 10.0.0.1 temporarily deferred"))
    assert st == 200 and json.loads(body)["actions"] == 1, body
    ready = t.suspensions()["ready_q"]
    assert len(ready) == 1
    s = ready[0]
    assert s["site_name"] == "ip-1->mx1.rate.test,mx2.rate.test"
    assert s["site"] == "mx1.rate.test,mx2.rate.test" and s["source"] == "ip-1"
    assert len(s["rule_hash"]) == 32 and "[TSS04]" in s["reason"]
    assert s["expires"].endswith("Z")

    # Threshold "2/min": the first match only counts, the second sets the override. The
    # regex needs look-behind: (?<=code=)RL\d+.
    assert "max_connection_rate" not in t.overlay()
    st, _, body = t.publish(record("rate limited code=RL0001"))
    assert st == 200 and json.loads(body) == {"records": 1, "matches": 1, "actions": 0}
    assert "max_connection_rate" not in t.overlay()
    st, _, body = t.publish(record("rate limited code=RL0001"))
    assert st == 200 and json.loads(body)["actions"] == 1
    overlay = t.overlay()
    doc = tomllib.loads(overlay)
    entry = doc["rate.test"]
    assert entry["mx_rollup"] is True
    assert entry["sources"]["ip-1"]["max_connection_rate"] == "10/h"
    assert "# reason: automation rule" in overlay and "code=RL0001" in overlay
    assert "# expires: " in overlay
    # No look-behind context, no match.
    st, _, body = t.publish(record("RL0001"))
    assert json.loads(body)["matches"] == 0

    # kumod loads the overlay after the shaping file it overrides.
    overlay_path = os.path.join(str(tmp_path), "overlay.toml")
    with open(overlay_path, "w") as f:
        f.write(overlay)
    kcfg = os.path.join(str(tmp_path), "kumod.toml")
    with open(kcfg, "w") as f:
        f.write('[shaping]\nfiles = ["%s", "%s"]\n' % (t.shaping, overlay_path))
    r = subprocess.run([KUMOD, "--check-config", kcfg], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr

    # Restart: the actions come back from the state database.
    before_s, before_o = t.suspensions(), tomllib.loads(t.overlay())
    assert t.stop() == 0
    t.start()
    assert t.suspensions() == before_s
    assert tomllib.loads(t.overlay()) == before_o
    assert "actions in force" in t.log_text()

    # Past their duration (3 s and 4 s), they are gone, and so are their rows.
    assert wait_for(lambda: t.suspensions()["ready_q"] == [], 8)
    assert wait_for(lambda: "max_connection_rate" not in t.overlay(), 8)
    assert tomllib.loads(t.overlay()) == {}
    db = sqlite3.connect(t.state)
    try:
        assert wait_for(lambda: db.execute("select count(*) from tsa_actions").fetchone()[0]
                        == 0, 5)
    finally:
        db.close()


def test_tenant_campaign_bounce_and_domain_config(tsa):
    t = tsa()
    rec = record("5.7.1 blocked by policy", code=550, enhanced=(5, 7, 1), rtype="Bounce",
                 recipient=["a@Tenant.Test", "b@tenant.test."], queue="spring:acme@tenant.test",
                 site="mx.tenant.test")
    st, _, body = t.publish(rec)
    assert st == 200, body
    sched = t.suspensions()["sched_q"]
    assert {(s["tenant"], s["campaign"]) for s in sched} == {("acme", None), ("acme", "spring")}
    assert all(s["domain"] == "tenant.test" for s in sched)
    bounced = t.bounces()
    assert len(bounced) == 1
    assert bounced[0]["tenant"] == "acme" and bounced[0]["campaign"] == "spring"
    doc = tomllib.loads(t.overlay())
    assert doc["tenant.test"]["mx_rollup"] is False
    assert doc["tenant.test"]["sources"]["ip-1"]["connection_limit"] == 1

    # A queue without a tenant: SuspendTenant cannot apply; a plain Bounce can.
    st, _, body = t.publish(record("internal trouble", recipient="c@tenant.test",
                                   queue="tenant.test", site="mx.tenant.test"))
    assert st == 200
    assert len(t.bounces()) == 2
    # KumoMTA-internal responses only match rules with match_internal = true.
    st, _, body = t.publish(record("KumoMTA internal: internal trouble",
                                   recipient="d@tenant.test", queue="x@tenant.test"))
    assert json.loads(body)["matches"] == 0


def test_record_forms(tsa):
    t = tsa()
    lines = "\n".join(json.dumps(record("[TSS04] a", source=s)) for s in ("a", "b", "c"))
    st, _, body = t.publish(None, raw=lines.encode() + b"\n")
    assert st == 200 and json.loads(body)["records"] == 3, body
    assert {s["source"] for s in t.suspensions()["ready_q"]} == {"a", "b", "c"}
    # A source given only in the site ("source->site") and no egress_source.
    rec = record("[TSS04] b", site="d->mx9.rate.test")
    del rec["egress_source"]
    st, _, body = t.publish(rec)
    assert st == 200
    assert "d->mx9.rate.test" in {s["site_name"] for s in t.suspensions()["ready_q"]}
    # Chunked request body on a kept-alive connection, then a pipelined GET.
    payload = json.dumps(record("[TSS04] c", source="e")).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + 50]), payload[i:i + 50])
                       for i in range(0, len(payload), 50)) + b"0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", t.port), timeout=10) as s:
        s.sendall(b"POST /publish_log_v1 HTTP/1.1\r\nHost: t\r\n"
                  b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" +
                  chunked + b"GET /get_suspension_v1/suspended.json HTTP/1.1\r\nHost: t\r\n"
                  b"Connection: close\r\n\r\n")
        data = b""
        while True:
            got = s.recv(65536)
            if not got:
                break
            data += got
    assert data.count(b"HTTP/1.1 200 OK") == 2, data
    assert b'"source":"e"' in data.split(b"\r\n\r\n", 2)[2]


def raw(t, request):
    """Sends request bytes and returns (status, body) of the answer."""
    with socket.create_connection(("127.0.0.1", t.port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < length(data):
            got = s.recv(65536)
            if not got:
                break
            data += got
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split(b" ")[1]), body


def length(data):
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_bad_requests(tsa):
    t = tsa(extra="max_body_size = 4096\n")
    cases = [
        (t.publish(None, raw=b'{"type": "Bounce",'), 400, "invalid JSON"),
        (t.publish(None, raw=b''), 400, "empty body"),
        (t.publish(None, raw=json.dumps(record("x")).encode() + b'\n{"type": }'), 400,
         "line 2, column 10"),
        (t.publish(None, raw=b'[1]'), 422, "JSON object"),
        (t.publish({"type": "Bounce", "recipient": "a@b"}), 422, "response"),
        (t.publish([record("x"), {"type": "Bounce", "recipient": 5}]), 422, "record 2"),
        (t.request("POST", "/publish_log_v1", b"{}", {"Content-Type": "text/html"}), 415,
         "Content-Type"),
        (t.request("GET", "/publish_log_v1"), 405, "not allowed"),
        (t.request("POST", "/get_config_v1/shaping.toml", b"x"), 405, "not allowed"),
        (t.request("GET", "/nothing/here"), 404, "not found"),
        (t.request("DELETE", "/metrics"), 501, "not implemented"),
    ]
    for (status, headers, body), want, text in cases:
        assert status == want, (status, body)
        assert text in json.loads(body)["error"], body
        assert headers["Content-Type"] == "application/json"
    # Nothing of the refused batch was applied.
    assert t.suspensions()["ready_q"] == []
    raws = [
        (b"GET /metrics HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET  /metrics HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        (b"GET /metrics HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        (b"POST /publish_log_v1 HTTP/1.1\r\nHost: t\r\nContent-Length: 99999\r\n\r\n", 413),
        (b"POST /publish_log_v1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST /publish_log_v1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"zz\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nHost: t\r\n" + b"X-A: b\r\n" * 80 + b"\r\n", 431),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    ]
    for req, want in raws:
        status, body = raw(t, req)
        assert status == want, (req[:60], status, body)
        assert "error" in json.loads(body)
    # The daemon still answers.
    st, _, body = t.request("GET", "/metrics")
    assert st == 200 and b"tsa_http_responses_total" in body


def test_config_and_rule_errors(tmp_path):
    bad = Tsa(tmp_path / "bad", shaping='[["x.test".automation]]\nregex = "(unclosed"\n'
                                        'action = "Suspend"\nduration = "1m"\n')
    r = subprocess.run([TSA, "--check-config", bad.config], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1
    assert "shaping.toml:1:" in r.stderr and "(unclosed" in r.stderr, r.stderr
    good = Tsa(tmp_path / "good")
    r = subprocess.run([TSA, "--check-config", good.config], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and "4 automation rules" in r.stdout, r.stdout + r.stderr
    with open(good.config, "a") as f:
        f.write("bogus = 1\n")
    r = subprocess.run([TSA, "--check-config", good.config], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1 and "tsa.toml:4: key 'bogus'" in r.stderr, r.stderr


def test_connection_table_and_timeouts(tsa):
    t = tsa(extra='max_connections = 2\nidle_timeout = "1s"\n')
    s1 = socket.create_connection(("127.0.0.1", t.port), timeout=10)
    s2 = socket.create_connection(("127.0.0.1", t.port), timeout=10)
    try:
        s1.sendall(b"GET /metrics HTTP/1.1\r\nHo")
        time.sleep(0.3)  # both accepted before the third arrives
        status, body = raw(t, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        assert status == 503 and json.loads(body)["error"] == "too many connections"
        # A request that does not arrive in time: 408. An idle connection: closed.
        data = b""
        while True:
            got = s1.recv(4096)
            if not got:
                break
            data += got
        assert data.startswith(b"HTTP/1.1 408 "), data
        assert b"Connection: close" in data
        assert s2.recv(4096) == b""
    finally:
        s1.close()
        s2.close()
    # Slots are free again.
    st, _, _ = t.request("GET", "/metrics")
    assert st == 200
