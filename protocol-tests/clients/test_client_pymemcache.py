"""pymemcache 4.x (text protocol only).

noreply gives no ordering across connections: a check on another connection
only follows a noreply write after a round trip on the writing connection.

pymemcache sends set/add/replace/append/prepend/delete/touch/flush_all with
``noreply`` by default (``default_noreply=True``), so most writes are checked by
reading back; the ``strict`` client (``default_noreply=False``) checks replies.
"""
import time

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError, MemcacheIllegalInputError

from clienthelpers import raw_text, text_get, text_gets


def make_client(server, **kw):
    return Client((server.host, server.port), connect_timeout=3, timeout=3, no_delay=True, **kw)


@pytest.fixture
def mc(shared_server):
    c = make_client(shared_server)  # default_noreply=True, as applications use it
    yield c
    c.close()


@pytest.fixture
def strict(shared_server):
    c = make_client(shared_server, default_noreply=False)
    yield c
    c.close()


def test_set_get_noreply_default(mc, shared_server, ukey):
    k = ukey()
    assert mc.set(k, b"hello", expire=60) is True
    assert mc.get(k) == b"hello"
    # the noreply write really landed (checked on another connection)
    assert text_get(shared_server, k) == b"hello"


def test_set_get_strict_and_flags(strict, shared_server, ukey):
    k = ukey()
    assert strict.set(k, b"v1", expire=0, flags=123) is True
    assert strict.get(k) == b"v1"
    # the flags come back on the wire
    reply = raw_text(shared_server, b"get " + k.encode() + b"\r\n", until=b"END\r\n")
    assert reply == b"VALUE " + k.encode() + b" 123 2\r\nv1\r\nEND\r\n"


def test_get_missing_and_default(mc, ukey):
    assert mc.get(ukey("nope")) is None
    assert mc.get(ukey("nope"), default=b"d") == b"d"


def test_get_many(mc, ukey):
    keys = [ukey(str(i)) for i in range(5)]
    for i, k in enumerate(keys[:4]):
        mc.set(k, ("v%d" % i).encode())
    got = mc.get_many(keys)
    assert got == {keys[i]: ("v%d" % i).encode() for i in range(4)}
    assert mc.get_many([]) == {}


def test_set_many_delete_many(mc, ukey):
    data = {ukey(str(i)): b"x" * (i + 1) for i in range(10)}
    assert mc.set_many(data, expire=60) == []
    assert mc.get_many(list(data)) == data
    assert mc.delete_many(list(data)) is True
    assert mc.get_many(list(data)) == {}


def test_add(strict, mc, ukey):
    k = ukey()
    assert strict.add(k, b"first") is True
    assert strict.add(k, b"second") is False
    assert strict.get(k) == b"first"
    # noreply add on an existing key: reply suppressed, value unchanged
    assert mc.add(k, b"third") is True
    assert mc.get(k) == b"first"


def test_replace(strict, ukey):
    k = ukey()
    assert strict.replace(k, b"x") is False
    assert strict.get(k) is None
    strict.set(k, b"a")
    assert strict.replace(k, b"b") is True
    assert strict.get(k) == b"b"


def test_append_prepend(strict, mc, ukey):
    k = ukey()
    assert strict.append(k, b"tail") is False
    assert strict.prepend(k, b"head") is False
    strict.set(k, b"mid")
    assert strict.append(k, b"-tail") is True
    assert strict.prepend(k, b"head-") is True
    assert strict.get(k) == b"head-mid-tail"
    mc.append(k, b"!")
    mc.prepend(k, b"<")
    assert mc.get(k) == b"<head-mid-tail!"


def test_gets_cas(strict, ukey):
    k = ukey()
    assert strict.gets(k) == (None, None)
    strict.set(k, b"one")
    value, cas = strict.gets(k)
    assert value == b"one"
    assert int(cas) > 0
    assert strict.cas(k, b"two", cas) is True
    assert strict.get(k) == b"two"
    # stale cas unique
    assert strict.cas(k, b"three", cas) is False
    assert strict.get(k) == b"two"
    # cas on a missing key -> NOT_FOUND -> None
    assert strict.cas(ukey("missing"), b"x", cas) is None


def test_gets_many(strict, ukey):
    ks = [ukey("a"), ukey("b")]
    strict.set(ks[0], b"A")
    strict.set(ks[1], b"B")
    got = strict.gets_many(ks + [ukey("c")])
    assert set(got) == set(ks)
    assert got[ks[0]][0] == b"A" and got[ks[1]][0] == b"B"
    assert got[ks[0]][1] != got[ks[1]][1]


def test_incr_decr(strict, mc, ukey):
    k = ukey()
    assert strict.incr(k, 1) is None  # NOT_FOUND
    assert strict.decr(k, 1) is None
    strict.set(k, b"10")
    assert strict.incr(k, 5) == 15
    assert strict.decr(k, 3) == 12
    assert strict.decr(k, 100) == 0  # decr saturates at 0
    strict.set(k, b"18446744073709551615")
    assert strict.incr(k, 2) == 1  # incr wraps at 2**64
    strict.set(k, b"100")
    assert strict.decr(k, 91) == 9
    # memcached leaves the value space-padded to the old length after decr shrinks it;
    # clients strip it, so only the number matters
    assert int(strict.get(k)) == 9
    strict.set(k, b"notanumber")
    with pytest.raises(MemcacheClientError):
        strict.incr(k, 1)


