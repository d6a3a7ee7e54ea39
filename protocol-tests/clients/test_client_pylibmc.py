"""pylibmc 1.6 (libmemcached 1.1.4), text and binary protocol.

Text: `set k 16 60 1` style (flags carry the Python type), `stats ` and
`flush_all ` with a trailing space.  Binary: SET, GETK, GETKQ...+NOOP for
get_multi, ADD, TOUCH, INCR, DELETE, STAT, FLUSH, QUIT.  `gets`/`cas` need
behaviors={"cas": True}.
"""
import time

import pylibmc
import pytest

from clienthelpers import text_get

TIMEOUTS = {
    "connect_timeout": 3000,   # ms
    "receive_timeout": 3000000,  # us
    "send_timeout": 3000000,   # us
    "retry_timeout": 1,
}

PROTOCOLS = [
    pytest.param(False, id="text"),
    pytest.param(True, id="binary", marks=pytest.mark.binary),
]


def make_client(server, binary, **behaviors):
    b = dict(TIMEOUTS)
    b.update(behaviors)
    return pylibmc.Client(["%s:%d" % (server.host, server.port)], binary=binary, behaviors=b)


@pytest.fixture(params=PROTOCOLS)
def binary(request):
    return request.param


@pytest.fixture
def mc(shared_server, binary):
    c = make_client(shared_server, binary, cas=True)
    yield c
    c.disconnect_all()


def test_set_get(mc, shared_server, ukey):
    k = ukey()
    assert mc.set(k, b"hello", time=60) is True
    assert mc.get(k) == b"hello"
    assert mc.get(ukey("missing")) is None
    # visible to a plain text client as the raw bytes
    assert text_get(shared_server, k) == b"hello"


def test_python_types_round_trip(mc, ukey):
    values = {
        "str": "unicodé",
        "int": 42,
        "big": 2 ** 70,
        "bool": True,
        "list": [1, "two", 3.0],
        "dict": {"a": 1},
        "bytes": b"\x00\x01\r\n\xff",
    }
    for name, v in values.items():
        assert mc.set(ukey(name), v) is True
    for name, v in values.items():
        assert mc.get(ukey(name)) == v, name


def test_get_multi(mc, ukey):
    keys = [ukey(str(i)) for i in range(20)]
    for i, k in enumerate(keys):
        if i % 3:
            mc.set(k, "v%d" % i)
    got = mc.get_multi(keys + [ukey("x"), ukey("y")])
    assert got == {k: "v%d" % i for i, k in enumerate(keys) if i % 3}
    assert mc.get_multi([]) == {}
    assert mc.get_multi([ukey("none1"), ukey("none2")]) == {}


def test_get_multi_key_prefix(mc, ukey):
    mc.set(ukey("p:a"), 1)
    mc.set(ukey("p:b"), 2)
    assert mc.get_multi(["a", "b", "c"], key_prefix=ukey("p:")) == {"a": 1, "b": 2}


def test_set_multi_delete_multi(mc, ukey):
    data = {ukey(str(i)): "x" * i for i in range(1, 30)}
    assert mc.set_multi(data, time=60) == []
    assert mc.get_multi(list(data)) == data
    assert mc.delete_multi(list(data)) is True
    assert mc.get_multi(list(data)) == {}


def test_add(mc, ukey):
    k = ukey()
    assert mc.add(k, "first") is True
    assert mc.add(k, "second") is False
    assert mc.get(k) == "first"


def test_replace(mc, binary, ukey):
    k = ukey()
    if binary:
        # binary REPLACE of a missing key answers 0x0001 (Key not found), which
        # libmemcached maps to NOTFOUND and pylibmc raises; text says NOT_STORED
        with pytest.raises(pylibmc.NotFound):
            mc.replace(k, "x")
    else:
        assert mc.replace(k, "x") is False
    assert mc.get(k) is None
    mc.set(k, "a")
    assert mc.replace(k, "b") is True
    assert mc.get(k) == "b"


