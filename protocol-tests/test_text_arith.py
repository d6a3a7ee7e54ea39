"""Text protocol: incr / decr (checked against memcached 1.6.18)."""
import pytest

from textproto import rt, store, hit


def test_incr_decr_basic(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"5", flags=3), b"STORED\r\n")
    rt(conn, b"incr " + k + b" 1\r\n", b"6\r\n")
    rt(conn, b"incr " + k + b" 10\r\n", b"16\r\n")
    rt(conn, b"decr " + k + b" 6\r\n", b"10\r\n")
    # flags preserved; shorter result space padded to the old length
    rt(conn, b"decr " + k + b" 1\r\n", b"9\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"9 ", 3))


def test_incr_decr_missing_key(conn, key):
    k = key()
    rt(conn, b"incr " + k + b" 1\r\n", b"NOT_FOUND\r\n")
    rt(conn, b"decr " + k + b" 1\r\n", b"NOT_FOUND\r\n")
    rt(conn, b"get " + k + b"\r\n", b"END\r\n")


def test_decr_shorter_result_space_padded(conn, key):
    # golden transcript
    k = key()
    rt(conn, b"set " + k + b" 0 0 3\r\n100\r\ndecr " + k + b" 1\r\nget " + k + b"\r\n",
       b"STORED\r\n99\r\n" + hit(k, b"99 "))


def test_incr_leading_zeros_padded(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"007"), b"STORED\r\n")
    rt(conn, b"incr " + k + b" 1\r\n", b"8\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"8  "))


def test_incr_longer_result_grows(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"9", flags=2), b"STORED\r\n")
    rt(conn, b"incr " + k + b" 1\r\n", b"10\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"10", 2))
    rt(conn, store(b"set", k, b"99"), b"STORED\r\n")
    rt(conn, b"incr " + k + b" 1\r\n", b"100\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"100"))


def test_incr_wraps_at_2_64(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"18446744073709551615"), b"STORED\r\n")
    rt(conn, b"incr " + k + b" 1\r\n", b"0\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"0" + b" " * 19))
    rt(conn, store(b"set", k, b"5"), b"STORED\r\n")
    rt(conn, b"incr " + k + b" 18446744073709551615\r\n", b"4\r\n")


def test_decr_saturates_at_zero(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"5"), b"STORED\r\n")
    rt(conn, b"decr " + k + b" 10\r\n", b"0\r\n")
    rt(conn, b"decr " + k + b" 1\r\n", b"0\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"0"))
    rt(conn, store(b"set", k, b"18446744073709551615"), b"STORED\r\n")
    rt(conn, b"decr " + k + b" 18446744073709551615\r\n", b"0\r\n")


def test_incr_zero_delta_and_delta_forms(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"10"), b"STORED\r\n")
    rt(conn, b"incr " + k + b" 0\r\n", b"10\r\n")
    rt(conn, b"incr " + k + b" 01\r\n", b"11\r\n")
    rt(conn, b"incr " + k + b" +3\r\n", b"14\r\n")


@pytest.mark.parametrize("value,result", [
    (b"+1", b"2"),      # strtoull accepts a leading '+'
    (b"1 ", b"2"),      # trailing space tolerated
    (b" 1", b"2"),      # leading whitespace tolerated (strtoull)
    (b"0", b"1"),
])
def test_incr_accepted_value_forms(conn, key, value, result):
    k = key()
    rt(conn, store(b"set", k, value), b"STORED\r\n")
    rt(conn, b"incr " + k + b" 1\r\n", result + b"\r\n")


@pytest.mark.parametrize("value", [b"x", b"1x", b"", b"-1", b"18446744073709551616", b"1.5"])
def test_incr_non_numeric_value(conn, key, value):
    k = key()
    rt(conn, store(b"set", k, value, flags=1), b"STORED\r\n")
    for cmd in (b"incr", b"decr"):
        rt(conn, cmd + b" " + k + b" 1\r\n",
           b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, value, 1))


@pytest.mark.parametrize("delta", [b"x", b"-1", b"18446744073709551616", b"1x", b"99999999999999999999999"])
def test_incr_invalid_delta(conn, key, delta):
    k = key()
    rt(conn, store(b"set", k, b"5"), b"STORED\r\n")
    for cmd in (b"incr", b"decr"):
        rt(conn, cmd + b" " + k + b" " + delta + b"\r\n",
           b"CLIENT_ERROR invalid numeric delta argument\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"5"))


def test_invalid_delta_on_missing_key(conn, key):
    # the delta is validated before the lookup
    rt(conn, b"incr " + key() + b" x\r\n", b"CLIENT_ERROR invalid numeric delta argument\r\n")


def test_incr_missing_delta_is_error(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"5"), b"STORED\r\n")
    rt(conn, b"incr " + k + b"\r\n", b"ERROR\r\n")
    rt(conn, b"decr " + k + b"\r\n", b"ERROR\r\n")
    rt(conn, b"incr\r\n", b"ERROR\r\n")
    rt(conn, b"get " + k + b"\r\n", hit(k, b"5"))


def test_incr_golden_non_numeric(conn, key):
    k = key()
    rt(conn, b"set " + k + b" 0 0 1\r\nx\r\nincr " + k + b" 1\r\n",
       b"STORED\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
