"""Binary-protocol mutations replicate (loud and quiet variants), checked with
`mg v f t c` on the twin."""
import pytest

import binproto as bp
from twinlib import absent_on, converged

pytestmark = pytest.mark.binary


def settle(pair, k):
    return converged(pair.a, pair.b, k)


def call(c, opcode, key=b"", extras=b"", value=b"", cas=0):
    c.send(bp.req(opcode, key, extras, value, cas))
    return bp.read_packet(c)


def quiet(c, opcode, key=b"", extras=b"", value=b"", cas=0):
    """A quiet op then NOOP: returns the packets before the NOOP reply (errors only)."""
    c.send(bp.req(opcode, key, extras, value, cas, opaque=1) + bp.req(bp.NOOP, opaque=2))
    out = []
    for _ in range(5):
        p = bp.read_packet(c)
        if p.opcode == bp.NOOP:
            return out
        out.append(p)
    raise AssertionError("no NOOP reply")


def expect_ok(p):
    assert p.status == bp.SUCCESS, p
    return p


@pytest.mark.parametrize("opcode,q", [(bp.SET, False), (bp.SETQ, True)])
def test_set(pair, key, opcode, q):
    k = key()
    c = pair.a.connect()
    args = (c, opcode, k, bp.store_extras(0xDEADBEEF, 300), b"binval")
    assert quiet(*args) == [] if q else expect_ok(call(*args))
    it = settle(pair, k)
    assert it["value"] == b"binval" and it["flags"] == 0xDEADBEEF and 298 <= it["ttl"] <= 300


@pytest.mark.parametrize("opcode,q", [(bp.ADD, False), (bp.ADDQ, True)])
def test_add(pair, key, opcode, q):
    k = key()
    c = pair.a.connect()
    args = (c, opcode, k, bp.store_extras(5, 0), b"added")
    assert quiet(*args) == [] if q else expect_ok(call(*args))
    assert settle(pair, k)["value"] == b"added"


@pytest.mark.parametrize("opcode,q", [(bp.REPLACE, False), (bp.REPLACEQ, True)])
def test_replace(pair, key, opcode, q):
    k = key()
    c = pair.a.connect()
    expect_ok(call(c, bp.SET, k, bp.store_extras(1, 0), b"one"))
    settle(pair, k)
    args = (c, opcode, k, bp.store_extras(2, 0), b"two")
    assert quiet(*args) == [] if q else expect_ok(call(*args))
    it = settle(pair, k)
    assert it["value"] == b"two" and it["flags"] == 2


@pytest.mark.parametrize("opcode,q,expect", [(bp.APPEND, False, b"ab"), (bp.APPENDQ, True, b"ab"),
                                             (bp.PREPEND, False, b"ba"), (bp.PREPENDQ, True, b"ba")])
def test_append_prepend(pair, key, opcode, q, expect):
    k = key()
    c = pair.a.connect()
    expect_ok(call(c, bp.SET, k, bp.store_extras(6, 0), b"a"))
    settle(pair, k)
    args = (c, opcode, k, b"", b"b")
    assert quiet(*args) == [] if q else expect_ok(call(*args))
    it = settle(pair, k)
    assert it["value"] == expect and it["flags"] == 6


@pytest.mark.parametrize("opcode,q,expect", [(bp.INCREMENT, False, b"15"), (bp.INCREMENTQ, True, b"15"),
                                             (bp.DECREMENT, False, b"5"), (bp.DECREMENTQ, True, b"5")])
def test_incr_decr(pair, key, opcode, q, expect):
    k = key()
    c = pair.a.connect()
    expect_ok(call(c, bp.SET, k, bp.store_extras(0, 0), b"10"))
    settle(pair, k)
    args = (c, opcode, k, bp.delta_extras(5, 0, 0))
    assert quiet(*args) == [] if q else expect_ok(call(*args))
    assert settle(pair, k)["value"].strip() == expect


def test_incr_creates_with_initial(pair, key):
    k = key()
    c = pair.a.connect()
    p = expect_ok(call(c, bp.INCREMENT, k, bp.delta_extras(1, 77, 0)))
    assert bp.u64(p.value) == 77
    it = settle(pair, k)
    assert it["value"] == b"77" and it["cas"] == p.cas


@pytest.mark.parametrize("opcode,q", [(bp.DELETE, False), (bp.DELETEQ, True)])
def test_delete(pair, key, opcode, q):
    k = key()
    c = pair.a.connect()
    expect_ok(call(c, bp.SET, k, bp.store_extras(0, 0), b"x"))
    settle(pair, k)
    assert quiet(c, opcode, k) == [] if q else expect_ok(call(c, opcode, k))
    absent_on(pair.b, k)


@pytest.mark.parametrize("opcode,q", [(bp.TOUCH, False), (bp.GAT, False), (bp.GATQ, True),
                                      (bp.GATK, False)])
def test_touch_gat_replicate_ttl_keep_cas(pair, key, opcode, q):
    k = key()
    c = pair.a.connect()
    set_p = expect_ok(call(c, bp.SET, k, bp.store_extras(3, 0), b"t"))
    before = settle(pair, k)
    assert before["cas"] == set_p.cas and before["ttl"] == -1
    if q:
        c.send(bp.req(opcode, k, bp.exptime_extras(120)) + bp.req(bp.NOOP))
        p = bp.read_packet(c)
        assert p.opcode == opcode and p.value == b"t", p   # GATQ answers hits
        assert bp.read_packet(c).opcode == bp.NOOP
    else:
        expect_ok(call(c, opcode, k, bp.exptime_extras(120)))
    it = settle(pair, k)
    assert 118 <= it["ttl"] <= 120 and it["cas"] == before["cas"]


@pytest.mark.parametrize("opcode,q", [(bp.FLUSH, False), (bp.FLUSHQ, True)])
def test_flush(make_pair, key, opcode, q):
    p = make_pair()
    k = key()
    c = p.a.connect()
    expect_ok(call(c, bp.SET, k, bp.store_extras(0, 0), b"x"))
    converged(p.a, p.b, k)
    assert quiet(c, opcode) == [] if q else expect_ok(call(c, opcode))
    absent_on(p.b, k)
