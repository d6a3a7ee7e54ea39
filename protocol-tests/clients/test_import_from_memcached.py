"""Migration: `memtwin import --from memcached` copies a running memcached 1.6's
items into memtwin, with their flags and remaining TTLs, reading only.

Needs Debian's memcached (the source) and --server-bin pointing at memtwin
(the tool is `memtwin import`); skipped otherwise, e.g. in the run that proves
the other client tests against memcached."""
import shutil
import socket
import subprocess
import time

import pytest
from pymemcache.client.base import Client

from clienthelpers import start_server

ITEMS = 100_000
DAYS_40 = 40 * 24 * 3600


def _is_memtwin(binary):
    if not binary:
        return False
    out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10)
    return "memtwin" in out.stdout + out.stderr


@pytest.fixture(scope="module")
def servers(server_bin):
    memcached = shutil.which("memcached")
    if not memcached or not _is_memtwin(server_bin):
        pytest.skip("needs Debian's memcached and --server-bin = memtwin")
    src = start_server(memcached, ["-m", "512"])
    dst = start_server(server_bin, ["-m", "1024"])
    yield src, dst
    dst.stop()
    src.stop()


def _ttl_of(i):
    return (0, 3600, 100, DAYS_40)[i % 4]


def _exptime(ttl):
    """memcached reads more than 30 days as an absolute unix time."""
    return int(time.time()) + ttl if ttl > 30 * 24 * 3600 else ttl


def _meta(server, lines):
    """Pipelined meta requests on one connection; one reply line each."""
    s = socket.create_connection((server.host, server.port), timeout=10)
    try:
        s.sendall(b"".join(lines) + b"mn\r\n")
        buf = b""
        while not buf.endswith(b"MN\r\n"):
            chunk = s.recv(1 << 16)
            assert chunk, "closed"
            buf += chunk
        return buf.split(b"\r\n")[:-2]
    finally:
        s.close()


def _stat(server, name):
    c = Client((server.host, server.port))
    try:
        return int(c.stats()[name.encode()])
    finally:
        c.close()


def test_import_copies_every_item_with_flags_and_ttl(servers, server_bin):
    src, dst = servers
    c = Client((src.host, src.port))
    for ttl in (0, 3600, 100, DAYS_40):
        batch = {("sess:%06d" % i): ("v%d-" % i).encode() * (1 + i % 7)
                 for i in range(ITEMS) if _ttl_of(i) == ttl}
        # flags are set per item below; pymemcache's set_many shares one.
        for k, v in batch.items():
            c.set(k, v, expire=_exptime(ttl), noreply=True)
    # Distinct client flags: rewrite a tenth with flags = i.
    for i in range(0, ITEMS, 10):
        k = "sess:%06d" % i
        c.set(k, ("v%d-" % i).encode() * (1 + i % 7), expire=_exptime(_ttl_of(i)), noreply=True,
                  flags=i)
    c.close()
    assert _stat(src, "curr_items") == ITEMS
    sets_before = _stat(src, "cmd_set")

    out = subprocess.run([server_bin, "import", "--from", src.addr, "--to", dst.addr, "-q"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "%d items listed" % ITEMS in out.stdout, out.stdout
    assert "%d copied" % ITEMS in out.stdout, out.stdout
    assert _stat(dst, "curr_items") == ITEMS
    # The source only served reads.
    assert _stat(src, "curr_items") == ITEMS
    assert _stat(src, "cmd_set") == sets_before

    # Every value and flag; the TTLs of a sample on both sides, within 1 s.
    keys = [b"sess:%06d" % i for i in range(ITEMS)]
    for start in range(0, ITEMS, 2000):
        chunk = keys[start:start + 2000]
        a = _meta(src, [b"mg %s v f t\r\n" % k for k in chunk])
        b = _meta(dst, [b"mg %s v f t\r\n" % k for k in chunk])
        # VA header, value, VA header, value ...
        ah, bh = a[0::2], b[0::2]
        assert a[1::2] == b[1::2], "values differ in chunk at %d" % start
        for k, x, y in zip(chunk, ah, bh):
            xf = dict((t[:1], t[1:]) for t in x.split()[2:])
            yf = dict((t[:1], t[1:]) for t in y.split()[2:])
            assert xf[b"f"] == yf[b"f"], (k, x, y)
            tx, ty = int(xf[b"t"]), int(yf[b"t"])
            if tx == -1:
                assert ty == -1, (k, x, y)
            else:
                assert abs(tx - ty) <= 1, (k, x, y)

    # Run again after clients moved to memtwin: what they changed there is
    # kept, what only memcached has is filled in.
    d = Client((dst.host, dst.port))
    d.set("sess:000001", b"changed on memtwin", noreply=False)
    d.delete("sess:000002", noreply=False)
    d.close()
    out = subprocess.run([server_bin, "import", "--from", src.addr, "--to", dst.addr, "-q"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 copied" in out.stdout and "%d already there and kept" % (ITEMS - 1) in out.stdout, \
        out.stdout
    d = Client((dst.host, dst.port))
    assert d.get("sess:000001") == b"changed on memtwin"
    assert d.get("sess:000002") is not None, "missing on memtwin: filled in from memcached"
    d.close()


def test_import_counts_what_is_gone_and_refuses_a_wrong_source(servers, server_bin):
    src, dst = servers
    # memtwin is not a memcached with an LRU crawler: a clear error, not a crash.
    out = subprocess.run([server_bin, "import", "--from", dst.addr, "--to", dst.addr, "-q"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "memtwin import:" in out.stderr, out.stderr
    out = subprocess.run([server_bin, "import", "--from", "127.0.0.1:1", "-q"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "cannot connect" in out.stderr, out.stderr
