"""memcached BINARY protocol: exact status codes, bodies, CAS and opaque handling.

Every expectation here was observed on Debian's memcached 1.6.18 (proto_bin.c).
Run against the reference with:

    memcached -l 127.0.0.1 -p 21231 -U 0 -u root &
    python3 -m pytest -q --addr 127.0.0.1:21231 --server-bin /usr/bin/memcached \
        --target memcached test_binary.py

Conventions used below (all observed on 1.6.18):
  * error replies carry no extras, no key, cas 0 and a short text value;
  * successful stores carry the new CAS in the header and an empty body;
  * the request opcode is echoed verbatim (GETQ hit -> opcode 0x09, SETQ error -> 0x11);
  * the opaque is echoed verbatim on every reply.
"""
import re
import socket
import struct
import time

import pytest

from binproto import (
    ADD, ADDQ, APPEND, APPENDQ, DECREMENT, DECREMENTQ, DELETE, DELETEQ,
    DELTA_BADVAL, E2BIG, EINVAL, FLUSH, FLUSHQ, GAT, GATK, GATKQ, GATQ, GET, GETK,
    GETKQ, GETQ, INCREMENT, INCREMENTQ, KEY_EEXISTS, KEY_ENOENT, NOOP, NOT_STORED,
    PREPEND, PREPENDQ, QUIT, QUITQ, REPLACE, REPLACEQ, SASL_AUTH, SASL_LIST_MECHS,
    SASL_STEP, SET, SETQ, STAT, SUCCESS, TOUCH, UNKNOWN_COMMAND, VERBOSITY, VERSION,
    call, delta_extras, exptime_extras, header, read_packet, req, res, store_extras,
    u64,
)

MSG_NOT_FOUND = b"Not found"
MSG_EXISTS = b"Data exists for key."
MSG_TOO_LARGE = b"Too large."
MSG_EINVAL = b"Invalid arguments"
MSG_NOT_STORED = b"Not stored."
MSG_BADVAL = b"Non-numeric server-side value for incr or decr"
MSG_UNKNOWN = b"Unknown command"

# An absolute unix time long before any server started: exptime values above
# 30 days are absolute, so this expires the item immediately.
PAST = 30 * 24 * 3600 + 1
ITEM_SIZE_MAX = 1024 * 1024


# ---------------------------------------------------------------- helpers

def error_reply(opcode, status, msg, opaque=0):
    """Exact bytes of a memcached binary error reply."""
    return res(opcode, status, value=msg, opaque=opaque)


def bset(conn, k, value=b"v", flags=0, exptime=0):
    """Binary SET that must succeed; returns the new CAS."""
    p = call(conn, SET, k, store_extras(flags, exptime), value)
    assert p.status == SUCCESS, p
    assert p.cas != 0
    return p.cas


def assert_error(p, opcode, status, msg, opaque=0):
    assert tuple(p) == (opcode, status, b"", b"", msg, 0, opaque), p


def assert_value(conn, k, value, flags=None):
    """GET must hit with `value` (and `flags` if given); returns the CAS."""
    p = call(conn, GET, k)
    assert p.status == SUCCESS, p
    assert p.value == value
    if flags is not None:
        assert p.extras == struct.pack(">I", flags)
    return p.cas


def assert_missing(conn, k):
    p = call(conn, GET, k)
    assert_error(p, GET, KEY_ENOENT, MSG_NOT_FOUND)


def read_packets_until_noop(conn):
    """Read replies up to and including the NOOP reply (the pipeline barrier)."""
    out = []
    while True:
        p = read_packet(conn)
        out.append(p)
        if p.opcode == NOOP:
            return out


def read_stats(conn, group=b"", opaque=0):
    """STAT request; returns the list of (key, value) before the empty-key terminator."""
    conn.send(req(STAT, group, opaque=opaque))
    out = []
    while True:
        p = read_packet(conn)
        assert p.opcode == STAT and p.status == SUCCESS, p
        assert p.extras == b"" and p.cas == 0 and p.opaque == opaque, p
        if p.key == b"":
            assert p.value == b"", p
            return out
        out.append((p.key, p.value))


def text_stats(conn, group=b""):
    conn.send(b"stats " + group + b"\r\n" if group else b"stats\r\n")
    body = conn.read_until(b"END\r\n")
    return [line.split(b" ", 2)[1:] for line in body.split(b"\r\n") if line.startswith(b"STAT ")]


def nothing_within(conn, wait):
    """True when no byte arrives within `wait` seconds (connection still open)."""
    conn.sock.settimeout(wait)
    try:
        chunk = conn.sock.recv(65536)
    except socket.timeout:
        return True
    finally:
        conn.sock.settimeout(conn.timeout)
    conn.buf += chunk
    return False


# ---------------------------------------------------------------- NOOP / VERSION

def test_noop_exact_bytes_and_opaque(conn):
    conn.send(req(NOOP, opaque=0xDEADBEEF))
    conn.expect(res(NOOP, opaque=0xDEADBEEF))


def test_version_matches_text_version(conn, connect):
    p = call(conn, VERSION, opaque=0x01020304)
    assert p.opcode == VERSION and p.status == SUCCESS
    assert p.extras == b"" and p.key == b"" and p.cas == 0 and p.opaque == 0x01020304
    assert re.fullmatch(rb"\d+\.\d+\.\d+\S*", p.value), p.value
    text = connect()
    text.send(b"version\r\n")
    assert text.read_line() == b"VERSION " + p.value + b"\r\n"


# ---------------------------------------------------------------- GET family

def test_get_hit_exact(conn, key):
    k = key()
    cas = bset(conn, k, b"hello", flags=5)
    conn.send(req(GET, k, opaque=8))
    conn.expect(res(GET, extras=struct.pack(">I", 5), value=b"hello", cas=cas, opaque=8))


