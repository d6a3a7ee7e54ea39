"""Every mutating text command replicates: the other node shows the same value,
flags, TTL and CAS (read with `mg <key> v f t c` on both nodes).

Each test first lets the previous state replicate, then mutates on one node and
waits (bounded) for the other node to show exactly the new state, so a missing
record, a wrong field or a re-stamped CAS fails."""
import time

import pytest

from twinlib import absent_on, converged, wait_until


def settle(pair, k):
    return converged(pair.a, pair.b, k)


def test_set_value_flags_exptime_cas(pair, key):
    k = key()
    a = pair.a.connect()
    assert a.store("set", k, b"hello", flags=1234, exptime=300) == b"STORED"
    it = settle(pair, k)
    assert it["value"] == b"hello" and it["flags"] == 1234 and 298 <= it["ttl"] <= 300


def test_set_from_b_replicates_to_a(pair, key):
    k = key()
    b = pair.b.connect()
    assert b.store("set", k, b"from-b", flags=9) == b"STORED"
    it = converged(pair.b, pair.a, k)
    assert it["value"] == b"from-b" and it["flags"] == 9 and it["ttl"] == -1


def test_set_noreply(pair, key):
    k = key()
    a = pair.a.connect()
    a.store("set", k, b"quiet", flags=3, noreply=True)
    assert a.cmd("mn") == b"MN"
    assert settle(pair, k)["value"] == b"quiet"


def test_add(pair, key):
    k = key()
    assert pair.a.connect().store("add", k, b"added", flags=5, exptime=100) == b"STORED"
    it = settle(pair, k)
    assert it["value"] == b"added" and it["flags"] == 5


def test_replace(pair, key):
    k = key()
    a = pair.a.connect()
    a.store("set", k, b"one", flags=1)
    before = settle(pair, k)
    assert a.store("replace", k, b"two", flags=2, exptime=50) == b"STORED"
    it = settle(pair, k)
    assert it["value"] == b"two" and it["flags"] == 2 and it["cas"] != before["cas"]


@pytest.mark.parametrize("verb,expect", [("append", b"hello world"), ("prepend", b" worldhello")])
def test_append_prepend(pair, key, verb, expect):
    k = key()
    a = pair.a.connect()
    a.store("set", k, b"hello", flags=77, exptime=200)
    settle(pair, k)
    assert a.store(verb, k, b" world") == b"STORED"
    it = settle(pair, k)
    assert it["value"] == expect and it["flags"] == 77


def test_cas_on_same_node(pair, key):
    k = key()
    a = pair.a.connect()
    a.store("set", k, b"v1")
    settle(pair, k)
    _, token = a.gets(k)
    assert a.store("cas", k, b"v2", flags=4, cas=token) == b"STORED"
    it = settle(pair, k)
    assert it["value"] == b"v2" and it["flags"] == 4 and it["cas"] != token


@pytest.mark.parametrize("verb,start,arg,expect", [("incr", b"41", 1, b"42"),
                                                   ("decr", b"100", 58, b"42"),
                                                   ("incr", b"99", 1, b"100")])
def test_incr_decr(pair, key, verb, start, arg, expect):
    k = key()
    a = pair.a.connect()
    a.store("set", k, start, flags=8)
    settle(pair, k)
    assert a.cmd("%s %s %d" % (verb, k.decode(), arg)) == expect
    it = settle(pair, k)
    assert it["value"].strip() == expect and it["flags"] == 8


def test_touch_replicates_ttl_keeps_cas(pair, key):
    k = key()
    a = pair.a.connect()
    a.store("set", k, b"t", exptime=0)
    before = settle(pair, k)
    assert before["ttl"] == -1
    assert a.cmd("touch %s 500" % k.decode()) == b"TOUCHED"
    it = settle(pair, k)
    assert 498 <= it["ttl"] <= 500
    assert it["cas"] == before["cas"], "touch must keep the CAS token"


