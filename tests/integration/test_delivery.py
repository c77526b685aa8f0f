"""kumod's delivery on loopback: a smart host, per-domain routes and MX routing through a
private dnsmasq, against scripted Python SMTP sinks that answer per recipient, record whole
transactions, refuse at greeting or drop the connection mid-DATA. Checks the relayed bytes,
the log records (Delivery, TransientFailure, Bounce, Expiration), retries and their timing,
the DSNs sent back to the sender (RFC 3464), and that the spool ends empty."""
import email
import email.policy
import smtplib
import socket
import socketserver
import threading
import time

import pytest

import dnsfix
from conftest import free_port

HOST = "mx.test"


# ---- A scripted SMTP sink ----

class Txn:
    """One transaction as the sink saw it."""

    def __init__(self, conn, peer, helo):
        self.conn = conn
        self.peer = peer
        self.helo = helo
        self.sender = None
        self.mail_params = []
        self.rcpts = []          # accepted recipients
        self.rcpt_params = {}    # address -> [params]
        self.refused = []        # (address, reply)
        self.data = None         # message bytes, dot-unstuffed, CRLF line ends
        self.reply = None
        self.t_mail = None
        self.t_end = None


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        sink = self.server.sink
        with sink.lock:
            sink.connections += 1
            conn = sink.connections
            sink.open_socks.add(self.request)
            sink.max_open = max(sink.max_open, len(sink.open_socks))
        try:
            self._session(sink, conn)
        except (OSError, ValueError):
            pass
        finally:
            with sink.lock:
                sink.open_socks.discard(self.request)

    def _send(self, line):
        self.wfile.write(line.encode("utf-8") + b"\r\n")
        self.wfile.flush()

    def _session(self, sink, conn):
        greet = sink.greeting(conn) if sink.greeting else "220 %s ESMTP sink" % sink.name
        self._send(greet)
        if not greet.startswith("2"):
            return
        helo = None
        txn = None
        while True:
            line = self.rfile.readline(65536)
            if not line:
                return
            cmd = line.decode("utf-8", "replace").rstrip("\r\n")
            verb = cmd.split(" ", 1)[0].upper()
            with sink.lock:
                sink.commands.append((conn, cmd))
            if verb == "EHLO":
                helo = cmd[5:].strip()
                caps = [sink.name] + list(sink.caps)
                for c in caps[:-1]:
                    self._send("250-" + c)
                self._send("250 " + caps[-1])
            elif verb == "HELO":
                helo = cmd[5:].strip()
                self._send("250 " + sink.name)
            elif verb == "MAIL":
                txn = Txn(conn, self.client_address[0], helo)
                txn.t_mail = time.time()
                rest = cmd[10:]
                addr, _, params = rest.partition(">")
                txn.sender = addr.lstrip("<")
                txn.mail_params = params.split()
                self._send("250 2.1.0 ok")
            elif verb == "RCPT":
                if txn is None:
                    self._send("503 5.5.1 MAIL first")
                    continue
                addr, _, params = cmd[8:].partition(">")
                addr = addr.lstrip("<")
                txn.rcpt_params[addr] = params.split()
                reply = sink.rcpt_reply(addr, txn)
                with sink.lock:
                    sink.rcpt_log.append((time.time(), addr, reply[:3], conn))
                if reply.startswith("2"):
                    txn.rcpts.append(addr)
                else:
                    txn.refused.append((addr, reply))
                self._send(reply)
            elif verb == "DATA":
                if txn is None or not txn.rcpts:
                    self._send("554 5.5.1 no valid recipients")
                    continue
                self._send("354 go ahead")
                drop = sink.drop_data(txn)
                lines = []
                while True:
                    l = self.rfile.readline(1 << 20)
                    if not l:
                        return
                    if drop:
                        with sink.lock:
                            sink.dropped += 1
                        self.request.shutdown(socket.SHUT_RDWR)
                        return
                    if l == b".\r\n":
                        break
                    if l.startswith(b"."):
                        l = l[1:]
                    lines.append(l)
                txn.data = b"".join(lines)
                txn.t_end = time.time()
                txn.reply = sink.data_reply(txn)
                with sink.lock:
                    sink.txns.append(txn)
                self._send(txn.reply)
                txn = None
            elif verb == "RSET":
                txn = None
                self._send("250 2.0.0 ok")
            elif verb == "NOOP":
                self._send("250 2.0.0 ok")
            elif verb == "QUIT":
                self._send("221 2.0.0 bye")
                return
            else:
                self._send("500 5.5.2 unknown command")


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class Sink:
    """An SMTP server on (host, port) in a thread. rcpt(addr, txn) may return a reply
    line for a recipient (None: accept); greeting(n) the greeting of the n-th connection;
    drop(txn) True to close the connection as the message content starts to arrive."""

    CAPS = ("PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "DSN", "SIZE 52428800")

    def __init__(self, host="127.0.0.1", port=0, name="sink.test", rcpt=None, greeting=None,
                 drop=None, data=None, caps=CAPS):
        self.name = name
        self.caps = caps
        self.rcpt = rcpt
        self.greeting = greeting
        self.drop = drop
        self.data = data
        self.lock = threading.Lock()
        self.txns = []
        self.commands = []
        self.rcpt_log = []
        self.connections = 0
        self.dropped = 0
        self.open_socks = set()
        self.max_open = 0
        self.server = _Server((host, port), _Handler)
        self.server.sink = self
        self.host, self.port = self.server.server_address
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def addr(self):
        return "%s:%d" % (self.host, self.port)

    def rcpt_reply(self, addr, txn):
        r = self.rcpt(addr, txn) if self.rcpt else None
        return r or "250 2.1.5 ok"

    def data_reply(self, txn):
        r = self.data(txn) if self.data else None
        return r or "250 2.0.0 ok queued as %d" % len(self.txns)

    def drop_data(self, txn):
        return bool(self.drop and self.drop(txn))

    def messages(self):
        with self.lock:
            return [t for t in self.txns if t.reply.startswith("2")]

    def wait_messages(self, n, timeout=15.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = self.messages()
            if len(m) >= n:
                return m
            time.sleep(0.05)
        return self.messages()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            socks = list(self.open_socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def sinks():
    made = []

    def make(**kw):
        s = Sink(**kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


# ---- DNS: one dnsmasq for the module, MX hosts on 127.0.0.2.. with a shared port ----

MX_ADDRS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")


def _shared_port():
    """A port free on every MX address (kumod uses one mx_port for all MX hosts)."""
    for _ in range(50):
        port = free_port()
        socks = []
        try:
            for a in MX_ADDRS:
                s = socket.socket()
                socks.append(s)
                s.bind((a, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no port free on all MX addresses")


DNS_RECORDS = [
    # two domains sharing one MX host: one site
    "--mx-host=alpha.test,mx1.shared.test,10",
    "--mx-host=beta.test,mx1.shared.test,10",
    "--host-record=mx1.shared.test,127.0.0.2",
    # preference: both up, the lower value wins
    "--mx-host=order.test,b.order.test,20",
    "--mx-host=order.test,a.order.test,10",
    "--host-record=a.order.test,127.0.0.2",
    "--host-record=b.order.test,127.0.0.3",
    # preference: the preferred host refuses connections (nothing listens on 127.0.0.5)
    "--mx-host=pref.test,down.pref.test,5",
    "--mx-host=pref.test,up.pref.test,20",
    "--host-record=down.pref.test,127.0.0.5",
    "--host-record=up.pref.test,127.0.0.3",
    # the preferred host answers 421 at greeting (the test's sink on 127.0.0.2 does)
    "--mx-host=busy.test,first.busy.test,10",
    "--mx-host=busy.test,second.busy.test,20",
    "--host-record=first.busy.test,127.0.0.2",
    "--host-record=second.busy.test,127.0.0.3",
    # no MX: the domain's own address is its implicit MX
    "--host-record=implicit.test,127.0.0.4",
    # null MX (RFC 7505)
    "--mx-host=nullmx.test,.,0",
]


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    if not dnsfix.have_dnsmasq():
        pytest.skip("dnsmasq not installed (package dnsmasq-base)")
    d = dnsfix.Dnsmasq(tmp_path_factory.mktemp("dns"), DNS_RECORDS).start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def mx_port():
    return _shared_port()


# ---- helpers ----

def config(dns_server=None, smart_host=None, routes=None, mx_port=None, **delivery):
    """The [delivery], [dns] and [routing] sections of a kumod config."""
    d = {"enabled": "true", "retry_interval": '"2s"', "connect_timeout": '"3s"',
         "idle_timeout": '"2s"'}
    if mx_port:
        d["mx_port"] = str(mx_port)
    for key, v in delivery.items():
        d[key] = str(v).lower() if isinstance(v, (bool, int)) else '"%s"' % v
    out = "[delivery]\n" + "".join("%s = %s\n" % kv for kv in d.items())
    # never the system resolver: a port where nothing answers when a test needs no DNS
    out += '[dns]\nservers = "%s"\ntimeout = "1s"\n' % (dns_server or "127.0.0.1:9")
    out += "[routing]\n"
    if smart_host:
        out += 'smart_host = "%s"\n' % smart_host
    if routes:
        out += "[routing.domains]\n" + "".join('"%s" = "%s"\n' % kv for kv in routes.items())
    return out


def submit(k, sender, rcpts, msg, mail_opts=(), rcpt_opts=None):
    """One transaction; rcpt_opts maps a recipient to its RCPT parameters."""
    s = smtplib.SMTP("127.0.0.1", k.port, timeout=10)
    s.ehlo("client.test")
    code, text = s.mail(sender, list(mail_opts))
    assert code == 250, text
    for r in rcpts:
        code, text = s.rcpt(r, list((rcpt_opts or {}).get(r, ())))
        assert code == 250, (r, text)
    code, text = s.data(msg)
    assert code == 250, text
    s.quit()
    return text.decode()


def wait_n(k, pred, n, timeout=15.0):
    deadline = time.time() + timeout
    while True:
        recs = [r for r in k.records() if pred(r)]
        if len(recs) >= n or time.time() >= deadline:
            return recs
        time.sleep(0.05)


def of(type_, rcpt=None):
    return lambda r: r["type"] == type_ and (rcpt is None or r["recipient"] == rcpt)


def msg(subject, mid, body=b"hello\r\n", extra=b""):
    return (b"From: sender@sender.test\r\nTo: someone\r\nSubject: " + subject +
            b"\r\nMessage-ID: <" + mid + b">\r\n" + extra + b"\r\n" + body)


def parse(data):
    return email.message_from_bytes(data, policy=email.policy.compat32)


def dsn_parts(txn):
    """(top message, [per-message fields, per-recipient field blocks...], returned part)."""
    m = parse(txn.data)
    assert m.get_content_type() == "multipart/report", m.get_content_type()
    assert m.get_param("report-type") == "delivery-status"
    parts = m.get_payload()
    assert parts[0].get_content_type() == "text/plain"
    assert parts[1].get_content_type() == "message/delivery-status"
    blocks = parts[1].get_payload()
    returned = parts[2] if len(parts) > 2 else None
    return m, blocks, returned


def recipients_reported(txn):
    _, blocks, _ = dsn_parts(txn)
    return [b["Final-Recipient"].split(";", 1)[1].strip() for b in blocks[1:]]


def restart(k):
    """Starts a stopped kumod again on its spool. Its listener port was free when chosen;
    if some other process took it as an ephemeral port meanwhile, a new one is used."""
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


def spool_after_stop(k):
    k.stop()
    return k.list_spool()


# ---- 1. smart host ----

def test_smart_host_relays_envelope_and_bytes(kumod, sinks):
    sink = sinks()
    k = kumod(extra=config(smart_host=sink.addr))
    body = (b"first line\r\n.leading dot\r\n..two dots\r\n.\r\n \r\nlast line\r\n")
    m1 = msg(b"plain", b"m1@sender.test", body)
    submit(k, "sender@sender.test", ["a@one.example", "b@one.example"], m1)
    m2 = msg("caf\u00e9".encode(), b"m2@sender.test", "na\u00efve 8-bit body\r\n".encode())
    submit(k, "sender@sender.test", ["c@two.example"], m2, mail_opts=["BODY=8BITMIME"])
    m3 = msg(b"utf8", b"m3@sender.test", "\u00fcber\r\n".encode())
    submit(k, "j\u00f6rg@sender.test", ["\u00fc@three.example"], m3,
           mail_opts=["SMTPUTF8", "BODY=8BITMIME"])

    got = sink.wait_messages(3)
    assert len(got) == 3, "expected 3 relayed messages, got %d" % len(got)
    by_mid = {parse(t.data)["Message-ID"]: t for t in got}
    assert set(by_mid) == {"<m1@sender.test>", "<m2@sender.test>", "<m3@sender.test>"}

    t1 = by_mid["<m1@sender.test>"]
    assert t1.sender == "sender@sender.test"
    assert sorted(t1.rcpts) == ["a@one.example", "b@one.example"]
    assert t1.helo == HOST
    # kumod's Received header first, then the original message byte for byte
    assert t1.data.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby mx.test (kumod)")
    assert t1.data.endswith(m1), t1.data
    assert b"\r\n.leading dot\r\n..two dots\r\n.\r\n \r\n" in t1.data
    assert "BODY=8BITMIME" not in t1.mail_params and "SMTPUTF8" not in t1.mail_params

    t2 = by_mid["<m2@sender.test>"]
    assert t2.rcpts == ["c@two.example"]
    assert "BODY=8BITMIME" in t2.mail_params, t2.mail_params
    assert t2.data.endswith(m2)

    t3 = by_mid["<m3@sender.test>"]
    assert t3.sender == "j\u00f6rg@sender.test"
    assert t3.rcpts == ["\u00fc@three.example"]
    assert "SMTPUTF8" in t3.mail_params and "BODY=8BITMIME" in t3.mail_params, t3.mail_params
    assert t3.data.endswith(m3)
    assert b"with UTF8SMTP id" in t3.data.split(b"\r\n\r\n")[0]

    recs = wait_n(k, of("Delivery"), 4)
    assert len(recs) == 4, recs
    assert {r["recipient"] for r in recs} == {"a@one.example", "b@one.example", "c@two.example",
                                              "\u00fc@three.example"}
    recv = {r["recipient"]: r for r in k.records() if r["type"] == "Reception"}
    for r in recs:
        assert r["num_attempts"] == 1
        assert r["site"] and r["site"] == recs[0]["site"]
        assert r["peer_address"]["addr"] == "127.0.0.1"
        assert r["response"]["code"] == 250
        assert r["queue"] == r["recipient"].split("@")[1]
        assert r["id"] == recv[r["recipient"]]["id"]
        assert r["sender"] == recv[r["recipient"]]["sender"]
        assert r["size"] == recv[r["recipient"]]["size"]
        assert r["delivery_protocol"] == "ESMTP"
        assert r["timestamp"] >= r["created"]
    assert spool_after_stop(k) == []


def test_connection_reuse_and_batches(kumod, sinks):
    sink = sinks()
    k = kumod(extra=config(smart_host=sink.addr, connection_limit=1,
                           max_deliveries_per_connection=4, max_recipients_per_batch=2))
    s = smtplib.SMTP("127.0.0.1", k.port, timeout=10)
    s.ehlo("client.test")
    for i in range(12):
        assert s.sendmail("sender@sender.test", ["r%d@d%d.example" % (i, i % 3)],
                          msg(b"reuse", b"reuse%d@sender.test" % i)) == {}
    rcpts = ["m%d@big.example" % i for i in range(5)]
    assert s.sendmail("sender@sender.test", rcpts, msg(b"batch", b"batch@sender.test")) == {}
    s.quit()
    recs = wait_n(k, of("Delivery"), 17)
    assert len(recs) == 17, recs
    got = sink.wait_messages(15)
    # five recipients in batches of at most two: three transactions of the same message
    batches = [t.rcpts for t in got if parse(t.data)["Message-ID"] == "<batch@sender.test>"]
    assert sorted(len(b) for b in batches) == [1, 2, 2], batches
    assert sorted(sum(batches, [])) == rcpts
    # at most one connection per loop at a time, at most four transactions each
    per_conn = {}
    for t in got:
        per_conn[t.conn] = per_conn.get(t.conn, 0) + 1
    assert sink.max_open <= k.threads, sink.max_open
    assert max(per_conn.values()) <= 4, per_conn
    assert len(per_conn) >= 15 // 4, per_conn
    assert any(n > 1 for n in per_conn.values()), per_conn  # connections are reused
    assert spool_after_stop(k) == []


def test_smtputf8_message_to_a_peer_without_smtputf8_bounces(kumod, sinks):
    plain = sinks(caps=("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"))
    k = kumod(extra=config(smart_host=plain.addr))
    submit(k, "", ["\u00fc@three.example"], msg(b"u", b"u1@sender.test"),
           mail_opts=["SMTPUTF8"])
    (b,) = wait_n(k, of("Bounce"), 1)
    assert b["response"]["code"] == 553
    assert b["response"]["enhanced_code"] == {"class": 5, "subject": 6, "detail": 7}
    assert plain.messages() == []
    assert spool_after_stop(k) == []


# ---- 2. MX routing through DNS ----

def test_mx_routing_sites_preference_implicit_null_and_nxdomain(kumod, sinks, dns, mx_port):
    mx2 = sinks(host="127.0.0.2", port=mx_port, name="mx2.test")
    mx3 = sinks(host="127.0.0.3", port=mx_port, name="mx3.test")
    mx4 = sinks(host="127.0.0.4", port=mx_port, name="mx4.test")
    back = sinks(name="back.test")  # the sender's domain: receives the DSNs
    k = kumod(extra=config(dns_server=dns.server, mx_port=mx_port,
                           routes={"sender.test": back.addr}))
    cases = {"alpha.test": mx2, "beta.test": mx2, "order.test": mx2, "pref.test": mx3,
             "implicit.test": mx4}
    for dom in cases:
        submit(k, "sender@sender.test", ["u@" + dom], msg(dom.encode(), dom.encode() + b"@s"))
    submit(k, "sender@sender.test", ["u@nullmx.test"], msg(b"null", b"null@s"))
    submit(k, "sender@sender.test", ["u@nosuch.test"], msg(b"nx", b"nx@s"))

    recs = wait_n(k, of("Delivery"), len(cases) + 2, timeout=20)
    by_rcpt = {r["recipient"]: r for r in recs}
    for dom, sink in cases.items():
        r = by_rcpt.get("u@" + dom)
        assert r, "no Delivery record for u@%s: %s" % (dom, [x for x in k.records()
                                                            if x["recipient"] == "u@" + dom])
        assert r["peer_address"]["addr"] == sink.host, (dom, r)
        assert r["num_attempts"] == 1, r
        got = [t for t in sink.messages() if t.rcpts == ["u@" + dom]]
        assert len(got) == 1, (dom, sink.host)
    assert by_rcpt["u@alpha.test"]["peer_address"]["name"] == "mx1.shared.test"
    assert by_rcpt["u@order.test"]["peer_address"]["name"] == "a.order.test"
    assert by_rcpt["u@pref.test"]["peer_address"]["name"] == "up.pref.test"
    # one site for the two domains with the same MX set, another for each other set
    sites = {d: by_rcpt["u@" + d]["site"] for d in cases}
    assert sites["alpha.test"] == sites["beta.test"], sites
    assert len({sites["alpha.test"], sites["order.test"], sites["pref.test"],
                sites["implicit.test"]}) == 4, sites
    assert all(sites.values()), sites

    (nb,) = wait_n(k, of("Bounce", "u@nullmx.test"), 1)
    assert nb["response"]["code"] == 556, nb
    assert nb["response"]["enhanced_code"] == {"class": 5, "subject": 1, "detail": 10}, nb
    (xb,) = wait_n(k, of("Bounce", "u@nosuch.test"), 1)
    assert xb["response"]["code"] == 550, xb
    assert xb["response"]["enhanced_code"] == {"class": 5, "subject": 1, "detail": 2}, xb

    # both bounces come back to the sender as DSNs through its domain route
    dsns = back.wait_messages(2)
    assert len(dsns) == 2, [t.rcpts for t in dsns]
    reported = {}
    for t in dsns:
        assert t.sender == "" and t.rcpts == ["sender@sender.test"]
        for a in recipients_reported(t):
            reported[a] = t
    assert set(reported) == {"u@nullmx.test", "u@nosuch.test"}
    _, blocks, _ = dsn_parts(reported["u@nullmx.test"])
    assert blocks[1]["Status"] == "5.1.10" and blocks[1]["Action"] == "failed"
    _, blocks, _ = dsn_parts(reported["u@nosuch.test"])
    assert blocks[1]["Status"] == "5.1.2" and blocks[1]["Action"] == "failed"
    # the DSNs themselves were delivered and logged
    dl = wait_n(k, of("Delivery", "sender@sender.test"), 2)
    assert len(dl) == 2 and all(r["sender"] == "" for r in dl), dl
    # messages: nothing left (the MX hosts were asked for each domain once)
    assert spool_after_stop(k) == []
    assert mx3.messages() and not [t for t in mx3.messages() if t.rcpts == ["u@order.test"]]


def check_transient_records(recs, rcpts, sender):
    """A TransientFailure without a session still names its message's recipients."""
    got = sorted(r["recipient"] for r in recs)
    assert got == sorted(rcpts), (
        "TransientFailure records should carry one record per recipient with the envelope "
        "(KumoMTA's fields), got recipients %r, senders %r" % (got, [r["sender"] for r in recs]))
    assert all(r["sender"] == sender for r in recs), [r["sender"] for r in recs]


def test_dns_unreachable_is_a_transient_failure(kumod, sinks):
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.1", 0))
    try:
        k = kumod(extra=config(dns_server="127.0.0.1:%d" % silent.getsockname()[1],
                               retry_interval="30s"))
        submit(k, "sender@sender.test", ["u@slow.test", "v@slow.test"], msg(b"s", b"s@s"))
        recs = wait_n(k, lambda r: r["type"] == "TransientFailure" and r["queue"] == "slow.test",
                      1, timeout=20)
        assert recs, k.records()
        for r in recs:
            assert r["response"]["code"] == 451, r
            assert r["response"]["enhanced_code"] == {"class": 4, "subject": 4, "detail": 3}, r
            assert r["num_attempts"] == 1, r
        assert not [x for x in k.records() if x["type"] in ("Bounce", "Delivery")]
        # still queued (the attempt count of a failure without a session is kept in
        # memory until the next real attempt, so the spool is not checked for it)
        (m,) = spool_after_stop(k)
        assert [x["addr"] for x in m["recipients"]] == ["u@slow.test", "v@slow.test"]
        assert not any(x["done"] for x in m["recipients"])
    finally:
        silent.close()


def test_unreachable_smart_host_is_retried(kumod, sinks):
    port = free_port()  # nothing listens there yet
    k = kumod(extra=config(smart_host="127.0.0.1:%d" % port, retry_interval="2s",
                           connect_timeout="1s"))
    submit(k, "sender@sender.test", ["u@far.test", "v@far.test"], msg(b"f", b"f@s"))
    recs = wait_n(k, of("TransientFailure"), 1, timeout=10)
    assert recs, k.records()
    assert all(r["response"]["code"] // 100 == 4 for r in recs), recs
    # the host comes up: the retry delivers
    sink = sinks(port=port)
    got = sink.wait_messages(1, timeout=15)
    assert len(got) == 1 and sorted(got[0].rcpts) == ["u@far.test", "v@far.test"]
    dl = wait_n(k, of("Delivery"), 2)
    assert sorted(r["recipient"] for r in dl) == ["u@far.test", "v@far.test"]
    assert all(r["num_attempts"] >= 2 for r in dl), dl
    assert spool_after_stop(k) == []


def test_transient_failure_without_session_names_sender_and_recipients(kumod):
    k = kumod(extra=config(smart_host="127.0.0.1:%d" % free_port(), retry_interval="30s",
                           connect_timeout="1s"))
    submit(k, "sender@sender.test", ["u@far.test", "v@far.test"], msg(b"f", b"f@s"))
    recs = wait_n(k, of("TransientFailure"), 1, timeout=10)
    assert recs, k.records()
    (rec,) = [r for r in k.records() if r["type"] == "Reception"][:1]
    assert all(r["id"] == rec["id"] and r["queue"] == "far.test" for r in recs), recs
    time.sleep(0.5)
    recs = [r for r in k.records() if r["type"] == "TransientFailure"]
    check_transient_records(recs, ["u@far.test", "v@far.test"], "sender@sender.test")


# ---- 3. per-recipient outcomes, DSN structure, retry timing ----

def scripted(first_only_defer=True):
    """Recipient policy: "reject*" 550, "defer*" 451 (only on the first try when
    first_only_defer), anything else accepted."""
    tries = {}
    lock = threading.Lock()

    def rcpt(addr, txn):
        local = addr.split("@")[0]
        with lock:
            tries[addr] = tries.get(addr, 0) + 1
            n = tries[addr]
        if local.startswith("reject"):
            return "550 5.1.1 <%s>: user unknown" % addr
        if local.startswith("defer") and (n == 1 or not first_only_defer):
            return "451 4.2.1 <%s>: try again later" % addr
        return None
    return rcpt


def test_per_recipient_outcomes_dsn_and_retry(kumod, sinks):
    dest = sinks(name="dest.test", rcpt=scripted())
    back = sinks(name="back.test")
    k = kumod(extra=config(retry_interval="2s",
                           routes={"dest.test": dest.addr, "sender.test": back.addr}))
    body = b"the body text that RET=HDRS leaves out\r\n"
    m = msg(b"mixed outcomes", b"mixed@sender.test", body)
    submit(k, "sender@sender.test", ["ok@dest.test", "defer@dest.test", "reject@dest.test"], m,
           mail_opts=["RET=HDRS", "ENVID=ENV-42.x"],
           rcpt_opts={"reject@dest.test": ["NOTIFY=FAILURE", "ORCPT=rfc822;Reject+2Bx@dest.test"]})
    (rec,) = wait_n(k, of("Reception"), 1)[:1]

    first = wait_n(k, lambda r: r["type"] != "Reception", 3)
    types = {r["recipient"]: r for r in first}
    assert types["ok@dest.test"]["type"] == "Delivery", first
    assert types["defer@dest.test"]["type"] == "TransientFailure", first
    assert types["reject@dest.test"]["type"] == "Bounce", first
    for r in first:
        assert r["id"] == rec["id"] and r["num_attempts"] == 1, r
        assert r["sender"] == "sender@sender.test"
        assert r["peer_address"]["addr"] == "127.0.0.1"
    tf, b = types["defer@dest.test"], types["reject@dest.test"]
    assert tf["response"]["code"] == 451
    assert tf["response"]["enhanced_code"] == {"class": 4, "subject": 2, "detail": 1}
    assert tf["response"]["command"].startswith("RCPT"), tf["response"]
    assert b["response"]["code"] == 550
    assert b["response"]["enhanced_code"] == {"class": 5, "subject": 1, "detail": 1}
    assert "user unknown" in b["response"]["content"]

    # the retry: only the deferred recipient, after retry_interval
    (d2,) = wait_n(k, of("Delivery", "defer@dest.test"), 1, timeout=15) or [None]
    assert d2, "deferred recipient never delivered: %s" % k.records()
    assert d2["num_attempts"] == 2, d2
    tries = [(t, a) for t, a, _, _ in dest.rcpt_log]
    assert [a for _, a in tries[:3]] == ["ok@dest.test", "defer@dest.test", "reject@dest.test"]
    retry = [(t, a) for t, a in tries[3:]]
    gap = retry[0][0] - tries[1][0]
    assert 1.9 <= gap <= 5.0, "second attempt %.2f s after the first (retry_interval 2s)" % gap
    time.sleep(1)
    assert [a for _, a in retry] == ["defer@dest.test"], (
        "the retry must offer only the recipient still pending; RCPTs of the second attempt: "
        "%r; records: %r" % ([a for _, a in retry],
                             [(r["type"], r["recipient"], r["num_attempts"]) for r in k.records()
                              if r["type"] != "Reception"]))
    got = dest.messages()
    assert [t.rcpts for t in got] == [["ok@dest.test"], ["defer@dest.test"]]
    assert all(t.data.endswith(m) for t in got)

    # exactly one DSN, for the bounced recipient only
    dsns = back.wait_messages(1)
    time.sleep(1.5)
    dsns = back.messages()
    assert len(dsns) == 1, [recipients_reported(t) for t in dsns]
    t = dsns[0]
    assert t.sender == "" and t.rcpts == ["sender@sender.test"]
    top, blocks, returned = dsn_parts(t)
    assert top["To"] == "sender@sender.test"
    assert top["From"].endswith("MAILER-DAEMON@mx.test>") or top["From"] == "MAILER-DAEMON@mx.test"
    assert top["Auto-Submitted"] == "auto-replied"
    assert blocks[0]["Reporting-MTA"] == "dns; mx.test"
    assert blocks[0]["Original-Envelope-Id"] == "ENV-42.x", blocks[0].items()
    assert blocks[0]["Arrival-Date"]
    assert len(blocks) == 2, [b.items() for b in blocks]
    r = blocks[1]
    assert r["Final-Recipient"] == "rfc822; reject@dest.test"
    assert r["Original-Recipient"] == "rfc822; Reject+x@dest.test", r.items()
    assert r["Action"] == "failed"
    assert r["Status"] == "5.1.1"
    assert r["Diagnostic-Code"].startswith("smtp; 550 5.1.1"), r["Diagnostic-Code"]
    assert "user unknown" in r["Diagnostic-Code"]
    assert r["Remote-MTA"], r.items()
    # RET=HDRS: the original headers, not the body
    assert returned is not None and returned.get_content_type() == "text/rfc822-headers"
    hdrs = returned.get_payload(decode=False)
    assert "Message-ID: <mixed@sender.test>" in hdrs and "Subject: mixed outcomes" in hdrs
    assert "RET=HDRS leaves out" not in hdrs
    # and the DSN itself was delivered and logged as a delivery from the null sender
    (dl,) = wait_n(k, of("Delivery", "sender@sender.test"), 1)
    assert dl["sender"] == ""
    assert spool_after_stop(k) == []


def test_recipient_states_persist_across_restart(kumod, sinks):
    dest = sinks(rcpt=scripted())
    back = sinks()
    routes = {"dest.test": dest.addr, "sender.test": back.addr}
    k = kumod(extra=config(retry_interval="4s", routes=routes))
    submit(k, "sender@sender.test", ["ok@dest.test", "defer@dest.test", "reject@dest.test"],
           msg(b"restart", b"restart@sender.test"))
    assert len(wait_n(k, lambda r: r["type"] != "Reception" and r["sender"], 3)) == 3
    assert back.wait_messages(1)  # the DSN for reject@ has left too
    assert wait_n(k, of("Delivery", "sender@sender.test"), 1)
    (m,) = spool_after_stop(k)
    done = {r["addr"]: r["done"] for r in m["recipients"]}
    assert done == {"ok@dest.test": True, "defer@dest.test": False, "reject@dest.test": True}, m
    assert m["num_attempts"] == 1, m
    assert m["due"] >= m["created"] + 3000, m
    restart(k)
    (d,) = wait_n(k, of("Delivery", "defer@dest.test"), 1, timeout=15) or [None]
    assert d, k.records()
    assert d["num_attempts"] == 2, d
    time.sleep(1)
    retry = [a for _, a, _, _ in dest.rcpt_log[3:]]
    assert retry == ["defer@dest.test"], (
        "after a restart the retry must offer only the recipient the spool lists as pending; "
        "RCPTs sent: %r" % retry)
    assert spool_after_stop(k) == []


def test_ret_full_returns_the_whole_message(kumod, sinks):
    dest = sinks(rcpt=scripted())
    back = sinks()
    k = kumod(extra=config(routes={"dest.test": dest.addr, "sender.test": back.addr}))
    body = b"the body RET=FULL sends back\r\n.dotted\r\n"
    submit(k, "sender@sender.test", ["reject@dest.test"], msg(b"full", b"full@sender.test", body),
           mail_opts=["RET=FULL"])
    (t,) = back.wait_messages(1)
    _, blocks, returned = dsn_parts(t)
    assert "Original-Envelope-Id" not in blocks[0]
    assert "Original-Recipient" not in blocks[1]
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload()[0]
    assert inner["Message-ID"] == "<full@sender.test>"
    assert inner.get_payload() == body.decode(), inner.get_payload()
    assert spool_after_stop(k) == []


# ---- 4. expiration ----

def test_expiration_after_max_age(kumod, sinks):
    dest = sinks(rcpt=scripted(first_only_defer=False))
    back = sinks()
    k = kumod(extra=config(retry_interval="1s", max_age="5s",
                           routes={"dest.test": dest.addr, "sender.test": back.addr}))
    t0 = time.time()
    submit(k, "sender@sender.test", ["defer1@dest.test", "defer2@dest.test"],
           msg(b"exp", b"exp@sender.test"))
    ex = wait_n(k, of("Expiration"), 2, timeout=25)
    assert sorted(r["recipient"] for r in ex) == ["defer1@dest.test", "defer2@dest.test"], \
        k.records()
    elapsed = time.time() - t0
    assert 4.5 <= elapsed <= 14, elapsed
    for r in ex:
        assert r["response"]["code"] == 551, r
        assert r["response"]["enhanced_code"] == {"class": 5, "subject": 4, "detail": 7}, r
        assert r["sender"] == "sender@sender.test"
    tfs = [r for r in k.records() if r["type"] == "TransientFailure"]
    assert len(tfs) >= 2, tfs
    assert sorted({r["num_attempts"] for r in tfs})[0] == 1
    # the sink saw more than one attempt, and nothing was accepted
    assert len({c for _, _, _, c in dest.rcpt_log}) >= 1
    assert len(dest.rcpt_log) >= 4, dest.rcpt_log
    assert dest.messages() == []
    (t,) = back.wait_messages(1)
    assert t.sender == "" and t.rcpts == ["sender@sender.test"]
    _, blocks, _ = dsn_parts(t)
    assert sorted(b["Final-Recipient"] for b in blocks[1:]) == [
        "rfc822; defer1@dest.test", "rfc822; defer2@dest.test"]
    for b in blocks[1:]:
        assert b["Action"] == "failed" and b["Status"] == "4.4.7", b.items()
    time.sleep(1)
    assert len(back.messages()) == 1
    assert spool_after_stop(k) == []


# ---- 5. connection trouble ----

def test_connection_dropped_mid_data_is_retried(kumod, sinks):
    state = {"n": 0}

    def drop(txn):
        state["n"] += 1
        return state["n"] == 1

    dest = sinks(drop=drop)
    k = kumod(extra=config(retry_interval="1s", smart_host=dest.addr))
    m = msg(b"drop", b"drop@sender.test", b"x" * 5000 + b"\r\n")
    submit(k, "sender@sender.test", ["u@dest.test", "v@dest.test"], m)
    dl = wait_n(k, of("Delivery"), 2, timeout=15)
    assert sorted(r["recipient"] for r in dl) == ["u@dest.test", "v@dest.test"], k.records()
    assert all(r["num_attempts"] == 2 for r in dl), dl
    assert dest.dropped == 1
    got = dest.messages()
    assert len(got) == 1 and got[0].data.endswith(m)
    assert dest.connections >= 2
    assert not [r for r in k.records() if r["type"] == "Bounce"]
    tf = [r for r in k.records() if r["type"] == "TransientFailure"]
    for r in tf:
        assert r["response"]["code"] // 100 == 4, r
        assert r["num_attempts"] == 1
    assert sorted(r["recipient"] for r in tf) == ["u@dest.test", "v@dest.test"], (
        "one TransientFailure record per recipient for the one failed attempt, got %r" %
        [(r["recipient"], r["response"]["code"], r["response"]["content"],
          r["response"]["command"]) for r in tf])
    assert spool_after_stop(k) == []


def test_greeting_421_moves_to_next_mx(kumod, sinks, dns, mx_port):
    busy = sinks(host="127.0.0.2", port=mx_port, greeting=lambda n: "421 4.3.2 too busy")
    second = sinks(host="127.0.0.3", port=mx_port)
    k = kumod(extra=config(dns_server=dns.server, mx_port=mx_port))
    submit(k, "sender@sender.test", ["u@busy.test"], msg(b"busy", b"busy@sender.test"))
    (d,) = wait_n(k, of("Delivery"), 1)
    assert d["peer_address"] == {"name": "second.busy.test", "addr": "127.0.0.3"}, d
    assert d["num_attempts"] == 1
    assert busy.connections >= 1 and busy.messages() == []
    assert [t.rcpts for t in second.messages()] == [["u@busy.test"]]
    assert not [r for r in k.records() if r["type"] == "TransientFailure"]
    assert spool_after_stop(k) == []


# ---- 6. when no DSN is sent ----

def test_no_dsn_for_notify_never_or_null_sender(kumod, sinks):
    dest = sinks(rcpt=scripted())
    back = sinks()
    k = kumod(extra=config(routes={"dest.test": dest.addr, "sender.test": back.addr}))
    submit(k, "sender@sender.test", ["reject-never@dest.test", "reject-success@dest.test",
                                     "reject-default@dest.test"],
           msg(b"n", b"never@sender.test"),
           rcpt_opts={"reject-never@dest.test": ["NOTIFY=NEVER"],
                      "reject-success@dest.test": ["NOTIFY=SUCCESS"]})
    submit(k, "", ["reject-null@dest.test"], msg(b"null", b"null@sender.test"))
    bounces = wait_n(k, of("Bounce"), 4)
    assert sorted(r["recipient"] for r in bounces) == [
        "reject-default@dest.test", "reject-never@dest.test", "reject-null@dest.test",
        "reject-success@dest.test"], k.records()
    (null_bounce,) = [r for r in bounces if r["recipient"] == "reject-null@dest.test"]
    assert null_bounce["sender"] == ""
    dsns = back.wait_messages(1)
    time.sleep(1.5)
    dsns = back.messages()
    assert len(dsns) == 1, [recipients_reported(t) for t in dsns]
    assert recipients_reported(dsns[0]) == ["reject-default@dest.test"]
    # nothing else was generated or queued
    others = [r for r in k.records() if r["type"] in ("Delivery", "TransientFailure")]
    assert [r["recipient"] for r in others] == ["sender@sender.test"], others
    assert spool_after_stop(k) == []