def test_getk_hit_exact(conn, key):
    k = key()
    cas = bset(conn, k, b"hello", flags=0xFFFFFFFF)
    conn.send(req(GETK, k, opaque=9))
    conn.expect(res(GETK, extras=b"\xff\xff\xff\xff", key=k, value=b"hello", cas=cas, opaque=9))


def test_get_miss_not_found(conn, key):
    conn.send(req(GET, key(), opaque=7))
    conn.expect(error_reply(GET, KEY_ENOENT, MSG_NOT_FOUND, opaque=7))


def test_getk_miss_body_is_key(conn, key):
    k = key()
    conn.send(req(GETK, k, opaque=7))
    # keylen = len(k), extlen 0, body = key only, no "Not found" text
    conn.expect(res(GETK, KEY_ENOENT, key=k, opaque=7))


def test_getq_getkq_hits_sent_misses_suppressed(conn, key):
    hit = key("h")
    cas = bset(conn, hit, b"val", flags=3)
    conn.send(req(GETQ, key("m1"), opaque=1) + req(GETKQ, key("m2"), opaque=2)
              + req(GETQ, hit, opaque=3) + req(GETKQ, hit, opaque=4)
              + req(NOOP, opaque=5))
    conn.expect(res(GETQ, extras=struct.pack(">I", 3), value=b"val", cas=cas, opaque=3))
    conn.expect(res(GETKQ, extras=struct.pack(">I", 3), key=hit, value=b"val", cas=cas, opaque=4))
    conn.expect(res(NOOP, opaque=5))
    conn.expect_nothing(0.1)


def test_empty_value_roundtrip(conn, key):
    k = key()
    cas = bset(conn, k, b"", flags=1)
    p = call(conn, GET, k)
    assert tuple(p) == (GET, SUCCESS, b"\x00\x00\x00\x01", b"", b"", cas, 0)


def test_large_value_roundtrip(conn, key):
    k = key()
    value = bytes(range(256)) * 2000  # 512000 bytes, spans many reads
    cas = bset(conn, k, value, flags=2)
    p = call(conn, GETK, k)
    assert (p.status, p.key, p.value, p.cas) == (SUCCESS, k, value, cas)


def test_get_item_with_past_absolute_exptime_is_missing(conn, key):
    k = key()
    bset(conn, k, b"v", exptime=PAST)
    assert_missing(conn, k)


# ---------------------------------------------------------------- SET / ADD / REPLACE

def test_set_reply_exact_and_cas_changes(conn, key):
    k = key()
    conn.send(req(SET, k, store_extras(0, 0), b"a", opaque=0x11))
    p = read_packet(conn)
    assert tuple(p)[:5] == (SET, SUCCESS, b"", b"", b"") and p.opaque == 0x11
    cas1 = p.cas
    assert cas1 != 0
    cas2 = bset(conn, k, b"b")
    assert cas2 != cas1
    assert assert_value(conn, k, b"b") == cas2


def test_set_with_matching_cas(conn, key):
    k = key()
    cas = bset(conn, k, b"v1", flags=1)
    p = call(conn, SET, k, store_extras(2, 0), b"v2", cas=cas, opaque=3)
    assert tuple(p)[:5] == (SET, SUCCESS, b"", b"", b"") and p.opaque == 3
    assert p.cas not in (0, cas)
    assert assert_value(conn, k, b"v2", flags=2) == p.cas


def test_set_with_mismatched_cas(conn, key):
    k = key()
    cas = bset(conn, k, b"v1", flags=1)
    p = call(conn, SET, k, store_extras(2, 0), b"v2", cas=cas + 1000, opaque=4)
    assert_error(p, SET, KEY_EEXISTS, MSG_EXISTS, opaque=4)
    assert assert_value(conn, k, b"v1", flags=1) == cas


def test_set_with_cas_on_missing_key(conn, key):
    k = key()
    p = call(conn, SET, k, store_extras(), b"v", cas=12345, opaque=5)
    assert_error(p, SET, KEY_ENOENT, MSG_NOT_FOUND, opaque=5)
    assert_missing(conn, k)


def test_add_missing_succeeds(conn, key):
    k = key()
    p = call(conn, ADD, k, store_extras(7, 0), b"new")
    assert tuple(p)[:5] == (ADD, SUCCESS, b"", b"", b"") and p.cas != 0
    assert assert_value(conn, k, b"new", flags=7) == p.cas


def test_add_existing_is_eexists_and_changes_nothing(conn, key):
    k = key()
    cas = bset(conn, k, b"orig", flags=1)
    p = call(conn, ADD, k, store_extras(9, 0), b"other", opaque=6)
    assert_error(p, ADD, KEY_EEXISTS, MSG_EXISTS, opaque=6)
    # value, flags and CAS untouched by the failed add
    assert assert_value(conn, k, b"orig", flags=1) == cas


def test_add_with_cas_quirks(conn, key):
    """1.6.18: a non-zero header CAS turns ADD into a CAS store (proto_bin.c
    sets NREAD_CAS whenever cas != 0): missing key -> Not found, matching CAS
    on an existing key -> stored (!), mismatching -> Data exists."""
    k = key()
    p = call(conn, ADD, k, store_extras(), b"v", cas=777)
    assert_error(p, ADD, KEY_ENOENT, MSG_NOT_FOUND)
    cas = bset(conn, k, b"v1", flags=1)
    p = call(conn, ADD, k, store_extras(2, 0), b"v2", cas=cas + 1)
    assert_error(p, ADD, KEY_EEXISTS, MSG_EXISTS)
    p = call(conn, ADD, k, store_extras(2, 0), b"v2", cas=cas)
    assert (p.status, p.value) == (SUCCESS, b"") and p.cas not in (0, cas)
    assert_value(conn, k, b"v2", flags=2)


