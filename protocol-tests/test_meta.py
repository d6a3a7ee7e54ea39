"""Meta protocol (mg, ms, md, ma, mn, me) transcripts: request bytes -> exact reply bytes.

Every expectation here was recorded against Debian's memcached 1.6.18 (the reference).
Several 1.6.18 behaviours differ from newer memcached releases and from
doc/protocol.txt at HEAD; those are called out as "1.6.18:" in the test docstrings
(e.g. no `E` flag, no `ms s`/`md x`, no `ms N` autovivify, md/ma report
`CLIENT_ERROR invalid or duplicate flag` for every flag problem, opaque max 31 bytes).

Values that legitimately vary (CAS numbers, last-access seconds, TTL countdowns,
item sizes) are captured from a previous reply or matched with a narrow regex;
everything else is byte-exact.
"""
import base64
import re
import time

import pytest


# --------------------------------------------------------------------------- helpers

def b64(k: bytes) -> bytes:
    return base64.b64encode(k)


def expect_re(conn, pattern: bytes):
    """Read one reply line and require it to fully match `pattern` (which includes \\r\\n)."""
    line = conn.read_line()
    m = re.fullmatch(pattern, line, re.S)
    assert m, "expected /%r/\n     got %r" % (pattern, line)
    return m


def cas_of(conn, k: bytes) -> int:
    conn.send(b"mg " + k + b" c\r\n")
    return int(expect_re(conn, rb"HD c(\d+)\r\n").group(1))


def ms(conn, k: bytes, value: bytes, flags: bytes = b""):
    """Store `value` with ms (reply HD), optional extra flags."""
    line = b"ms " + k + b" " + str(len(value)).encode()
    if flags:
        line += b" " + flags
    conn.transact(line + b"\r\n" + value + b"\r\n", b"HD\r\n")


def ms_cas(conn, k: bytes, value: bytes, flags: bytes = b"") -> int:
    line = b"ms " + k + b" " + str(len(value)).encode() + b" c"
    if flags:
        line += b" " + flags
    conn.send(line + b"\r\n" + value + b"\r\n")
    return int(expect_re(conn, rb"HD c(\d+)\r\n").group(1))


LONG_KEY = b"a" * 251


# =========================================================================== mn

def test_mn(conn):
    conn.transact(b"mn\r\n", b"MN\r\n")


def test_mn_extra_tokens_ignored(conn):
    conn.transact(b"mn x\r\nmn\r\n", b"MN\r\nMN\r\n")


def test_meta_bare_newline_terminator(conn, key):
    k = key()
    conn.transact(b"mg " + k + b" v\nmn\n", b"EN\r\nMN\r\n")


# =========================================================================== mg basics

def test_mg_miss_is_EN(conn, key):
    conn.transact(b"mg " + key() + b" v\r\n", b"EN\r\n")


def test_mg_miss_no_flags(conn, key):
    conn.transact(b"mg " + key() + b"\r\n", b"EN\r\n")


def test_mg_hit_without_flags_is_HD(conn, key):
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"mg " + k + b"\r\n", b"HD\r\n")


def test_mg_hit_with_v_is_VA(conn, key):
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"mg " + k + b" v\r\n", b"VA 2\r\nhi\r\n")


def test_mg_hit_empty_value(conn, key):
    k = key()
    ms(conn, k, b"")
    conn.transact(b"mg " + k + b" v s\r\n", b"VA 0 s0\r\n\r\n")


def test_mg_binary_safe_value(conn, key):
    k = key()
    val = b"a\r\nb\x00c\r\n"
    ms(conn, k, val)
    conn.transact(b"mg " + k + b" v\r\n", b"VA 8\r\n" + val + b"\r\n")


def test_mg_all_simple_flags_in_request_order(conn, key):
    k = key()
    cas = ms_cas(conn, k, b"hi", b"F5")
    # l (seconds since last access) is 0, or 1 when the server's clock ticked in between.
    conn.send(b"mg " + k + b" v c f h k l O123 s t\r\n")
    expect_re(conn, b"VA 2 c%d f5 h0 k%s l[01] O123 s2 t-1\r\n" % (cas, k))
    conn.expect(b"hi\r\n")


def test_mg_flag_order_follows_request(conn, key):
    k = key()
    ms(conn, k, b"hi", b"F7")
    conn.transact(b"mg " + k + b" k s v t f\r\n", b"VA 2 k" + k + b" s2 t-1 f7\r\nhi\r\n")
    conn.transact(b"mg " + k + b" f t v s\r\n", b"VA 2 f7 t-1 s2\r\nhi\r\n")
    conn.transact(b"mg " + k + b" s k\r\n", b"HD s2 k" + k + b"\r\n")


def test_mg_extra_spaces_between_flags(conn, key):
    k = key()
    conn.transact(b"mg " + k + b"  v  k\r\n", b"EN k" + k + b"\r\n")


def test_mg_trailing_space(conn, key):
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"mg " + k + b" v \r\n", b"VA 2\r\nhi\r\n")


def test_mg_flag_with_glued_garbage_is_accepted(conn, key):
    """1.6.18: a tokenless flag followed by extra characters (`vk`) is taken as the flag."""
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"mg " + k + b" vk\r\n", b"VA 2\r\nhi\r\n")


def test_mg_client_flags_u32(conn, key):
    k = key()
    ms(conn, k, b"hi", b"F4294967295")
    conn.transact(b"mg " + k + b" f v\r\n", b"VA 2 f4294967295\r\nhi\r\n")


def test_mg_c_matches_ms_c(conn, key):
    k = key()
    cas = ms_cas(conn, k, b"hi")
    conn.transact(b"mg " + k + b" c\r\n", b"HD c%d\r\n" % cas)


def test_mg_t_no_ttl_is_minus_one(conn, key):
    k = key()
    ms(conn, k, b"hi", b"T0")
    conn.transact(b"mg " + k + b" t v\r\n", b"VA 2 t-1\r\nhi\r\n")


def test_mg_t_with_ttl(conn, key):
    k = key()
    ms(conn, k, b"hi", b"T100")
    conn.send(b"mg " + k + b" t\r\n")
    expect_re(conn, rb"HD t(99|100)\r\n")


def test_mg_P_and_L_ignored(conn, key):
    k = key()
    conn.transact(b"mg " + k + b" P1 L2 v\r\n", b"EN\r\n")
    ms(conn, k, b"hi")
    conn.transact(b"mg " + k + b" Pfoo v Lbar\r\n", b"VA 2\r\nhi\r\n")


def test_mg_other_accepted_flags_ignored(conn, key):
    """1.6.18: mg silently accepts (and ignores) C, D, F, I, J, M tokens."""
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"mg " + k + b" C1 v\r\n", b"VA 2\r\nhi\r\n")
    cas = cas_of(conn, k)
    conn.transact(b"mg " + k + b" C%d v\r\n" % cas, b"VA 2\r\nhi\r\n")
    conn.transact(b"mg " + k + b" D1 F1 I J1 M1 v\r\n", b"VA 2\r\nhi\r\n")


def test_mg_h_hit_before(conn, key):
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"mg " + k + b" h\r\n", b"HD h0\r\n")
    conn.transact(b"mg " + k + b" h\r\n", b"HD h1\r\n")
    conn.transact(b"mg " + k + b" h v\r\n", b"VA 2 h1\r\nhi\r\n")


def test_mg_u_does_not_mark_fetched(conn, key):
    k = key()
    ms(conn, k, b"hi")
    conn.send(b"mg " + k + b" u h l\r\n")
    expect_re(conn, rb"HD h0 l[01]\r\n")
    conn.transact(b"mg " + k + b" u h\r\n", b"HD h0\r\n")
    conn.send(b"mg " + k + b" h l\r\n")
    expect_re(conn, rb"HD h0 l[01]\r\n")
    conn.transact(b"mg " + k + b" h\r\n", b"HD h1\r\n")


# ---------------------------------------------------------------- mg miss echo (1.6.18 quirk)

def test_mg_miss_echoes_k_and_O_only(conn, key):
    """1.6.18: a miss still echoes `k` and `O` (nothing else)."""
    k = key()
    conn.transact(b"mg " + k + b" k O1 s v f t c h l\r\n", b"EN k" + k + b" O1\r\n")
    conn.transact(b"mg " + k + b" v O9\r\n", b"EN O9\r\n")
    conn.transact(b"mg " + k + b" k\r\n", b"EN k" + k + b"\r\n")


def test_mg_miss_echoes_b64_key_and_b(conn, key):
    k = b64(key())
    conn.transact(b"mg " + k + b" b v k\r\n", b"EN k" + k + b" b\r\n")


def test_mg_empty_opaque(conn, key):
    k = key()
    conn.transact(b"mg " + k + b" O\r\n", b"EN O\r\n")


def test_mg_opaque_31_bytes_ok(conn, key):
    k = key()
    op = b"O" + b"1" * 31
    conn.transact(b"mg " + k + b" " + op + b"\r\n", b"EN " + op + b"\r\n")


# ---------------------------------------------------------------- mg q

def test_mg_q_hides_miss(conn, key):
    k = key()
    conn.transact(b"mg " + k + b" v q\r\nmg " + k + b" k O1 q\r\nmn\r\n", b"MN\r\n")


