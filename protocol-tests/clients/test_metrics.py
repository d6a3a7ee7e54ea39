"""`--metrics-listen`: Prometheus text format with memcached_exporter's names,
checked by `promtool check metrics` (Debian's prometheus package) and parsed by
the Python prometheus_client parser, with values that follow real traffic.

memtwin only (memcached has no metrics endpoint): skipped when --server-bin is
not memtwin."""
import shutil
import socket
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymemcache.client.base import Client

from clienthelpers import _free_port, start_server


def _is_memtwin(binary):
    if not binary:
        return False
    out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10)
    return "memtwin" in out.stdout + out.stderr


@pytest.fixture
def node(server_bin):
    if not _is_memtwin(server_bin):
        pytest.skip("needs --server-bin = memtwin")
    port = _free_port()
    srv = start_server(server_bin, ["--metrics-listen", "127.0.0.1:%d" % port])
    yield srv, "http://127.0.0.1:%d" % port
    srv.stop()


def scrape(url):
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def samples(text):
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def cmd(s, command, status):
    return s[("memcached_commands_total", (("command", command), ("status", status)))]


def test_metrics_follow_traffic_and_pass_promtool(node):
    srv, url = node
    before = samples(scrape(url))
    c = Client((srv.host, srv.port), default_noreply=False)
    for i in range(5):
        c.set("m:%d" % i, b"v")
    c.get("m:1")
    c.get("m:missing")
    c.delete("m:2")
    c.close()
    text = scrape(url)
    after = samples(text)
    assert after[("memcached_up", ())] == 1
    assert after[("memcached_current_items", ())] == before[("memcached_current_items", ())] + 4
    assert cmd(after, "set", "hit") - cmd(before, "set", "hit") == 5
    assert cmd(after, "get", "hit") - cmd(before, "get", "hit") == 1
    assert cmd(after, "get", "miss") - cmd(before, "get", "miss") == 1
    assert cmd(after, "delete", "hit") - cmd(before, "delete", "hit") == 1
    assert after[("memcached_connections_total", ())] > before[("memcached_connections_total", ())]
    assert after[("memtwin_persist_enabled", ())] == 0
    assert any(name == "memcached_version" for name, _ in after)
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool (Debian's prometheus package) is not installed")
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_only_get_metrics_is_served(node):
    _, url = node
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url + "/other", timeout=5)
    assert e.value.code == 404
    req = urllib.request.Request(url + "/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 405
    # Garbage and a silent client get an answer or a close, never a hang.
    host, port = url[len("http://"):].split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"\x00\xff garbage\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 400")
    s.close()