def test_replace_missing_is_enoent(conn, key):
    k = key()
    p = call(conn, REPLACE, k, store_extras(), b"v", opaque=7)
    assert_error(p, REPLACE, KEY_ENOENT, MSG_NOT_FOUND, opaque=7)
    assert_missing(conn, k)


def test_replace_existing_and_with_cas(conn, key):
    k = key()
    cas = bset(conn, k, b"v1", flags=1)
    p = call(conn, REPLACE, k, store_extras(2, 0), b"v2", cas=cas + 1000)
    assert_error(p, REPLACE, KEY_EEXISTS, MSG_EXISTS)
    p = call(conn, REPLACE, k, store_extras(3, 0), b"v3", cas=cas)
    assert p.status == SUCCESS and p.cas not in (0, cas)
    p2 = call(conn, REPLACE, k, store_extras(4, 0), b"v4")
    assert p2.status == SUCCESS and p2.cas not in (0, p.cas)
    assert assert_value(conn, k, b"v4", flags=4) == p2.cas
    p = call(conn, REPLACE, key("nope"), store_extras(), b"v", cas=5)
    assert_error(p, REPLACE, KEY_ENOENT, MSG_NOT_FOUND)


def test_quiet_stores_only_errors_reported(conn, key):
    a, missing, fresh = key("a"), key("missing"), key("fresh")
    conn.send(req(SETQ, a, store_extras(1, 0), b"q", opaque=1)
              + req(ADDQ, a, store_extras(1, 0), b"q", opaque=2)          # exists
              + req(REPLACEQ, missing, store_extras(1, 0), b"q", opaque=3)  # missing
              + req(REPLACEQ, a, store_extras(8, 0), b"z", opaque=4)
              + req(ADDQ, fresh, store_extras(1, 0), b"f", opaque=5)
              + req(SETQ, a, store_extras(1, 0), b"bad", cas=1, opaque=6)   # cas mismatch
              + req(SETQ, missing, store_extras(1, 0), b"x", cas=1, opaque=7)  # cas, missing
              + req(NOOP, opaque=8))
    conn.expect(error_reply(ADDQ, KEY_EEXISTS, MSG_EXISTS, opaque=2))
    conn.expect(error_reply(REPLACEQ, KEY_ENOENT, MSG_NOT_FOUND, opaque=3))
    conn.expect(error_reply(SETQ, KEY_EEXISTS, MSG_EXISTS, opaque=6))
    conn.expect(error_reply(SETQ, KEY_ENOENT, MSG_NOT_FOUND, opaque=7))
    conn.expect(res(NOOP, opaque=8))
    conn.expect_nothing(0.1)
    assert_value(conn, a, b"z", flags=8)
    assert_value(conn, fresh, b"f", flags=1)
    assert_missing(conn, missing)


def test_set_max_key_length_250(conn, key):
    k = (key() + b"x" * 250)[:250]
    cas = bset(conn, k, b"long")
    p = call(conn, GETK, k)
    assert (p.status, p.key, p.value, p.cas) == (SUCCESS, k, b"long", cas)


# ---------------------------------------------------------------- DELETE

def test_delete_hit_and_miss(conn, key):
    k = key()
    bset(conn, k)
    conn.send(req(DELETE, k, opaque=3))
    conn.expect(res(DELETE, opaque=3))  # success: empty body, cas 0
    assert_missing(conn, k)
    conn.send(req(DELETE, k, opaque=4))
    conn.expect(error_reply(DELETE, KEY_ENOENT, MSG_NOT_FOUND, opaque=4))


def test_delete_with_cas(conn, key):
    k = key()
    cas = bset(conn, k)
    p = call(conn, DELETE, k, cas=cas + 1000, opaque=5)
    assert_error(p, DELETE, KEY_EEXISTS, MSG_EXISTS, opaque=5)
    assert_value(conn, k, b"v")
    conn.send(req(DELETE, k, cas=cas, opaque=6))
    conn.expect(res(DELETE, opaque=6))
    assert_missing(conn, k)
    p = call(conn, DELETE, k, cas=cas)
    assert_error(p, DELETE, KEY_ENOENT, MSG_NOT_FOUND)


def test_deleteq(conn, key):
    hit, miss = key("h"), key("m")
    cas = bset(conn, hit)
    bset(conn, key("c"))
    conn.send(req(DELETEQ, hit, opaque=1) + req(DELETEQ, miss, opaque=2)
              + req(DELETEQ, key("c"), cas=cas + 1000, opaque=3) + req(NOOP, opaque=4))
    conn.expect(error_reply(DELETEQ, KEY_ENOENT, MSG_NOT_FOUND, opaque=2))
    conn.expect(error_reply(DELETEQ, KEY_EEXISTS, MSG_EXISTS, opaque=3))
    conn.expect(res(NOOP, opaque=4))
    conn.expect_nothing(0.1)
    assert_missing(conn, hit)


# ---------------------------------------------------------------- INCREMENT / DECREMENT

def test_incr_creates_with_initial_on_miss(conn, key):
    k = key()
    p = call(conn, INCREMENT, k, delta_extras(5, 10, 0), opaque=1)
    assert (p.opcode, p.status, p.extras, p.key, p.opaque) == (INCREMENT, SUCCESS, b"", b"", 1)
    assert len(p.value) == 8 and u64(p.value) == 10  # initial returned, delta not applied
    assert p.cas != 0
    # stored as decimal text with flags 0, same CAS
    assert assert_value(conn, k, b"10", flags=0) == p.cas
    p = call(conn, INCREMENT, k, delta_extras(5, 10, 0))
    assert p.status == SUCCESS and p.value == struct.pack(">Q", 15)


