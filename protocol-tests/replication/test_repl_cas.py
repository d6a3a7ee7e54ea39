"""CAS tokens are versions, the same on both twins: a token read on A works on
B once replicated, and is dead on both after either node changed the item.
Failed conditional writes change (and ship) nothing."""
import pytest

import binproto as bp
import twinlib
from twinlib import absent_on, converged


def test_text_gets_on_a_cas_on_b(pair, key):
    k = key()
    a, b = pair.a.connect(), pair.b.connect()
    a.store("set", k, b"v1", flags=1)
    converged(pair.a, pair.b, k)
    _, token = a.gets(k)
    assert b.gets(k)[1] == token
    assert b.store("cas", k, b"v2", flags=2, cas=token) == b"STORED"
    it = converged(pair.b, pair.a, k)
    assert it["value"] == b"v2" and it["cas"] != token
    assert a.store("cas", k, b"v3", cas=token) == b"EXISTS"
    assert b.store("cas", k, b"v3", cas=token) == b"EXISTS"
    # the new token works on the other node
    assert a.store("cas", k, b"v4", cas=it["cas"]) == b"STORED"
    assert converged(pair.a, pair.b, k)["value"] == b"v4"


def test_meta_mg_c_on_a_ms_C_on_b(pair, key):
    k = key()
    a, b = pair.a.connect(), pair.b.connect()
    assert a.meta(b"ms " + k + b" 2", b"m1")[0] == [b"HD"]
    converged(pair.a, pair.b, k)
    token = a.mg(k, b"c")["cas"]
    parts, _ = b.meta(b"ms %s 2 C%d c" % (k, token), b"m2")
    assert parts[0] == b"HD", parts
    it = converged(pair.b, pair.a, k)
    assert it["value"] == b"m2" and parts[1] == b"c%d" % it["cas"]
    for c in (a, b):
        assert c.meta(b"ms %s 2 C%d" % (k, token), b"m3")[0] == [b"EX"]
        assert c.meta(b"md %s C%d" % (k, token))[0] == [b"EX"]


@pytest.mark.binary
def test_binary_get_on_a_set_cas_on_b(pair, key):
    k = key()
    a, b = pair.a.connect(), pair.b.connect()
    a.send(bp.req(bp.SET, k, bp.store_extras(0, 0), b"b1"))
    assert bp.read_packet(a).status == bp.SUCCESS
    converged(pair.a, pair.b, k)
    a.send(bp.req(bp.GET, k))
    token = bp.read_packet(a).cas
    b.send(bp.req(bp.SET, k, bp.store_extras(0, 0), b"b2", cas=token))
    p = bp.read_packet(b)
    assert p.status == bp.SUCCESS, p
    it = converged(pair.b, pair.a, k)
    assert it["value"] == b"b2" and it["cas"] == p.cas
    for c in (a, b):
        c.send(bp.req(bp.SET, k, bp.store_extras(0, 0), b"b3", cas=token))
        assert bp.read_packet(c).status == bp.KEY_EEXISTS
        c.send(bp.req(bp.DELETE, k, cas=token))
        assert bp.read_packet(c).status == bp.KEY_EEXISTS


def test_touch_keeps_cas_on_both_nodes(pair, key):
    k = key()
    a, b = pair.a.connect(), pair.b.connect()
    a.store("set", k, b"s")
    it0 = converged(pair.a, pair.b, k)
    assert a.cmd("touch %s 100" % k.decode()) == b"TOUCHED"
    it1 = converged(pair.a, pair.b, k)
    assert it1["cas"] == it0["cas"] and it1["ttl"] > 0
    b.retrieve("gat 200 %s" % k.decode())
    it2 = converged(pair.b, pair.a, k)
    assert it2["cas"] == it0["cas"] and it2["ttl"] > 150
    # and the token read before the touches still works across the pair
    assert b.store("cas", k, b"after-touch", cas=it0["cas"]) == b"STORED"
    assert converged(pair.b, pair.a, k)["value"] == b"after-touch"


def test_failed_conditional_writes_change_and_ship_nothing(pair, key):
    k, missing, marker = key(), key("missing"), key("marker")
    a, b = pair.a.connect(), pair.b.connect()
    a.store("set", k, b"orig", flags=5, exptime=500)
    orig = converged(pair.a, pair.b, k)
    sent = pair.a.stat_int("records_sent")
    assert a.store("add", k, b"clobber", flags=9, exptime=1) == b"NOT_STORED"
    assert a.store("replace", missing, b"x") == b"NOT_STORED"
    assert a.store("cas", k, b"clobber", cas=orig["cas"] + 1) == b"EXISTS"
    assert a.store("cas", missing, b"x", cas=orig["cas"]) == b"NOT_FOUND"
    assert a.meta(b"ms %s 1 ME" % k, b"z")[0] == [b"NS"]
    assert a.meta(b"ms %s 1 MR" % missing, b"z")[0] == [b"NS"]
    assert a.cmd("append %s 0 0 1" % missing.decode(), b"z") == b"NOT_STORED"
    assert a.cmd("incr %s 1" % missing.decode()) == b"NOT_FOUND"
    assert a.cmd("touch %s 10" % missing.decode()) == b"NOT_FOUND"
    assert a.cmd("delete %s" % missing.decode()) == b"NOT_FOUND"
    # records from one origin arrive in order: once the marker is on B, so is
    # anything the failed writes might (wrongly) have shipped
    a.store("set", marker, b"m")
    converged(pair.a, pair.b, marker)
    for c in (a, b):
        it = c.mg(k)
        assert it["value"] == b"orig" and it["flags"] == 5 and it["cas"] == orig["cas"]
        assert abs(it["ttl"] - orig["ttl"]) <= 2
        assert c.mg(missing) is None
    assert sent is not None, "stats lack %s" % twinlib.STAT["records_sent"]
    assert pair.a.stat_int("records_sent") == sent + 1, "failed writes were shipped"


@pytest.mark.binary
def test_failed_binary_add_ships_nothing(pair, key):
    """memcached-session-manager's keep-alive: add on a live session -> NOT_STORED."""
    k, marker = key(), key("marker")
    a = pair.a.connect()
    a.send(bp.req(bp.SET, k, bp.store_extras(1, 300), b"session"))
    assert bp.read_packet(a).status == bp.SUCCESS
    orig = converged(pair.a, pair.b, k)
    a.send(bp.req(bp.ADD, k, bp.store_extras(1, 5), b"\x01"))
    assert bp.read_packet(a).status == bp.KEY_EEXISTS
    pair.a.connect().store("set", marker, b"m")   # text on a fresh connection
    converged(pair.a, pair.b, marker)
    it = pair.b.connect().mg(k)
    assert it["value"] == b"session" and it["cas"] == orig["cas"] and it["ttl"] > 200


def test_cas_after_delete_on_twin_is_not_found(pair, key):
    k = key()
    a, b = pair.a.connect(), pair.b.connect()
    a.store("set", k, b"v")
    it = converged(pair.a, pair.b, k)
    assert b.cmd("delete %s" % k.decode()) == b"DELETED"
    absent_on(pair.a, k)
    assert a.store("cas", k, b"w", cas=it["cas"]) == b"NOT_FOUND"
