"""Egress through proxies on loopback: kumod -> HAProxy (PROXY v2 header) -> sink, and
kumod -> kumoproxy (SOCKS5 with BIND-then-CONNECT) -> sink; in both the sink sees the
connection coming from the source address chosen per egress source of the pool."""
import os
import shutil
import subprocess
import time

import pytest

from conftest import BUILD, free_port
from test_shaping import CountingSink, inject

KUMOPROXY = os.path.join(BUILD, "daemons", "kumoproxy", "kumoproxy")


def pool(sources):
    text = ""
    for name, extra in sources:
        text += '[[egress_source]]\nname = "%s"\n%s\n' % (name, extra)
    text += '[[egress_pool]]\nname = "p"\nentries = [%s]\n[egress]\ndefault_pool = "p"\n' % (
        ", ".join('{name = "%s", weight = 1}' % n for n, _ in sources))
    return text


def wait_arrivals(sink, n, timeout=20):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end and len(sink.arrivals) < n:
        time.sleep(0.2)


def check_sources(k, sink, n):
    wait_arrivals(sink, n)
    assert len(sink.arrivals) == n
    assert set(sink.peers) == {"127.0.0.2", "127.0.0.3"}, set(sink.peers)
    time.sleep(0.5)
    recs = [r for r in k.records() if r["type"] == "Delivery"]
    assert len(recs) == n
    for r in recs:
        assert r["source_address"] == {"a": "127.0.0.2", "b": "127.0.0.3"}[r["egress_source"]], r


def test_haproxy_proxy_v2_source_selection(kumod, tmp_path):
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.path.exists(haproxy):
        pytest.skip("haproxy is not installed")
    sink = CountingSink()
    hport = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text("defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n"
                   "    timeout server 30s\nfrontend in\n    bind 127.0.0.1:%d accept-proxy\n"
                   "    default_backend out\nbackend out\n"
                   "    server sink 127.0.0.1:%d source 0.0.0.0 usesrc clientip\n"
                   % (hport, sink.port))
    hp = subprocess.Popen([haproxy, "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        k = kumod(extra='[routing]\nsmart_host = "127.0.0.1:%d"\n' % sink.port + pool([
            ("a", 'ha_proxy_server = "127.0.0.1:%d"\nha_proxy_source_address = "127.0.0.2"'
             % hport),
            ("b", 'ha_proxy_server = "127.0.0.1:%d"\nha_proxy_source_address = "127.0.0.3"'
             % hport)]))
        inject(k, 40, "proxied.test", conns=4)
        check_sources(k, sink, 40)
    finally:
        hp.terminate()
        hp.wait(timeout=10)
        sink.close()


