"""Text protocol: storage and retrieval commands, CAS rules, values, keys, flags.

Every expectation here was checked against Debian memcached 1.6.18.
"""
import pytest

from textproto import rt, store, hit, value_reply, gets_cas


# --- set / get / gets --------------------------------------------------------

def test_set_get(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"hello", flags=5), b"STORED\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"hello", 5))


def test_get_miss(conn, key):
    conn.transact(b"get " + key() + b"\r\n", b"END\r\n")


def test_set_overwrites_value_and_flags(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"one", flags=1) + store(b"set", k, b"second", flags=2),
       b"STORED\r\nSTORED\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"second", 2))


def test_multi_get_omits_misses_and_keeps_order(conn, key):
    a, b, c = key("a"), key("b"), key("c")
    rt(conn, store(b"set", a, b"A", flags=1) + store(b"set", c, b"CC", flags=3),
       b"STORED\r\nSTORED\r\n")
    rt(conn, b"get " + c + b" " + b + b" " + a + b"\r\n",
       value_reply(c, b"CC", 3) + value_reply(a, b"A", 1) + b"END\r\n")


def test_multi_get_repeated_key_returned_twice(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"x"), b"STORED\r\n")
    rt(conn, b"get " + k + b" " + k + b"\r\n",
       value_reply(k, b"x") + value_reply(k, b"x") + b"END\r\n")


def test_multi_get_all_miss(conn, key):
    rt(conn, b"get " + key("1") + b" " + key("2") + b" " + key("3") + b"\r\n", b"END\r\n")


def test_gets_single_and_multi(conn, key):
    a, b, m = key("a"), key("b"), key("m")
    rt(conn, store(b"set", a, b"va", flags=7) + store(b"set", b, b"vb"), b"STORED\r\nSTORED\r\n")
    ca, cb = gets_cas(conn, a), gets_cas(conn, b)
    assert ca != cb and ca > 0 and cb > 0
    rt(conn, b"gets " + a + b" " + m + b" " + b + b"\r\n",
       value_reply(a, b"va", 7, ca) + value_reply(b, b"vb", 0, cb) + b"END\r\n")


def test_gets_miss(conn, key):
    conn.transact(b"gets " + key() + b"\r\n", b"END\r\n")


def test_get_without_key_is_error(conn):
    conn.transact(b"get\r\n", b"ERROR\r\n")
    conn.transact(b"gets\r\n", b"ERROR\r\n")


# --- add / replace -----------------------------------------------------------

def test_add(conn, key):
    k = key()
    rt(conn, store(b"add", k, b"first", flags=1), b"STORED\r\n")
    rt(conn, store(b"add", k, b"second", flags=2), b"NOT_STORED\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"first", 1))


def test_failed_add_does_not_change_cas(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"v"), b"STORED\r\n")
    before = gets_cas(conn, k)
    rt(conn, store(b"add", k, b"w"), b"NOT_STORED\r\n")
    assert gets_cas(conn, k) == before


