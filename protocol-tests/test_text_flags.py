"""Text protocol behaviour that depends on server command-line flags
(-F, -A, -C, -I, -m, -M, -c). Each test spawns its own server."""
import socket
import time

import pytest

from textproto import rt, store, hit, gets_cas, stats, wait_until


# --- -F: flush_all disabled -------------------------------------------------------

def test_flush_disabled(spawn, key):
    srv = spawn("-F")
    c = srv.connect()
    k = key()
    rt(c, store(b"set", k, b"v"), b"STORED\r\n")
    rt(c, b"flush_all\r\n", b"CLIENT_ERROR flush_all not allowed\r\n")
    rt(c, b"flush_all 0\r\n", b"CLIENT_ERROR flush_all not allowed\r\n")
    rt(c, b"flush_all noreply\r\n", b"")
    rt(c, b"get " + k + b"\r\n", hit(k, b"v"))


# --- -A: shutdown enabled ---------------------------------------------------------

@pytest.mark.parametrize("cmd", [b"shutdown", b"shutdown graceful"])
def test_shutdown_enabled(spawn, cmd):
    srv = spawn("-A")
    other = srv.connect()
    rt(other, b"", b"")
    c = srv.connect()
    c.send(cmd + b"\r\n")
    c.expect_closed()
    other.expect_closed()
    srv.proc.wait(10)


def test_shutdown_bad_mode(spawn, key):
    srv = spawn("-A")
    c = srv.connect()
    rt(c, b"shutdown bogus\r\n", b"CLIENT_ERROR invalid shutdown mode\r\n")
    assert srv.proc.poll() is None


# --- -C: CAS disabled ---------------------------------------------------------------

def test_cas_disabled(spawn, key):
    srv = spawn("-C")
    c = srv.connect()
    k = key()
    rt(c, store(b"set", k, b"v", flags=2), b"STORED\r\n")
    rt(c, b"gets " + k + b"\r\n", b"VALUE " + k + b" 2 1 0\r\nv\r\nEND\r\n")
    rt(c, b"gats 0 " + k + b"\r\n", b"VALUE " + k + b" 2 1 0\r\nv\r\nEND\r\n")
    rt(c, store(b"append", k, b"w"), b"STORED\r\n")
    assert gets_cas(c, k) == 0
    # no unique can ever match
    rt(c, store(b"cas", k, b"x", extra=b"0"), b"EXISTS\r\n")
    rt(c, store(b"cas", k, b"x", extra=b"1"), b"EXISTS\r\n")
    rt(c, store(b"cas", key("none"), b"x", extra=b"0"), b"NOT_FOUND\r\n")
    rt(c, b"get " + k + b"\r\n", hit(k, b"vw", 2))


# --- -I: item size limit --------------------------------------------------------------

def test_item_size_limit_small(spawn, key):
    srv = spawn("-I", "512k")
    c = srv.connect()
    k = key()
    ok = b"o" * 400000              # clearly under 512 KiB
    big = b"b" * 600000             # clearly over
    rt(c, store(b"set", k, ok), b"STORED\r\n", timeout=10)
    rt(c, b"get " + k + b"\r\n", hit(k, ok), timeout=10)
    c.send(store(b"set", k, big))
    rt(c, b"get " + k + b"\r\n", b"SERVER_ERROR object too large for cache\r\nEND\r\n", timeout=10)
    st = stats(c)
    assert st["store_too_large"] == "1"


def test_item_size_limit_large(spawn, key):
    srv = spawn("-I", "2m")
    c = srv.connect()
    k = key()
    ok = b"o" * 1500000             # over the default 1 MiB, clearly under 2 MiB
    big = b"b" * 2200000
    rt(c, store(b"set", k, ok), b"STORED\r\n", timeout=10)
    rt(c, b"get " + k + b"\r\n", hit(k, ok), timeout=10)
    c.send(store(b"set", k, big))
    rt(c, b"get " + k + b"\r\n", b"SERVER_ERROR object too large for cache\r\nEND\r\n", timeout=10)


