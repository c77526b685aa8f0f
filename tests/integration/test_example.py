"""examples/embed_policy: an embedder's policy refuses some senders and recipients, sets
the tenant and metadata; accepted messages reach the spool with those settings."""
import os
import smtplib
import subprocess

from conftest import BUILD, KUMOD, free_port, wait_port

EXAMPLE = os.path.join(BUILD, "examples", "embed_policy")


def test_embed_policy(tmp_path):
    port = free_port()
    spool = str(tmp_path / "spool")
    p = subprocess.Popen([EXAMPLE, spool, "127.0.0.1:%d" % port], stdout=subprocess.PIPE)
    try:
        wait_port(port, p)
        s = smtplib.SMTP("127.0.0.1", port, timeout=10)
        s.ehlo("c")
        code, text = s.mail("x@blocked.example")
        assert code == 550 and b"5.7.1" in text and b"blocked" in text
        s.rset()
        assert s.mail("x@good.example")[0] == 250
        code, text = s.rcpt("reject-me@dest.example")
        assert code == 550 and text.startswith(b"5.1.1")
        assert s.rcpt("ok@dest.example")[0] == 250
        code, text = s.data(b"Subject: t\r\n\r\nbody\r\n")
        assert code == 250
        s.quit()
    finally:
        p.terminate()
        assert p.wait(timeout=10) == 0
    cfg = tmp_path / "k.toml"
    cfg.write_text('[spool]\npath = "%s"\n' % spool)
    r = subprocess.run([KUMOD, "--config", str(cfg), "--list-spool"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    import json
    (m,) = [json.loads(l) for l in r.stdout.splitlines()]
    assert m["tenant"] == "example"
    assert [x["addr"] for x in m["recipients"]] == ["ok@dest.example"]
    assert m["recipients"][0]["queue"] == "example@dest.example"
    assert m["meta"]["received_by"] == "embed_policy"