def test_decr_creates_with_initial_on_miss(conn, key):
    k = key()
    p = call(conn, DECREMENT, k, delta_extras(3, 7, 0))
    assert p.status == SUCCESS and p.value == struct.pack(">Q", 7)
    p = call(conn, DECREMENT, k, delta_extras(3, 7, 0))
    assert p.status == SUCCESS and p.value == struct.pack(">Q", 4)


@pytest.mark.parametrize("opcode", [INCREMENT, DECREMENT])
def test_incr_decr_miss_with_no_create_exptime(conn, key, opcode):
    k = key()
    p = call(conn, opcode, k, delta_extras(1, 10, 0xFFFFFFFF), opaque=9)
    assert_error(p, opcode, KEY_ENOENT, MSG_NOT_FOUND, opaque=9)
    assert_missing(conn, k)


@pytest.mark.parametrize("opcode", [INCREMENT, DECREMENT])
def test_incr_decr_non_numeric(conn, key, opcode):
    k = key()
    bset(conn, k, b"abc")
    p = call(conn, opcode, k, delta_extras(1, 0, 0), opaque=2)
    assert_error(p, opcode, DELTA_BADVAL, MSG_BADVAL, opaque=2)


def test_incr_wraps_at_2_pow_64(conn, key, target):
    # memcached 1.6.18 answers DELTA_BADVAL to a binary incr of a 20-digit value
    # now and then: 78 of 20 000 set+incr pairs on one connection, also when the
    # value was set over the text protocol; text and meta incr never failed. The
    # incr right after such a failure succeeded in 80 of 80 cases. That is the
    # reference's bug (it failed CI once), so against memcached only a fresh key
    # is tried again (bounded); memtwin must answer right the first time.
    tries = 10 if target == "memcached" else 1
    for attempt in range(tries):
        k = key("-%d" % attempt)
        bset(conn, k, b"18446744073709551615", flags=7)
        p = call(conn, INCREMENT, k, delta_extras(2, 0, 0))
        if p.status != DELTA_BADVAL:
            break
    assert p.status == SUCCESS and p.value == struct.pack(">Q", 1)
    # in-place update: shorter result is space padded to the old length; flags kept
    assert_value(conn, k, b"1" + b" " * 19, flags=7)


def test_decr_saturates_at_zero(conn, key):
    k = key()
    bset(conn, k, b"10")
    p = call(conn, DECREMENT, k, delta_extras(100, 0, 0))
    assert p.status == SUCCESS and p.value == struct.pack(">Q", 0)
    assert_value(conn, k, b"0 ")


def test_incr_large_delta(conn, key):
    k = key()
    bset(conn, k, b"1")
    p = call(conn, INCREMENT, k, delta_extras(2 ** 63, 0, 0))
    assert p.status == SUCCESS and u64(p.value) == 2 ** 63 + 1
    assert_value(conn, k, str(2 ** 63 + 1).encode())


def test_incr_with_cas(conn, key):
    k = key()
    cas = bset(conn, k, b"100")
    p = call(conn, INCREMENT, k, delta_extras(1, 0, 0), cas=cas + 1000, opaque=3)
    assert_error(p, INCREMENT, KEY_EEXISTS, MSG_EXISTS, opaque=3)
    p = call(conn, INCREMENT, k, delta_extras(1, 0, 0), cas=cas)
    assert p.status == SUCCESS and u64(p.value) == 101 and p.cas not in (0, cas)
    p2 = call(conn, DECREMENT, k, delta_extras(1, 0, 0))
    assert p2.status == SUCCESS and u64(p2.value) == 100 and p2.cas not in (0, p.cas)
    assert assert_value(conn, k, b"100") == p2.cas


def test_incr_with_cas_on_missing_key_creates(conn, key):
    """1.6.18 ignores the header CAS when the key is missing and creates it."""
    k = key()
    p = call(conn, INCREMENT, k, delta_extras(1, 42, 0), cas=99)
    assert p.status == SUCCESS and u64(p.value) == 42


def test_incr_create_with_past_exptime_is_immediately_gone(conn, key):
    k = key()
    p = call(conn, INCREMENT, k, delta_extras(1, 5, PAST))
    assert p.status == SUCCESS and u64(p.value) == 5
    assert_missing(conn, k)


def test_incrq_decrq_quiet(conn, key):
    num, txt, miss = key("n"), key("t"), key("m")
    bset(conn, num, b"100")
    bset(conn, txt, b"abc")
    conn.send(req(INCREMENTQ, num, delta_extras(5, 0, 0), opaque=1)
              + req(DECREMENTQ, num, delta_extras(2, 0, 0), opaque=2)
              + req(INCREMENTQ, txt, delta_extras(1, 0, 0), opaque=3)
              + req(DECREMENTQ, miss, delta_extras(1, 0, 0xFFFFFFFF), opaque=4)
              + req(INCREMENTQ, key("created"), delta_extras(1, 9, 0), opaque=5)
              + req(NOOP, opaque=6))
    conn.expect(error_reply(INCREMENTQ, DELTA_BADVAL, MSG_BADVAL, opaque=3))
    conn.expect(error_reply(DECREMENTQ, KEY_ENOENT, MSG_NOT_FOUND, opaque=4))
    conn.expect(res(NOOP, opaque=6))
    conn.expect_nothing(0.1)
    assert_value(conn, num, b"103")
    assert_value(conn, key("created"), b"9")


# ---------------------------------------------------------------- APPEND / PREPEND