def test_mg_q_hides_miss_even_with_b_k_O(conn, key):
    k = b64(key())
    conn.transact(b"mg " + k + b" b k O9 q\r\nmn\r\n", b"MN\r\n")


def test_mg_q_shows_hits(conn, key):
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"mg " + k + b" q k v\r\nmg " + k + b" q\r\nmg " + k + b" q k\r\nmn\r\n",
                  b"VA 2 k" + k + b"\r\nhi\r\nHD\r\nHD k" + k + b"\r\nMN\r\n")


def test_mg_q_pipeline(conn, key):
    a, b, c = key("a"), key("b"), key("c")
    ms(conn, a, b"A1")
    ms(conn, c, b"C33")
    conn.transact(b"mg " + a + b" k v q\r\nmg " + b + b" k v q\r\nmg " + c + b" k v q\r\nmn\r\n",
                  b"VA 2 k" + a + b"\r\nA1\r\nVA 3 k" + c + b"\r\nC33\r\nMN\r\n")


# ---------------------------------------------------------------- mg b (base64 key)

def test_mg_b_roundtrip_and_echo_position(conn, key):
    """1.6.18: with `b`, `k` returns the base64 key followed by a ` b` flag placed
    right after it (not at b's request position); without `k` no `b` is echoed."""
    k = b64(key())
    cas = ms_cas(conn, k, b"hi", b"b")
    conn.transact(b"mg " + k + b" b v k O5 c\r\n", b"VA 2 k" + k + b" b O5 c%d\r\nhi\r\n" % cas)
    conn.transact(b"mg " + k + b" k v b\r\n", b"VA 2 k" + k + b" b\r\nhi\r\n")
    conn.transact(b"mg " + k + b" O1 k t b\r\n", b"HD O1 k" + k + b" b t-1\r\n")
    conn.transact(b"mg " + k + b" b v\r\n", b"VA 2\r\nhi\r\n")


def test_mg_b_key_is_the_decoded_bytes(conn, key):
    """The decoded key addresses the same item as the plain key; an item stored with b
    keeps a binary-key mark, so a plain-key mg with k still shows the base64 form + b."""
    raw = key()
    k = b64(raw)
    ms(conn, k, b"hi", b"b")
    conn.transact(b"mg " + raw + b" v k\r\n", b"VA 2 k" + k + b" b\r\nhi\r\n")
    ms(conn, raw, b"ho")
    conn.transact(b"mg " + k + b" b v\r\n", b"VA 2\r\nho\r\n")


def test_mg_b_binary_bytes_in_key(conn, key):
    raw = key() + b"\x00\r\n "
    k = b64(raw)
    ms(conn, k, b"hi", b"b")
    conn.transact(b"mg " + k + b" b k v\r\n", b"VA 2 k" + k + b" b\r\nhi\r\n")


@pytest.mark.parametrize("bad", [b"!!!!", b"aGVsbG8", b"aGVsbG8===", b"aGVs*G8="])
def test_mg_b_decode_error(conn, bad):
    conn.transact(b"mg " + bad + b" b v\r\n", b"CLIENT_ERROR error decoding key\r\n")


def test_mg_b_on_non_base64_plain_key(conn, key):
    k = key()  # 13 chars: not valid base64
    conn.transact(b"mg " + k + b" k b\r\n", b"CLIENT_ERROR error decoding key\r\n")


def test_mg_b_encoded_key_length_limit(conn, key):
    """The 250-byte limit applies to the base64 token, not to the decoded key."""
    ok = b64(key() + b"z" * (186 - 13))        # 248 chars encoded
    assert len(ok) == 248
    ms(conn, ok, b"hi", b"b")
    conn.transact(b"mg " + ok + b" b s v\r\n", b"VA 2 s2\r\nhi\r\n")
    long = b64(key() + b"z" * (187 - 13))      # 252 chars encoded
    assert len(long) == 252
    conn.transact(b"mg " + long + b" b v\r\n", b"CLIENT_ERROR bad command line format\r\n")


# ---------------------------------------------------------------- mg T / N / R

def test_mg_T_updates_ttl(conn, key):
    k = key()
    ms(conn, k, b"hi", b"T100")
    conn.transact(b"mg " + k + b" T10 t\r\n", b"HD t10\r\n")
    conn.send(b"mg " + k + b" t v\r\n")
    expect_re(conn, rb"VA 2 t(9|10)\r\n")
    conn.expect(b"hi\r\n")


def test_mg_T_processed_in_request_order(conn, key):
    """`t` before `T` reports the TTL before the update."""
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"mg " + k + b" t T50\r\n", b"HD t-1\r\n")
    conn.send(b"mg " + k + b" t\r\n")
    expect_re(conn, rb"HD t(49|50)\r\n")


def test_mg_T0_removes_ttl(conn, key):
    k = key()
    ms(conn, k, b"hi", b"T100")
    conn.transact(b"mg " + k + b" T0 t\r\nmg " + k + b" t\r\n", b"HD t-1\r\nHD t-1\r\n")


def test_mg_T_negative_expires(conn, key):
    k = key()
    ms(conn, k, b"hi", b"T100")
    conn.transact(b"mg " + k + b" T-1\r\nmg " + k + b" v\r\n", b"HD\r\nEN\r\n")


def test_mg_T_on_miss(conn, key):
    conn.transact(b"mg " + key() + b" T30 v\r\n", b"EN\r\n")


def test_mg_N_autovivify_win_then_Z(conn, key):
    k = key()
    conn.send(b"mg " + k + b" N30 v c t\r\n")
    cas = int(expect_re(conn, rb"VA 0 c(\d+) t30 W\r\n").group(1))
    conn.expect(b"\r\n")
    conn.send(b"mg " + k + b" v c t\r\n")
    expect_re(conn, b"VA 0 c%d t(29|30) Z\\r\\n" % cas)
    conn.expect(b"\r\n")
    conn.send(b"mg " + k + b" N30 v\r\n")
    conn.expect(b"VA 0 Z\r\n\r\n")


def test_mg_N_autovivify_flags(conn, key):
    k = key()
    conn.transact(b"mg " + k + b" N30 s t f k O1\r\n", b"HD s0 t30 f0 k" + k + b" O1 W\r\n")


def test_mg_N0_vivify_no_ttl(conn, key):
    k = key()
    conn.transact(b"mg " + k + b" N0 t\r\n", b"HD t-1 W\r\n")


def test_mg_N_with_q_still_reports_win(conn, key):
    k = key()
    conn.transact(b"mg " + k + b" N30 q\r\nmn\r\n", b"HD W\r\nMN\r\n")
    k2 = key("2")
    conn.transact(b"mg " + k2 + b" N30 q v\r\nmg " + k2 + b" q v\r\nmn\r\n",
                  b"VA 0 W\r\n\r\nVA 0 Z\r\n\r\nMN\r\n")


def test_mg_N_on_hit_is_plain_hit(conn, key):
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"mg " + k + b" N30 t v\r\n", b"VA 2 t-1\r\nhi\r\n")


def test_mg_N_then_ms_clears_win_token(conn, key):
    k = key()
    conn.send(b"mg " + k + b" N30 c\r\n")
    cas = int(expect_re(conn, rb"HD c(\d+) W\r\n").group(1))
    ms(conn, k, b"hi")
    conn.send(b"mg " + k + b" c v\r\n")
    new = int(expect_re(conn, rb"VA 2 c(\d+)\r\n").group(1))
    conn.expect(b"hi\r\n")
    assert new > cas


def test_mg_R_recache(conn, key):
    """R<n>: win when remaining TTL < n (strictly); later readers see Z."""
    k = key()
    ms(conn, k, b"hi", b"T100")
    conn.transact(b"mg " + k + b" R50 v t\r\n", b"VA 2 t100\r\nhi\r\n")
    conn.transact(b"mg " + k + b" R100 t\r\n", b"HD t100\r\n")
    conn.transact(b"mg " + k + b" R200 v t\r\n", b"VA 2 t100 W\r\nhi\r\n")
    conn.transact(b"mg " + k + b" R200 v t\r\n", b"VA 2 t100 Z\r\nhi\r\n")
    conn.transact(b"mg " + k + b" R50 t\r\n", b"HD t100 Z\r\n")
    conn.transact(b"mg " + k + b" t\r\n", b"HD t100 Z\r\n")


def test_mg_R_no_ttl_never_wins(conn, key):
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"mg " + k + b" R50 v t\r\n", b"VA 2 t-1\r\nhi\r\n")


def test_mg_R_token_reset_by_ms(conn, key):
    k = key()
    ms(conn, k, b"hi", b"T100")
    conn.transact(b"mg " + k + b" R101 t\r\n", b"HD t100 W\r\n")
    ms(conn, k, b"ho", b"T100")
    conn.transact(b"mg " + k + b" R101 t\r\n", b"HD t100 W\r\n")


def test_mg_R_after_vivify_is_Z(conn, key):
    k = key()
    conn.transact(b"mg " + k + b" N30 t\r\n", b"HD t30 W\r\n")
    conn.transact(b"mg " + k + b" R100 t\r\n", b"HD t30 Z\r\n")


# ---------------------------------------------------------------- mg errors