# --- -m / -M: memory limit ---------------------------------------------------------------

def _fill(c, key, n, size, batch=250):
    """Store n values of `size` bytes; return the list of reply lines."""
    val = b"v" * size
    replies = []
    for start in range(0, n, batch):
        req = b"".join(store(b"set", key("%05d" % i), val) for i in range(start, min(n, start + batch)))
        c.send(req)
        for _ in range(min(n, start + batch) - start):
            replies.append(c.read_line(timeout=10))
    return replies


def test_no_evict_out_of_memory(spawn, key):
    srv = spawn("-M", "-m", "2")
    c = srv.connect()
    replies = _fill(c, key, 5000, 1000)       # ~5 MB into a 2 MB cache
    assert set(replies) <= {b"STORED\r\n", b"SERVER_ERROR out of memory storing object\r\n"}
    assert replies[0] == b"STORED\r\n"
    assert b"SERVER_ERROR out of memory storing object\r\n" in replies
    # nothing was evicted: the first key is still there
    rt(c, b"get " + key("00000") + b"\r\n", hit(key("00000"), b"v" * 1000))
    st = stats(c)
    assert st["evictions"] == "0"
    assert int(st["store_no_memory"]) > 0
    # the server keeps answering (also on new connections)
    c2 = srv.connect()
    rt(c2, b"get " + key("00001") + b"\r\n", hit(key("00001"), b"v" * 1000))


def test_evictions_with_small_memory(spawn, key):
    srv = spawn("-m", "2")
    c = srv.connect()
    replies = _fill(c, key, 5000, 1000)       # ~5 MB into a 2 MB cache
    assert set(replies) == {b"STORED\r\n"}
    st = stats(c)
    assert int(st["evictions"]) > 0
    assert int(st["curr_items"]) < 5000
    assert st["total_items"] == "5000"
    # the most recent item is there and the server keeps answering
    rt(c, b"get " + key("04999") + b"\r\n", hit(key("04999"), b"v" * 1000))
    c2 = srv.connect()
    rt(c2, store(b"set", key("new"), b"n") + b"get " + key("new") + b"\r\n",
       b"STORED\r\n" + hit(key("new"), b"n"))


# --- -c: connection limit ---------------------------------------------------------------

def test_connection_limit(spawn):
    """memcached reserves some descriptors for itself (with -c 40 it accepts only ~15
    clients); memtwin may count exactly. Either way, once over the limit a new client
    gets exactly `ERROR Too many open connections\\r\\n` and is closed."""
    srv = spawn("-c", "40")
    first = srv.connect()
    rt(first, b"", b"")
    socks = []
    for _ in range(60):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=3)
        socks.append(s)
    time.sleep(0.5)
    rejected, accepted = 0, []
    for s in socks:
        s.setblocking(False)
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            closed = True
        except BlockingIOError:
            closed = False
        except ConnectionResetError:
            closed = True
        if closed:
            assert data == b"ERROR Too many open connections\r\n", data
            rejected += 1
        else:
            assert data == b"", data
            accepted.append(s)
    assert rejected >= 1
    # accepted clients work
    first_ok = accepted[0] if accepted else None
    rt(first, b"version_bogus\r\n", b"ERROR\r\n")
    if first_ok is not None:
        first_ok.setblocking(True)
        first_ok.sendall(b"get x\r\n")
        assert first_ok.recv(100) == b"END\r\n"
    st = stats(first)
    assert int(st["rejected_connections"]) >= rejected
    # after closing everything, new clients are accepted again
    for s in socks:
        s.close()

    def fresh_ok():
        try:
            c = srv.connect()
            c.send(b"get x\r\n")
            ok = c.read_line() == b"END\r\n"
            c.close()
            return ok
        except (ConnectionError, OSError, TimeoutError):
            return False
    assert wait_until(fresh_ok, timeout=5)
