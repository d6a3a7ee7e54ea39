"""Text protocol: delete, touch, gat/gats, version, verbosity, quit, shutdown,
noreply, unknown commands (checked against memcached 1.6.18)."""
import re

import pytest

from textproto import rt, store, hit, value_reply, gets_cas


# --- delete -------------------------------------------------------------------

def test_delete(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"x"), b"STORED\r\n")
    rt(conn, b"delete " + k + b"\r\n", b"DELETED\r\n")
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")
    rt(conn, b"delete " + k + b"\r\n", b"NOT_FOUND\r\n")


def test_delete_legacy_zero_time(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"x"), b"STORED\r\n")
    rt(conn, b"delete " + k + b" 0\r\n", b"DELETED\r\n")
    rt(conn, b"delete " + k + b" 0\r\n", b"NOT_FOUND\r\n")


@pytest.mark.parametrize("arg", [b"10", b"x", b"00", b"0 0", b"noreply 0"])
def test_delete_with_time_rejected(conn, key, arg):
    k = key()
    rt(conn, store(b"set", k, b"x"), b"STORED\r\n")
    # two spaces after "format." -- 1.6.18 exact string
    rt(conn, b"delete " + k + b" " + arg + b"\r\n",
       b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"x"))


def test_delete_without_key_is_error(conn):
    rt(conn, b"delete\r\n", b"ERROR\r\n")


# --- touch ----------------------------------------------------------------------

def test_touch(conn, key):
    k = key()
    rt(conn, b"touch " + k + b" 10\r\n", b"NOT_FOUND\r\n")
    rt(conn, store(b"set", k, b"v", flags=4), b"STORED\r\n")
    rt(conn, b"touch " + k + b" 100\r\n", b"TOUCHED\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"v", 4))


@pytest.mark.parametrize("exptime", [b"x", b"1x"])
def test_touch_invalid_exptime(conn, key, exptime):
    k = key()
    rt(conn, store(b"set", k, b"v"), b"STORED\r\n")
    rt(conn, b"touch " + k + b" " + exptime + b"\r\n", b"CLIENT_ERROR invalid exptime argument\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"v"))


def test_touch_missing_exptime_is_error(conn, key):
    rt(conn, b"touch " + key() + b"\r\n", b"ERROR\r\n")
    rt(conn, b"touch\r\n", b"ERROR\r\n")


def test_touch_negative_expires(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"v"), b"STORED\r\n")
    rt(conn, b"touch " + k + b" -1\r\n", b"TOUCHED\r\n")
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")


def test_touch_absolute_past_expires(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"v"), b"STORED\r\n")
    rt(conn, b"touch " + k + b" 2678400\r\n", b"TOUCHED\r\n")
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")


# --- gat / gats -------------------------------------------------------------------

def test_gat_gats(conn, key):
    a, b, m = key("a"), key("b"), key("m")
    rt(conn, store(b"set", a, b"va", flags=1) + store(b"set", b, b"vb", flags=2),
       b"STORED\r\nSTORED\r\n")
    ca, cb = gets_cas(conn, a), gets_cas(conn, b)
    rt(conn, b"gat 100 " + a + b"\r\n", hit(a, b"va", 1))
    rt(conn, b"gat 100 " + a + b" " + m + b" " + b + b"\r\n",
       value_reply(a, b"va", 1) + value_reply(b, b"vb", 2) + b"END\r\n")
    rt(conn, b"gats 100 " + b + b" " + m + b" " + a + b"\r\n",
       value_reply(b, b"vb", 2, cb) + value_reply(a, b"va", 1, ca) + b"END\r\n")


def test_gat_miss(conn, key):
    rt(conn, b"gat 0 " + key() + b"\r\n", b"END\r\n")
    rt(conn, b"gats 0 " + key() + b"\r\n", b"END\r\n")


def test_gat_no_key_and_no_args(conn):
    rt(conn, b"gat 10\r\n", b"END\r\n")      # 1.6.18: no key -> just END
    rt(conn, b"gat\r\n", b"ERROR\r\n")
    rt(conn, b"gats\r\n", b"ERROR\r\n")


@pytest.mark.parametrize("exptime", [b"x", b"1x"])
def test_gat_invalid_exptime(conn, key, exptime):
    k = key()
    rt(conn, store(b"set", k, b"v"), b"STORED\r\n")
    rt(conn, b"gat " + exptime + b" " + k + b"\r\n", b"CLIENT_ERROR invalid exptime argument\r\n")
    rt(conn, b"gats " + exptime + b" " + k + b"\r\n", b"CLIENT_ERROR invalid exptime argument\r\n")