def test_kumoproxy_socks5_source_selection(kumod, tmp_path):
    if not os.path.exists(KUMOPROXY):
        pytest.fail("kumoproxy was not built")
    sink = CountingSink()
    pport = free_port()
    users = tmp_path / "users"
    users.write_text("mta:secret\n")
    pp = subprocess.Popen([KUMOPROXY, "--listen", "127.0.0.1:%d" % pport, "--users", str(users)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        auth = 'socks5_proxy_username = "mta"\nsocks5_proxy_password = "secret"\n'
        k = kumod(extra='[routing]\nsmart_host = "127.0.0.1:%d"\n' % sink.port + pool([
            ("a", 'socks5_proxy_server = "127.0.0.1:%d"\nsocks5_proxy_source_address = '
             '"127.0.0.2"\n%s' % (pport, auth)),
            ("b", 'socks5_proxy_server = "127.0.0.1:%d"\nsocks5_proxy_source_address = '
             '"127.0.0.3"\n%s' % (pport, auth))]))
        inject(k, 40, "socks.test", conns=4)
        check_sources(k, sink, 40)
    finally:
        pp.terminate()
        pp.wait(timeout=10)
        sink.close()


def start_kumoproxy(port):
    return subprocess.Popen([KUMOPROXY, "--listen", "127.0.0.1:%d" % port],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def socks_source(name, pport, source):
    return (name, 'socks5_proxy_server = "127.0.0.1:%d"\nsocks5_proxy_source_address = "%s"'
            % (pport, source))


def test_source_with_dead_proxy_hands_its_mail_to_the_pool(kumod):
    """Source a's proxy is down: it is marked unhealthy, its messages go through source b,
    none is deferred or bounced."""
    sink = CountingSink()
    live, dead = free_port(), free_port()
    pp = start_kumoproxy(live)
    try:
        time.sleep(0.5)
        k = kumod(extra='[routing]\nsmart_host = "127.0.0.1:%d"\n' % sink.port + pool([
            socks_source("a", dead, "127.0.0.2"), socks_source("b", live, "127.0.0.3")]))
        inject(k, 60, "pool.test", conns=4)
        wait_arrivals(sink, 60)
        assert len(sink.arrivals) == 60
        assert set(sink.peers) == {"127.0.0.3"}, set(sink.peers)
        time.sleep(0.5)
        types = [r["type"] for r in k.records()]
        assert types.count("Delivery") == 60
        assert "TransientFailure" not in types and "Bounce" not in types, types
        assert all(r["egress_source"] == "b" for r in k.records() if r["type"] == "Delivery")
        assert "egress source 'a' is unhealthy: proxy connect: Connection refused" in k.log_text()
    finally:
        pp.terminate()
        pp.wait(timeout=10)
        sink.close()


def test_only_source_with_dead_proxy_waits_until_it_returns(kumod):
    """The pool's only source has its proxy down: messages wait in their ready queue, no
    attempt is counted; once the proxy is back, the next probe finds it and they go."""
    sink = CountingSink()
    pport = free_port()
    k = kumod(extra='[routing]\nsmart_host = "127.0.0.1:%d"\n' % sink.port + pool([
        socks_source("a", pport, "127.0.0.2")]))
    inject(k, 20, "wait.test", conns=2)
    time.sleep(2)
    assert not sink.arrivals
    assert "egress source 'a' is unhealthy" in k.log_text()
    pp = start_kumoproxy(pport)
    try:
        wait_arrivals(sink, 20, timeout=30)
        assert len(sink.arrivals) == 20
        assert set(sink.peers) == {"127.0.0.2"}
        time.sleep(0.5)
        types = [r["type"] for r in k.records()]
        assert types.count("Delivery") == 20
        assert "TransientFailure" not in types and "Bounce" not in types, types
        assert all(r["num_attempts"] == 1 for r in k.records() if r["type"] == "Delivery")
        assert "egress source 'a' is healthy again" in k.log_text()
    finally:
        pp.terminate()
        pp.wait(timeout=10)
        sink.close()


def test_source_refused_by_its_proxy_is_unhealthy(kumod, tmp_path):
    """The proxy refuses source a's credentials: a is unhealthy (the proxy's fault, not the
    destination's) and its mail leaves through b; nothing is deferred."""
    sink = CountingSink()
    pport = free_port()
    users = tmp_path / "users"
    users.write_text("mta:secret\n")
    pp = subprocess.Popen([KUMOPROXY, "--listen", "127.0.0.1:%d" % pport, "--users", str(users)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        src = 'socks5_proxy_server = "127.0.0.1:%d"\nsocks5_proxy_source_address = "%s"\n' \
              'socks5_proxy_username = "mta"\nsocks5_proxy_password = "%s"\n'
        k = kumod(extra='[routing]\nsmart_host = "127.0.0.1:%d"\n' % sink.port + pool([
            ("a", src % (pport, "127.0.0.2", "wrong")),
            ("b", src % (pport, "127.0.0.3", "secret"))]))
        inject(k, 30, "auth.test", conns=3)
        wait_arrivals(sink, 30)
        assert len(sink.arrivals) == 30
        assert set(sink.peers) == {"127.0.0.3"}, set(sink.peers)
        time.sleep(0.5)
        types = [r["type"] for r in k.records()]
        assert "TransientFailure" not in types and "Bounce" not in types, types
        assert "egress source 'a' is unhealthy: Egress proxy:" in k.log_text(), k.log_text()
    finally:
        pp.terminate()
        pp.wait(timeout=10)
        sink.close()