@pytest.mark.parametrize("opcode", [APPEND, PREPEND])
def test_append_prepend_missing_not_stored(conn, key, opcode):
    k = key()
    p = call(conn, opcode, k, value=b"xx", opaque=4)
    assert_error(p, opcode, NOT_STORED, MSG_NOT_STORED, opaque=4)
    assert_missing(conn, k)


def test_append_prepend_success_keeps_flags(conn, key):
    k = key()
    cas = bset(conn, k, b"mid", flags=9)
    conn.send(req(APPEND, k, value=b">>", opaque=1))
    p = read_packet(conn)
    assert tuple(p)[:5] == (APPEND, SUCCESS, b"", b"", b"") and p.opaque == 1
    assert p.cas not in (0, cas)
    p2 = call(conn, PREPEND, k, value=b"<<")
    assert p2.status == SUCCESS and p2.cas not in (0, p.cas)
    assert assert_value(conn, k, b"<<mid>>", flags=9) == p2.cas


def test_append_with_cas(conn, key):
    k = key()
    cas = bset(conn, k, b"a")
    p = call(conn, APPEND, k, value=b"b", cas=cas + 1000)
    assert_error(p, APPEND, KEY_EEXISTS, MSG_EXISTS)
    p = call(conn, PREPEND, k, value=b"b", cas=cas)
    assert p.status == SUCCESS
    assert_value(conn, k, b"ba")


def test_appendq_prependq(conn, key):
    hit, miss = key("h"), key("m")
    bset(conn, hit, b"x")
    conn.send(req(APPENDQ, hit, value=b"a", opaque=1) + req(PREPENDQ, hit, value=b"p", opaque=2)
              + req(APPENDQ, miss, value=b"a", opaque=3) + req(PREPENDQ, miss, value=b"p", opaque=4)
              + req(NOOP, opaque=5))
    conn.expect(error_reply(APPENDQ, NOT_STORED, MSG_NOT_STORED, opaque=3))
    conn.expect(error_reply(PREPENDQ, NOT_STORED, MSG_NOT_STORED, opaque=4))
    conn.expect(res(NOOP, opaque=5))
    conn.expect_nothing(0.1)
    assert_value(conn, hit, b"pxa")


def test_append_beyond_item_size_not_stored(conn, key):
    k = key()
    bset(conn, k, b"x" * 1000000)
    p = call(conn, APPEND, k, value=b"y" * 100000, opaque=2)
    assert_error(p, APPEND, NOT_STORED, MSG_NOT_STORED, opaque=2)
    p = call(conn, GET, k)
    assert p.status == SUCCESS and len(p.value) == 1000000


# ---------------------------------------------------------------- TOUCH / GAT

def test_touch_hit_carries_flags_no_value(conn, key):
    k = key()
    cas = bset(conn, k, b"val", flags=0x01020304)
    conn.send(req(TOUCH, k, exptime_extras(100), opaque=7))
    # 4 B flags extras, no key, no value, item CAS (touch does not bump it)
    conn.expect(res(TOUCH, extras=b"\x01\x02\x03\x04", cas=cas, opaque=7))
    assert assert_value(conn, k, b"val") == cas


def test_touch_miss(conn, key):
    p = call(conn, TOUCH, key(), exptime_extras(100), opaque=8)
    assert_error(p, TOUCH, KEY_ENOENT, MSG_NOT_FOUND, opaque=8)


def test_touch_applies_exptime(conn, key):
    k = key()
    bset(conn, k)
    assert call(conn, TOUCH, k, exptime_extras(PAST)).status == SUCCESS
    assert_missing(conn, k)


def test_gat_and_gatk_hit(conn, key):
    k = key()
    cas = bset(conn, k, b"hello", flags=5)
    conn.send(req(GAT, k, exptime_extras(100), opaque=1))
    conn.expect(res(GAT, extras=struct.pack(">I", 5), value=b"hello", cas=cas, opaque=1))
    conn.send(req(GATK, k, exptime_extras(100), opaque=2))
    conn.expect(res(GATK, extras=struct.pack(">I", 5), key=k, value=b"hello", cas=cas, opaque=2))
    assert assert_value(conn, k, b"hello") == cas  # CAS not bumped by gat


def test_gat_and_gatk_miss(conn, key):
    k = key()
    conn.send(req(GAT, k, exptime_extras(100), opaque=1))
    conn.expect(error_reply(GAT, KEY_ENOENT, MSG_NOT_FOUND, opaque=1))
    conn.send(req(GATK, k, exptime_extras(100), opaque=2))
    conn.expect(res(GATK, KEY_ENOENT, key=k, opaque=2))


def test_gat_returns_value_then_applies_exptime(conn, key):
    k = key()
    bset(conn, k, b"v", flags=3)
    p = call(conn, GAT, k, exptime_extras(PAST))
    assert (p.status, p.extras, p.value) == (SUCCESS, b"\x00\x00\x00\x03", b"v")
    assert_missing(conn, k)


def test_gatq_gatkq_quiet(conn, key):
    hit, miss = key("h"), key("m")
    cas = bset(conn, hit, b"v", flags=3)
    conn.send(req(GATQ, miss, exptime_extras(100), opaque=1)
              + req(GATKQ, miss, exptime_extras(100), opaque=2)
              + req(GATQ, hit, exptime_extras(100), opaque=3)
              + req(GATKQ, hit, exptime_extras(PAST), opaque=4)
              + req(GATQ, hit, exptime_extras(100), opaque=5)  # now expired -> silent
              + req(NOOP, opaque=6))
    conn.expect(res(GATQ, extras=b"\x00\x00\x00\x03", value=b"v", cas=cas, opaque=3))
    conn.expect(res(GATKQ, extras=b"\x00\x00\x00\x03", key=hit, value=b"v", cas=cas, opaque=4))
    conn.expect(res(NOOP, opaque=6))
    conn.expect_nothing(0.1)