def test_delete(strict, mc, ukey):
    k = ukey()
    assert strict.delete(k) is False
    strict.set(k, b"x")
    assert strict.delete(k) is True
    assert mc.get(k) is None
    mc.set(k, b"y")
    assert mc.delete(k) is True  # noreply
    assert mc.get(k) is None


def test_touch(strict, mc, ukey):
    k = ukey()
    assert strict.touch(k, 10) is False
    strict.set(k, b"x", expire=2)
    assert strict.touch(k, 60) is True
    time.sleep(3.1)
    assert mc.get(k) == b"x"
    # touch to an expiry in the past (negative) expires it at once
    assert strict.touch(k, -1) is True
    assert mc.get(k) is None


def test_touch_does_not_change_cas(strict, ukey):
    k = ukey()
    strict.set(k, b"x")
    _, cas1 = strict.gets(k)
    strict.touch(k, 100)
    _, cas2 = strict.gets(k)
    assert cas1 == cas2


def test_expiry_relative_and_absolute(mc, ukey):
    k1, k2, k3 = ukey("rel"), ukey("abs"), ukey("past")
    mc.set(k1, b"short", expire=2)
    mc.set(k2, b"long", expire=int(time.time()) + 40 * 86400)  # > 30 days: absolute
    mc.set(k3, b"gone", expire=int(time.time()) - 10)  # absolute, in the past
    assert mc.get(k3) is None
    assert mc.get(k1) == b"short"
    time.sleep(3.1)
    assert mc.get(k1) is None
    assert mc.get(k2) == b"long"


def test_large_value_and_binary_safe(mc, ukey):
    k = ukey()
    value = bytes(range(256)) * 2000  # 512000 bytes, including \r\n sequences
    assert mc.set(k, value) is True
    assert mc.get(k) == value


def test_too_large_value_rejected(strict, ukey):
    k = ukey()
    strict.set(k, b"old")
    # 2 MiB > default -I 1m: SERVER_ERROR object too large for cache
    with pytest.raises(Exception):
        strict.set(k, b"x" * (2 * 1024 * 1024))
    # memcached deletes the old value when a set is too large
    assert strict.get(k) is None


def test_key_validation_client_side(strict):
    with pytest.raises(MemcacheIllegalInputError):
        strict.set("k" * 251, b"x")
    with pytest.raises(MemcacheIllegalInputError):
        strict.set("has space", b"x")


def test_max_key_length(strict):
    import uuid
    k = uuid.uuid4().hex + "k" * (250 - 32)
    assert len(k) == 250
    assert strict.set(k, b"long-key") is True
    assert strict.get(k) == b"long-key"
    assert strict.delete(k) is True


def test_stats(mc):
    st = mc.stats()
    for name in (b"pid", b"uptime", b"curr_items", b"total_items", b"cmd_get", b"cmd_set",
                 b"get_hits", b"get_misses", b"curr_connections"):
        assert name in st, name
    assert isinstance(st[b"cmd_get"], int)


def test_stats_counters_move(strict, ukey):
    before = strict.stats()
    k = ukey()
    strict.set(k, b"x")
    strict.get(k)
    strict.get(ukey("miss"))
    after = strict.stats()
    assert after[b"cmd_set"] >= before[b"cmd_set"] + 1
    assert after[b"get_hits"] >= before[b"get_hits"] + 1
    assert after[b"get_misses"] >= before[b"get_misses"] + 1


def test_stats_settings(mc):
    st = mc.stats("settings")
    assert b"maxbytes" in st
    assert b"item_size_max" in st


def test_version(mc):
    v = mc.version()
    assert isinstance(v, bytes) and v
    assert v[0:1].isdigit()


def test_flush_all(own_server, ukey):
    c = make_client(own_server, default_noreply=False)
    try:
        k = ukey()
        c.set(k, b"x")
        assert c.flush_all() is True
        assert c.get(k) is None
        # delayed flush: items survive until the delay passes
        c.set(k, b"y")
        assert c.flush_all(delay=2) is True
        assert c.get(k) == b"y"
        time.sleep(3.1)
        assert c.get(k) is None
        # noreply flush
        c.set(k, b"z")
        assert c.flush_all(noreply=True) is True
        assert c.get(k) is None
    finally:
        c.close()


def test_many_round_trips_one_connection(mc, ukey):
    k = ukey()
    for i in range(500):
        mc.set(k + str(i % 7), str(i).encode())
    got = mc.get_many([k + str(i) for i in range(7)])
    assert len(got) == 7


def test_pooled_client(shared_server, ukey):
    from pymemcache.client.base import PooledClient
    c = PooledClient((shared_server.host, shared_server.port), connect_timeout=3, timeout=3,
                     max_pool_size=4)
    try:
        k = ukey()
        c.set(k, b"pooled")
        assert c.get(k) == b"pooled"
    finally:
        c.close()


def test_cas_sent_with_exptime_zero(shared_server, ukey):
    """pymemcache sends `cas k 0 0 n <cas>`; check the reply on the wire too."""
    k = ukey()
    c = make_client(shared_server, default_noreply=False)
    try:
        c.set(k, b"v")
        _, cas = text_gets(shared_server, k)
        assert c.cas(k, b"w", str(cas)) is True
        assert text_gets(shared_server, k)[0] == b"w"
    finally:
        c.close()
