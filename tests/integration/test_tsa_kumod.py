"""TSA end to end: a sink defers one domain with a provider-style [TSS04] reply, kumod
publishes its log records to tsa-daemon, the rule fires and kumod suspends that site
within seconds while another site keeps flowing, and the suspension expires. Likewise a
Bounce rule: the messages already waiting for the domain and those that come later are
failed with AdminBounce records and DSNs, and other domains keep delivering."""
import email
import json
import os
import smtplib
import urllib.request
import socket
import threading
import time

from conftest import KUMOD
from test_tsa import Tsa

def rule(domain, tag, action, duration):
    """A shaping file with one automation rule: action when a response has [tag]."""
    return ('[["%s".automation]]\nregex = "\\\\[%s\\\\]"\naction = "%s"\nduration = "%s"\n'
            % (domain, tag, action, duration))


RULES = rule("tss.test", "TSS04", "Suspend", "8s")


class Sink:
    """Counts RCPT commands per arrival time; defers every recipient when told to."""

    def __init__(self, defer=False, reply=None):
        self.defer = defer
        self.reply = reply or (b"451 4.7.0 [TSS04] Messages from 127.0.0.1 temporarily "
                               b"deferred due to unexpected volume\r\n")
        self.messages = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.rcpts, self.delivered = [], 0
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.session, args=(c,), daemon=True).start()

    def session(self, c):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = c.makefile("rb")
        try:
            c.sendall(b"220 sink\r\n")
            while True:
                line = f.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb == b"RCPT":
                    self.rcpts.append(time.monotonic())
                    c.sendall(self.reply if self.defer else b"250 2.1.5 ok\r\n")
                elif verb == b"DATA":
                    c.sendall(b"354 go\r\n")
                    data = []
                    while (line := f.readline()) not in (b".\r\n", b""):
                        data.append(line[1:] if line.startswith(b"..") else line)
                    self.messages.append(b"".join(data))
                    self.delivered += 1
                    c.sendall(b"250 2.0.0 ok\r\n")
                elif verb == b"QUIT":
                    c.sendall(b"221 bye\r\n")
                    return
                elif verb == b"EHLO":
                    c.sendall(b"250-sink\r\n250 PIPELINING\r\n")
                else:
                    c.sendall(b"250 ok\r\n")
        except OSError:
            pass
        finally:
            c.close()


def send(k, rcpt):
    s = smtplib.SMTP("127.0.0.1", k.port, timeout=10)
    s.sendmail("a@sender.test", [rcpt], b"Subject: t\r\n\r\nbody\r\n")
    s.quit()


def kumod_two_sites(kumod, bad, good, tsa_keys):
    """A kumod that retries every second, routes tss.test to the sink bad and other.test
    to good, and has [tsa] with tsa_keys and a one-second poll."""
    return kumod(extra='[delivery]\nretry_interval = "1s"\nmax_retry_interval = "1s"\n'
                       '[routing.domains]\n"tss.test" = "127.0.0.1:%d"\n'
                       '"other.test" = "127.0.0.1:%d"\n[tsa]\n%s\npoll_interval = "1s"\n'
                 % (bad.port, good.port, tsa_keys))


def test_tsa_suspends_a_deferring_site_and_others_flow(kumod, tmp_path):
    tsa = Tsa(tmp_path / "tsa", shaping=RULES).start()
    bad, good = Sink(defer=True), Sink()
    try:
        k = kumod_two_sites(kumod, bad, good, 'url = "http://127.0.0.1:%d"' % tsa.port)
        send(k, "u@tss.test")
        # the deferral is published, the rule fires, kumod applies the suspension
        deadline = time.time() + 15
        suspended_at = None
        while time.time() < deadline:
            time.sleep(0.5)
            n = len(bad.rcpts)
            time.sleep(2.5)
            if len(bad.rcpts) == n and n >= 1:
                suspended_at = time.monotonic()
                break
        assert suspended_at, "retries every second never stopped: %d RCPTs" % len(bad.rcpts)
        attempts_before = len(bad.rcpts)
        # another site keeps flowing meanwhile
        for i in range(5):
            send(k, "v%d@other.test" % i)
        t_end = time.time() + 10
        while time.time() < t_end and good.delivered < 5:
            time.sleep(0.2)
        assert good.delivered == 5
        assert len(bad.rcpts) == attempts_before
        # the suspension (8 s) expires and attempts resume
        t_end = time.time() + 15
        while time.time() < t_end and len(bad.rcpts) == attempts_before:
            time.sleep(0.5)
        assert len(bad.rcpts) > attempts_before, "attempts never resumed"
        recs = [r for r in k.records() if r["type"] == "TransientFailure"]
        assert recs and "[TSS04]" in recs[0]["response"]["content"]
    finally:
        tsa.stop()
        bad.sock.close()
        good.sock.close()