@pytest.mark.parametrize("verb", ["gat", "gats"])
def test_gat_gats_replicate_ttl(pair, key, verb):
    k = key()
    a = pair.a.connect()
    a.store("set", k, b"g", flags=2, exptime=1000)
    before = settle(pair, k)
    r = a.retrieve("%s 60 %s" % (verb, k.decode()))
    assert r[k][1] == b"g"
    it = settle(pair, k)
    assert 58 <= it["ttl"] <= 60 and it["cas"] == before["cas"]


def test_delete(pair, key):
    k = key()
    a = pair.a.connect()
    a.store("set", k, b"doomed")
    settle(pair, k)
    assert a.cmd("delete %s" % k.decode()) == b"DELETED"
    absent_on(pair.b, k)


def test_delete_on_b_replicates_to_a(pair, key):
    k = key()
    pair.a.connect().store("set", k, b"doomed")
    settle(pair, k)
    assert pair.b.connect().cmd("delete %s" % k.decode()) == b"DELETED"
    absent_on(pair.a, k)


def test_negative_exptime_expires_on_both(pair, key):
    k = key()
    a = pair.a.connect()
    a.store("set", k, b"x")
    settle(pair, k)
    assert a.store("set", k, b"y", exptime=-1) == b"STORED"
    absent_on(pair.b, k)


def test_flush_all_replicates_and_later_writes_survive(make_pair, key):
    p = make_pair()
    a, b = p.a.connect(), p.b.connect()
    k1, k2, k3, k4 = key("1"), key("2"), key("3"), key("4")
    a.store("set", k1, b"old-a")
    b.store("set", k2, b"old-b")
    converged(p.a, p.b, k1)
    converged(p.b, p.a, k2)
    assert a.cmd("flush_all") == b"OK"
    time.sleep(0.005)   # B's next version is then above the flush's (HLC, same clock)
    b.store("set", k4, b"new-b")          # likely before the flush record reached B
    absent_on(p.b, k1)
    absent_on(p.b, k2)
    absent_on(p.a, k2)
    a.store("set", k3, b"new-a")
    converged(p.a, p.b, k3)
    converged(p.b, p.a, k4)
    time.sleep(0.3)
    for n in (p.a, p.b):
        c = n.connect()
        assert c.mg(k3)["value"] == b"new-a" and c.mg(k4)["value"] == b"new-b", n.name
        assert c.mg(k1) is None and c.mg(k2) is None


def test_flush_all_on_b(make_pair, key):
    p = make_pair()
    k = key()
    p.a.connect().store("set", k, b"v")
    converged(p.a, p.b, k)
    assert p.b.connect().cmd("flush_all") == b"OK"
    absent_on(p.a, k)


@pytest.mark.slow
def test_flush_all_delay_hides_at_the_right_time_on_both(make_pair, key):
    p = make_pair()
    k, later = key(), key("later")
    a = p.a.connect()
    a.store("set", k, b"v")
    converged(p.a, p.b, k)
    t0 = time.monotonic()
    assert a.cmd("flush_all 2") == b"OK"
    nodes = {n.name: n for n in (p.a, p.b)}
    for n in nodes.values():      # still visible before the flush time (as test_text_expiry)
        assert n.connect().mg(k) is not None, "%s hid the item before the delay" % n.name
    gone = {}

    def poll():
        for name, n in nodes.items():
            if name not in gone and n.connect().mg(k) is None:
                gone[name] = time.monotonic() - t0
        return len(gone) == len(nodes)
    assert wait_until(poll, timeout=6, step=0.05), "delayed flush never hid %r: %r" % (k, gone)
    for name, t in gone.items():
        # memcached's clock is in whole seconds: gone within 2 s, plus slack
        assert t <= 3.5, "%s hid the item %.2f s after flush_all 2" % (name, t)
    time.sleep(max(0.0, 3.0 - (time.monotonic() - t0)))
    a.store("set", later, b"after")   # stored after the flush time: survives on both
    converged(p.a, p.b, later)


def test_flush_all_noreply_replicates(make_pair, key):
    p = make_pair()
    k = key()
    a = p.a.connect()
    a.store("set", k, b"v")
    converged(p.a, p.b, k)
    a.send(b"flush_all noreply\r\n")
    assert a.cmd("mn") == b"MN"
    absent_on(p.b, k)