def test_append_prepend(mc, ukey):
    k = ukey()
    assert mc.append(k, b"tail") is False
    assert mc.prepend(k, b"head") is False
    mc.set(k, b"mid")
    assert mc.append(k, b"-tail") is True
    assert mc.prepend(k, b"head-") is True
    assert mc.get(k) == b"head-mid-tail"


def test_gets_cas(mc, ukey):
    k = ukey()
    assert mc.gets(k) == (None, None)
    mc.set(k, "one")
    value, cas = mc.gets(k)
    assert value == "one" and cas
    assert mc.cas(k, "two", cas) is True
    assert mc.get(k) == "two"
    assert mc.cas(k, "three", cas) is False
    assert mc.get(k) == "two"
    _, cas2 = mc.gets(k)
    assert cas2 != cas


def test_incr_decr(mc, ukey):
    k = ukey()
    with pytest.raises(pylibmc.NotFound):
        mc.incr(k)
    mc.set(k, 10)
    assert mc.incr(k) == 11
    assert mc.incr(k, 9) == 20
    assert mc.decr(k, 5) == 15
    assert mc.decr(k, 100) == 0
    mc.set(k, "18446744073709551615")
    assert mc.incr(k, 3) == 2  # wraps
    k2 = ukey("other")
    mc.set(k2, 7)
    assert mc.incr_multi([k, k2], delta=1) is None
    assert int(mc.get(k)) == 3
    assert int(mc.get(k2)) == 8
    with pytest.raises(pylibmc.NotFound):
        mc.incr_multi([k, ukey("missing")], delta=1)


def test_delete(mc, ukey):
    k = ukey()
    assert mc.delete(k) is False
    mc.set(k, 1)
    assert mc.delete(k) is True
    assert mc.get(k) is None


def test_touch(mc, ukey):
    k = ukey()
    assert mc.touch(k, 10) is False
    mc.set(k, "x", time=2)
    assert mc.touch(k, 60) is True
    time.sleep(3.1)
    assert mc.get(k) == "x"


def test_expiry(mc, ukey):
    k1, k2 = ukey("a"), ukey("b")
    mc.set(k1, "short", time=2)
    mc.set(k2, "long", time=int(time.time()) + 40 * 86400)
    assert mc.get(k1) == "short"
    time.sleep(3.1)
    assert mc.get(k1) is None
    assert mc.get(k2) == "long"


def test_large_value(mc, ukey):
    k = ukey()
    v = b"\x00\r\n" * 300000  # 900000 bytes
    mc.set(k, v)
    assert mc.get(k) == v


def test_get_stats(mc):
    stats = mc.get_stats()
    assert len(stats) == 1
    server, st = stats[0]
    for name in ("pid", "uptime", "curr_items", "cmd_get", "cmd_set", "get_hits", "version"):
        assert name in st, name


def test_flush_all(own_server, binary, ukey):
    c = make_client(own_server, binary)
    try:
        k = ukey()
        c.set(k, "x")
        assert c.get(k) == "x"
        assert c.flush_all() is True
        assert c.get(k) is None
    finally:
        c.disconnect_all()


def test_behaviour_no_cas_still_works(shared_server, binary, ukey):
    c = make_client(shared_server, binary, tcp_nodelay=True)
    try:
        k = ukey()
        c.set(k, "v")
        assert c.get(k) == "v"
    finally:
        c.disconnect_all()


def test_reconnect_after_disconnect(mc, ukey):
    k = ukey()
    mc.set(k, "a")
    mc.disconnect_all()
    assert mc.get(k) == "a"


def test_many_ops(mc, ukey):
    k = ukey()
    for i in range(300):
        mc.set(k + str(i % 10), i)
    got = mc.get_multi([k + str(i) for i in range(10)])
    assert got == {k + str(i): 290 + i for i in range(10)}
