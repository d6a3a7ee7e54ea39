"""Text protocol: expiration times and flush_all (checked against memcached 1.6.18).

memcached's clock has 1 s resolution and may lag real time by up to ~1 s, so the
sleeps below leave a generous margin; only "clearly before" and "clearly after"
are asserted.
"""
import time

import pytest

from textproto import rt, store, hit, gets_cas, private_server_fixture

# flush_all empties the whole cache: those tests use their own server (shared by them)
private = private_server_fixture()


# --- immediate cases (no sleeping) ---------------------------------------------------

def test_exptime_zero_never_expires(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"v", exptime=0), b"STORED\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"v"))


@pytest.mark.parametrize("cmd", [b"set", b"add"])
def test_negative_exptime_stored_but_gone(conn, key, cmd):
    k = key()
    rt(conn, b"%s %s 0 -1 1\r\nx\r\n" % (cmd, k), b"STORED\r\n")
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")
    # and the key is free again
    rt(conn, store(b"add", k, b"y"), b"STORED\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"y"))


def test_absolute_past_exptime_memcexist_probe(conn, key):
    """libmemcached memcached_exist() sends `add <key> 0 2678400 0` (31 days = absolute
    time in 1970): STORED on a missing key, and the probe item is gone at once."""
    k = key()
    rt(conn, b"add " + k + b" 0 2678400 0\r\n\r\n", b"STORED\r\n")
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")
    rt(conn, store(b"set", k, b"v"), b"STORED\r\n")
    rt(conn, b"add " + k + b" 0 2678400 0\r\n\r\n", b"NOT_STORED\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"v"))


def test_exptime_30_days_is_relative(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"v", exptime=2592000), b"STORED\r\n")   # 30 days: relative
    rt(conn, b"get " + k + b"\r\n", hit(k, b"v"))
    rt(conn, store(b"set", k, b"v", exptime=2592001), b"STORED\r\n")   # absolute 1970
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")


def test_absolute_future_exptime_visible(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"v", exptime=int(time.time()) + 3600), b"STORED\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"v"))


def test_gat_absolute_past_returns_then_gone(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"v"), b"STORED\r\n")
    rt(conn, b"gat 2678400 " + k + b"\r\n", hit(k, b"v"))
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")


# --- sleeping cases -------------------------------------------------------------------

@pytest.mark.slow
def test_relative_ttl_expires(conn, key):
    a, b, z = key("a"), key("b"), key("z")
    rt(conn, store(b"set", a, b"1", exptime=1) + store(b"set", b, b"2", exptime=100)
       + store(b"set", z, b"3", exptime=0), b"STORED\r\nSTORED\r\nSTORED\r\n")
    rt(conn, b"get " + a + b"\r\n", hit(a, b"1"))
    time.sleep(2.5)
    rt(conn, b"get " + a + b" " + b + b" " + z + b"\r\n",
       b"VALUE " + b + b" 0 1\r\n2\r\nVALUE " + z + b" 0 1\r\n3\r\nEND\r\n")
    # expired keys behave as missing everywhere
    rt(conn, b"incr " + a + b" 1\r\ntouch " + a + b" 0\r\ndelete " + a + b"\r\n"
       + store(b"replace", a, b"x") + store(b"add", a, b"y"),
       b"NOT_FOUND\r\nNOT_FOUND\r\nNOT_FOUND\r\nNOT_STORED\r\nSTORED\r\n")


@pytest.mark.slow
def test_absolute_near_future_expires(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"v", exptime=int(time.time()) + 2), b"STORED\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"v"))
    time.sleep(3.2)
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")


@pytest.mark.slow
def test_touch_and_gat_update_ttl(conn, key):
    t1, t2, g1, g2, s1 = key("t1"), key("t2"), key("g1"), key("g2"), key("s1")
    rt(conn, store(b"set", t1, b"a", exptime=1) + store(b"set", t2, b"b")
       + store(b"set", g1, b"c", exptime=1) + store(b"set", g2, b"d")
       + store(b"set", s1, b"e", exptime=1),
       b"STORED\r\n" * 5)
    rt(conn, b"touch " + t1 + b" 100\r\ntouch " + t2 + b" 1\r\n", b"TOUCHED\r\nTOUCHED\r\n")
    rt(conn, b"gat 100 " + g1 + b"\r\n", hit(g1, b"c"))
    rt(conn, b"gats 1 " + g2 + b"\r\n", b"VALUE " + g2 + b" 0 1 %d\r\nd\r\nEND\r\n" % gets_cas(conn, g2))
    rt(conn, b"gat 0 " + s1 + b"\r\n", hit(s1, b"e"))   # 0 = never expire
    time.sleep(2.5)
    rt(conn, b"get " + t1 + b" " + t2 + b" " + g1 + b" " + g2 + b" " + s1 + b"\r\n",
       b"VALUE " + t1 + b" 0 1\r\na\r\nVALUE " + g1 + b" 0 1\r\nc\r\n"
       b"VALUE " + s1 + b" 0 1\r\ne\r\nEND\r\n")