BOUNCE_RULES = rule("bnc.test", "BNC01", "Bounce", "5m")


def bounced_json(tsa):
    with urllib.request.urlopen("http://127.0.0.1:%d/get_bounce_v1/bounced.json" % tsa.port,
                                timeout=5) as r:
        return json.loads(r.read())


def wait_for(pred, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    return pred()


def test_tsa_bounce_fails_waiting_and_new_messages(kumod, tmp_path):
    tsa = Tsa(tmp_path / "tsa", shaping=BOUNCE_RULES).start()
    bad = Sink(defer=True, reply=b"451 4.7.1 [BNC01] mailbox host overloaded\r\n")
    good, back = Sink(), Sink()
    try:
        # retries an hour away and one message an hour to bnc.test: whatever is bounced
        # promptly was waiting, for its retry (timer wheel) or for the rate (ready queue)
        shaping = tmp_path / "kumod-shaping.toml"
        shaping.write_text('["bnc.test"]\nmax_message_rate = "1/h"\n')
        k = kumod(extra='[delivery]\nretry_interval = "1h"\n'
                        '[shaping]\nfiles = ["%s"]\n'
                        '[routing.domains]\n"bnc.test" = "127.0.0.1:%d"\n'
                        '"other.test" = "127.0.0.1:%d"\n"back.test" = "127.0.0.1:%d"\n'
                        '[tsa]\nurl = "http://127.0.0.1:%d"\npoll_interval = "1s"\n'
                  % (shaping, bad.port, good.port, back.port, tsa.port),
                  threads=1)  # one loop: the rate is not split between loops

        def waiting(i):
            s = smtplib.SMTP("127.0.0.1", k.port, timeout=10)
            s.sendmail("a@back.test", ["w%d@bnc.test" % i],
                       b"Subject: waiting %d\r\n\r\nbody\r\n" % i,
                       rcpt_options=["NOTIFY=FAILURE"])
            s.quit()
        waiting(0)
        # tried once, deferred by [BNC01]: it waits an hour for its retry
        assert wait_for(lambda: len(bad.rcpts) >= 1, 15), bad.rcpts
        waiting(1)
        waiting(2)
        rule = wait_for(lambda: bounced_json(tsa), 15)
        assert rule and rule[0]["domain"] == "bnc.test", rule
        # kumod polls the bounce within a second or two and fails the waiting messages
        of = lambda r: r["type"] == "AdminBounce"
        recs = wait_for(lambda: [r for r in k.records() if of(r)] if
                        len([r for r in k.records() if of(r)]) >= 3 else None, 15)
        assert recs and sorted(r["recipient"] for r in recs) == \
            ["w0@bnc.test", "w1@bnc.test", "w2@bnc.test"], recs
        for r in recs:
            assert r["response"]["code"] == 550
            assert r["response"]["enhanced_code"] == {"class": 5, "subject": 7, "detail": 1}
            assert r["response"]["content"].startswith("bounced by rule: automation rule ")
            assert "[BNC01]" in r["response"]["content"]
            assert r["queue"] == "bnc.test"
        # the two behind the rate limit were never offered to the domain
        assert len(bad.rcpts) == 1
        # a message that comes later is failed at once, never offered to the domain
        tried = len(bad.rcpts)
        s = smtplib.SMTP("127.0.0.1", k.port, timeout=10)
        s.sendmail("a@back.test", ["late@bnc.test"], b"Subject: late\r\n\r\nbody\r\n")
        for i in range(3):
            s.sendmail("a@back.test", ["v%d@other.test" % i], b"Subject: v\r\n\r\nbody\r\n")
        s.quit()
        assert k.wait_records(lambda r: of(r) and r["recipient"] == "late@bnc.test")
        assert wait_for(lambda: good.delivered == 3, 10), good.delivered
        assert len(bad.rcpts) == tried
        # one DSN per bounced message reached the sender, naming recipient and reason
        dsns = wait_for(lambda: back.messages if len(back.messages) >= 4 else None, 15)
        assert dsns and len(dsns) == 4, len(back.messages)
        reported = {}
        for raw in dsns:
            m = email.message_from_bytes(raw)
            assert m.get_content_type() == "multipart/report"
            status = m.get_payload()[1].as_string()
            rcpt = status.split("Final-Recipient: rfc822;")[1].split()[0]
            reported[rcpt] = status
        assert sorted(reported) == ["late@bnc.test", "w0@bnc.test", "w1@bnc.test",
                                    "w2@bnc.test"]
        assert "Status: 5.7.1" in reported["w0@bnc.test"]
        assert "bounced by rule" in reported["w0@bnc.test"]
        # nothing for bnc.test is left in the spool; nothing else was bounced
        assert not [r for r in k.records()
                    if r["type"] in ("Bounce", "AdminBounce", "Expiration")
                    and not r["recipient"].endswith("@bnc.test")]
        # AdminBounce records are not evaluated by tsa-daemon: the bounce does not feed
        # itself (its expiry stays that of the [BNC01] deferrals)
        assert bounced_json(tsa)[0]["expires"] == rule[0]["expires"]
        k.stop()
        assert not [m for m in k.list_spool() if "bnc.test" in json.dumps(m)]
    finally:
        tsa.stop()
        for s in (bad, good, back):
            s.sock.close()


LONG_SUSPEND = rule("tss.test", "TSS04", "Suspend", "5m")


def records_published(tsa):
    """tsa_records_total of a tsa-daemon: the log records it received."""
    status, _, body = tsa.request("GET", "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith("tsa_records_total "):
            return int(line.split()[1])
    raise AssertionError("no tsa_records_total in /metrics")


def rcpts_in(sink, seconds):
    n = len(sink.rcpts)
    time.sleep(seconds)
    return len(sink.rcpts) - n


def test_several_tsa_daemons(kumod, tmp_path):
    """kumod publishes to every tsa-daemon in urls, a down one included, and applies a
    suspension that only the last one serves; stopping that daemon does not lift it."""
    from conftest import free_port
    quiet = Tsa(tmp_path / "tsa-a", shaping="# no rules\n").start()
    rules = Tsa(tmp_path / "tsa-b", shaping=LONG_SUSPEND).start()
    down = free_port()  # nothing listens here
    bad, good = Sink(defer=True), Sink()
    try:
        k = kumod_two_sites(kumod, bad, good,
                            'urls = ["http://127.0.0.1:%d", "http://127.0.0.1:%d",\n'
                            '        "http://127.0.0.1:%d"]' % (quiet.port, down, rules.port))
        send(k, "u@tss.test")
        # only the second tsa-daemon has the rule: it suspends the site, the first does not
        assert wait_for(lambda: rules.suspensions()["ready_q"], 15), rules.suspensions()
        assert quiet.suspensions() == {"ready_q": [], "sched_q": []}
        # kumod applies it within a poll or two: the retries every second stop
        assert wait_for(lambda: rcpts_in(bad, 2.5) == 0, 15), len(bad.rcpts)
        # other sites keep flowing
        for i in range(3):
            send(k, "v%d@other.test" % i)
        assert wait_for(lambda: good.delivered == 3, 10), good.delivered
        # every record reached both live tsa-daemons, the down one in the way or not
        mine = lambda: len(k.records())
        assert wait_for(lambda: records_published(quiet) == mine() >= 5, 10), \
            (records_published(quiet), mine())
        assert wait_for(lambda: records_published(rules) == mine(), 10), \
            (records_published(rules), mine())
        assert "tsa-daemon http://127.0.0.1:%d unreachable" % down in k.log_text()
        # the daemon that serves the suspension goes away: kumod keeps its last answer
        # (the suspension lasts 5 minutes), so the site stays suspended
        rules.stop()
        assert wait_for(lambda: "tsa-daemon http://127.0.0.1:%d unreachable" % rules.port
                        in k.log_text(), 10), k.log_text()
        assert rcpts_in(bad, 3.5) == 0
        assert not [r for r in k.records() if r["type"] == "Delivery"
                    and r["recipient"].endswith("@tss.test")]
    finally:
        quiet.stop()
        rules.stop()
        bad.sock.close()
        good.sock.close()