# ---------------------------------------------------------------- STAT

def test_stat_all(conn, connect):
    stats = read_stats(conn, opaque=0x77)
    names = [k for k, _ in stats]
    assert len(stats) > 50
    for name in (b"pid", b"uptime", b"time", b"version", b"curr_connections",
                 b"cmd_get", b"cmd_set", b"get_hits", b"get_misses", b"cas_misses",
                 b"cas_hits", b"cas_badval", b"curr_items", b"total_items", b"bytes",
                 b"limit_maxbytes", b"threads", b"evictions"):
        assert name in names, name
    assert dict(stats)[b"version"] == call(conn, VERSION).value
    # same names, same order as the text protocol's `stats`
    assert names == [k for k, _ in text_stats(connect())]


@pytest.mark.parametrize("group", [b"settings", b"items", b"slabs"])
def test_stat_groups_match_text(conn, connect, key, group):
    bset(conn, key(), b"x")  # make items/slabs non-empty
    stats = read_stats(conn, group, opaque=5)
    names = [k for k, _ in stats]
    assert stats
    if group == b"settings":
        for name in (b"maxbytes", b"maxconns", b"tcpport", b"item_size_max", b"cas_enabled",
                     b"auth_enabled_sasl"):
            assert name in names, name
        assert dict(stats)[b"auth_enabled_sasl"] == b"no"
    elif group == b"items":
        assert any(re.fullmatch(rb"items:\d+:number", n) for n in names)
    else:
        assert names[-2:] == [b"active_slabs", b"total_malloced"]
    assert names == [k for k, _ in text_stats(connect(), group)]


def test_stat_reset_is_only_terminator(conn):
    conn.send(req(STAT, b"reset", opaque=3))
    conn.expect(res(STAT, opaque=3))
    assert nothing_within(conn, 0.1)


def test_stat_unknown_group_not_found(conn):
    p = call(conn, STAT, b"bogus", opaque=4)
    assert_error(p, STAT, KEY_ENOENT, MSG_NOT_FOUND, opaque=4)
    assert call(conn, NOOP).status == SUCCESS


# ---------------------------------------------------------------- FLUSH (private server)

def test_flush_and_flushq(spawn):
    srv = spawn()
    c = srv.connect()
    try:
        bset(c, b"f1")
        c.send(req(FLUSH, opaque=5))
        c.expect(res(FLUSH, opaque=5))
        assert_missing(c, b"f1")
        bset(c, b"f1")
        c.send(req(FLUSHQ, opaque=6) + req(NOOP, opaque=7))
        c.expect(res(NOOP, opaque=7))
        assert_missing(c, b"f1")
        bset(c, b"f1")
        c.send(req(FLUSHQ, extras=exptime_extras(0), opaque=8) + req(NOOP, opaque=9))
        c.expect(res(NOOP, opaque=9))
        assert_missing(c, b"f1")
        assert bset(c, b"f1")  # items stored after the flush survive
        assert_value(c, b"f1", b"v")
    finally:
        c.close()


@pytest.mark.slow
def test_flush_with_delay(spawn):
    srv = spawn()
    c = srv.connect()
    try:
        bset(c, b"d1", b"v")
        c.send(req(FLUSH, extras=exptime_extras(2), opaque=1))
        c.expect(res(FLUSH, opaque=1))
        assert_value(c, b"d1", b"v")  # still there right after
        deadline = time.monotonic() + 4
        while call(c, GET, b"d1").status == SUCCESS:
            assert time.monotonic() < deadline, "delayed flush never took effect"
            time.sleep(0.2)
    finally:
        c.close()


# ---------------------------------------------------------------- QUIT

def test_quit_replies_then_closes(conn):
    conn.send(req(QUIT, opaque=9))
    conn.expect(res(QUIT, opaque=9))
    conn.expect_closed()


def test_quitq_closes_silently(conn):
    conn.send(req(QUITQ, opaque=9))
    conn.expect_closed()


# ---------------------------------------------------------------- unknown / unsupported

@pytest.mark.parametrize("opcode", [SASL_LIST_MECHS, 0x30, 0x3C, 0x55, 0xFF])
def test_unknown_or_disabled_opcode(conn, opcode):
    conn.send(req(opcode, opaque=0x42) + req(NOOP, opaque=0x43))
    conn.expect(error_reply(opcode, UNKNOWN_COMMAND, MSG_UNKNOWN, opaque=0x42))
    conn.expect(res(NOOP, opaque=0x43))


def test_unknown_opcode_with_value_body_is_swallowed(conn):
    conn.send(req(0x55, value=b"payload", opaque=1) + req(NOOP, opaque=2))
    conn.expect(error_reply(0x55, UNKNOWN_COMMAND, MSG_UNKNOWN, opaque=1))
    conn.expect(res(NOOP, opaque=2))


@pytest.mark.parametrize("opcode", [SASL_AUTH, SASL_STEP])
def test_sasl_auth_without_sasl_is_unknown_command(conn, opcode):
    conn.send(req(opcode, b"PLAIN", value=b"\0alice\0s3cret", opaque=1) + req(NOOP, opaque=2))
    conn.expect(error_reply(opcode, UNKNOWN_COMMAND, MSG_UNKNOWN, opaque=1))
    conn.expect(res(NOOP, opaque=2))


