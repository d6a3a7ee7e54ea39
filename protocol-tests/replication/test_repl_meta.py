"""Meta commands replicate: ms in every mode, md (and md I: the stale mark),
ma (incr, decr, autovivify), mg with T (a touch)."""
import pytest

from twinlib import absent_on, converged


def settle(pair, k):
    return converged(pair.a, pair.b, k)


def ok(parts):
    assert parts[0] == b"HD", parts
    return parts


def test_ms_set_with_flags_and_ttl(pair, key):
    k = key()
    a = pair.a.connect()
    parts, _ = a.meta(b"ms " + k + b" 5 F42 T300 c", b"hello")
    ok(parts)
    it = settle(pair, k)
    assert it["value"] == b"hello" and it["flags"] == 42 and 298 <= it["ttl"] <= 300
    assert parts[1] == b"c%d" % it["cas"], "ms c returned a CAS the twin does not show"


@pytest.mark.parametrize("mode,initial,value,expect", [
    (b"MS", b"old", b"new", b"new"),
    (b"MR", b"old", b"new", b"new"),
    (b"MA", b"old", b"+tail", b"old+tail"),
    (b"MP", b"old", b"head+", b"head+old"),
])
def test_ms_modes_on_existing(pair, key, mode, initial, value, expect):
    k = key()
    a = pair.a.connect()
    ok(a.meta(b"ms %s %d F7" % (k, len(initial)), initial)[0])
    settle(pair, k)
    ok(a.meta(b"ms %s %d %s" % (k, len(value), mode), value)[0])
    it = settle(pair, k)
    assert it["value"] == expect


def test_ms_ME_add_new_key(pair, key):
    k = key()
    a = pair.a.connect()
    ok(a.meta(b"ms " + k + b" 3 ME F11 T100", b"add")[0])
    it = settle(pair, k)
    assert it["value"] == b"add" and it["flags"] == 11


def test_ms_from_b(pair, key):
    k = key()
    ok(pair.b.connect().meta(b"ms " + k + b" 2 F1", b"bb")[0])
    assert converged(pair.b, pair.a, k)["value"] == b"bb"


def test_md(pair, key):
    k = key()
    a = pair.a.connect()
    ok(a.meta(b"ms " + k + b" 1", b"x")[0])
    settle(pair, k)
    ok(a.meta(b"md " + k)[0])
    absent_on(pair.b, k)


def test_md_quiet(pair, key):
    k = key()
    a = pair.a.connect()
    ok(a.meta(b"ms " + k + b" 1", b"x")[0])
    settle(pair, k)
    a.send(b"md " + k + b" q\r\n")
    assert a.cmd("mn") == b"MN"
    absent_on(pair.b, k)


def test_md_invalidate_marks_stale_on_the_twin(pair, key):
    k = key()
    a = pair.a.connect()
    ok(a.meta(b"ms " + k + b" 2 T100", b"hi")[0])
    before = settle(pair, k)
    ok(a.meta(b"md " + k + b" I T30")[0])
    b = pair.b.connect()

    from twinlib import wait_until
    it = wait_until(lambda: (lambda i: i if i and "X" in i["tokens"] else None)(b.mg(k, b"v c t")),
                    timeout=5)
    assert it, "stale mark never reached %s: %r" % (pair.b.name, b.mg(k, b"v c t"))
    assert it["value"] == b"hi" and it["ttl"] <= 30
    assert a.mg(k, b"c")["cas"] == it["cas"], "stale item's CAS differs between the twins"


def test_ma_incr_decr(pair, key):
    k = key()
    a = pair.a.connect()
    ok(a.meta(b"ms " + k + b" 2 F3", b"10")[0])
    settle(pair, k)
    parts, val = a.meta(b"ma " + k + b" D5 v")
    assert val == b"15"
    assert settle(pair, k)["value"].strip() == b"15"
    parts, val = a.meta(b"ma " + k + b" MD D7 v")
    assert val == b"8"
    it = settle(pair, k)
    assert it["value"].strip() == b"8" and it["flags"] == 3   # memcached pads a shrinking decr


def test_ma_autovivify(pair, key):
    k = key()
    a = pair.a.connect()
    parts, val = a.meta(b"ma " + k + b" N100 J33 v")
    assert val == b"33", (parts, val)
    it = settle(pair, k)
    assert it["value"] == b"33" and 98 <= it["ttl"] <= 100


def test_mg_T_touch_keeps_cas(pair, key):
    k = key()
    a = pair.a.connect()
    ok(a.meta(b"ms " + k + b" 2", b"mg")[0])
    before = settle(pair, k)
    assert before["ttl"] == -1
    it = a.mg(k, b"T40 v")
    assert it["value"] == b"mg"
    it = settle(pair, k)
    assert 38 <= it["ttl"] <= 40 and it["cas"] == before["cas"]


def test_mg_without_T_replicates_nothing(pair, key):
    """A plain mg is a read: no record (records_sent unchanged)."""
    k = key()
    a = pair.a.connect()
    ok(a.meta(b"ms " + k + b" 1", b"r")[0])
    settle(pair, k)
    sent = pair.a.stat_int("records_sent")
    for _ in range(20):
        a.mg(k)
    marker = key("m")
    ok(a.meta(b"ms " + marker + b" 1", b"m")[0])
    settle(pair, marker)
    assert sent is not None, "stats lack records_sent"
    assert pair.a.stat_int("records_sent") == sent + 1
