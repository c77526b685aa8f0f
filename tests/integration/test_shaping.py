"""Traffic shaping and egress on loopback: KumoMTA shaping files load, max_message_rate
and connection_limit hold at a sink that counts arrivals and concurrent connections, and
a pool of two egress sources sends from both chosen addresses."""
import os
import socket
import subprocess
import threading
import time

from conftest import BENCH, KUMOD, free_port

COMPAT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "compat", "kumomta")


class CountingSink:
    """An SMTP sink on loopback recording, per accepted message, its arrival time and the
    client's address, and the highest number of concurrent connections."""

    def __init__(self, host="127.0.0.1", shared=None):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.arrivals, self.peers, self.helos = [], [], []
        self.counts = shared or self  # the sink whose active/max_active this one adds to
        self.active = self.max_active = 0
        self.delay = 0
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while True:
            try:
                c, addr = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.session, args=(c, addr[0]), daemon=True).start()

    def session(self, c, peer):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cnt = self.counts
        with cnt.lock:
            cnt.active += 1
            cnt.max_active = max(cnt.max_active, cnt.active)
        counted = True
        f = c.makefile("rb")
        try:
            c.sendall(b"220 sink ESMTP\r\n")
            while True:
                line = f.readline()
                if not line:
                    break
                verb = line[:4].upper()
                if verb == b"EHLO":
                    self.helos.append(line[5:].strip().decode())
                    c.sendall(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    c.sendall(b"354 go\r\n")
                    while f.readline() not in (b".\r\n", b""):
                        pass
                    if self.delay:
                        time.sleep(self.delay)
                    with self.lock:
                        self.arrivals.append(time.monotonic())
                        self.peers.append(peer)
                    c.sendall(b"250 2.0.0 ok\r\n")
                elif verb == b"QUIT":
                    with cnt.lock:  # the session is over for the client once it sees 221
                        cnt.active -= 1
                        counted = False
                    c.sendall(b"221 bye\r\n")
                    break
                else:
                    c.sendall(b"250 2.0.0 ok\r\n")
        except OSError:
            pass
        finally:
            with cnt.lock:
                cnt.active -= counted
            c.close()

    def close(self):
        self.sock.close()


def inject(k, n, domain, size=2048, conns=20):
    r = subprocess.run([BENCH, "inject", "--port", str(k.port), "-n", str(n), "-s", str(size),
                        "-c", str(conns), "--domains", domain], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_compat_shaping_files_load(tmp_path):
    cfg = tmp_path / "k.toml"
    cfg.write_text('[shaping]\nfiles = ["%s", "%s"]\n' % (
        os.path.join(COMPAT, "community-shaping.toml"),
        os.path.join(COMPAT, "policy-extras-shaping.toml")))
    r = subprocess.run([KUMOD, "--check-config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('["default"]\nconnection_limit = 10\nmax_message_rate = "fast"\n')
    cfg.write_text('[shaping]\nfiles = ["%s"]\n' % bad)
    r = subprocess.run([KUMOD, "--check-config", str(cfg)], capture_output=True, text=True)
    assert r.returncode != 0
    assert "%s:3:" % bad in r.stderr and "max_message_rate" in r.stderr, r.stderr


def test_message_rate_and_connection_limit_hold(kumod, tmp_path):
    sink = CountingSink()
    shaping = tmp_path / "shaping.toml"
    shaping.write_text('["rate.test"]\nmax_message_rate = "100/s"\nconnection_limit = 3\n')
    k = kumod(threads=1, extra='[routing]\nsmart_host = "127.0.0.1:%d"\n'
                                '[shaping]\nfiles = ["%s"]\n' % (sink.port, shaping))
    inject(k, 3600, "rate.test")
    t_end = time.monotonic() + 40
    while time.monotonic() < t_end and len(sink.arrivals) < 3600:
        time.sleep(0.5)
    sink.close()
    arr = sorted(sink.arrivals)
    assert len(arr) >= 3300, len(arr)
    # over 30 s of steady sending, the rate stays within 5% of 100/s
    window = [t for t in arr if arr[0] + 2 <= t < arr[0] + 32]
    assert 2850 <= len(window) <= 3150, "%d messages in 30 s" % len(window)
    assert sink.max_active <= 3, sink.max_active


def test_pool_sends_from_both_sources(kumod, tmp_path):
    sink = CountingSink()
    k = kumod(extra='[routing]\nsmart_host = "127.0.0.1:%d"\n'
                    '[[egress_source]]\nname = "ip-2"\nsource_address = "127.0.0.2"\n'
                    '[[egress_source]]\nname = "ip-3"\nsource_address = "127.0.0.3"\n'
                    'ehlo_name = "three.test"\n'
                    '[[egress_pool]]\nname = "pool-a"\n'
                    'entries = [{name = "ip-2", weight = 1}, {name = "ip-3", weight = 1}]\n'
                    '[egress]\ndefault_pool = "pool-a"\n' % sink.port)
    inject(k, 200, "pool.test", conns=4)
    t_end = time.monotonic() + 20
    while time.monotonic() < t_end and len(sink.arrivals) < 200:
        time.sleep(0.2)
    sink.close()
    assert len(sink.arrivals) == 200
    assert set(sink.peers) == {"127.0.0.2", "127.0.0.3"}, set(sink.peers)
    assert 60 <= sink.peers.count("127.0.0.2") <= 140
    assert "three.test" in sink.helos
    recs = k.wait_records(lambda r: r["type"] == "Delivery")
    time.sleep(0.5)
    recs = [r for r in k.records() if r["type"] == "Delivery"]
    assert {r["egress_source"] for r in recs} == {"ip-2", "ip-3"}
    assert {r["egress_pool"] for r in recs} == {"pool-a"}
    for r in recs:
        assert r["source_address"] == {"ip-2": "127.0.0.2", "ip-3": "127.0.0.3"}[r["egress_source"]]


def test_pool_chosen_by_campaign_tenant_or_domain(kumod):
    """Campaign rules beat tenant rules, which beat domain rules, which beat the default
    pool; each pool here has one source, seen by the sink as the connection's address."""
    import smtplib
    sink = CountingSink()
    sources = "".join('[[egress_source]]\nname = "s%d"\nsource_address = "127.0.0.%d"\n'
                      '[[egress_pool]]\nname = "p%d"\nentries = [{name = "s%d"}]\n'
                      % (i, i, i, i) for i in (2, 3, 4, 5))
    k = kumod(extra='[routing]\nsmart_host = "127.0.0.1:%d"\n' % sink.port + sources +
              '[egress]\ndefault_pool = "p2"\ndomain_pools = {"dom.test" = "p3"}\n'
              'tenant_pools = {"ten" = "p4"}\ncampaign_pools = {"camp" = "p5"}\n')
    cases = [("a@other.test", {}, "p2"), ("b@DOM.test", {}, "p3"),
             ("c@dom.test", {"X-Kumo-Tenant": "ten"}, "p4"),
             ("d@dom.test", {"X-Kumo-Tenant": "ten", "X-Kumo-Campaign": "camp"}, "p5"),
             ("e@other.test", {"X-Kumo-Campaign": "other"}, "p2")]
    with smtplib.SMTP("127.0.0.1", k.port, timeout=10) as c:
        for rcpt, headers, _ in cases:
            hdr = "".join("%s: %s\r\n" % kv for kv in headers.items())
            c.sendmail("me@example.com", [rcpt], hdr + "Subject: t\r\n\r\nbody\r\n")
    t_end = time.monotonic() + 20
    while time.monotonic() < t_end and len(sink.arrivals) < len(cases):
        time.sleep(0.2)
    time.sleep(0.5)
    sink.close()
    recs = {r["recipient"]: r for r in k.records() if r["type"] == "Delivery"}
    assert len(recs) == len(cases), recs
    for rcpt, _, pool in cases:
        r = recs[rcpt]
        assert r["egress_pool"] == pool, (rcpt, r["egress_pool"], pool)
        assert r["source_address"] == "127.0.0.%s" % pool[1:], (rcpt, r["source_address"])
    assert sorted(sink.peers) == ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.4",
                                  "127.0.0.5"]


def test_pool_rule_naming_an_unknown_pool_is_refused(tmp_path):
    cfg = tmp_path / "k.toml"
    cfg.write_text('[[egress_source]]\nname = "s"\n[[egress_pool]]\nname = "p"\n'
                   'entries = [{name = "s"}]\n[egress]\ndomain_pools = {"d.test" = "nope"}\n')
    r = subprocess.run([KUMOD, "--check-config", str(cfg)], capture_output=True, text=True)
    assert r.returncode != 0
    assert "%s:" % cfg in r.stderr and 'no [[egress_pool]] named "nope"' in r.stderr, r.stderr


def start_redis():
    import shutil
    redis = shutil.which("redis-server")
    if not redis:
        import pytest
        pytest.skip("redis-server is not installed")
    port = free_port()
    rp = subprocess.Popen([redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no"], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    return rp, port


def test_two_nodes_share_one_rate_through_redis(kumod, tmp_path):
    rp, port = start_redis()
    sink = CountingSink()
    try:
        time.sleep(0.5)
        shaping = tmp_path / "shaping.toml"
        shaping.write_text('["shared.test"]\nmax_message_rate = "50/s"\n')
        extra = ('[routing]\nsmart_host = "127.0.0.1:%d"\n[shaping]\nfiles = ["%s"]\n'
                 '[redis]\nurl = "redis://127.0.0.1:%d"\n' % (sink.port, shaping, port))
        a = kumod(extra=extra)
        b = kumod(extra=extra)
        inject(a, 1000, "shared.test")
        inject(b, 1000, "shared.test")
        time.sleep(12)
        arr = sorted(sink.arrivals)
        assert len(arr) > 300, len(arr)
        # after the initial burst, both nodes together stay near one 50/s limit
        window = [t for t in arr if arr[0] + 2 <= t < arr[0] + 10]
        assert 360 <= len(window) <= 440, "%d messages in 8 s" % len(window)
    finally:
        sink.close()
        rp.terminate()
        rp.wait(timeout=10)


def test_two_nodes_share_one_connection_limit_through_redis(kumod, tmp_path):
    rp, port = start_redis()
    sink = CountingSink()
    sink.delay = 0.05  # slow answers keep connections busy, so both nodes want more
    try:
        time.sleep(0.5)
        shaping = tmp_path / "shaping.toml"
        shaping.write_text('["leases.test"]\nconnection_limit = 3\n')
        extra = ('[routing]\nsmart_host = "127.0.0.1:%d"\n[shaping]\nfiles = ["%s"]\n'
                 '[redis]\nurl = "redis://127.0.0.1:%d"\n' % (sink.port, shaping, port))
        a = kumod(extra=extra)
        b = kumod(extra=extra)
        inject(a, 150, "leases.test")
        inject(b, 150, "leases.test")
        t_end = time.monotonic() + 40
        while time.monotonic() < t_end and len(sink.arrivals) < 300:
            time.sleep(0.2)
        assert len(sink.arrivals) == 300
        # 2 nodes x 2 threads would open up to 12 connections with local limits
        assert sink.max_active <= 3, sink.max_active
    finally:
        sink.close()
        rp.terminate()
        rp.wait(timeout=10)


def test_max_ready_holds_messages_back(kumod, tmp_path):
    sink = CountingSink()
    sink.delay = 0.2
    shaping = tmp_path / "shaping.toml"
    shaping.write_text('["ready.test"]\nmax_ready = 2\nconnection_limit = 1\n')
    k = kumod(threads=1, extra='[routing]\nsmart_host = "127.0.0.1:%d"\n'
                                '[shaping]\nfiles = ["%s"]\n' % (sink.port, shaping))
    try:
        t0 = time.monotonic()
        inject(k, 10, "ready.test", conns=10)
        time.sleep(max(0, t0 + 5 - time.monotonic()))
        # one in flight plus two ready: the others wait in the scheduled queue (>= 10 s)
        early = len(sink.arrivals)
        assert early <= 4, early
        t_end = time.monotonic() + 45
        while time.monotonic() < t_end and len(sink.arrivals) < 10:
            time.sleep(0.5)
        assert len(sink.arrivals) == 10
        assert not [r for r in k.records() if r["type"] == "TransientFailure"]
    finally:
        sink.close()


def provider_kumod(kumod, tmp_path, a, b, limits):
    shaping = tmp_path / "shaping.toml"
    shaping.write_text('[provider."prov"]\nmatch = [{DomainSuffix = ".prov.test"}]\n' + limits)
    return kumod(threads=1, extra='[routing.domains]\n"a.prov.test" = "127.0.0.1:%d"\n'
                                  '"b.prov.test" = "127.0.0.1:%d"\n[shaping]\nfiles = ["%s"]\n'
                                  % (a.port, b.port, shaping))


def wait_both(a, b, n, timeout=30):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end and len(a.arrivals) + len(b.arrivals) < n:
        time.sleep(0.2)
    assert len(a.arrivals) + len(b.arrivals) == n


def test_provider_connection_limit_spans_its_sites(kumod, tmp_path):
    """Two sites of one provider share provider_connection_limit = 2: never more than two
    connections over both, and neither site starves (connections are handed over)."""
    a = CountingSink()
    b = CountingSink(shared=a)
    a.delay = b.delay = 0.05
    k = provider_kumod(kumod, tmp_path, a, b, "provider_connection_limit = 2\n")
    try:
        inject(k, 80, "a.prov.test,b.prov.test", conns=10)
        wait_both(a, b, 80)
        assert len(a.arrivals) >= 10 and len(b.arrivals) >= 10  # a random split
        assert a.max_active <= 2, a.max_active
        assert a.max_active == 2, a.max_active
        # both sites were served while the other still had mail: neither waited for the
        # other to finish
        assert min(b.arrivals) < max(a.arrivals) and min(a.arrivals) < max(b.arrivals)
        assert not [r for r in k.records() if r["type"] != "Reception" and
                    r["type"] != "Delivery"]
    finally:
        a.close()
        b.close()


def test_provider_max_message_rate_spans_its_sites(kumod, tmp_path):
    """provider_max_message_rate = "20/s" is one rate for both sites of the provider."""
    a = CountingSink()
    b = CountingSink()
    k = provider_kumod(kumod, tmp_path, a, b, 'provider_max_message_rate = "20/s"\n')
    try:
        inject(k, 100, "a.prov.test,b.prov.test", conns=10)
        wait_both(a, b, 100)
        times = sorted(a.arrivals + b.arrivals)
        span = times[-1] - times[0]
        # 100 messages at 20/s over both sites: a burst of 20, then 80 in 4 s;
        # per site, the rate would allow 40/s: 1.5 s
        assert span >= 3.6, span
        assert a.arrivals and b.arrivals
    finally:
        a.close()
        b.close()


def test_provider_idle_connections_go_to_a_waiting_site(kumod, tmp_path):
    """Site a's connections idle on the whole provider budget after its mail went; mail
    for site b gets a connection at once, not after a's idle timeout (60 s)."""
    a = CountingSink()
    b = CountingSink(shared=a)
    k = provider_kumod(kumod, tmp_path, a, b, "provider_connection_limit = 2\n")
    try:
        inject(k, 20, "a.prov.test", conns=4)
        wait_both(a, b, 20)
        time.sleep(0.5)
        assert a.active == 2, a.active  # both of a's connections idle, open
        t0 = time.monotonic()
        inject(k, 10, "b.prov.test", conns=2)
        wait_both(a, b, 30, timeout=10)
        assert time.monotonic() - t0 < 5
        assert a.max_active <= 2, a.max_active
    finally:
        a.close()
        b.close()


def test_connection_limit_is_per_node_not_per_thread(kumod, tmp_path):
    """connection_limit = 1 with two kumod threads both holding mail for the site: one
    connection at a time in all, handed between the threads (no thread waits for the
    other's idle timeout)."""
    sink = CountingSink()
    sink.delay = 0.02
    shaping = tmp_path / "shaping.toml"
    shaping.write_text('["one.test"]\nconnection_limit = 1\nmax_deliveries_per_connection = 5\n')
    k = kumod(threads=2, extra='[routing]\nsmart_host = "127.0.0.1:%d"\n[shaping]\n'
                               'files = ["%s"]\n' % (sink.port, shaping))
    try:
        t0 = time.monotonic()
        inject(k, 60, "one.test", conns=8)
        t_end = time.monotonic() + 30
        while time.monotonic() < t_end and len(sink.arrivals) < 60:
            time.sleep(0.1)
        assert len(sink.arrivals) == 60
        assert time.monotonic() - t0 < 20
        assert sink.max_active == 1, sink.max_active
    finally:
        sink.close()


def test_provider_connection_limit_is_per_node(kumod, tmp_path):
    """provider_connection_limit = 2 over two sites and two threads: two connections in
    all, and every message arrives well before an idle timeout."""
    a = CountingSink()
    b = CountingSink(shared=a)
    a.delay = b.delay = 0.02
    shaping = tmp_path / "shaping.toml"
    shaping.write_text('[provider."prov"]\nmatch = [{DomainSuffix = ".prov.test"}]\n'
                       'provider_connection_limit = 2\n')
    k = kumod(threads=2, extra='[routing.domains]\n"a.prov.test" = "127.0.0.1:%d"\n'
                               '"b.prov.test" = "127.0.0.1:%d"\n[shaping]\nfiles = ["%s"]\n'
                               % (a.port, b.port, shaping))
    try:
        t0 = time.monotonic()
        inject(k, 80, "a.prov.test,b.prov.test", conns=8)
        wait_both(a, b, 80, timeout=30)
        assert time.monotonic() - t0 < 20
        assert a.max_active <= 2, a.max_active
    finally:
        a.close()
        b.close()


def provider_nodes(kumod, tmp_path, a, b, limits, redis_port):
    shaping = tmp_path / "shaping.toml"
    shaping.write_text('[provider."prov"]\nmatch = [{DomainSuffix = ".prov.test"}]\n' + limits)
    extra = ('[routing.domains]\n"a.prov.test" = "127.0.0.1:%d"\n"b.prov.test" = "127.0.0.1:%d"\n'
             '[shaping]\nfiles = ["%s"]\n[redis]\nurl = "redis://127.0.0.1:%d"\n'
             % (a.port, b.port, shaping, redis_port))
    return kumod(extra=extra), kumod(extra=extra)


def test_two_nodes_share_one_provider_connection_limit_through_redis(kumod, tmp_path):
    """provider_connection_limit = 2 over two sites and two kumod nodes sharing a Redis:
    two connections in all (one lease each), every message delivered."""
    rp, port = start_redis()
    a = CountingSink()
    b = CountingSink(shared=a)
    a.delay = b.delay = 0.02
    try:
        n1, n2 = provider_nodes(kumod, tmp_path, a, b, "provider_connection_limit = 2\n", port)
        inject(n1, 40, "a.prov.test,b.prov.test", conns=4)
        inject(n2, 40, "a.prov.test,b.prov.test", conns=4)
        wait_both(a, b, 80, timeout=40)
        assert a.max_active <= 2, a.max_active
        assert "redis" not in (n1.log_text() + n2.log_text()).lower() or \
            "unreachable" not in (n1.log_text() + n2.log_text()).lower()
    finally:
        a.close()
        b.close()
        rp.terminate()
        rp.wait(timeout=10)


def test_two_nodes_share_one_provider_rate_through_redis(kumod, tmp_path):
    """provider_max_message_rate = "20/s" over two sites and two nodes: one rate in all."""
    rp, port = start_redis()
    a = CountingSink()
    b = CountingSink()
    try:
        n1, n2 = provider_nodes(kumod, tmp_path, a, b, 'provider_max_message_rate = "20/s"\n',
                                port)
        inject(n1, 50, "a.prov.test,b.prov.test", conns=5)
        inject(n2, 50, "a.prov.test,b.prov.test", conns=5)
        wait_both(a, b, 100, timeout=40)
        times = sorted(a.arrivals + b.arrivals)
        # a burst of 20, then 80 at 20/s: about 4 s; two nodes with local limits would
        # allow 40/s (1.5 s after their bursts)
        assert times[-1] - times[0] >= 3.4, times[-1] - times[0]
    finally:
        a.close()
        b.close()
        rp.terminate()
        rp.wait(timeout=10)


def test_message_rate_is_per_node_when_one_thread_has_the_mail(kumod, tmp_path):
    """max_message_rate = "40/s" with two threads, all mail received (and so queued) by one
    of them: the site still gets 40/s, not that thread's half."""
    sink = CountingSink()
    shaping = tmp_path / "shaping.toml"
    shaping.write_text('["node.test"]\nmax_message_rate = "40/s"\n')
    k = kumod(threads=2, extra='[routing]\nsmart_host = "127.0.0.1:%d"\n[shaping]\n'
                               'files = ["%s"]\n' % (sink.port, shaping))
    try:
        inject(k, 240, "node.test", conns=1)
        t_end = time.monotonic() + 30
        while time.monotonic() < t_end and len(sink.arrivals) < 240:
            time.sleep(0.2)
        arr = sorted(sink.arrivals)
        assert len(arr) == 240
        # after the burst of 40: 200 more at 40/s, 5 s (at 20/s it would be 10 s)
        span = arr[-1] - arr[0]
        assert 4.3 <= span <= 6.5, span
    finally:
        sink.close()