def test_mg_no_key_is_ERROR(conn):
    """1.6.18: `mg` without a key -> ERROR (1.6.45: CLIENT_ERROR bad command line format)."""
    conn.transact(b"mg\r\n", b"ERROR\r\n")
    conn.transact(b"mg \r\n", b"ERROR\r\n")


def test_mg_key_too_long(conn):
    conn.transact(b"mg " + LONG_KEY + b" v\r\n", b"CLIENT_ERROR bad command line format\r\n")


def test_mg_key_250_ok(conn, key):
    k = key().ljust(250, b"a")
    conn.transact(b"mg " + k + b" v q\r\nmn\r\n", b"MN\r\n")
    ms(conn, k, b"hi")
    conn.transact(b"mg " + k + b" v k\r\n", b"VA 2 k" + k + b"\r\nhi\r\n")


def test_mg_E_flag_rejected(conn, key):
    """1.6.18 has no E (client-chosen CAS) on any meta command."""
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"mg " + k + b" E999 c\r\n", b"CLIENT_ERROR invalid flag\r\n")


def test_mg_x_flag_rejected(conn, key):
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"mg " + k + b" x\r\n", b"CLIENT_ERROR invalid flag\r\n")


MG_INVALID = "adegijmnoprwxyzABEGHKQSUVWXYZ0123456789"


def test_mg_invalid_flags(conn, key):
    k = key()
    ms(conn, k, b"hi")
    for ch in MG_INVALID:
        conn.transact(b"mg " + k + b" " + ch.encode() + b"1\r\n", b"CLIENT_ERROR invalid flag\r\n")
    conn.transact(b"mg " + k + b" -\r\n", b"CLIENT_ERROR invalid flag\r\n")


def test_mg_invalid_flag_on_miss(conn, key):
    conn.transact(b"mg " + key() + b" Z\r\n", b"CLIENT_ERROR invalid flag\r\n")


@pytest.mark.parametrize("flags", [b"v v", b"k k", b"O1 O2", b"P1 P2"])
def test_mg_duplicate_flag(conn, key, flags):
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"mg " + k + b" " + flags + b"\r\n", b"CLIENT_ERROR duplicate flag\r\n")


@pytest.mark.parametrize("flags", [b"T", b"Tabc", b"N", b"Nabc v", b"R v", b"C", b"Cx"])
def test_mg_bad_token(conn, key, flags):
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"mg " + k + b" " + flags + b"\r\n",
                  b"CLIENT_ERROR bad token in command line format\r\n")


def test_mg_opaque_too_long(conn, key):
    """1.6.18: 32 opaque bytes are already too long (31 is the max)."""
    k = key()
    conn.transact(b"mg " + k + b" O" + b"1" * 32 + b"\r\n", b"CLIENT_ERROR opaque token too long\r\n")
    conn.transact(b"mg " + k + b" O" + b"1" * 33 + b"\r\n", b"CLIENT_ERROR opaque token too long\r\n")


MG_FLAGS_18 = [b"c", b"f", b"h", b"k", b"l", b"s", b"t", b"u", b"v",
               b"O1", b"P1", b"L1", b"C1", b"D1", b"F1", b"I", b"J1", b"M1"]


def test_mg_17_flags_ok(conn, key):
    k = key()
    cas = ms_cas(conn, k, b"hi")
    conn.send(b"mg " + k + b" " + b" ".join(MG_FLAGS_18[:17]) + b"\r\n")
    expect_re(conn, b"VA 2 c%d f0 h0 k%s l[01] s2 t-1 O1\r\n" % (cas, k))
    conn.expect(b"hi\r\n")


def test_mg_options_too_long(conn, key):
    """1.6.18: 18+ flag tokens; mg's wording has 'are' (ms/md/ma do not)."""
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"mg " + k + b" " + b" ".join(MG_FLAGS_18) + b"\r\n",
                  b"CLIENT_ERROR options flags are too long\r\n")
    conn.transact(b"mg " + k + b" " + b" ".join([b"v"] * 30) + b"\r\n",
                  b"CLIENT_ERROR options flags are too long\r\n")


def test_mg_too_long_checked_before_duplicates(conn, key):
    k = key()
    conn.transact(b"mg " + k + b" " + b" ".join(b"P%d" % i for i in range(17)) + b"\r\n",
                  b"CLIENT_ERROR duplicate flag\r\n")
    conn.transact(b"mg " + k + b" " + b" ".join(b"P%d" % i for i in range(18)) + b"\r\n",
                  b"CLIENT_ERROR options flags are too long\r\n")


def test_mg_error_then_connection_still_usable(conn, key):
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"mg " + k + b" Z\r\nmg " + k + b" v\r\n",
                  b"CLIENT_ERROR invalid flag\r\nVA 2\r\nhi\r\n")


# =========================================================================== ms

def test_ms_basic(conn, key):
    k = key()
    conn.transact(b"ms " + k + b" 2\r\nhi\r\n", b"HD\r\n")
    conn.transact(b"mg " + k + b" v f t\r\n", b"VA 2 f0 t-1\r\nhi\r\n")


def test_ms_zero_length(conn, key):
    k = key()
    conn.transact(b"ms " + k + b" 0\r\n\r\nmg " + k + b" v s\r\n", b"HD\r\nVA 0 s0\r\n\r\n")


def test_ms_leading_zero_datalen(conn, key):
    k = key()
    conn.transact(b"ms " + k + b" 02\r\nhi\r\nmg " + k + b" v\r\n", b"HD\r\nVA 2\r\nhi\r\n")


def test_ms_trailing_space(conn, key):
    k = key()
    conn.transact(b"ms " + k + b" 2 \r\nhi\r\n", b"HD\r\n")


def test_ms_return_flags_in_order(conn, key):
    k = key()
    conn.send(b"ms " + k + b" 2 T30 F5 k O9 c\r\nhi\r\n")
    cas = int(expect_re(conn, b"HD k" + k + rb" O9 c(\d+)\r\n").group(1))
    conn.transact(b"mg " + k + b" c f t v\r\n", b"VA 2 c%d f5 t30\r\nhi\r\n" % cas)


def test_ms_F_and_T(conn, key):
    k = key()
    ms(conn, k, b"hi", b"F4294967295 T0")
    conn.transact(b"mg " + k + b" f t\r\n", b"HD f4294967295 t-1\r\n")


def test_ms_F_truncated_above_u32(conn, key):
    """1.6.18: F4294967296 is accepted and stored as 0."""
    k = key()
    ms(conn, k, b"hi", b"F4294967296")
    conn.transact(b"mg " + k + b" f\r\n", b"HD f0\r\n")


@pytest.mark.parametrize("tok", [b"F-1", b"Fx"])
def test_ms_bad_F(conn, key, tok):
    conn.transact(b"ms " + key() + b" 2 " + tok + b"\r\nhi\r\nmn\r\n",
                  b"CLIENT_ERROR bad command line format\r\nMN\r\n")


def test_ms_T_negative_expires(conn, key):
    k = key()
    conn.transact(b"ms " + k + b" 2 T-1\r\nhi\r\nmg " + k + b" v\r\n", b"HD\r\nEN\r\n")


def test_ms_k_O_b(conn, key):
    k = b64(key())
    conn.send(b"ms " + k + b" 2 b k c\r\nhi\r\n")
    cas = int(expect_re(conn, b"HD k" + k + rb" b c(\d+)\r\n").group(1))
    conn.transact(b"mg " + k + b" b c v\r\n", b"VA 2 c%d\r\nhi\r\n" % cas)


def test_ms_empty_opaque(conn, key):
    conn.transact(b"ms " + key() + b" 2 O\r\nhi\r\n", b"HD O\r\n")


def test_ms_P_L_ignored(conn, key):
    conn.transact(b"ms " + key() + b" 2 P1 L1\r\nhi\r\n", b"HD\r\n")


def test_ms_s_flag_accepted_but_silent(conn, key):
    """1.6.18: `ms s` (size, 1.6.2x+) is accepted and produces no return flag."""
    k = key()
    conn.transact(b"ms " + k + b" 2 s\r\nhi\r\n", b"HD\r\n")
    conn.send(b"ms " + k + b" 2 s k c\r\nhi\r\n")
    expect_re(conn, b"HD k" + k + rb" c\d+\r\n")


def test_ms_other_lowercase_flags_ignored(conn, key):
    k = key()
    conn.transact(b"ms " + k + b" 2 f h l t u v\r\nhi\r\n", b"HD\r\n")
    conn.transact(b"ms " + k + b" 2 D1 J1 N30 R1\r\nho\r\nmg " + k + b" v t\r\n",
                  b"HD\r\nVA 2 t-1\r\nho\r\n")


def test_ms_c_bumps_cas(conn, key):
    k = key()
    a = ms_cas(conn, k, b"hi")
    b = ms_cas(conn, k, b"ho")
    assert b > a
    assert cas_of(conn, k) == b


# ---------------------------------------------------------------- ms C / I

def test_ms_C_match(conn, key):
    k = key()
    cas = ms_cas(conn, k, b"hi")
    conn.send(b"ms " + k + b" 2 C%d c\r\nho\r\n" % cas)
    new = int(expect_re(conn, rb"HD c(\d+)\r\n").group(1))
    assert new != cas
    conn.transact(b"mg " + k + b" v\r\n", b"VA 2\r\nho\r\n")