def test_replace(conn, key):
    k = key()
    rt(conn, store(b"replace", k, b"x"), b"NOT_STORED\r\n")
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")
    rt(conn, store(b"set", k, b"x", flags=1), b"STORED\r\n")
    rt(conn, store(b"replace", k, b"yy", flags=9), b"STORED\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"yy", 9))


# --- append / prepend --------------------------------------------------------

def test_append_prepend_keep_flags(conn, key):
    k = key()
    # reference transcript: flags/exptime of append/prepend are parsed but ignored
    rt(conn, b"set " + k + b" 5 0 1\r\nb\r\n"
             b"append " + k + b" 9 100 2\r\ncd\r\n"
             b"prepend " + k + b" 0 0 1\r\nz\r\n",
       b"STORED\r\nSTORED\r\nSTORED\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"zbcd", 5))


def test_append_prepend_missing_key(conn, key):
    k = key()
    rt(conn, store(b"append", k, b"x") + store(b"prepend", k, b"x"),
       b"NOT_STORED\r\nNOT_STORED\r\n")
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")


def test_append_to_empty_and_empty_append(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"") + store(b"append", k, b"ab") + store(b"prepend", k, b""),
       b"STORED\r\nSTORED\r\nSTORED\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"ab"))


# --- cas ----------------------------------------------------------------------

def test_cas_missing_key_not_found(conn, key):
    k = key()
    rt(conn, b"cas " + k + b" 0 0 1 1\r\nx\r\n", b"NOT_FOUND\r\n")
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")


def test_cas_unique_zero_is_exists(conn, key):
    k = key()
    rt(conn, b"set " + k + b" 0 0 1\r\na\r\ncas " + k + b" 0 0 1 0\r\nb\r\n",
       b"STORED\r\nEXISTS\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"a"))


def test_cas_wrong_then_right_unique(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"a"), b"STORED\r\n")
    u = gets_cas(conn, k)
    rt(conn, store(b"cas", k, b"bad", extra=b"%d" % (u + 1000)), b"EXISTS\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"a"))
    rt(conn, store(b"cas", k, b"good", flags=4, extra=b"%d" % u), b"STORED\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"good", 4))
    # the unique changed, so the old one no longer matches
    rt(conn, store(b"cas", k, b"again", extra=b"%d" % u), b"EXISTS\r\n")
    assert gets_cas(conn, k) != u


def test_cas_changes_after_set_append_prepend_incr_decr_replace(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"1"), b"STORED\r\n")
    seen = [gets_cas(conn, k)]
    for req, rep in [(store(b"set", k, b"2"), b"STORED\r\n"),
                     (store(b"append", k, b"0"), b"STORED\r\n"),
                     (store(b"prepend", k, b"1"), b"STORED\r\n"),
                     (b"incr " + k + b" 1\r\n", b"121\r\n"),
                     (b"decr " + k + b" 1\r\n", b"120\r\n"),
                     (store(b"replace", k, b"7"), b"STORED\r\n")]:
        rt(conn, req, rep)
        seen.append(gets_cas(conn, k))
    assert len(set(seen)) == len(seen), seen


def test_touch_and_gat_do_not_change_cas(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"a"), b"STORED\r\n")
    u = gets_cas(conn, k)
    rt(conn, b"touch " + k + b" 100\r\n", b"TOUCHED\r\n")
    assert gets_cas(conn, k) == u
    rt(conn, b"gat 200 " + k + b"\r\n", hit(k, b"a"))
    rt(conn, b"gats 300 " + k + b"\r\n", value_reply(k, b"a", 0, u) + b"END\r\n")
    assert gets_cas(conn, k) == u
    # and the unique still works for cas
    rt(conn, store(b"cas", k, b"b", extra=b"%d" % u), b"STORED\r\n")


def test_cas_bad_unique_token(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"a"), b"STORED\r\n")
    for tok in (b"x", b"-1", b"18446744073709551616"):
        # the command line is rejected and the data line is then parsed as a command
        rt(conn, b"cas " + k + b" 0 0 1 " + tok + b"\r\ny\r\n",
           b"CLIENT_ERROR bad command line format\r\nERROR\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"a"))


def test_cas_missing_unique_is_error(conn, key):
    # 1.6.18: missing tokens -> ERROR, then the data line is an unknown command
    rt(conn, b"cas " + key() + b" 0 0 1\r\ny\r\n", b"ERROR\r\nERROR\r\n")


# --- values -----------------------------------------------------------------

def test_empty_value(conn, key):
    k = key()
    rt(conn, b"set " + k + b" 3 0 0\r\n\r\n", b"STORED\r\n")
    rt(conn, b"get " + k + b"\r\n", b"VALUE " + k + b" 3 0\r\n\r\nEND\r\n")


def test_binary_safe_value(conn, key):
    k = key()
    v = b"a\x00b\r\nc\rd\ne\r\n\r\nEND\r\n\xff\x80"
    rt(conn, store(b"set", k, v), b"STORED\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, v))


def test_value_that_looks_like_commands(conn, key):
    k = key()
    v = b"get x\r\nset y 0 0 1\r\nz"
    rt(conn, store(b"set", k, v), b"STORED\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, v))


def test_large_value_under_default_limit(conn, key):
    k = key()
    v = bytes(range(256)) * 3900  # 998400 bytes, clearly under 1 MiB
    rt(conn, store(b"set", k, v), b"STORED\r\n", timeout=10)
    rt(conn, b"get " + k + b"\r\n", hit(k, v), timeout=10)


# --- keys ---------------------------------------------------------------------

def test_key_250_bytes_ok(conn, key):
    k = (key() + b"k" * 250)[:250]
    assert len(k) == 250
    rt(conn, store(b"set", k, b"v"), b"STORED\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"v"))
    rt(conn, b"delete " + k + b"\r\n", b"DELETED\r\n")


def test_key_251_bytes_rejected_everywhere(conn, key):
    k = (key() + b"k" * 251)[:251]
    # storage: rejected, data is NOT swallowed (the data line becomes an unknown command)
    rt(conn, b"set " + k + b" 0 0 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n")
    for req in (b"get " + k, b"gets " + k, b"gat 0 " + k, b"touch " + k + b" 0",
                b"delete " + k, b"incr " + k + b" 1", b"decr " + k + b" 1"):
        rt(conn, req + b"\r\n", b"CLIENT_ERROR bad command line format\r\n")


def test_long_key_in_multiget_fails_whole_request(conn, key):
    a = key("a")
    rt(conn, store(b"set", a, b"x"), b"STORED\r\n")
    bad = (key() + b"q" * 251)[:251]
    # NB: sent as its own write (1.6.18 also drops replies of commands pipelined
    # *before* such a get in the same read; memtwin need not copy that bug)
    conn.transact(b"get " + a + b" " + bad + b" " + a + b"\r\n",
                  b"CLIENT_ERROR bad command line format\r\n")
    conn.transact(b"gets " + a + b" " + bad + b"\r\n",
                  b"CLIENT_ERROR bad command line format\r\n")
    # the connection is still usable
    rt(conn, b"get " + a + b"\r\n", hit(a, b"x"))


# --- flags -------------------------------------------------------------------

@pytest.mark.parametrize("flags,shown", [
    (b"0", b"0"), (b"4294967295", b"4294967295"),
    (b"4294967296", b"0"),                       # 32-bit truncation
    (b"4294967297", b"1"),
    (b"18446744073709551615", b"4294967295"),
    (b"+5", b"5"), (b"007", b"7"),
])
def test_flags_accepted(conn, key, flags, shown):
    k = key()
    rt(conn, b"set " + k + b" " + flags + b" 0 1\r\nx\r\n", b"STORED\r\n")
    rt(conn, b"get " + k + b"\r\n", b"VALUE " + k + b" " + shown + b" 1\r\nx\r\nEND\r\n")


@pytest.mark.parametrize("flags", [b"-1", b"x", b"1x", b"0x10", b"18446744073709551616"])
def test_flags_rejected(conn, key, flags):
    k = key()
    rt(conn, b"set " + k + b" " + flags + b" 0 1\r\nx\r\n",
       b"CLIENT_ERROR bad command line format\r\nERROR\r\n")
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")


@pytest.mark.parametrize("exptime", [b"x", b"1x", b""])
def test_bad_exptime_token(conn, key, exptime):
    k = key()
    if exptime == b"":
        # missing token altogether -> ERROR (1.6.18), data line -> ERROR
        rt(conn, b"set " + k + b" 0 1\r\nx\r\n", b"ERROR\r\nERROR\r\n")
    else:
        rt(conn, b"set " + k + b" 0 " + exptime + b" 1\r\nx\r\n",
           b"CLIENT_ERROR bad command line format\r\nERROR\r\n")
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")


# --- bytes token -------------------------------------------------------------

@pytest.mark.parametrize("nbytes", [b"x", b"-1", b"1x", b"2147483646", b"2147483647",
                                    b"2147483648", b"4294967295", b"99999999999999999999"])
def test_bad_bytes_token(conn, key, nbytes):
    k = key()
    # no data is sent: the server must not wait for (or swallow) a data block
    rt(conn, b"set " + k + b" 0 0 " + nbytes + b"\r\n",
       b"CLIENT_ERROR bad command line format\r\n")
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")


def test_bytes_token_leading_plus_and_zeros(conn, key):
    k = key()
    rt(conn, b"set " + k + b" 0 0 +2\r\nab\r\nappend " + k + b" 0 0 01\r\nc\r\n",
       b"STORED\r\nSTORED\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"abc"))


def test_set_missing_tokens_is_error(conn, key):
    k = key()
    rt(conn, b"set " + k + b" 0 0\r\n", b"ERROR\r\n")
    rt(conn, b"set\r\n", b"ERROR\r\n")
    rt(conn, b"add " + k + b"\r\n", b"ERROR\r\n")


def test_too_many_tokens_is_error(conn, key):
    k = key()
    rt(conn, b"set " + k + b" 0 0 1 noreply extra\r\nx\r\n", b"ERROR\r\nERROR\r\n")
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")


def test_huge_bytes_does_not_kill_server(conn, connect, key):
    """`bytes` = INT_MAX-2 is syntactically valid; the item can never fit, so the
    server must swallow (not buffer) the data. Other connections keep working."""
    k = key()
    conn.send(b"set " + k + b" 0 0 2147483645\r\n" + b"z" * 100000)
    # Another key: the refusal unlinks k whenever the server gets to it (memcached
    # replies only after swallowing), which would race a set of k here.
    k2 = key("other")
    other = connect()
    rt(other, store(b"set", k2, b"ok"), b"STORED\r\n")
    rt(other, b"get " + k2 + b"\r\n", hit(k2, b"ok"))


# --- data chunk --------------------------------------------------------------

def test_bad_data_chunk_then_error_for_leftover(conn, key):
    k = key()
    # reads exactly <bytes>+2 ("abc\r"), rejects it; the leftover "\n" is an empty command
    rt(conn, b"set " + k + b" 0 0 2\r\nabc\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\n")
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")


def test_bad_data_chunk_consumes_exactly_bytes_plus_two(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"z"), b"STORED\r\n")
    # data block "abXY" (2+2 bytes) is bad; "get k" right after it is a real command.
    # The old value survives a bad chunk.
    conn.transact(b"set " + k + b" 0 0 2\r\nabXYget " + k + b"\r\n",
                  b"CLIENT_ERROR bad data chunk\r\n" + hit(k, b"z"))
    conn.transact(b"append " + k + b" 0 0 2\r\nab\nXget " + k + b"\r\n",
                  b"CLIENT_ERROR bad data chunk\r\n" + hit(k, b"z"))
    conn.transact(b"set " + k + b" 0 0 2\r\nabcdefget " + k + b"\r\n",
                  b"CLIENT_ERROR bad data chunk\r\nERROR\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"z"))


def test_bad_data_chunk_with_bare_newline_terminator(conn, key):
    k = key()
    # "x\n" is only 2 of the 3 bytes the server needs; add one more line to complete it
    conn.transact(b"set " + k + b" 0 0 1\r\nx\nget " + k + b"\r\n",
                  b"CLIENT_ERROR bad data chunk\r\nERROR\r\n")
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")


# --- oversize (default -I 1m) ----------------------------------------------

def test_oversize_value_rejected_swallowed_and_old_item_deleted(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"old"), b"STORED\r\n")
    big = b"B" * 1048577
    # the data block is swallowed: nothing inside it is executed
    conn.send(b"set " + k + b" 0 0 %d\r\n" % len(big) + big + b"\r\n")
    rt(conn, b"get " + k + b"\r\n", b"SERVER_ERROR object too large for cache\r\nEND\r\n",
       timeout=10)


def test_oversize_value_containing_commands_is_swallowed(conn, key):
    k = key()
    inner = b"set " + k + b" 0 0 1\r\nI\r\n"
    big = inner * (2 * 1048576 // len(inner))
    conn.send(b"set " + key("x") + b" 0 0 %d\r\n" % len(big) + big + b"\r\n")
    rt(conn, b"get " + k + b"\r\n", b"SERVER_ERROR object too large for cache\r\nEND\r\n",
       timeout=10)


@pytest.mark.parametrize("cmd", [b"add", b"replace", b"append", b"prepend", b"cas"])
def test_oversize_other_storage_commands(conn, key, cmd):
    k = key()
    big = b"C" * 1100000
    extra = b" 1" if cmd == b"cas" else b""
    conn.send(b"%s %s 0 0 %d%s\r\n" % (cmd, k, len(big), extra) + big + b"\r\n")
    rt(conn, b"get " + k + b"\r\n", b"SERVER_ERROR object too large for cache\r\nEND\r\n",
       timeout=10)
