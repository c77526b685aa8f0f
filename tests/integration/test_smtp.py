"""kumod's SMTP reception on loopback, driven by Python's smtplib and raw sockets:
extensions, DSN, BDAT, pipelining, limits and every error path, log records, spool."""
import smtplib
import socket
import time

MSG = (b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n"
       b"Message-ID: <m1@example.com>\r\n\r\nhello\r\n.dot line\r\n")


def client(k):
    s = smtplib.SMTP("127.0.0.1", k.port, timeout=10)
    s.ehlo("client.test")
    return s


def raw(k):
    s = socket.create_connection(("127.0.0.1", k.port), timeout=10)
    f = s.makefile("rb")
    assert f.readline().startswith(b"220 ")
    return s, f


def replies(f, n):
    """Reads n complete (possibly multi-line) replies; returns [(code, last line)]."""
    out = []
    while len(out) < n:
        line = f.readline()
        assert line, "connection closed"
        if line[3:4] == b" ":
            out.append((int(line[:3]), line.decode().rstrip()))
    return out


def test_ehlo_advertises_extensions(kumod):
    k = kumod(listener_extra='max_message_size = "1MB"')
    s = client(k)
    for ext in ("pipelining", "8bitmime", "smtputf8", "enhancedstatuscodes", "chunking", "dsn"):
        assert s.has_extn(ext), ext
    assert s.esmtp_features["size"] == str(1 << 20)
    s.quit()


def test_message_accepted_logged_and_spooled(kumod):
    k = kumod()
    s = client(k)
    resp = s.sendmail("sender@example.com", ["b@example.net", "c@example.org"], MSG)
    assert resp == {}
    code, text = s.noop()
    assert code == 250
    s.quit()
    recs = k.wait_records(lambda r: r["type"] == "Reception")
    assert len(recs) == 2
    r = recs[0]
    for field in ("id", "sender", "recipient", "queue", "site", "size", "response",
                  "peer_address", "timestamp", "created", "num_attempts", "nodeid"):
        assert field in r
    assert r["sender"] == "sender@example.com"
    assert {x["recipient"] for x in recs} == {"b@example.net", "c@example.org"}
    assert {x["queue"] for x in recs} == {"example.net", "example.org"}
    assert r["response"]["code"] == 250
    assert r["peer_address"]["addr"] == "127.0.0.1"
    assert r["peer_address"]["name"] == "client.test"
    # one stored message per destination queue, each answered in the one 250
    ids = {x["id"] for x in recs}
    assert len(ids) == 2
    k.stop()
    msgs = {m["id"]: m for m in k.list_spool()}
    assert set(msgs) == ids
    assert sorted(m["recipients"][0]["addr"] for m in msgs.values()) == ["b@example.net",
                                                                         "c@example.org"]