def test_gat_negative_returns_then_expires(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"v"), b"STORED\r\n")
    rt(conn, b"gat -1 " + k + b"\r\n", hit(k, b"v"))
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")


# --- version / verbosity / quit / shutdown ------------------------------------------

def test_version(conn):
    conn.send(b"version\r\n")
    line = conn.read_line()
    assert re.match(rb"^VERSION \S+\r\n$", line), line
    rt(conn, b"", b"")


def test_verbosity(conn):
    rt(conn, b"verbosity 1\r\n", b"OK\r\n")
    rt(conn, b"verbosity 0\r\n", b"OK\r\n")
    rt(conn, b"verbosity 0  \r\n", b"OK\r\n")
    rt(conn, b"verbosity 0 noreply\r\n", b"")


def test_verbosity_errors(conn):
    rt(conn, b"verbosity\r\n", b"ERROR\r\n")
    rt(conn, b"verbosity x\r\n", b"CLIENT_ERROR bad command line format\r\n")
    rt(conn, b"verbosity -1\r\n", b"CLIENT_ERROR bad command line format\r\n")


# --- slabs automove (memtwin has one slab class: accepted, nothing to move) ------

@pytest.mark.parametrize("line,reply", [
    (b"slabs automove 0", b"OK\r\n"),
    (b"slabs automove 2", b"OK\r\n"),
    (b"slabs automove 1 2", b"OK\r\n"),
    (b"slabs automove ratio 0.5", b"OK\r\n"),
    (b"slabs automove banana", b"CLIENT_ERROR bad command line format\r\n"),
    (b"slabs automove -1", b"CLIENT_ERROR bad command line format\r\n"),
    (b"slabs automove 3", b"ERROR\r\n"),
    (b"slabs automove", b"ERROR\r\n"),
    (b"slabs automove ratio", b"ERROR\r\n"),
    (b"slabs automove ratio x", b"ERROR\r\n"),
    (b"slabs", b"ERROR\r\n"),
    (b"slabs banana 1", b"ERROR\r\n"),
    (b"slabs automove 1 noreply", b""),
    (b"slabs automove 3 noreply", b""),
    (b"slabs automove banana noreply", b""),
    # memcached's default, so the server is left as it was found
    (b"slabs automove 1", b"OK\r\n"),
])
def test_slabs_automove(conn, line, reply):
    rt(conn, line + b"\r\n", reply)


def test_quit_closes_without_reply(conn):
    conn.send(b"quit\r\n")
    conn.expect_closed()


def test_quit_after_pipelined_get(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"v"), b"STORED\r\n")
    # replies before quit are delivered; commands after quit are not executed
    conn.send(b"get " + k + b"\r\nquit\r\ndelete " + k + b"\r\n")
    conn.expect(hit(k, b"v"))
    conn.expect_closed()


def test_quit_with_argument_still_quits(conn):
    conn.send(b"quit now\r\n")
    conn.expect_closed()


def test_shutdown_not_enabled(conn, key):
    rt(conn, b"shutdown\r\n", b"ERROR: shutdown not enabled\r\n")
    rt(conn, b"shutdown graceful\r\n", b"ERROR: shutdown not enabled\r\n")
    # the server is still up
    k = key()
    rt(conn, store(b"set", k, b"v"), b"STORED\r\n")


# --- noreply ---------------------------------------------------------------------

def test_noreply_storage_commands(conn, key):
    k = key()
    # each noreply command is silent: the only replies are those of the gets
    rt(conn, store(b"set", k, b"a", flags=1, extra=b"noreply") + b"get " + k + b"\r\n",
       hit(k, b"a", 1))
    rt(conn, store(b"add", k, b"b", extra=b"noreply") + b"get " + k + b"\r\n", hit(k, b"a", 1))
    rt(conn, store(b"add", key("new"), b"n", extra=b"noreply") + b"get " + key("new") + b"\r\n",
       hit(key("new"), b"n"))
    rt(conn, store(b"replace", k, b"c", flags=2, extra=b"noreply") + b"get " + k + b"\r\n",
       hit(k, b"c", 2))
    rt(conn, store(b"replace", key("none"), b"c", extra=b"noreply") + b"get " + key("none") + b"\r\n",
       b"END\r\n")
    rt(conn, store(b"append", k, b"d", extra=b"noreply") + b"get " + k + b"\r\n", hit(k, b"cd", 2))
    rt(conn, store(b"prepend", k, b"e", extra=b"noreply") + b"get " + k + b"\r\n", hit(k, b"ecd", 2))
    rt(conn, store(b"append", key("none"), b"d", extra=b"noreply"), b"")


