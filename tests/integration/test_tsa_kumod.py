"""TSA end to end: a sink defers one domain with a provider-style [TSS04] reply, kumod
publishes its log records to tsa-daemon, the rule fires and kumod suspends that site
within seconds while another site keeps flowing, and the suspension expires."""
import os
import smtplib
import socket
import threading
import time

from conftest import KUMOD
from test_tsa import Tsa

RULES = r'''
[["tss.test".automation]]
regex = "\\[TSS04\\]"
action = "Suspend"
duration = "8s"
'''


class Sink:
    """Counts RCPT commands per arrival time; defers every recipient when told to."""

    def __init__(self, defer=False):
        self.defer = defer
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
                    c.sendall(b"451 4.7.0 [TSS04] Messages from 127.0.0.1 temporarily "
                              b"deferred due to unexpected volume\r\n" if self.defer
                              else b"250 2.1.5 ok\r\n")
                elif verb == b"DATA":
                    c.sendall(b"354 go\r\n")
                    while f.readline() not in (b".\r\n", b""):
                        pass
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


def test_tsa_suspends_a_deferring_site_and_others_flow(kumod, tmp_path):
    tsa = Tsa(tmp_path / "tsa", shaping=RULES).start()
    bad, good = Sink(defer=True), Sink()
    try:
        k = kumod(extra='[delivery]\nretry_interval = "1s"\nmax_retry_interval = "1s"\n'
                        '[routing.domains]\n"tss.test" = "127.0.0.1:%d"\n'
                        '"other.test" = "127.0.0.1:%d"\n'
                        '[tsa]\nurl = "http://127.0.0.1:%d"\npoll_interval = "1s"\n'
                  % (bad.port, good.port, tsa.port))
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