def test_ms_C_mismatch_EX_and_c0(conn, key):
    """1.6.18: on EX/NS/NF a requested `c` is returned as c0."""
    k = key()
    cas = ms_cas(conn, k, b"hi")
    conn.transact(b"ms " + k + b" 2 C%d c\r\nho\r\n" % (cas + 1000), b"EX c0\r\n")
    conn.transact(b"ms " + k + b" 2 C%d k O1 c\r\nho\r\n" % (cas + 1000),
                  b"EX k" + k + b" O1 c0\r\n")
    conn.transact(b"ms " + k + b" 2 C%d\r\nho\r\n" % (cas + 1000), b"EX\r\n")
    conn.transact(b"mg " + k + b" v\r\n", b"VA 2\r\nhi\r\n")


def test_ms_C0_on_existing_is_EX(conn, key):
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"ms " + k + b" 2 C0\r\nho\r\n", b"EX\r\n")


def test_ms_C_missing_is_NF(conn, key):
    k = key()
    conn.transact(b"ms " + k + b" 2 C1\r\nhi\r\n", b"NF\r\n")
    conn.transact(b"ms " + k + b" 2 C0\r\nhi\r\n", b"NF\r\n")
    conn.transact(b"ms " + k + b" 2 I C0\r\nhi\r\n", b"NF\r\n")
    conn.transact(b"ms " + k + b" 2 C1 k O1 c\r\nhi\r\n", b"NF k" + k + b" O1 c0\r\n")
    conn.transact(b"mg " + k + b" v\r\n", b"EN\r\n")


def test_ms_I_without_C_is_plain_set(conn, key):
    k = key()
    cas = ms_cas(conn, k, b"hi", b"I")
    conn.transact(b"mg " + k + b" v c\r\n", b"VA 2 c%d\r\nhi\r\n" % cas)


def test_ms_I_with_older_cas_stores_and_marks_stale(conn, key):
    k = key()
    old = ms_cas(conn, k, b"hi")
    ms_cas(conn, k, b"he")
    conn.send(b"ms " + k + b" 2 I C%d c\r\nho\r\n" % old)
    new = int(expect_re(conn, rb"HD c(\d+)\r\n").group(1))
    conn.transact(b"mg " + k + b" v c\r\n", b"VA 2 c%d X W\r\nho\r\n" % new)


def test_ms_I_with_newer_cas_is_EX(conn, key):
    k = key()
    cas = ms_cas(conn, k, b"hi")
    conn.transact(b"ms " + k + b" 2 I C%d c\r\nho\r\n" % (cas + 100), b"EX c0\r\n")


# ---------------------------------------------------------------- ms modes

def test_ms_mode_E_add(conn, key):
    k = key()
    conn.transact(b"ms " + k + b" 2 ME\r\nhi\r\nms " + k + b" 2 ME\r\nho\r\nmg " + k + b" v\r\n",
                  b"HD\r\nNS\r\nVA 2\r\nhi\r\n")


def test_ms_mode_NS_echoes_flags_and_c0(conn, key):
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"ms " + k + b" 2 ME k O1 c\r\nho\r\n", b"NS k" + k + b" O1 c0\r\n")


def test_ms_modes_on_missing_are_NS(conn, key):
    k = key()
    conn.transact(b"ms " + k + b" 2 MA\r\nhi\r\nms " + k + b" 2 MP\r\nhi\r\nms " + k + b" 2 MR\r\nhi\r\n",
                  b"NS\r\nNS\r\nNS\r\n")
    conn.transact(b"ms " + k + b" 2 MR k O1 c\r\nho\r\n", b"NS k" + k + b" O1 c0\r\n")


def test_ms_mode_append_prepend_keep_flags_and_ttl(conn, key):
    k = key()
    ms(conn, k, b"hi", b"F7 T100")
    conn.transact(b"ms " + k + b" 2 MA F9 T5\r\nab\r\n", b"HD\r\n")
    conn.transact(b"ms " + k + b" 2 MP\r\nyz\r\n", b"HD\r\n")
    conn.send(b"mg " + k + b" v f t\r\n")
    expect_re(conn, rb"VA 6 f7 t(99|100)\r\n")
    conn.expect(b"yzhiab\r\n")


def test_ms_mode_R_replace_and_S_set(conn, key):
    k = key()
    ms(conn, k, b"hi", b"F7 T100")
    conn.transact(b"ms " + k + b" 1 MR F3\r\nx\r\nmg " + k + b" v f t\r\n",
                  b"HD\r\nVA 1 f3 t-1\r\nx\r\n")
    conn.transact(b"ms " + k + b" 1 MS\r\nq\r\nmg " + k + b" v f t\r\n",
                  b"HD\r\nVA 1 f0 t-1\r\nq\r\n")


def test_ms_mode_S_on_missing(conn, key):
    k = key()
    conn.transact(b"ms " + k + b" 2 MS\r\nhi\r\nmg " + k + b" v\r\n", b"HD\r\nVA 2\r\nhi\r\n")


def test_ms_N_autovivify_not_supported(conn, key):
    """1.6.18: N is accepted but ignored by ms, so append/prepend/replace on a miss are NS."""
    k = key()
    conn.transact(b"ms " + k + b" 2 MA N30\r\nhi\r\nmg " + k + b" v\r\n", b"NS\r\nEN\r\n")
    conn.transact(b"ms " + k + b" 2 MP N30 F5\r\nhi\r\nmg " + k + b" v\r\n", b"NS\r\nEN\r\n")
    conn.transact(b"ms " + k + b" 2 N30\r\nhi\r\nmg " + k + b" v t\r\n",
                  b"HD\r\nVA 2 t-1\r\nhi\r\n")


@pytest.mark.parametrize("mode", [b"MZ", b"Ms", b"Me", b"Ma", b"Mp", b"Mr", b"MX"])
def test_ms_invalid_mode(conn, key, mode):
    """1.6.18: lower-case mode letters are invalid; the data block is swallowed."""
    k = key()
    conn.transact(b"ms " + k + b" 2 " + mode + b"\r\nhi\r\nmg " + k + b" v\r\n",
                  b"CLIENT_ERROR invalid mode for ms M token\r\nEN\r\n")


def test_ms_empty_mode(conn, key):
    conn.transact(b"ms " + key() + b" 2 M\r\nhi\r\nmn\r\n",
                  b"CLIENT_ERROR incorrect length for M token\r\nMN\r\n")


# ---------------------------------------------------------------- ms q

def test_ms_q_hides_HD_only(conn, key):
    k = key()
    conn.transact(b"ms " + k + b" 2 q\r\nhi\r\n"
                  b"ms " + k + b" 2 ME q\r\nhi\r\n"
                  b"ms " + k + b" 2 MZ q\r\nhi\r\n"
                  b"ms " + k + b"x 2 MR q\r\nhi\r\n"
                  b"ms " + k + b" 2 C1 q\r\nhi\r\n"
                  b"ms " + k + b"y 2 C1 q\r\nhi\r\n"
                  b"mn\r\n",
                  b"NS\r\nCLIENT_ERROR invalid mode for ms M token\r\nNS\r\nEX\r\nNF\r\nMN\r\n")


def test_ms_q_hides_HD_with_return_flags(conn, key):
    k = key()
    conn.transact(b"ms " + k + b" 2 q k O1 c\r\nhi\r\nmn\r\n", b"MN\r\n")
    conn.transact(b"mg " + k + b" v\r\n", b"VA 2\r\nhi\r\n")


def test_ms_q_shows_too_large(conn, key):
    k = key()
    conn.transact(b"ms " + k + b" 1048576 q\r\n" + b"x" * 1048576 + b"\r\nmn\r\n",
                  b"SERVER_ERROR object too large for cache\r\nMN\r\n", timeout=10)


# ---------------------------------------------------------------- ms errors

def test_ms_no_key_is_ERROR(conn):
    conn.transact(b"ms\r\n", b"ERROR\r\n")


def test_ms_missing_datalen(conn, key):
    """1.6.18: ms with a key but no datalen -> CLIENT_ERROR (not ERROR)."""
    conn.transact(b"ms " + key() + b"\r\n", b"CLIENT_ERROR bad command line format\r\n")


@pytest.mark.parametrize("dl", [b"x", b"-1", b"2147483647", b"2147483648", b"T30 2"])
def test_ms_bad_datalen_does_not_swallow(conn, key, dl):
    """The data line is then parsed as a command (-> ERROR)."""
    conn.transact(b"ms " + key() + b" " + dl + b"\r\nhi\r\nmn\r\n",
                  b"CLIENT_ERROR bad command line format\r\nERROR\r\nMN\r\n")


def test_ms_key_too_long_does_not_swallow(conn):
    conn.transact(b"ms " + LONG_KEY + b" 2\r\nhi\r\nmn\r\n",
                  b"CLIENT_ERROR bad command line format\r\nERROR\r\nMN\r\n")


def test_ms_key_250_ok(conn, key):
    k = key().ljust(250, b"a")
    conn.transact(b"ms " + k + b" 2\r\nhi\r\nmg " + k + b" s\r\n", b"HD\r\nHD s2\r\n")