def test_noreply_cas(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"a"), b"STORED\r\n")
    u = gets_cas(conn, k)
    rt(conn, store(b"cas", k, b"bad", extra=b"%d noreply" % (u + 1)) + b"get " + k + b"\r\n",
       hit(k, b"a"))
    rt(conn, store(b"cas", k, b"good", extra=b"%d noreply" % u) + b"get " + k + b"\r\n",
       hit(k, b"good"))
    rt(conn, store(b"cas", key("none"), b"x", extra=b"1 noreply"), b"")


def test_noreply_delete_incr_decr_touch(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"10"), b"STORED\r\n")
    rt(conn, b"incr " + k + b" 5 noreply\r\nget " + k + b"\r\n", hit(k, b"15"))
    rt(conn, b"decr " + k + b" 3 noreply\r\nget " + k + b"\r\n", hit(k, b"12"))
    rt(conn, b"incr " + key("none") + b" 1 noreply\r\n", b"")
    rt(conn, b"touch " + k + b" 100 noreply\r\nget " + k + b"\r\n", hit(k, b"12"))
    rt(conn, b"touch " + key("none") + b" 100 noreply\r\n", b"")
    rt(conn, b"delete " + k + b" noreply\r\nget " + k + b"\r\n", b"END\r\n")
    rt(conn, b"delete " + k + b" noreply\r\n", b"")
    rt(conn, store(b"set", k, b"x") + b"delete " + k + b" 0 noreply\r\nget " + k + b"\r\n",
       b"STORED\r\nEND\r\n")


def test_noreply_silence_without_followup(conn, key):
    k = key()
    conn.send(store(b"set", k, b"v", extra=b"noreply"))
    conn.expect_nothing()
    rt(conn, b"get " + k + b"\r\n", hit(k, b"v"))


def test_noreply_suppresses_errors_of_that_command(conn, key):
    """1.6.18 suppresses the error line of a noreply command too (pymemcache sends
    noreply by default: an unexpected error line would desync it)."""
    k = key()
    rt(conn, store(b"set", k, b"x"), b"STORED\r\n")
    rt(conn, b"incr " + k + b" 1 noreply\r\n", b"")                 # non-numeric value
    rt(conn, b"incr " + k + b" x noreply\r\n", b"")                 # bad delta
    rt(conn, b"touch " + k + b" x noreply\r\n", b"")                # bad exptime
    rt(conn, b"delete " + k + b" 10 noreply\r\n", b"")              # legacy delete time
    rt(conn, b"verbosity x noreply\r\n", b"")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"x"))


def test_noreply_oversize_is_silent_and_swallowed(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"old"), b"STORED\r\n")
    big = b"get " * 300000  # 1.2 MB, and every chunk of it looks like a command
    conn.send(b"set " + k + b" 0 0 %d noreply\r\n" % len(big) + big + b"\r\n")
    rt(conn, b"get " + k + b"\r\n", b"END\r\n", timeout=10)


def test_noreply_bad_data_chunk(conn, key):
    k = key()
    # bad chunk error is suppressed; the leftover "\n" still yields ERROR
    rt(conn, b"set " + k + b" 0 0 1 noreply\r\nxx\r\n", b"ERROR\r\n")
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")


def test_noreply_bad_command_line(conn, key):
    k = key()
    # bad flags: error suppressed, the data line is parsed as a command -> ERROR
    rt(conn, b"set " + k + b" x 0 1 noreply\r\nx\r\n", b"ERROR\r\n")
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")


def test_noreply_only_as_last_token(conn, key):
    k = key()
    # "noreply" where <bytes> is expected: a bad token, and the error is suppressed
    rt(conn, b"set " + k + b" 0 0 noreply\r\n", b"")
    # extra non-noreply token in the noreply slot is ignored: a normal reply is sent
    rt(conn, b"set " + k + b" 0 0 1 norepl\r\nx\r\n", b"STORED\r\n")


# --- unknown / malformed commands ------------------------------------------------

@pytest.mark.parametrize("line", [
    b"bogus", b"GET k", b"Get k", b"SET k 0 0 1", b"VERSION", b"gett k", b"getk",
    b"stat", b"get\tk",
])
def test_unknown_command_is_error(conn, line):
    rt(conn, line + b"\r\n", b"ERROR\r\n")


@pytest.mark.parametrize("line", [b"\r\n", b"\n", b"   \r\n", b" \n"])
def test_empty_line_is_error(conn, line):
    rt(conn, line, b"ERROR\r\n")


def test_error_does_not_close_connection(conn, key):
    k = key()
    rt(conn, b"bogus\r\nbogus\r\n" + store(b"set", k, b"v") + b"get " + k + b"\r\n",
       b"ERROR\r\nERROR\r\nSTORED\r\n" + hit(k, b"v"))
