"""Disk full: with the spool on a tiny tmpfs, kumod answers 452 4.3.1 once a message
cannot be made durable, keeps running, and every message it answered 250 is intact."""
import os
import smtplib
import subprocess

import pytest

from conftest import Kumod


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % r.stderr.decode().strip())
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_disk_full_gives_452_and_loses_nothing(tmp_path, tiny_fs):
    k = Kumod(tmp_path / "k", threads=1)
    k.spool = str(tiny_fs / "spool")
    with open(k.config) as f:
        text = f.read()
    with open(k.config, "w") as f:
        f.write(text.replace(os.path.join(k.tmp, "spool"), k.spool)
                .replace('[[listener]]', '[[listener]]\nmax_message_size = "10MB"'))
    k.start()
    try:
        body = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 300  # ~300 KB
        accepted, refused = 0, None
        s = smtplib.SMTP("127.0.0.1", k.port, timeout=20)
        for _ in range(40):
            try:
                s.sendmail("a@example.com", ["b@example.net"], body)
                accepted += 1
            except smtplib.SMTPDataError as e:
                refused = e
                break
        assert refused is not None, "the 3 MB spool never filled"
        assert refused.smtp_code == 452 and refused.smtp_error.startswith(b"4.3.1")
        assert accepted >= 3
        # the session and the server are still usable
        assert s.noop()[0] == 250
        s.quit()
    finally:
        assert k.stop() == 0
    assert "spool write failed" in k.log_text()
    listed = k.list_spool()
    assert len(listed) == accepted
    assert all(m["size"] > len(body) for m in listed)