def test_verbosity_unknown_command(conn, target):
    """VERBOSITY (0x1B) is not implemented by 1.6.18: 0x81 `Unknown command`.

    memcached BUG: for unknown opcodes it swallows `bodylen` bytes *after*
    having already consumed extras+key, so the 4 extras bytes are eaten from
    the next request and the connection desyncs (observed: a following NOOP
    gets no reply; two following NOOPs -> connection closed and even the 0x81
    is lost).  memcached also holds the 0x81 back until the over-swallow is
    satisfied, hence the NOOP is sent together with the request.  Only the
    first reply is pinned; memtwin must consume exactly bodylen and keep the
    connection usable (the NOOP must be answered).
    """
    conn.send(req(VERBOSITY, extras=b"\x00\x00\x00\x01", opaque=0x1B) + req(NOOP, opaque=2))
    conn.expect(error_reply(VERBOSITY, UNKNOWN_COMMAND, MSG_UNKNOWN, opaque=0x1B))
    if target == "memtwin":
        conn.expect(res(NOOP, opaque=2))


# ---------------------------------------------------------------- malformed requests

def test_key_too_long_einval_and_close(conn):
    conn.send(req(GET, b"k" * 251, opaque=9))
    conn.expect(error_reply(GET, EINVAL, MSG_EINVAL, opaque=9))
    conn.expect_closed()


def test_set_key_too_long_einval_and_close(conn):
    conn.send(req(SET, b"k" * 251, store_extras(), b"v", opaque=9))
    conn.expect(error_reply(SET, EINVAL, MSG_EINVAL, opaque=9))
    conn.expect_closed()


@pytest.mark.parametrize("opcode,keylen,extlen,bodylen", [
    (GET, 4, 0, 2),     # keylen > bodylen
    (SET, 4, 8, 10),    # keylen + extlen > bodylen
])
def test_lengths_exceed_bodylen_unknown_command_and_close(conn, opcode, keylen, extlen, bodylen):
    conn.send(header(opcode, keylen=keylen, extlen=extlen, bodylen=bodylen, opaque=9)
              + b"x" * bodylen)
    # memcached waits for extlen+keylen bytes before looking at the packet;
    # a server that rejects the header at once answers here already.
    if nothing_within(conn, 0.3):
        conn.send(b"x" * (keylen + extlen - bodylen))
    conn.expect(error_reply(opcode, UNKNOWN_COMMAND, MSG_UNKNOWN, opaque=9))
    conn.expect_closed()


@pytest.mark.parametrize("name,packet", [
    ("set-extras-4", req(SET, b"kk", b"\0" * 4, b"val", opaque=9)),
    ("set-no-extras", req(SET, b"kk", b"", b"val", opaque=9)),
    ("set-no-key", req(SET, b"", store_extras(), b"val", opaque=9)),
    ("add-extras-4", req(ADD, b"kk", b"\0" * 4, b"val", opaque=9)),
    ("replaceq-extras-0", req(REPLACEQ, b"kk", b"", b"val", opaque=9)),
    ("get-with-extras", req(GET, b"kk", b"\0" * 4, opaque=9)),
    ("get-no-key", req(GET, b"", opaque=9)),
    ("getk-with-value", req(GETK, b"kk", value=b"v", opaque=9)),
    ("delete-with-value", req(DELETE, b"kk", value=b"v", opaque=9)),
    ("delete-with-extras", req(DELETE, b"kk", b"\0" * 4, opaque=9)),
    ("incr-extras-8", req(INCREMENT, b"kk", b"\0" * 8, opaque=9)),
    ("decr-no-key", req(DECREMENT, b"", delta_extras(), opaque=9)),
    ("touch-no-extras", req(TOUCH, b"kk", opaque=9)),
    ("gat-no-key", req(GAT, b"", exptime_extras(), opaque=9)),
    ("append-with-extras", req(APPEND, b"kk", store_extras(), b"v", opaque=9)),
    ("prepend-no-key", req(PREPEND, b"", value=b"v", opaque=9)),
    ("flush-extras-8", req(FLUSH, extras=b"\0" * 8, opaque=9)),
    ("flush-with-key", req(FLUSH, b"kk", opaque=9)),
    ("stat-with-extras", req(STAT, b"", b"\0" * 4, opaque=9)),
    ("noop-with-key", req(NOOP, b"x", opaque=9)),
    ("version-with-value", req(VERSION, value=b"x", opaque=9)),
    ("quit-with-key", req(QUIT, b"x", opaque=9)),
])
def test_invalid_arguments_einval_and_close(conn, name, packet):
    opcode = packet[1]
    conn.send(packet)
    conn.expect(error_reply(opcode, EINVAL, MSG_EINVAL, opaque=9))
    conn.expect_closed()


def test_flush_with_bad_extras_does_not_flush(conn, connect, key):
    k = key()
    other = connect()
    bset(other, k)
    conn.send(req(FLUSH, extras=b"\0" * 8))
    conn.expect(error_reply(FLUSH, EINVAL, MSG_EINVAL))
    conn.expect_closed()
    assert_value(other, k, b"v")


@pytest.mark.parametrize("opcode", [SET, SETQ, ADD, REPLACE])
def test_value_too_large_is_swallowed(conn, key, opcode):
    k = key()
    conn.send(req(opcode, k, store_extras(), b"x" * (ITEM_SIZE_MAX + 1), opaque=9)
              + req(NOOP, opaque=10))
    conn.expect(error_reply(opcode, E2BIG, MSG_TOO_LARGE, opaque=9))
    conn.expect(res(NOOP, opaque=10))  # the value bytes were swallowed
    assert_missing(conn, k)


def test_set_too_large_deletes_existing_item(conn, key):
    k = key()
    bset(conn, k, b"small")
    p = call(conn, SET, k, store_extras(), b"x" * (2 * ITEM_SIZE_MAX), opaque=3)
    assert_error(p, SET, E2BIG, MSG_TOO_LARGE, opaque=3)
    assert_missing(conn, k)