@pytest.mark.slow
def test_failed_add_keeps_value_and_ttl(conn, key):
    short, forever = key("s"), key("f")
    rt(conn, store(b"set", short, b"old", exptime=1) + store(b"set", forever, b"keep"),
       b"STORED\r\nSTORED\r\n")
    # failed adds must not extend (or shorten) the TTL, nor change the value
    rt(conn, store(b"add", short, b"new", exptime=100) + store(b"add", forever, b"new", exptime=1),
       b"NOT_STORED\r\nNOT_STORED\r\n")
    rt(conn, b"get " + short + b"\r\n", hit(short, b"old"))
    time.sleep(2.5)
    rt(conn, b"get " + short + b" " + forever + b"\r\n", hit(forever, b"keep"))


@pytest.mark.slow
def test_append_prepend_incr_keep_ttl(conn, key):
    a, p, i, c = key("a"), key("p"), key("i"), key("c")
    rt(conn, store(b"set", a, b"1", flags=5, exptime=1) + store(b"set", p, b"1", exptime=1)
       + store(b"set", i, b"1", exptime=1) + store(b"set", c, b"1"),
       b"STORED\r\n" * 4)
    # the exptime given to append/prepend is ignored (here: 0 = never)
    rt(conn, store(b"append", a, b"2", exptime=0) + store(b"prepend", p, b"0", exptime=0)
       + b"incr " + i + b" 5\r\n" + store(b"append", c, b"2", exptime=1),
       b"STORED\r\nSTORED\r\n6\r\nSTORED\r\n")
    rt(conn, b"get " + a + b"\r\n", hit(a, b"12", 5))
    time.sleep(2.5)
    rt(conn, b"get " + a + b" " + p + b" " + i + b" " + c + b"\r\n", hit(c, b"12"))


@pytest.mark.slow
def test_replace_and_cas_set_new_ttl(conn, key):
    r, c = key("r"), key("c")
    rt(conn, store(b"set", r, b"1") + store(b"set", c, b"1"), b"STORED\r\nSTORED\r\n")
    u = gets_cas(conn, c)
    rt(conn, store(b"replace", r, b"2", exptime=1) + store(b"cas", c, b"2", exptime=1, extra=b"%d" % u),
       b"STORED\r\nSTORED\r\n")
    time.sleep(2.5)
    rt(conn, b"get " + r + b" " + c + b"\r\n", b"END\r\n")


# --- flush_all (on a private server: it empties the whole cache) -----------------------

def test_flush_all(private, key):
    srv = private
    c = srv.connect()
    a, b = key("a"), key("b")
    rt(c, store(b"set", a, b"1") + store(b"set", b, b"2"), b"STORED\r\nSTORED\r\n")
    rt(c, b"flush_all\r\n", b"OK\r\n")
    rt(c, b"get " + a + b" " + b + b"\r\n", b"END\r\n")
    # flushed keys are free again; items stored after the flush are visible
    rt(c, store(b"add", a, b"3") + b"get " + a + b"\r\n", b"STORED\r\n" + hit(a, b"3"))


def test_flush_all_variants(private, key):
    srv = private
    c = srv.connect()
    k = key()
    for req, rep in [(b"flush_all 0\r\n", b"OK\r\n"),
                     (b"flush_all \r\n", b"OK\r\n"),       # trailing space (pylibmc, memcflush)
                     (b"flush_all  0  \r\n", b"OK\r\n"),
                     (b"flush_all noreply\r\n", b""),
                     (b"flush_all 0 noreply\r\n", b"")]:
        rt(c, store(b"set", k, b"v") + req + b"get " + k + b"\r\n", b"STORED\r\n" + rep + b"END\r\n")


@pytest.mark.parametrize("arg", [b"x", b"1x"])
def test_flush_all_invalid_delay(private, key, arg):
    srv = private
    c = srv.connect()
    k = key()
    rt(c, store(b"set", k, b"v"), b"STORED\r\n")
    rt(c, b"flush_all " + arg + b"\r\n", b"CLIENT_ERROR invalid exptime argument\r\n")
    rt(c, b"get " + k + b"\r\n", hit(k, b"v"))


@pytest.mark.slow
def test_flush_all_delayed(private, key):
    srv = private
    c = srv.connect()
    a, b = key("a"), key("b")
    rt(c, store(b"set", a, b"1"), b"STORED\r\n")
    rt(c, b"flush_all 2\r\n", b"OK\r\n")
    rt(c, b"get " + a + b"\r\n", hit(a, b"1"))        # still visible before the flush time
    time.sleep(3.0)
    rt(c, b"get " + a + b"\r\n", b"END\r\n")          # gone after it
    rt(c, store(b"set", b, b"2"), b"STORED\r\n")      # stored after the flush time: visible
    rt(c, b"get " + b + b"\r\n", hit(b, b"2"))


@pytest.mark.slow
def test_flush_all_delayed_noreply(private, key):
    srv = private
    c = srv.connect()
    a = key("a")
    rt(c, store(b"set", a, b"1") + b"flush_all 2 noreply\r\nget " + a + b"\r\n",
       b"STORED\r\n" + hit(a, b"1"))
    time.sleep(3.0)
    rt(c, b"get " + a + b"\r\n", b"END\r\n")
