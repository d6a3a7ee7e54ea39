"""Text protocol framing: line endings, whitespace, long lines, the HTTP guard and
pipelining (checked against memcached 1.6.18)."""
import time

import pytest

from textproto import rt, store, hit, value_reply


def test_bare_newline_line_endings(conn, key):
    k = key()
    # command lines may end in a bare \n; the data block still needs \r\n
    rt(conn, b"set " + k + b" 0 0 1\nx\r\nget " + k + b"\n", b"STORED\r\n" + hit(k, b"x"))
    rt(conn, b"incr " + key("n") + b" 1\ndelete " + k + b"\nversion_bogus\n",
       b"NOT_FOUND\r\nDELETED\r\nERROR\r\n")


def test_trailing_spaces_tolerated(conn, key):
    k = key()
    rt(conn, b"set " + k + b" 1 0 1 \r\nx\r\n", b"STORED\r\n")
    rt(conn, b"get " + k + b" \r\n", hit(k, b"x", 1))
    conn.send(b"gets " + k + b"   \r\n")
    conn.expect(b"VALUE " + k + b" 1 1 ")
    assert conn.read_line().rstrip(b"\r\n").isdigit()   # the cas unique
    conn.expect(b"x\r\nEND\r\n")
    rt(conn, b"delete " + k + b" \r\n", b"DELETED\r\n")
    rt(conn, b"touch " + k + b" 0 \r\n", b"NOT_FOUND\r\n")


def test_stats_with_trailing_space(conn):
    # pylibmc / memcstat send "stats \r\n"
    conn.send(b"stats \r\n")
    first = conn.read_line()
    assert first.startswith(b"STAT pid "), first
    conn.read_until(b"\r\nEND\r\n")
    rt(conn, b"", b"")


def test_runs_of_spaces_between_tokens(conn, key):
    k = key()
    rt(conn, b"set  " + k + b"   7  0    1  \r\ny\r\n", b"STORED\r\n")
    rt(conn, b"get   " + k + b"  " + key("miss") + b"   " + k + b"\r\n",
       value_reply(k, b"y", 7) + value_reply(k, b"y", 7) + b"END\r\n")
    rt(conn, b"gat  100   " + k + b"  \r\n", hit(k, b"y", 7))
    rt(conn, b"incr  " + key("m") + b"   1\r\n", b"NOT_FOUND\r\n")


def test_leading_space_tolerated(conn, key):
    k = key()
    rt(conn, b" set " + k + b" 0 0 1\r\nx\r\n  get " + k + b"\r\n", b"STORED\r\n" + hit(k, b"x"))


# --- the 2048-byte rule ------------------------------------------------------------

def test_long_line_without_newline_closes(conn, key):
    # > 2048 bytes of a non-get command and no \n: the server gives up on the client
    conn.send(b"set " + key() + b" " + b"a" * 3000)
    conn.expect_closed()


def test_long_junk_without_newline_closes(conn):
    conn.send(b"x" * 2500)
    conn.expect_closed()


def test_short_partial_line_waits(conn, key):
    k = key()
    # under the limit: the server just waits for the rest of the line
    conn.send(b"set " + k + b" 0 0 1" + b" " * 1900)
    conn.expect_nothing(0.3)
    rt(conn, b"\r\nx\r\n", b"STORED\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"x"))


def test_long_get_line_allowed(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"v"), b"STORED\r\n")
    keys = [key("%04d" % i) for i in range(250)]   # ~4500 bytes of keys
    line = b"get " + b" ".join(keys[:100] + [k] + keys[100:]) + b"\r\n"
    assert len(line) > 4000
    # sent in two parts so the server really sees > 2048 bytes with no newline
    conn.send(line[:3000])
    conn.expect_nothing(0.3)
    rt(conn, line[3000:], hit(k, b"v"))


def test_long_gets_line_allowed(conn, key):
    keys = [key("%04d" % i) for i in range(200)]
    line = b"gets " + b" ".join(keys) + b"\r\n"
    conn.send(line[:3000])
    conn.expect_nothing(0.3)
    rt(conn, line[3000:], b"END\r\n")


def test_long_get_line_in_one_write(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"v"), b"STORED\r\n")
    line = b"get " + b" ".join([key("%04d" % i) for i in range(200)] + [k]) + b"\r\n"
    rt(conn, line, hit(k, b"v"))


# --- HTTP guard ------------------------------------------------------------------

@pytest.mark.parametrize("req", [
    b"GET / HTTP/1.0\r\n",
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"PUT /x HTTP/1.1\r\n",
    b"DELETE HTTP/1.1\r\n",
    b"foo bar HTTP/\r\n",
])
def test_http_request_closes_without_reply(conn, req):
    conn.send(req)
    conn.expect_closed()


def test_http_like_token_on_known_command_is_normal(conn, key):
    # the guard only applies to unknown commands
    rt(conn, b"get / HTTP/1.0\r\n", b"END\r\n")
    rt(conn, b"foo HTTPx\r\n", b"ERROR\r\n")


# --- pipelining -------------------------------------------------------------------

def test_pipeline_mixed(conn, key):
    a, b = key("a"), key("b")
    req = (store(b"set", a, b"1") + b"get " + a + b"\r\n" + b"incr " + a + b" 41\r\n"
           + store(b"add", a, b"x") + b"bogus\r\n" + store(b"set", b, b"bb", flags=2)
           + b"get " + a + b" " + b + b"\r\n" + b"delete " + a + b"\r\n"
           + b"delete " + a + b"\r\n" + b"touch " + b + b" 0\r\n")
    exp = (b"STORED\r\n" + hit(a, b"1") + b"42\r\n" + b"NOT_STORED\r\n" + b"ERROR\r\n"
           + b"STORED\r\n" + value_reply(a, b"42") + value_reply(b, b"bb", 2) + b"END\r\n"
           + b"DELETED\r\n" + b"NOT_FOUND\r\n" + b"TOUCHED\r\n")
    rt(conn, req, exp)


def test_pipeline_100_commands(conn, key):
    req, exp = b"", b""
    for i in range(50):
        k = key("%02d" % i)
        v = b"v%d" % i * (i % 7 + 1)
        req += store(b"set", k, v, flags=i) + b"get " + k + b"\r\n"
        exp += b"STORED\r\n" + hit(k, v, i)
    rt(conn, req, exp)


def test_pipeline_byte_by_byte(conn, key):
    """Replies must not depend on how the request is split into packets."""
    k = key()
    req = store(b"set", k, b"a\r\nb", flags=3) + b"get " + k + b"\r\n"
    for i in range(len(req)):
        conn.send(req[i:i + 1])
        time.sleep(0.002)
    conn.expect(b"STORED\r\n" + hit(k, b"a\r\nb", 3))


def test_pipeline_large_many_gets(conn, key):
    k = key()
    v = b"x" * 10000
    rt(conn, store(b"set", k, v), b"STORED\r\n")
    # 200 gets of a 10 KB value: ~2 MB of replies, the server must not drop or reorder
    rt(conn, (b"get " + k + b"\r\n") * 200, hit(k, v) * 200, timeout=10)