def test_dsn_parameters_stored(kumod):
    k = kumod()
    s = client(k)
    s.mail("s@example.com", ["RET=HDRS", "ENVID=abc+2Bdef", "SIZE=%d" % len(MSG)])
    assert s.rcpt("x@example.net", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;x@example.net"])[0] == 250
    assert s.rcpt("y@example.net", ["NOTIFY=NEVER"])[0] == 250  # same queue: one message
    code, _ = s.data(MSG)
    assert code == 250
    s.quit()
    k.stop()
    (m,) = k.list_spool()
    assert m["ret"] == "HDRS"
    assert m["envid"] == "abc+2Bdef"
    x, y = m["recipients"]
    assert x["notify"] == 2 | 4 and x["orcpt"] == "rfc822;x@example.net"
    assert y["notify"] == 1 and y["orcpt"] is None


def test_campaign_and_tenant_headers_name_queue_and_are_removed(kumod):
    k = kumod()
    s = client(k)
    msg = (b"From: a@example.com\r\nX-Kumo-Campaign: spring\r\nSubject: s\r\n"
           b"x-kumo-tenant:  acme \r\n\r\nbody\r\n")
    s.sendmail("a@example.com", ["u@Example.NET"], msg)
    s.quit()
    (r,) = k.wait_records(lambda r: r["type"] == "Reception")
    assert r["queue"] == "spring:acme@example.net"
    k.stop()
    (m,) = k.list_spool()
    assert m["campaign"] == "spring" and m["tenant"] == "acme"
    # stored size: Received header added, the two X-Kumo headers removed
    removed = len(b"X-Kumo-Campaign: spring\r\n") + len(b"x-kumo-tenant:  acme \r\n")
    assert m["size"] > len(msg) - removed
    assert m["size"] < len(msg) - removed + 400


def test_8bitmime_and_smtputf8(kumod):
    k = kumod()
    s = client(k)
    body = "Subject: caf\u00e9\r\n\r\nna\u00efve\r\n".encode()
    assert s.sendmail("a@example.com", ["b@example.net"], body, mail_options=["BODY=8BITMIME"]) == {}
    utf = "Subject: x\r\n\r\n\u00fc\r\n".encode()
    assert s.sendmail("j\u00f6rg@example.com", ["\u00fc@example.net"], utf,
                      mail_options=["SMTPUTF8", "BODY=8BITMIME"]) == {}
    # non-ASCII address without SMTPUTF8 is refused
    code, text = s.docmd("MAIL FROM:<j\u00f6rg@example.com>")
    assert code == 553 and b"5.6.7" in text
    s.quit()


def test_size_limit_at_mail_and_in_data(kumod):
    k = kumod(listener_extra="max_message_size = 2000")
    s = client(k)
    code, text = s.docmd("MAIL FROM:<a@example.com> SIZE=5000")
    assert code == 552 and text.startswith(b"5.3.4")
    s.rset()
    s.mail("a@example.com")
    s.rcpt("b@example.net")
    code, text = s.data(b"Subject: big\r\n\r\n" + b"x" * 3000 + b"\r\n")
    assert code == 552 and text.startswith(b"5.3.4")
    # the session goes on
    assert s.sendmail("a@example.com", ["b@example.net"], MSG) == {}
    s.quit()


def test_bdat(kumod):
    k = kumod()
    s, f = raw(k)
    s.sendall(b"EHLO c\r\n")
    replies(f, 1)
    chunk1 = b"Subject: bdat\r\n\r\n"
    chunk2 = b"line one\r\n.not stuffed\r\n"
    s.sendall(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n")
    assert [c for c, _ in replies(f, 2)] == [250, 250]
    s.sendall(b"BDAT %d\r\n" % len(chunk1) + chunk1)
    assert replies(f, 1)[0][0] == 250
    s.sendall(b"BDAT %d LAST\r\n" % len(chunk2) + chunk2)
    code, line = replies(f, 1)[0]
    assert code == 250 and "id=" in line
    s.sendall(b"QUIT\r\n")
    s.close()
    k.stop()
    (m,) = k.list_spool()
    assert m["size"] > len(chunk1) + len(chunk2)


def test_pipelined_commands_answered_in_order(kumod):
    k = kumod()
    s, f = raw(k)
    s.sendall(b"EHLO c\r\n")
    replies(f, 1)
    s.sendall(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"
              b"RCPT TO:<bad address>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n")
    got = replies(f, 5)
    assert [c for c, _ in got] == [250, 250, 501, 250, 354]
    s.sendall(b"Subject: p\r\n\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n")
    got = replies(f, 3)
    assert [c for c, _ in got] == [250, 250, 221]
    s.close()


def test_bare_lf_is_not_end_of_data_and_is_refused(kumod):
    k = kumod()
    s, f = raw(k)
    s.sendall(b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    assert [c for c, _ in replies(f, 4)] == [250, 250, 250, 354]
    # an attempt to end DATA with LF.LF and smuggle a second transaction
    s.sendall(b"Subject: x\r\n\r\nbody\n.\nMAIL FROM:<evil@example.com>\r\n.\r\n")
    code, line = replies(f, 1)[0]
    assert code == 550 and "5.6.0" in line
    s.sendall(b"QUIT\r\n")
    assert replies(f, 1)[0][0] == 221
    assert not k.wait_records(lambda r: r["type"] == "Reception", timeout=0.5)


def test_error_replies(kumod):
    k = kumod(listener_extra="max_recipients_per_message = 2")
    s = client(k)
    code, text = s.docmd("FOO")
    assert code == 500 and text.startswith(b"5.5.2")
    code, text = s.docmd("RCPT TO:<b@example.net>")
    assert code == 503 and text.startswith(b"5.5.1")
    code, text = s.docmd("DATA")
    assert code == 503 and text.startswith(b"5.5.1")
    code, text = s.docmd("MAIL FROM:bad")
    assert code == 501 and text.startswith(b"5.1.7")
    code, text = s.docmd("MAIL FROM:<a@example.com> FOO=BAR")
    assert code == 555 and text.startswith(b"5.5.4")
    assert s.docmd("MAIL FROM:<a@example.com>")[0] == 250
    code, text = s.docmd("MAIL FROM:<a@example.com>")
    assert code == 503
    assert s.docmd("RCPT TO:<b1@example.net>")[0] == 250
    assert s.docmd("RCPT TO:<b2@example.net>")[0] == 250
    code, text = s.docmd("RCPT TO:<b3@example.net>")
    assert code == 452 and text.startswith(b"4.5.3")
    code, text = s.docmd("VRFY someone")
    assert code == 252
    code, text = s.docmd("HELP")
    assert code == 214
    assert s.docmd("RSET")[0] == 250
    code, text = s.docmd("X" * 600)
    assert code == 500 and text.startswith(b"5.5.2")
    s.quit()


def test_data_without_recipients(kumod):
    k = kumod()
    s = client(k)
    s.mail("a@example.com")
    code, text = s.docmd("DATA")
    assert code in (503, 554) and b"5.5.1" in text
    s.quit()


def test_no_open_relay(kumod):
    # 127.0.0.1 is not a relay host here: only local domains are accepted
    k = kumod(listener_extra='relay_hosts = ["127.0.0.2/32"]\nlocal_domains = ["inbound.test"]')
    s = client(k)
    s.mail("a@example.com")
    code, text = s.rcpt("someone@elsewhere.test")
    assert code == 550 and text.startswith(b"5.7.1")
    assert s.rcpt("someone@inbound.test")[0] == 250
    assert s.rcpt("postmaster")[0] == 250
    s.quit()
    recs = k.wait_records(lambda r: r["type"] == "Rejection")
    assert recs and recs[0]["recipient"] == "someone@elsewhere.test"
    assert recs[0]["response"]["code"] == 550
    assert recs[0]["response"]["enhanced_code"] == {"class": 5, "subject": 7, "detail": 1}


def test_messages_per_connection_limit(kumod):
    k = kumod(listener_extra="max_messages_per_connection = 2")
    s = client(k)
    assert s.sendmail("a@example.com", ["b@example.net"], MSG) == {}
    assert s.sendmail("a@example.com", ["b@example.net"], MSG) == {}
    code, text = s.docmd("MAIL FROM:<a@example.com>")
    assert code == 421
    s.close()


def test_command_timeout(kumod):
    k = kumod(listener_extra='command_timeout = "1s"')
    s, f = raw(k)
    t0 = time.time()
    line = f.readline()
    assert line.startswith(b"421 4.4.2")
    assert 0.9 <= time.time() - t0 < 4
    assert f.readline() == b""


def test_received_header_added(kumod):
    k = kumod()
    s = client(k)
    s.sendmail("a@example.com", ["b@example.net"], MSG)
    s.quit()
    k.stop()
    (m,) = k.list_spool()
    assert m["size"] >= len(MSG) + len(b"Received: from client.test ([127.0.0.1])")


def test_graceful_stop_finishes_open_transaction(kumod):
    k = kumod()
    s = client(k)
    s.mail("a@example.com")
    s.rcpt("b@example.net")
    s.putcmd("DATA")
    assert s.getreply()[0] == 354
    k.proc.send_signal(15)
    time.sleep(0.3)
    # the open transaction may still finish; a new connection is refused
    s.send(b"Subject: late\r\n\r\nbody\r\n.\r\n")
    code, _ = s.getreply()
    assert code == 250
    # once the transaction is done the server says goodbye on its own
    code, text = s.getreply()
    assert code == 421 and text.startswith(b"4.3.2")
    assert k.proc.wait(timeout=10) == 0
    assert "stopped:" in k.log_text()
    assert len(k.list_spool()) == 1