@pytest.mark.parametrize("flags,err", [
    (b"Z", b"CLIENT_ERROR invalid flag"),
    (b"E5", b"CLIENT_ERROR invalid flag"),
    (b"x", b"CLIENT_ERROR invalid flag"),
    (b"v v", b"CLIENT_ERROR duplicate flag"),
    (b"k k", b"CLIENT_ERROR duplicate flag"),
    (b"Tx", b"CLIENT_ERROR bad token in command line format"),
    (b"C", b"CLIENT_ERROR bad token in command line format"),
    (b"Cx", b"CLIENT_ERROR bad token in command line format"),
    (b"Nx", b"CLIENT_ERROR bad token in command line format"),
    (b"O" + b"1" * 32, b"CLIENT_ERROR opaque token too long"),
])
def test_ms_flag_errors_swallow_data(conn, key, flags, err):
    k = key()
    conn.transact(b"ms " + k + b" 2 " + flags + b"\r\nhi\r\nmn\r\n", err + b"\r\nMN\r\n")
    conn.transact(b"mg " + k + b" v\r\n", b"EN\r\n")


def test_ms_b_decode_error_swallows_data(conn, key):
    conn.transact(b"ms !!!! 2 b\r\nhi\r\nmn\r\n", b"CLIENT_ERROR error decoding key\r\nMN\r\n")
    conn.transact(b"ms " + key() + b" 2 b\r\nhi\r\nmn\r\n", b"CLIENT_ERROR error decoding key\r\nMN\r\n")


MS_FLAGS = [b"c", b"f", b"h", b"k", b"l", b"s", b"t", b"u", b"v",
            b"O1", b"P1", b"L1", b"D1", b"F1", b"I", b"J1", b"T0", b"N0"]


def test_ms_options_too_long(conn, key):
    """1.6.18: 16 flags after datalen is the max; 17 -> error without 'are', data NOT swallowed."""
    k = key()
    conn.send(b"ms " + k + b" 2 " + b" ".join(MS_FLAGS[:16]) + b"\r\nhi\r\n")
    expect_re(conn, b"HD c\\d+ k" + k + b" O1\r\n")
    conn.transact(b"ms " + key("b") + b" 2 " + b" ".join(MS_FLAGS[:17]) + b"\r\nhi\r\nmn\r\n",
                  b"CLIENT_ERROR options flags too long\r\nERROR\r\nMN\r\n")


def test_ms_too_large(conn, key):
    """Oversize: data swallowed, existing item unlinked."""
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"ms " + k + b" 1048576\r\n" + b"x" * 1048576 + b"\r\nmg " + k + b" v\r\nmn\r\n",
                  b"SERVER_ERROR object too large for cache\r\nEN\r\nMN\r\n", timeout=10)


def test_ms_too_large_2mb(conn, key):
    conn.transact(b"ms " + key() + b" 2000000\r\n" + b"x" * 2000000 + b"\r\nmn\r\n",
                  b"SERVER_ERROR object too large for cache\r\nMN\r\n", timeout=10)


def test_ms_large_value_ok(conn, key):
    k = key()
    n = 1000 * 1000
    conn.transact(b"ms " + k + b" %d\r\n" % n + b"y" * n + b"\r\nmg " + k + b" s\r\n",
                  b"HD\r\nHD s%d\r\n" % n, timeout=10)


@pytest.mark.parametrize("data", [
    b"hiX\r\n",       # reads "hiX\r" -> bad chunk, leftover "\n" -> ERROR
    b"hiXY\r\n",      # reads "hiXY" -> bad chunk, leftover "\r\n" -> ERROR
    b"hi\rX\r\n",
    b"hi\nmn\r\n",    # reads "hi\nm" -> bad chunk, leftover "n\r\n" -> ERROR
])
def test_ms_bad_data_chunk(conn, key, data):
    """Bad data chunk: value not stored, old value kept, leftover line -> ERROR."""
    k = key()
    ms(conn, k, b"ok")
    conn.transact(b"ms " + k + b" 2\r\n" + data + b"mg " + k + b" v\r\n",
                  b"CLIENT_ERROR bad data chunk\r\nERROR\r\nVA 2\r\nok\r\n")


# =========================================================================== md

def test_md_hit_and_miss(conn, key):
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"md " + k + b"\r\nmd " + k + b"\r\nmg " + k + b" v\r\n", b"HD\r\nNF\r\nEN\r\n")


def test_md_k_O(conn, key):
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"md " + k + b" k O1\r\n", b"HD k" + k + b" O1\r\n")
    conn.transact(b"md " + k + b" k O1\r\n", b"NF k" + k + b" O1\r\n")
    conn.transact(b"md " + k + b" O\r\n", b"NF O\r\n")


def test_md_q_hides_HD_not_NF(conn, key):
    """1.6.18: md q suppresses HD only; NF (and EX) are still sent."""
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"md " + k + b" q\r\nmd " + k + b" q\r\nmd " + k + b" q k O1\r\nmn\r\n",
                  b"NF\r\nNF k" + k + b" O1\r\nMN\r\n")
    k2 = key("2")
    ms(conn, k2, b"hi")
    conn.transact(b"md " + k2 + b" k O1 q\r\nmn\r\n", b"MN\r\n")
    conn.transact(b"mg " + k2 + b" v\r\n", b"EN\r\n")


def test_md_b(conn, key):
    k = b64(key())
    ms(conn, k, b"hi", b"b")
    conn.transact(b"md " + k + b" b k O1\r\n", b"HD k" + k + b" b O1\r\n")
    conn.transact(b"mg " + k + b" b v k\r\n", b"EN k" + k + b" b\r\n")


def test_md_b_q(conn, key):
    k = b64(key())
    ms(conn, k, b"hi", b"b")
    conn.transact(b"md " + k + b" b q\r\nmn\r\n", b"MN\r\n")


def test_md_C(conn, key):
    k = key()
    cas = ms_cas(conn, k, b"hi")
    conn.transact(b"md " + k + b" C%d\r\n" % (cas + 1), b"EX\r\n")
    conn.transact(b"md " + k + b" C%d q\r\n" % (cas + 1), b"EX\r\n")
    conn.transact(b"md " + k + b" k O1 C%d\r\n" % (cas + 1), b"EX k" + k + b" O1\r\n")
    conn.transact(b"mg " + k + b" v\r\n", b"VA 2\r\nhi\r\n")
    conn.transact(b"md " + k + b" C%d\r\n" % cas, b"HD\r\n")
    conn.transact(b"mg " + k + b" v\r\n", b"EN\r\n")


def test_md_C_on_miss(conn, key):
    conn.transact(b"md " + key() + b" C1\r\n", b"NF\r\n")


def test_md_T_without_I_deletes(conn, key):
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"md " + k + b" T30\r\nmg " + k + b" v\r\n", b"HD\r\nEN\r\n")


def test_md_I_on_miss(conn, key):
    k = key()
    conn.transact(b"md " + k + b" I\r\n", b"NF\r\n")
    conn.transact(b"md " + k + b" I T30 k O1\r\n", b"NF k" + k + b" O1\r\n")


def test_md_I_marks_stale_bumps_cas_keeps_ttl(conn, key):
    k = key()
    cas = ms_cas(conn, k, b"hi", b"T100")
    conn.transact(b"md " + k + b" I\r\n", b"HD\r\n")
    conn.send(b"mg " + k + b" v t c\r\n")
    m = expect_re(conn, rb"VA 2 t(99|100) c(\d+) X W\r\n")
    assert int(m.group(2)) > cas
    conn.expect(b"hi\r\n")


def test_md_I_repeated_bumps_cas_and_rearms_win(conn, key):
    k = key()
    cas = ms_cas(conn, k, b"hi")
    conn.transact(b"md " + k + b" I q\r\nmn\r\n", b"MN\r\n")
    conn.send(b"mg " + k + b" c v\r\n")
    c1 = int(expect_re(conn, rb"VA 2 c(\d+) X W\r\n").group(1))
    conn.expect(b"hi\r\n")
    assert c1 > cas
    conn.transact(b"md " + k + b" I\r\n", b"HD\r\n")
    conn.send(b"mg " + k + b" c v\r\n")
    c2 = int(expect_re(conn, rb"VA 2 c(\d+) X W\r\n").group(1))
    conn.expect(b"hi\r\n")
    assert c2 > c1
    conn.transact(b"md " + k + b"\r\n", b"HD\r\n")
    conn.transact(b"mg " + k + b" c v\r\n", b"EN\r\n")


def test_md_I_C_mismatch(conn, key):
    k = key()
    cas = ms_cas(conn, k, b"hi")
    conn.transact(b"md " + k + b" I C%d\r\n" % (cas + 5), b"EX\r\n")
    conn.transact(b"mg " + k + b" v\r\n", b"VA 2\r\nhi\r\n")


def test_md_I_C_match(conn, key):
    k = key()
    cas = ms_cas(conn, k, b"hi")
    conn.transact(b"md " + k + b" I C%d T30\r\n" % cas, b"HD\r\n")
    conn.send(b"mg " + k + b" v c t\r\n")
    assert int(expect_re(conn, rb"VA 2 c(\d+) t30 X W\r\n").group(1)) > cas
    conn.expect(b"hi\r\n")


