"""kumod's configuration: the embedded default, --check-config, and errors that name the
file, the line and the key."""
import subprocess

import pytest

from conftest import KUMOD


def check(tmp_path, text):
    p = tmp_path / "kumod.toml"
    p.write_text(text)
    r = subprocess.run([KUMOD, "--check-config", str(p)], capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr, str(p)


def test_default_config_is_valid(tmp_path):
    r = subprocess.run([KUMOD, "--print-default-config"], capture_output=True, text=True)
    assert r.returncode == 0
    assert '127.0.0.1:2525' in r.stdout and 'var/spool' in r.stdout
    rc, out, _ = check(tmp_path, r.stdout)
    assert rc == 0, out


def test_full_config_is_valid(tmp_path):
    rc, out, _ = check(tmp_path, """
[engine]
threads = 2
hostname = "mx.example.com"
max_connections = 1000
shutdown_grace = "30s"
[[listener]]
smtp = "127.0.0.1:2525"
hostname = "mx.example.com"
relay_hosts = ["127.0.0.0/8", "::1", "10.0.0.0/8"]
local_domains = ["example.com"]
max_line_length = 1000
max_recipients_per_message = 500
max_message_size = "20MB"
max_messages_per_connection = 100
command_timeout = "5m"
data_timeout = "3m"
bare_line_ending = "normalize"
[[listener]]
smtp = "[::1]:2525"
[http]
listen = "127.0.0.1:8000"
[spool]
path = "var/spool"
[log]
path = "var/log"
[routing]
smart_host = "127.0.0.1:2626"
[headers]
campaign = "X-Campaign"
tenant = "X-Tenant"
""")
    assert rc == 0, out


@pytest.mark.parametrize("text,line,key", [
    ('[[listener]]\nsmtp = "127.0.0.1:2525"\nbogus = 1\n', 3, "listener.bogus"),
    ('[[listener]]\nsmtp = "nothost"\n', 2, "listener.smtp"),
    ('[[listener]]\nsmtp = 25\n', 2, "listener.smtp"),
    ('[spool]\npath = "x"\n[log]\n\npath = 3\n', 5, "log.path"),
    ('[[listener]]\nsmtp = "127.0.0.1:1"\nrelay_hosts = ["1.2.3.4/99"]\n', 3, "listener.relay_hosts"),
    ('[[listener]]\nsmtp = "127.0.0.1:1"\nmax_message_size = "lots"\n', 3, "listener.max_message_size"),
    ('[[listener]]\nsmtp = "127.0.0.1:1"\ncommand_timeout = "5 fortnights"\n', 3, "listener.command_timeout"),
    ('[[listener]]\nsmtp = "127.0.0.1:1"\nbare_line_ending = "maybe"\n', 3, "listener.bare_line_ending"),
    ('[engine]\nthreads = -1\n', 2, "engine.threads"),
    ('[routing]\nsmart_host = "mx"\n', 2, "routing.smart_host"),
    ('[unknown]\n', 1, "unknown"),
    ('[spool]\npath = "a"\npath = "b"\n', 3, "spool.path"),
])
def test_errors_name_file_line_and_key(tmp_path, text, line, key):
    rc, out, path = check(tmp_path, text)
    assert rc != 0
    assert "%s:%d:" % (path, line) in out, out
    assert "'%s'" % key in out, out


def test_missing_file(tmp_path):
    r = subprocess.run([KUMOD, "--check-config", str(tmp_path / "nope.toml")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "nope.toml" in r.stderr
