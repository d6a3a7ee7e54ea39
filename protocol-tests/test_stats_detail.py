"""`stats detail on|off|dump`: per-prefix counters, text and binary.

What counts as a get, hit, set or del was measured on memcached 1.6.18 and is
pinned here: these tests run against it too (spawned with --server-bin).
"""
import re

from binproto import (
    ADD, APPEND, DELETE, DELETEQ, GAT, GATQ, GET, GETK, GETQ, INCREMENT, NOOP, REPLACE, SET,
    SETQ, STAT, TOUCH, call, delta_extras, exptime_extras, read_packet, req, store_extras,
)
from textproto import rt

ROW = re.compile(rb"PREFIX (\S*) get (\d+) hit (\d+) set (\d+) del (\d+)")


def parse_dump(text):
    """{prefix: (get, hit, set, del)} of a dump that ends with END."""
    assert text.endswith(b"END\r\n"), text
    rows = {}
    for line in text[: -len(b"END\r\n")].split(b"\r\n"):
        if not line:
            continue
        m = ROW.fullmatch(line)
        assert m, line
        rows[m.group(1).decode()] = tuple(int(g) for g in m.groups()[1:])
    return rows


def dump(c):
    c.send(b"stats detail dump\r\n")
    return parse_dump(c.read_until(b"END\r\n"))


def settle(c):
    """Wait for the replies so far (a noreply set has none)."""
    c.send(b"mn\r\n")
    c.read_until(b"MN\r\n")


def test_text_commands_count_by_prefix(spawn):
    c = spawn().connect()
    rt(c, b"stats detail on\r\n", b"OK\r\n")
    c.send(
        b"set a:1 0 0 1\r\nx\r\nset nodelim 0 0 1\r\nx\r\nget a:1 a:2 nodelim\r\n"
        b"delete a:3\r\nadd b:1 0 0 1\r\nx\r\nadd b:1 0 0 1\r\nx\r\nincr b:1 1\r\n"
        b"touch b:1 10\r\ngets b:1\r\nmg b:1 v\r\nmg b:9 v\r\nms c:1 1\r\nx\r\nmd c:1\r\n"
        b"append c:2 0 0 1\r\nx\r\ncas b:1 0 0 1 999\r\nx\r\nset ::x 0 0 1\r\nx\r\n"
        b"set :lead 0 0 1\r\nx\r\ngat 0 b:1 zz:1\r\nset k:2 0 0 1 noreply\r\nx\r\n"
    )
    settle(c)
    assert dump(c) == {
        "": (0, 0, 2, 0),
        "a": (2, 1, 1, 1),
        "b": (2, 2, 3, 0),
        "c": (0, 0, 1, 0),
        "k": (0, 0, 1, 0),
        "zz": (1, 0, 0, 0),
    }


def test_off_keeps_counts_and_reset_clears_them(spawn):
    c = spawn().connect()
    rt(c, b"stats detail dump\r\n", b"END\r\n")
    rt(c, b"get a:1\r\n", b"END\r\n")
    assert dump(c) == {}, "off by default"
    rt(c, b"stats detail on\r\n", b"OK\r\n")
    rt(c, b"get a:1\r\n", b"END\r\n")
    rt(c, b"stats detail off\r\n", b"OK\r\n")
    rt(c, b"get a:1\r\n", b"END\r\n")
    assert dump(c) == {"a": (1, 0, 0, 0)}
    rt(c, b"stats reset\r\n", b"RESET\r\n")
    rt(c, b"stats detail dump\r\n", b"END\r\n")


def test_dash_d_sets_the_delimiter_and_turns_counting_on(spawn):
    c = spawn("-D", "_").connect()
    rt(c, b"set sess_1 0 0 1\r\nx\r\n", b"STORED\r\n")
    rt(c, b"set a:1 0 0 1\r\nx\r\n", b"STORED\r\n")
    assert dump(c) == {"sess": (0, 0, 1, 0)}


def test_binary_commands_count_by_prefix(spawn):
    srv = spawn()
    text = srv.connect()
    rt(text, b"stats detail on\r\n", b"OK\r\n")
    b = srv.connect()
    assert call(b, SET, b"p:1", store_extras(), b"v").status == 0
    call(b, GET, b"p:1")
    call(b, GET, b"p:2")
    call(b, GETK, b"p:1")
    call(b, DELETE, b"p:3")
    call(b, GAT, b"p:1", exptime_extras(0))
    call(b, ADD, b"add:1", store_extras(), b"v")
    call(b, REPLACE, b"rep:1", store_extras(), b"v")
    call(b, APPEND, b"app:1", b"", b"v")
    call(b, INCREMENT, b"inc:1", delta_extras(1, 0, 0))
    call(b, TOUCH, b"tch:1", exptime_extras(0))
    for op, key, extras, value in [
        (GETQ, b"gq:1", b"", b""),
        (SETQ, b"sq:1", store_extras(), b"v"),
        (DELETEQ, b"dq:1", b"", b""),
        (GATQ, b"gatq:1", exptime_extras(0), b""),
    ]:
        b.send(req(op, key, extras, value))
    # Quiet commands answer errors only; a NOOP closes the batch.
    b.send(req(NOOP))
    while read_packet(b).opcode != NOOP:
        pass
    assert dump(text) == {
        "p": (4, 3, 1, 1),
        "add": (0, 0, 1, 0),
        "rep": (0, 0, 1, 0),
        "app": (0, 0, 1, 0),
        "tch": (1, 0, 0, 0),
        "gq": (1, 0, 0, 0),
        "sq": (0, 0, 1, 0),
        "dq": (0, 0, 0, 1),
        "gatq": (1, 0, 0, 0),
    }
    # The binary STAT "detail dump" carries the same text in one "detailed" stat.
    b.send(req(STAT, b"detail dump"))
    p = read_packet(b)
    assert p.key == b"detailed" and parse_dump(p.value) == dump(text)
    assert read_packet(b).key == b""