@pytest.mark.parametrize("opcode", [APPEND, PREPEND])
def test_append_too_large_body(conn, key, opcode):
    k = key()
    bset(conn, k, b"small")
    conn.send(req(opcode, k, value=b"x" * (2 * ITEM_SIZE_MAX), opaque=3) + req(NOOP, opaque=4))
    conn.expect(error_reply(opcode, E2BIG, MSG_TOO_LARGE, opaque=3))
    conn.expect(res(NOOP, opaque=4))
    assert_value(conn, k, b"small")  # append/prepend leave the item alone


def test_value_just_under_limit_is_stored(conn, key):
    k = key()
    value = b"y" * (ITEM_SIZE_MAX - 1024)
    bset(conn, k, value)
    assert call(conn, GET, k).value == value


@pytest.mark.parametrize("magic", [0x00, 0x81, 0x7F, ord("g")])
def test_bad_magic_mid_connection_closes(conn, magic):
    conn.send(req(NOOP, opaque=1))
    conn.expect(res(NOOP, opaque=1))
    conn.send(bytes([magic]) + req(NOOP)[1:])
    conn.expect_closed()


def test_text_on_binary_connection_closes(conn):
    conn.send(req(NOOP, opaque=1))
    conn.expect(res(NOOP, opaque=1))
    conn.send(b"get foo bar baz qux quux\r\n")  # >= 24 bytes, magic 'g'
    conn.expect_closed()


# ---------------------------------------------------------------- sniffing / framing

def test_first_byte_0x80_selects_binary_other_conn_text(conn, connect):
    conn.send(req(NOOP, opaque=1))
    conn.expect(res(NOOP, opaque=1))
    text = connect()
    text.send(b"version\r\n")
    assert text.read_line().startswith(b"VERSION ")
    conn.send(req(NOOP, opaque=2))
    conn.expect(res(NOOP, opaque=2))


def test_request_split_byte_by_byte(conn, key):
    k = key()
    packet = req(SET, k, store_extras(4, 0), b"split", opaque=3)
    for i in range(len(packet)):
        conn.send(packet[i:i + 1])
        if i in (0, 1, 23, 24, 32):
            time.sleep(0.05)
    p = read_packet(conn)
    assert (p.opcode, p.status, p.opaque) == (SET, SUCCESS, 3)
    assert_value(conn, k, b"split", flags=4)


# ---------------------------------------------------------------- mixed protocols

def test_binary_set_visible_via_text(conn, connect, key):
    k = key()
    cas = bset(conn, k, b"mixed", flags=0x12345678)
    text = connect()
    text.send(b"gets " + k + b"\r\n")
    assert text.read_until(b"END\r\n") == (b"VALUE %s %d 5 %d\r\nmixed\r\nEND\r\n"
                                           % (k, 0x12345678, cas))


def test_text_set_visible_via_binary(conn, connect, key):
    k = key()
    text = connect()
    text.send(b"set " + k + b" 4242 0 3\r\nabc\r\ngets " + k + b"\r\n")
    assert text.read_line() == b"STORED\r\n"
    line = text.read_line()
    assert text.read_until(b"END\r\n") == b"abc\r\nEND\r\n"
    cas = int(line.split()[4])
    conn.send(req(GETK, k, opaque=1))
    conn.expect(res(GETK, extras=struct.pack(">I", 4242), key=k, value=b"abc", cas=cas, opaque=1))


# ---------------------------------------------------------------- pipelines

def test_quiet_pipeline_order_and_opaque(conn, key):
    n = 40
    keys = [key("p%d" % i) for i in range(n)]
    batch = b"".join(req(SETQ, keys[i], store_extras(i, 0), b"val%d" % i, opaque=i)
                     for i in range(0, n, 2))          # only even keys exist
    batch += req(ADDQ, keys[0], store_extras(), b"dup", opaque=0xABC)  # error in the middle
    batch += b"".join(req(GETKQ, keys[i], opaque=1000 + i) for i in range(n))
    batch += b"".join(req(GETQ, keys[i], opaque=2000 + i) for i in range(n - 1, -1, -1))
    batch += req(NOOP, opaque=0xFFFF)
    conn.send(batch)
    got = read_packets_until_noop(conn)
    expected = [(ADDQ, KEY_EEXISTS, b"", b"", MSG_EXISTS, 0xABC)]
    expected += [(GETKQ, SUCCESS, struct.pack(">I", i), keys[i], b"val%d" % i, 1000 + i)
                 for i in range(0, n, 2)]
    expected += [(GETQ, SUCCESS, struct.pack(">I", i), b"", b"val%d" % i, 2000 + i)
                 for i in range(n - 1, -1, -1) if i % 2 == 0]
    expected += [(NOOP, SUCCESS, b"", b"", b"", 0xFFFF)]
    assert [(p.opcode, p.status, p.extras, p.key, p.value, p.opaque) for p in got] == expected
    assert all(p.cas != 0 for p in got[1:-1])
    conn.expect_nothing(0.1)


def test_non_quiet_pipeline(conn, key):
    k = key()
    conn.send(req(SET, k, store_extras(1, 0), b"a", opaque=1)
              + req(APPEND, k, value=b"b", opaque=2)
              + req(GET, k, opaque=3)
              + req(DELETE, k, opaque=4)
              + req(GET, k, opaque=5)
              + req(VERSION, opaque=6))
    got = [read_packet(conn) for _ in range(6)]
    assert [(p.opcode, p.status, p.opaque) for p in got] == [
        (SET, 0, 1), (APPEND, 0, 2), (GET, 0, 3), (DELETE, 0, 4), (GET, KEY_ENOENT, 5), (VERSION, 0, 6)]
    assert got[2].value == b"ab" and got[2].cas == got[1].cas