def test_md_ignored_flags(conn, key):
    """1.6.18: md accepts and ignores c f h l s t u v D F J L M N P R."""
    k = key()
    conn.transact(b"md " + k + b" c f h l s t u v\r\n", b"NF\r\n")
    ms(conn, k, b"hi")
    conn.transact(b"md " + k + b" D1 F1 J1 L1 M1 N1 P1 R1\r\n", b"HD\r\n")


def test_md_no_key_is_ERROR(conn):
    conn.transact(b"md\r\n", b"ERROR\r\n")


def test_md_key_too_long(conn):
    conn.transact(b"md " + LONG_KEY + b"\r\nmn\r\n", b"CLIENT_ERROR bad command line format\r\nMN\r\n")


MD_MA_INVALID = "abdegijmnoprwxyzABEGHKQSUVWXYZ0123456789"


@pytest.mark.parametrize("cmd", [b"md", b"ma"])
def test_md_ma_invalid_flags(conn, key, cmd):
    """1.6.18: md/ma report every flag problem as `invalid or duplicate flag`, including
    b on a key that is not valid base64 (mg/ms say `error decoding key`)."""
    k = key()
    for ch in MD_MA_INVALID:
        conn.transact(cmd + b" " + k + b" " + ch.encode() + b"1\r\n",
                      b"CLIENT_ERROR invalid or duplicate flag\r\n")


@pytest.mark.parametrize("cmd", [b"md", b"ma"])
@pytest.mark.parametrize("flags", [b"v v", b"k k", b"E5", b"x", b"Tx", b"Cx"])
def test_md_ma_flag_errors(conn, key, cmd, flags):
    conn.transact(cmd + b" " + key() + b" " + flags + b"\r\n",
                  b"CLIENT_ERROR invalid or duplicate flag\r\n")


@pytest.mark.parametrize("cmd", [b"md", b"ma"])
def test_md_ma_b_decode_error(conn, cmd):
    conn.transact(cmd + b" !!!! b\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n")


@pytest.mark.parametrize("cmd", [b"md", b"ma"])
def test_md_ma_opaque_too_long(conn, key, cmd):
    conn.transact(cmd + b" " + key() + b" O" + b"1" * 33 + b"\r\n",
                  b"CLIENT_ERROR opaque token too long\r\n")
    conn.transact(cmd + b" " + key() + b" O" + b"1" * 32 + b"\r\n",
                  b"CLIENT_ERROR opaque token too long\r\n")


MDMA_FLAGS = [b"c", b"f", b"h", b"k", b"l", b"s", b"t", b"u", b"v",
              b"O1", b"P1", b"L1", b"D1", b"F1", b"I", b"J1", b"T0", b"N0"]


@pytest.mark.parametrize("cmd", [b"md", b"ma"])
def test_md_ma_options_too_long(conn, key, cmd):
    k = key()
    # 17 flags ok (nothing stored under k; for ma N0 is the 18th flag so this is a miss)
    conn.transact(cmd + b" " + k + b" " + b" ".join(MDMA_FLAGS[:17]) + b"\r\n",
                  b"NF k" + k + b" O1\r\n")
    conn.transact(cmd + b" " + k + b" " + b" ".join(MDMA_FLAGS) + b"\r\n",
                  b"CLIENT_ERROR options flags too long\r\n")


# =========================================================================== ma

def test_ma_miss_NF(conn, key):
    k = key()
    conn.transact(b"ma " + k + b"\r\nma " + k + b" v\r\n", b"NF\r\nNF\r\n")
    conn.transact(b"ma " + k + b" k O1\r\n", b"NF k" + k + b" O1\r\n")


def test_ma_no_key_is_ERROR(conn):
    conn.transact(b"ma\r\n", b"ERROR\r\n")


def test_ma_key_too_long(conn):
    conn.transact(b"ma " + LONG_KEY + b"\r\nmn\r\n", b"CLIENT_ERROR bad command line format\r\nMN\r\n")


def test_ma_N_autovivify_and_incr(conn, key):
    k = key()
    conn.transact(b"ma " + k + b" N0 v\r\n", b"VA 1\r\n0\r\n")
    conn.transact(b"ma " + k + b" v\r\n", b"VA 1\r\n1\r\n")
    conn.transact(b"ma " + k + b"\r\n", b"HD\r\n")
    conn.send(b"ma " + k + b" v t c k O1\r\n")
    expect_re(conn, b"VA 1 t-1 c\\d+ k" + k + b" O1\\r\\n")
    conn.expect(b"3\r\n")


def test_ma_J_D_modes(conn, key):
    k = key()
    conn.transact(b"ma " + k + b" N0 J10 D5 v\r\n", b"VA 2\r\n10\r\n")
    conn.transact(b"ma " + k + b" D5 v\r\n", b"VA 2\r\n15\r\n")
    conn.transact(b"ma " + k + b" MD D3 v\r\n", b"VA 2\r\n12\r\n")
    conn.transact(b"ma " + k + b" M- D3 v\r\n", b"VA 1\r\n9\r\n")
    conn.transact(b"ma " + k + b" M+ v\r\n", b"VA 2\r\n10\r\n")
    conn.transact(b"ma " + k + b" MI v\r\n", b"VA 2\r\n11\r\n")


def test_ma_create_ignores_delta_and_mode(conn, key):
    k = key()
    conn.transact(b"ma " + k + b" N0 D5 J3 v\r\n", b"VA 1\r\n3\r\n")
    k2 = key("2")
    conn.transact(b"ma " + k2 + b" N0 MD J3 v\r\n", b"VA 1\r\n3\r\n")


def test_ma_N_create_no_v_is_HD(conn, key):
    k = key()
    conn.transact(b"ma " + k + b" N0 J5\r\nma " + k + b" N0 J9 v\r\n", b"HD\r\nVA 1\r\n6\r\n")


def test_ma_N_ttl_and_T(conn, key):
    k = key()
    conn.transact(b"ma " + k + b" N100 J5 v t\r\n", b"VA 1 t100\r\n5\r\n")
    conn.transact(b"ma " + k + b" T50 v t\r\n", b"VA 1 t50\r\n6\r\n")
    k2 = key("2")
    conn.transact(b"ma " + k2 + b" N0 T30 v t\r\n", b"VA 1 t30\r\n0\r\n")
    k3 = key("3")
    conn.transact(b"ma " + k3 + b" N30 T40 v t\r\n", b"VA 1 t40\r\n0\r\n")


def test_ma_c_returns_new_cas(conn, key):
    k = key()
    ms(conn, k, b"5")
    before = cas_of(conn, k)
    conn.send(b"ma " + k + b" c\r\n")
    after = int(expect_re(conn, rb"HD c(\d+)\r\n").group(1))
    assert after > before
    assert cas_of(conn, k) == after


def test_ma_C(conn, key):
    k = key()
    cas = ms_cas(conn, k, b"5")
    conn.transact(b"ma " + k + b" C%d v\r\n" % (cas + 1000), b"EX\r\n")
    conn.transact(b"ma " + k + b" C%d q\r\nmn\r\n" % (cas + 1000), b"EX\r\nMN\r\n")
    conn.transact(b"ma " + k + b" C%d v\r\n" % cas, b"VA 1\r\n6\r\n")


def test_ma_C_ignored_on_create(conn, key):
    conn.transact(b"ma " + key() + b" C1 N0 v\r\n", b"VA 1\r\n0\r\n")


def test_ma_b(conn, key):
    raw = key()
    k = b64(raw)
    conn.transact(b"ma " + k + b" b N0 v\r\n", b"VA 1\r\n0\r\n")
    conn.transact(b"ma " + k + b" b v k\r\n", b"VA 1 k" + k + b" b\r\n1\r\n")
    # 1.6.18: an item created by ma with b does NOT carry the binary-key mark
    # (unlike ms b), so a plain-key reply shows the raw key.
    conn.transact(b"ma " + raw + b" v k\r\n", b"VA 1 k" + raw + b"\r\n2\r\n")


def test_ma_q(conn, key):
    """1.6.18: ma q hides HD and VA on a hit, but NOT the HD/VA of an autovivify create;
    NF, EX and errors are always shown."""
    k = key()
    conn.transact(b"ma " + k + b" q\r\nmn\r\n", b"NF\r\nMN\r\n")
    conn.transact(b"ma " + k + b" q k O1\r\nmn\r\n", b"NF k" + k + b" O1\r\nMN\r\n")
    conn.transact(b"ma " + k + b" N0 q\r\nmn\r\n", b"HD\r\nMN\r\n")
    conn.transact(b"ma " + k + b" q v\r\nma " + k + b" q\r\nma " + k + b" q k O1\r\nmn\r\n", b"MN\r\n")
    conn.transact(b"ma " + k + b" v\r\n", b"VA 1\r\n4\r\n")
    k2 = key("2")
    conn.transact(b"ma " + k2 + b" N0 q v\r\nmn\r\n", b"VA 1\r\n0\r\nMN\r\n")


def test_ma_ignored_flags(conn, key):
    k = key()
    conn.transact(b"ma " + k + b" N0 f s h l u v\r\n", b"VA 1\r\n0\r\n")
    conn.transact(b"ma " + k + b" F1 I L1 P1 R1 v\r\n", b"VA 1\r\n1\r\n")


