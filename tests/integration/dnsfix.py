"""A private DNS server for integration tests: dnsmasq (package dnsmasq-base) on 127.0.0.1
with a free UDP/TCP port, authoritative for the .test zone only, serving the MX, A and
null MX records a test passes. It never forwards a query (--no-resolv) and reads no
/etc/hosts, so a name it does not know is NXDOMAIN. Stopped by PID."""
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import time

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def have_dnsmasq():
    return os.access(DNSMASQ, os.X_OK)


def free_udp_tcp_port():
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                with socket.socket() as t:
                    t.bind(("127.0.0.1", port))
                    return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def query(port, name, qtype=1, timeout=0.5):
    """Sends one query over UDP; returns (rcode, answer count) or None on silence."""
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q, ("127.0.0.1", port))
        try:
            r, _ = s.recvfrom(4096)
        except socket.timeout:
            return None
    if len(r) < 12 or struct.unpack(">H", r[:2])[0] != qid:
        return None
    return r[3] & 0x0F, struct.unpack(">H", r[6:8])[0]


class Dnsmasq:
    """dnsmasq serving `records` (dnsmasq options such as "--mx-host=a.test,mx.a.test,10"
    or "--host-record=mx.a.test,127.0.0.2"). A null MX is "--mx-host=dom.test,.,0"."""

    def __init__(self, tmpdir, records):
        self.tmp = str(tmpdir)
        os.makedirs(self.tmp, exist_ok=True)
        self.records = list(records)
        self.port = None
        self.proc = None
        self.pidfile = os.path.join(self.tmp, "dnsmasq.pid")
        self.logpath = os.path.join(self.tmp, "dnsmasq.log")

    @property
    def server(self):
        return "127.0.0.1:%d" % self.port

    def start(self, timeout=10.0):
        for _ in range(5):
            self.port = free_udp_tcp_port()
            argv = [DNSMASQ, "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                    "--listen-address=127.0.0.1", "--bind-interfaces", "--port=%d" % self.port,
                    "--pid-file=%s" % self.pidfile, "--local=/test/", "--local-ttl=60",
                    "--log-facility=%s" % self.logpath] + self.records
            self.log = open(self.logpath + ".out", "ab")
            self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log)
            deadline = time.time() + timeout
            while time.time() < deadline:
                if self.proc.poll() is not None:
                    break
                if query(self.port, "ready-probe.test", timeout=0.2) is not None:
                    return self
                time.sleep(0.05)
            self.stop()
        raise RuntimeError("dnsmasq did not start; see %s" % self.logpath)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc:
            self.log.close()
        self.proc = None
