"""python-binary-memcached (`bmemcached`) 0.33: binary protocol, optional SASL PLAIN.

With credentials it sends LIST_MECHS (0x20) first; a 0x81 reply (unknown
command: auth not enabled) means "no auth needed"; otherwise it needs PLAIN in
the list and then sends SASL_AUTH (0x21).
"""
import socket
import struct

import bmemcached
import pytest
from bmemcached.exceptions import MemcachedException

pytestmark = pytest.mark.binary


def make_client(server, user=None, password=None):
    return bmemcached.Client(("%s:%d" % (server.host, server.port),), user, password,
                             socket_timeout=3)


@pytest.fixture
def mc(shared_server):
    c = make_client(shared_server)
    yield c
    c.disconnect_all()


@pytest.fixture
def smc(sasl_server):
    c = make_client(sasl_server, sasl_server.user, sasl_server.password)
    yield c
    c.disconnect_all()


def _exercise(c, ukey):
    """The common command set; returns nothing, asserts everything."""
    k = ukey()
    assert c.get(k) is None
    assert c.set(k, "value", time=60) is True
    assert c.get(k) == "value"
    # typed values (flags carry the type)
    c.set(ukey("int"), 7)
    assert c.get(ukey("int")) == 7
    c.set(ukey("dict"), {"a": [1, 2]})
    assert c.get(ukey("dict")) == {"a": [1, 2]}
    c.set(ukey("bytes"), b"\x00\xff\r\n")
    assert c.get(ukey("bytes")) == b"\x00\xff\r\n"

    # add / replace
    assert c.add(k, "other") is False
    assert c.get(k) == "value"
    assert c.add(ukey("new"), "n") is True
    assert c.replace(ukey("absent"), "x") is False
    assert c.replace(k, "replaced") is True
    assert c.get(k) == "replaced"

    # gets / cas
    value, cas = c.gets(k)
    assert value == "replaced" and cas
    assert c.cas(k, "cas1", cas) is True
    assert c.get(k) == "cas1"
    assert c.cas(k, "cas2", cas) is False
    assert c.get(k) == "cas1"

    # get_multi (GETKQ... + GETK) and set_multi (SETQ... + NOOP)
    data = {ukey("m%d" % i): "v%d" % i for i in range(10)}
    assert c.set_multi(data, time=60) == []  # list of failed keys
    got = c.get_multi(list(data) + [ukey("nomulti")])
    assert got == data
    assert c.get_multi([ukey("nm1"), ukey("nm2")]) == {}

    # incr / decr
    n = ukey("n")
    c.set(n, 10)
    assert c.incr(n, 5) == 15
    assert c.decr(n, 20) == 0

    # delete / delete_multi
    assert c.delete(k) is True
    assert c.delete(k) is True  # bmemcached treats "Key not found" on delete as success
    assert c.get(k) is None
    assert c.delete_multi(list(data)) is True
    assert c.get_multi(list(data)) == {}


def test_basic_commands(mc, ukey):
    _exercise(mc, ukey)


def test_incr_decr(mc, ukey):
    k = ukey()
    # binary INCR on a missing key with the client's default (initial 0, exptime 0)
    # creates the counter with the initial value
    assert mc.incr(k, 5) == 0
    assert mc.incr(k, 5) == 5
    assert mc.decr(k, 2) == 3
    assert mc.decr(k, 10) == 0
    # the counter is stored as ASCII digits with flags 0: bmemcached returns it as str
    assert mc.get(k) in ("0", b"0", 0)


def test_large_value(mc, ukey):
    k = ukey()
    v = b"\x00\x01" * 400000
    assert mc.set(k, v) is True
    assert mc.get(k) == v


def test_stats(mc):
    stats = mc.stats()
    assert len(stats) == 1
    (server, st), = stats.items()
    for name in ("pid", "uptime", "curr_items", "cmd_get", "cmd_set", "version"):
        assert name in st, name


def test_flush_all(own_server, ukey):
    c = make_client(own_server)
    try:
        k = ukey()
        c.set(k, "x")
        assert c.get(k) == "x"
        assert c.flush_all() is True
        assert c.get(k) is None
    finally:
        c.disconnect_all()


def test_credentials_against_server_without_auth(shared_server, ukey, target_name):
    """LIST_MECHS answered 0x81 means no auth: the client just proceeds."""
    c = make_client(shared_server, "someone", "whatever")
    try:
        k = ukey()
        assert c.set(k, "noauth") is True
        assert c.get(k) == "noauth"
    finally:
        c.disconnect_all()


def test_sasl_basic_commands(smc, ukey):
    _exercise(smc, ukey)


def test_sasl_stats_and_flush(smc, ukey):
    stats = smc.stats()
    (_, st), = stats.items()
    assert int(st["auth_cmds"]) >= 1
    k = ukey()
    smc.set(k, "x")
    assert smc.flush_all() is True
    assert smc.get(k) is None


def test_sasl_wrong_password_rejected(sasl_server, ukey):
    c = make_client(sasl_server, sasl_server.user, "wrong-" + sasl_server.password)
    try:
        with pytest.raises(MemcachedException) as ei:
            c.set(ukey(), "x")
        assert "Auth failure" in str(ei.value) or "32" in str(ei.value)
    finally:
        c.disconnect_all()


def test_sasl_unknown_user_rejected(sasl_server, ukey):
    c = make_client(sasl_server, "nobody", sasl_server.password)
    try:
        with pytest.raises(MemcachedException):
            c.set(ukey(), "x")
    finally:
        c.disconnect_all()


def _bin_request(opcode, key=b"", value=b"", extras=b"", opaque=0):
    body = extras + key + value
    return struct.pack(">BBHBBHIIQ", 0x80, opcode, len(key), len(extras), 0, 0,
                       len(body), opaque, 0) + body


def _bin_read(sock):
    hdr = b""
    while len(hdr) < 24:
        chunk = sock.recv(24 - len(hdr))
        if not chunk:
            return None
        hdr += chunk
    magic, opcode, keylen, extlen, dtype, status, bodylen, opaque, cas = struct.unpack(">BBHBBHIIQ", hdr)
    body = b""
    while len(body) < bodylen:
        chunk = sock.recv(bodylen - len(body))
        if not chunk:
            break
        body += chunk
    return status, body[extlen + keylen:]


def test_sasl_unauthenticated_get_refused(sasl_server):
    """Without auth a data command gets 0x20 (memcached then closes)."""
    s = socket.create_connection((sasl_server.host, sasl_server.port), timeout=3)
    try:
        s.sendall(_bin_request(0x00, key=b"somekey"))
        r = _bin_read(s)
        assert r is not None and r[0] == 0x20, r
    finally:
        s.close()


def test_sasl_list_mechs_offers_plain(sasl_server):
    s = socket.create_connection((sasl_server.host, sasl_server.port), timeout=3)
    try:
        s.sendall(_bin_request(0x20))
        status, value = _bin_read(s)
        assert status == 0
        assert b"PLAIN" in value.split()
    finally:
        s.close()