def test_ma_decr_saturates_and_pads(conn, key):
    k = key()
    ms(conn, k, b"100")
    conn.transact(b"ma " + k + b" MD v\r\n", b"VA 2\r\n99\r\n")
    conn.transact(b"mg " + k + b" v s\r\n", b"VA 3 s3\r\n99 \r\n")
    conn.transact(b"ma " + k + b" MD D200 v\r\n", b"VA 1\r\n0\r\n")
    conn.transact(b"mg " + k + b" v s\r\n", b"VA 3 s3\r\n0  \r\n")


def test_ma_decr_from_created(conn, key):
    k = key()
    conn.transact(b"ma " + k + b" N0 J5 MD v\r\nma " + k + b" MD D10 v\r\nmg " + k + b" v\r\n",
                  b"VA 1\r\n5\r\nVA 1\r\n0\r\nVA 1\r\n0\r\n")


def test_ma_incr_grows(conn, key):
    k = key()
    ms(conn, k, b"9")
    conn.transact(b"ma " + k + b" v\r\nmg " + k + b" v s\r\n", b"VA 2\r\n10\r\nVA 2 s2\r\n10\r\n")


def test_ma_incr_wraps(conn, key):
    k = key()
    ms(conn, k, b"18446744073709551615")
    conn.transact(b"ma " + k + b" v\r\n", b"VA 1\r\n0\r\n")
    conn.transact(b"mg " + k + b" v\r\n", b"VA 20\r\n0" + b" " * 19 + b"\r\n")
    k2 = key("2")
    ms(conn, k2, b"18446744073709551614")
    conn.transact(b"ma " + k2 + b" D2 v\r\n", b"VA 1\r\n0\r\n")


def test_ma_max_delta(conn, key):
    conn.transact(b"ma " + key() + b" D18446744073709551615 N0 v\r\n", b"VA 1\r\n0\r\n")
    k = key("2")
    ms(conn, k, b"1")
    conn.transact(b"ma " + k + b" D18446744073709551615 v\r\n", b"VA 1\r\n0\r\n")


def test_ma_keeps_flags(conn, key):
    k = key()
    ms(conn, k, b"5", b"F9")
    conn.transact(b"ma " + k + b"\r\nmg " + k + b" f v\r\n", b"HD\r\nVA 1 f9\r\n6\r\n")


@pytest.mark.parametrize("value", [b"hi", b"", b"1x", b"-1", b"18446744073709551616"])
def test_ma_non_numeric(conn, key, value):
    k = key()
    ms(conn, k, value)
    conn.transact(b"ma " + k + b"\r\n",
                  b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")


@pytest.mark.parametrize("value", [b" 1", b"1 ", b"+1"])
def test_ma_lenient_numbers(conn, key, value):
    """strtoull-style parse: leading space/plus and trailing space are accepted;
    the shorter result is written in place, space-padded to the old length."""
    k = key()
    ms(conn, k, value)
    conn.transact(b"ma " + k + b" v\r\n", b"VA 1\r\n2\r\n")
    conn.transact(b"mg " + k + b" v\r\n", b"VA 2\r\n2 \r\n")


def test_ma_non_numeric_shown_with_q(conn, key):
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"ma " + k + b" q\r\nmn\r\n",
                  b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\nMN\r\n")


@pytest.mark.parametrize("tok", [b"Dx", b"D-1", b"D18446744073709551616", b"D",
                                 b"Jx N0", b"J-1 N0", b"J18446744073709551616 N0",
                                 b"Nx", b"Tx", b"M", b"MII"])
def test_ma_bad_numeric_tokens(conn, key, tok):
    """1.6.18 has no `invalid numeric initial/delta value` errors: every bad J/D/N/T token
    (and an empty or over-long M token) -> `invalid or duplicate flag`."""
    conn.transact(b"ma " + key() + b" " + tok + b"\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n")


@pytest.mark.parametrize("mode", [b"MX", b"Mi", b"Md", b"MS"])
def test_ma_invalid_mode(conn, key, mode):
    conn.transact(b"ma " + key() + b" " + mode + b"\r\n",
                  b"CLIENT_ERROR invalid mode for ma M token\r\n")


# =========================================================================== me

def test_me_hit(conn, key):
    k = key()
    cas = ms_cas(conn, k, b"hi")
    conn.send(b"me " + k + b"\r\n")
    expect_re(conn, b"ME " + k + b" exp=-1 la=\\d+ cas=%d fetch=no cls=\\d+ size=\\d+\\r\\n" % cas)


def test_me_fetch_and_exp(conn, key):
    """1.6.18 prints exp as (now - exptime): negative remaining seconds for a TTL item."""
    k = key()
    cas = ms_cas(conn, k, b"hi", b"T100")
    conn.transact(b"mg " + k + b" v\r\n", b"VA 2\r\nhi\r\n")
    conn.send(b"me " + k + b"\r\n")
    expect_re(conn, b"ME " + k + b" exp=-(99|100) la=\\d+ cas=%d fetch=yes cls=\\d+ size=\\d+\\r\\n" % cas)


def test_me_miss(conn, key):
    k = key()
    conn.transact(b"me " + k + b"\r\nme " + k + b" q\r\n", b"EN\r\nEN\r\n")


def test_me_extra_tokens_ignored(conn, key):
    k = key()
    ms(conn, k, b"hi")
    conn.send(b"me " + k + b" x\r\nme " + k + b" v k\r\n")
    expect_re(conn, b"ME " + k + b" exp=-1 la=\\d+ cas=\\d+ fetch=no cls=\\d+ size=\\d+\\r\\n")
    expect_re(conn, b"ME " + k + b" exp=-1 la=\\d+ cas=\\d+ fetch=no cls=\\d+ size=\\d+\\r\\n")


def test_me_b(conn, key):
    """An item stored with a binary (b) key is shown in base64, even when me uses the raw key."""
    raw = key()
    k = b64(raw)
    cas = ms_cas(conn, k, b"hi", b"b")
    pat = b"ME " + k + b" exp=-1 la=\\d+ cas=%d fetch=no cls=\\d+ size=\\d+\\r\\n" % cas
    conn.send(b"me " + k + b" b\r\n")
    expect_re(conn, pat)
    conn.send(b"me " + raw + b"\r\n")
    expect_re(conn, pat)


def test_me_b_miss(conn, key):
    conn.transact(b"me " + b64(key()) + b" b\r\n", b"EN\r\n")


def test_me_b_decode_error(conn, key):
    conn.transact(b"me !!!! b\r\n", b"CLIENT_ERROR bad command line format\r\n")
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"me " + k + b" b\r\n", b"CLIENT_ERROR bad command line format\r\n")


def test_me_errors(conn):
    conn.transact(b"me\r\n", b"CLIENT_ERROR bad command line format\r\n")
    conn.transact(b"me " + LONG_KEY + b"\r\n", b"CLIENT_ERROR bad command line format\r\n")


# =========================================================================== stale-while-revalidate

def test_swr_md_I_T_then_X_W_then_Z_X_then_ms_clears(conn, key):
    k = key()
    cas = ms_cas(conn, k, b"hi", b"T100")
    conn.transact(b"md " + k + b" I T30\r\n", b"HD\r\n")
    conn.send(b"mg " + k + b" v c t\r\n")
    stale = int(expect_re(conn, rb"VA 2 c(\d+) t30 X W\r\n").group(1))
    conn.expect(b"hi\r\n")
    assert stale > cas  # md I bumps the CAS
    conn.send(b"mg " + k + b" v c t\r\n")
    expect_re(conn, b"VA 2 c%d t(29|30) Z X\\r\\n" % stale)
    conn.expect(b"hi\r\n")
    conn.transact(b"mg " + k + b" c\r\n", b"HD c%d Z X\r\n" % stale)
    conn.transact(b"mg " + k + b" v\r\n", b"VA 2 Z X\r\nhi\r\n")
    # the winner recaches with a plain ms: stale state and TTL are gone
    ms(conn, k, b"ho")
    conn.transact(b"mg " + k + b" v t\r\n", b"VA 2 t-1\r\nho\r\n")


def test_swr_q_still_shows_stale_hit(conn, key):
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"md " + k + b" I T30 q\r\nmg " + k + b" s v q k\r\nmg " + k + b" q v\r\nmn\r\n",
                  b"VA 2 s2 k" + k + b" X W\r\nhi\r\nVA 2 Z X\r\nhi\r\nMN\r\n")


def test_swr_ms_with_current_cas_clears(conn, key):
    k = key()
    ms(conn, k, b"hi", b"T100")
    conn.transact(b"md " + k + b" I T30\r\n", b"HD\r\n")
    conn.send(b"mg " + k + b" c\r\n")
    cas = int(expect_re(conn, rb"HD c(\d+) X W\r\n").group(1))
    conn.send(b"ms " + k + b" 2 C%d c\r\nho\r\n" % cas)
    new = int(expect_re(conn, rb"HD c(\d+)\r\n").group(1))
    conn.transact(b"mg " + k + b" v c t\r\n", b"VA 2 c%d t-1\r\nho\r\n" % new)


