"""Tests of the harness itself: the proxy, the Node lifecycle, wait_until, the
frame helpers. They run whether or not the binary has the feature, against
Debian's memcached when present (else a standalone memtwin), so the pieces the
replication tests stand on are proven before the feature lands."""
import os
import signal
import socket
import struct
import time

import pytest

import twinlib
from twinlib import Node, Proxy, Text, wait_until

pytestmark = pytest.mark.harness

MEMCACHED = "/usr/bin/memcached"


@pytest.fixture
def plain_bin(server_bin):
    if os.path.exists(MEMCACHED):
        return MEMCACHED
    if os.path.exists(server_bin):
        return server_bin
    pytest.skip("neither %s nor %s present" % (MEMCACHED, server_bin))


@pytest.fixture
def plain(plain_bin, workdir, request):
    n = Node(plain_bin, "127.0.0.2", workdir, "plain", replicate=False)
    request.node._twin_nodes = [n]
    n.start()
    yield n
    n.stop()


def test_node_listens_on_its_own_loopback_address(plain):
    assert plain.host == "127.0.0.2"
    c = plain.connect()
    assert c.cmd("version").startswith(b"VERSION")
    c.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.3", plain.port), timeout=0.5).close()


def test_node_restart_in_place_and_kill9(plain):
    port, pid1 = plain.port, plain.pid
    c = plain.connect()
    assert c.store("set", b"k", b"v") == b"STORED"
    c.close()
    rc = plain.stop()
    assert rc == 0 or rc == -signal.SIGTERM, rc
    assert not plain.alive()
    plain.start()
    assert plain.port == port and plain.pid != pid1
    assert plain.connect().cmd("version").startswith(b"VERSION")
    pid2 = plain.pid
    assert plain.kill9() == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(pid2, 0)
    plain.restart()
    assert plain.alive()
    assert "+ [start 3]" in plain.log_text()


def test_text_helpers_mg_gets_stats(plain):
    c = plain.connect()
    assert c.store("set", b"hk", b"hello", flags=7, exptime=100) == b"STORED"
    it = c.mg(b"hk")
    assert it["value"] == b"hello" and it["flags"] == 7 and 98 <= it["ttl"] <= 100
    val, cas = c.gets(b"hk")
    assert val == b"hello" and cas == it["cas"]
    assert c.mg(b"missing-key") is None
    st = c.stats()
    assert "pid" in st and int(st["curr_items"]) >= 1
    c.close()


def test_stop_escalates_to_sigkill(plain_bin, workdir):
    """A process that ignores SIGTERM is killed after the bounded wait."""
    n = Node("/bin/sh", "127.0.0.2", workdir, "stubborn", replicate=False)
    import subprocess
    n.proc = subprocess.Popen(["/bin/sh", "-c", "trap '' TERM; sleep 30"])
    time.sleep(0.2)
    t0 = time.monotonic()
    rc = n.stop(wait=1.0)
    assert rc == -signal.SIGKILL
    assert time.monotonic() - t0 < 5


def test_wait_until_is_bounded():
    t0 = time.monotonic()
    calls = []
    assert not wait_until(lambda: calls.append(1), timeout=0.3, step=0.05)
    assert 0.25 <= time.monotonic() - t0 < 1.5
    assert 3 <= len(calls) <= 10
    assert wait_until(lambda: 42, timeout=1) == 42


def _roundtrip(host, port, payload=b"hello"):
    c = Text(host, port)
    try:
        assert c.store("set", b"px", payload) == b"STORED"
        return c.mg(b"px")["value"]
    finally:
        c.close()


def test_proxy_forwards_and_counts(plain):
    p = Proxy("127.0.0.2", plain.host, plain.port)
    try:
        assert _roundtrip(p.host, p.port, b"x" * 1000) == b"x" * 1000
        assert p.sent >= 1000 and p.received >= 1000
        assert p.accepted == 1
    finally:
        p.close()


def test_proxy_cut_closes_and_refuses_then_heal(plain):
    p = Proxy("127.0.0.2", plain.host, plain.port)
    try:
        c = Text(p.host, p.port)
        assert c.cmd("version").startswith(b"VERSION")
        assert wait_until(lambda: p.connections() == 1, timeout=2)
        p.cut()
        with pytest.raises((ConnectionError, OSError, TimeoutError)):
            for _ in range(3):
                c.cmd("version")
        c.close()
        # new connections: accepted by the kernel, closed at once, nothing forwarded
        c2 = Text(p.host, p.port, timeout=1)
        with pytest.raises((ConnectionError, OSError, TimeoutError)):
            c2.cmd("version")
        c2.close()
        assert p.refused >= 1
        assert wait_until(lambda: p.connections() == 0, timeout=2)
        p.heal()
        assert _roundtrip(p.host, p.port) == b"hello"
    finally:
        p.close()


def test_proxy_pause_holds_bytes_until_resume(plain):
    p = Proxy("127.0.0.2", plain.host, plain.port)
    try:
        c = Text(p.host, p.port, timeout=3)
        assert c.cmd("version").startswith(b"VERSION")
        p.pause()
        c.send(b"version\r\n")
        with pytest.raises(TimeoutError):
            c.read_line(timeout=0.4)
        p.resume()
        assert c.read_line(timeout=2).startswith(b"VERSION")
        c.close()
    finally:
        p.close()


def test_link_bytes_from_directions(plain):
    """Link.bytes_from('a') counts what A sends whichever proxy carries it."""
    to_b = Proxy("127.0.0.2", plain.host, plain.port)
    to_a = Proxy("127.0.0.2", plain.host, plain.port)
    link = twinlib.Link(to_a, to_b)
    try:
        _roundtrip(to_b.host, to_b.port, b"y" * 500)   # "A" dialled
        assert link.bytes_from("a") >= 500
        before = link.bytes_from("b")
        _roundtrip(to_a.host, to_a.port, b"z" * 700)   # "B" dialled
        assert link.bytes_from("b") - before >= 700
    finally:
        link.close()


def test_binary_detection(plain_bin, server_bin):
    ok, why = twinlib.binary_supports_replication(plain_bin)
    if plain_bin == MEMCACHED:
        assert not ok and "--peer" in why
    ok, why = twinlib.binary_supports_replication("/nonexistent/memtwin")
    assert not ok and "not found" in why


def test_frame_helpers():
    h = twinlib.hello_frame(version=9, node_id=5, nonce=b"\x01" * 32, wall_ms=1234)
    n, kind = struct.unpack("<IB", h[:5])
    assert n == len(h) - 4 == 1 + 4 + 2 + 2 + 16 + 8 + 32
    assert kind == twinlib.K_HELLO and h[5:9] == b"MTWN"
    assert struct.unpack("<HH", h[9:13]) == (9, 5)
    reason, msg = twinlib.parse_refuse(bytes([2]) + struct.pack("<H", 3) + b"abc")
    assert (reason, msg) == (2, "abc")


def test_secret_file(workdir):
    import base64
    path = twinlib.make_secret(os.path.join(workdir, "s"))
    raw = base64.b64decode(open(path, "rb").read().strip())
    assert len(raw) == 32
    assert os.stat(path).st_mode & 0o077 == 0
