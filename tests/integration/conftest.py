"""Fixtures for integration tests: start kumod (or an example) on loopback with a private
spool and log directory, wait until it listens, stop it by PID afterwards."""
import json
import os
import signal
import socket
import subprocess
import time
import glob
import gzip

import pytest

BUILD = os.environ.get("KUMO_BUILD") or os.path.join(os.path.dirname(__file__), "..", "..", "build")
KUMOD = os.path.join(BUILD, "daemons", "kumod", "kumod")
BENCH = os.path.join(BUILD, "bench", "kumo-bench")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("process exited with %s" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.recv(512)
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("port %d not listening" % port)


class Kumod:
    """A kumod process with its own config, spool and log directory."""

    def __init__(self, tmp, listener_extra="", extra="[delivery]\nenabled = false\n", threads=2):
        self.tmp = str(tmp)
        os.makedirs(self.tmp, exist_ok=True)
        self.port = free_port()
        self.spool = os.path.join(self.tmp, "spool")
        self.logdir = os.path.join(self.tmp, "log")
        self.config = os.path.join(self.tmp, "kumod.toml")
        self.threads = threads
        with open(self.config, "w") as f:
            f.write(
                '[engine]\nthreads = %d\nhostname = "mx.test"\nshutdown_grace = "5s"\n'
                '[[listener]]\nsmtp = "127.0.0.1:%d"\n%s\n'
                '[spool]\npath = "%s"\n[log]\npath = "%s"\n%s\n'
                % (threads, self.port, listener_extra, self.spool, self.logdir, extra))
        self.proc = None
        self.stderr_path = os.path.join(self.tmp, "kumod.stderr")

    def start(self):
        self.stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([KUMOD, "--config", self.config],
                                     stdout=self.stderr, stderr=self.stderr)
        wait_port(self.port, self.proc)
        return self

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc:
            self.stderr.close()
        return self.proc.returncode if self.proc else None

    def kill9(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.stderr.close()

    def log_text(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def records(self):
        """Every log record so far: compressed closed segments and open ones."""
        out = []
        for p in sorted(glob.glob(os.path.join(self.logdir, "*.jsonl*"))):
            if p.endswith(".tmp"):
                continue
            opener = gzip.open if p.endswith(".gz") else open
            try:
                with opener(p, "rt") as f:
                    out.extend(json.loads(line) for line in f if line.strip())
            except (OSError, EOFError, ValueError):
                continue  # a segment being compressed or renamed right now
        return out

    def wait_records(self, pred, timeout=10.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            recs = [r for r in self.records() if pred(r)]
            if recs:
                return recs
            time.sleep(0.05)
        return []

    def list_spool(self):
        r = subprocess.run([KUMOD, "--config", self.config, "--list-spool"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


@pytest.fixture
def kumod(tmp_path):
    started = []

    def make(**kw):
        k = Kumod(tmp_path / ("k%d" % len(started)), **kw)
        started.append(k)
        return k.start()

    yield make
    for k in started:
        k.stop(timeout=10)