def test_swr_ms_old_cas_without_I_is_EX(conn, key):
    k = key()
    old = ms_cas(conn, k, b"hi", b"T100")
    conn.transact(b"md " + k + b" I T30\r\n", b"HD\r\n")
    conn.transact(b"ms " + k + b" 2 C%d c\r\nho\r\n" % old, b"EX c0\r\n")
    conn.transact(b"mg " + k + b" v\r\n", b"VA 2 X W\r\nhi\r\n")


def test_swr_ms_I_old_cas_updates_but_stays_stale(conn, key):
    """ms I with a CAS older than the item's: value replaced, TTL and stale/token state kept."""
    k = key()
    old = ms_cas(conn, k, b"hi", b"T100")
    conn.transact(b"md " + k + b" I T30\r\n", b"HD\r\n")
    conn.send(b"mg " + k + b" c\r\n")
    assert int(expect_re(conn, rb"HD c(\d+) X W\r\n").group(1)) > old
    conn.send(b"ms " + k + b" 2 I C%d c\r\nho\r\n" % old)
    new = int(expect_re(conn, rb"HD c(\d+)\r\n").group(1))
    conn.send(b"mg " + k + b" v c t\r\n")
    expect_re(conn, b"VA 2 c%d t(29|30) Z X\\r\\n" % new)
    conn.expect(b"ho\r\n")


def test_swr_classic_get_ignores_stale(conn, key):
    k = key()
    cas = ms_cas(conn, k, b"hi")
    conn.transact(b"md " + k + b" I T30\r\n", b"HD\r\n")
    conn.transact(b"get " + k + b"\r\n", b"VALUE " + k + b" 0 2\r\nhi\r\nEND\r\n")
    conn.send(b"gets " + k + b"\r\n")
    stale = int(expect_re(conn, b"VALUE " + k + rb" 0 2 (\d+)\r\n").group(1))
    conn.expect(b"hi\r\nEND\r\n")
    assert stale > cas
    # the classic reads did not take the win token
    conn.transact(b"mg " + k + b" v c\r\n", b"VA 2 c%d X W\r\nhi\r\n" % stale)
    conn.transact(b"set " + k + b" 0 0 2\r\nzz\r\n", b"STORED\r\n")
    conn.send(b"mg " + k + b" v c\r\n")
    expect_re(conn, rb"VA 2 c\d+\r\n")
    conn.expect(b"zz\r\n")


def test_swr_append_clears_stale_keeps_ttl(conn, key):
    k = key()
    ms(conn, k, b"hi", b"T100")
    conn.transact(b"md " + k + b" I T30\r\n", b"HD\r\n")
    conn.transact(b"ms " + k + b" 2 MA\r\nXY\r\n", b"HD\r\n")
    conn.send(b"mg " + k + b" v t\r\n")
    expect_re(conn, rb"VA 4 t(29|30)\r\n")
    conn.expect(b"hiXY\r\n")


def test_swr_ma_keeps_stale(conn, key):
    k = key()
    ms(conn, k, b"5")
    conn.transact(b"md " + k + b" I T30\r\n", b"HD\r\n")
    conn.transact(b"ma " + k + b" v\r\n", b"VA 1\r\n6\r\n")
    conn.send(b"mg " + k + b" v t\r\n")
    expect_re(conn, rb"VA 1 t(29|30) X W\r\n")
    conn.expect(b"6\r\n")


def test_swr_md_R_stale_wins(conn, key):
    k = key()
    ms(conn, k, b"hi", b"T100")
    conn.transact(b"md " + k + b" I T30\r\nmg " + k + b" R50 t\r\n", b"HD\r\nHD t30 X W\r\n")


# =========================================================================== mixing meta and classic

def test_mix_set_then_mg(conn, key):
    k = key()
    conn.transact(b"set " + k + b" 5 0 2\r\nhi\r\n", b"STORED\r\n")
    conn.send(b"mg " + k + b" v f t c\r\n")
    cas = int(expect_re(conn, rb"VA 2 f5 t-1 c(\d+)\r\n").group(1))
    conn.expect(b"hi\r\n")
    conn.transact(b"gets " + k + b"\r\n", b"VALUE " + k + b" 5 2 %d\r\nhi\r\nEND\r\n" % cas)


def test_mix_ms_then_get_gets(conn, key):
    k = key()
    cas = ms_cas(conn, k, b"hi", b"F9 T0")
    conn.transact(b"get " + k + b"\r\n", b"VALUE " + k + b" 9 2\r\nhi\r\nEND\r\n")
    conn.transact(b"gets " + k + b"\r\n", b"VALUE " + k + b" 9 2 %d\r\nhi\r\nEND\r\n" % cas)
    conn.transact(b"mg " + k + b" c\r\n", b"HD c%d\r\n" % cas)


def test_mix_cas_with_mg_c(conn, key):
    k = key()
    ms(conn, k, b"hi")
    cas = cas_of(conn, k)
    conn.transact(b"cas " + k + b" 0 0 2 %d\r\nho\r\n" % (cas + 1), b"EXISTS\r\n")
    conn.transact(b"cas " + k + b" 0 0 2 %d\r\nho\r\n" % cas, b"STORED\r\n")
    conn.transact(b"mg " + k + b" v\r\n", b"VA 2\r\nho\r\n")


def test_mix_ms_C_with_gets_cas(conn, key):
    k = key()
    conn.transact(b"set " + k + b" 0 0 2\r\nhi\r\n", b"STORED\r\n")
    conn.send(b"gets " + k + b"\r\n")
    cas = int(expect_re(conn, b"VALUE " + k + rb" 0 2 (\d+)\r\n").group(1))
    conn.expect(b"hi\r\nEND\r\n")
    conn.transact(b"ms " + k + b" 2 C%d\r\nho\r\n" % cas, b"HD\r\n")
    conn.transact(b"get " + k + b"\r\n", b"VALUE " + k + b" 0 2\r\nho\r\nEND\r\n")


def test_mix_ma_and_incr_share_cas(conn, key):
    k = key()
    conn.transact(b"set " + k + b" 0 0 1\r\n5\r\n", b"STORED\r\n")
    conn.transact(b"ma " + k + b" v\r\nincr " + k + b" 1\r\n", b"VA 1\r\n6\r\n7\r\n")
    cas = cas_of(conn, k)
    conn.transact(b"gets " + k + b"\r\n", b"VALUE " + k + b" 0 1 %d\r\n7\r\nEND\r\n" % cas)


def test_mix_append_md_get(conn, key):
    k = key()
    ms(conn, k, b"hi")
    conn.transact(b"append " + k + b" 0 0 1\r\nX\r\nmg " + k + b" v\r\nmd " + k + b"\r\nget " + k + b"\r\n",
                  b"STORED\r\nVA 3\r\nhiX\r\nHD\r\nEND\r\n")


def test_mix_delete_then_mg(conn, key):
    k = key()
    conn.transact(b"set " + k + b" 0 0 2\r\nhi\r\ndelete " + k + b"\r\nmg " + k + b" v\r\n",
                  b"STORED\r\nDELETED\r\nEN\r\n")


def test_mix_pipeline_one_write(conn, key):
    a, b = key("a"), key("b")
    conn.transact(b"set " + a + b" 1 0 1\r\nA\r\n"
                  b"ms " + b + b" 1 F2\r\nB\r\n"
                  b"mg " + a + b" v f q\r\n"
                  b"get " + b + b"\r\n"
                  b"mg " + b + b"x v q\r\n"
                  b"mn\r\n",
                  b"STORED\r\nHD\r\nVA 1 f1\r\nA\r\nVALUE " + b + b" 2 1\r\nB\r\nEND\r\nMN\r\n")


# =========================================================================== slow

@pytest.mark.slow
def test_slow_last_access_ttl_countdown_and_expiry(conn, key):
    k, short = key("a"), key("b")
    ms(conn, k, b"hi", b"T100")
    ms(conn, short, b"hi", b"T1")
    time.sleep(2.2)
    # A loaded machine stretches the sleep; allow a few seconds of slack.
    conn.send(b"mg " + k + b" u l h t\r\n")
    expect_re(conn, rb"HD l[2-5] h0 t9[5-8]\r\n")
    conn.send(b"me " + k + b"\r\n")
    expect_re(conn, b"ME " + k + b" exp=-9[5-8] la=[2-5] cas=\\d+ fetch=no cls=\\d+ size=\\d+\\r\\n")
    # first real fetch: reports the old access time, marks fetched
    conn.send(b"mg " + k + b" l h\r\n")
    expect_re(conn, rb"HD l[2-5] h0\r\n")
    # when the access time is bumped afterwards depends on memcached's LRU internals
    # (in-place for HOT/WARM items, asynchronously for COLD ones), so l/la are not pinned
    conn.send(b"mg " + k + b" l h\r\n")
    expect_re(conn, rb"HD l\d+ h1\r\n")
    conn.send(b"me " + k + b"\r\n")
    expect_re(conn, b"ME " + k + b" exp=-9[5-8] la=\\d+ cas=\\d+ fetch=yes cls=\\d+ size=\\d+\\r\\n")
    conn.transact(b"mg " + short + b" v\r\n", b"EN\r\n")
