"""Text protocol: the stats family (checked against memcached 1.6.18).

Counter tests run on a private (spawned) server so other traffic cannot move them.
"""
import re
import time

import pytest

from textproto import rt, store, hit, read_stats, stats, private_server_fixture

# one private server shared by the counter tests below (they only look at deltas)
private = private_server_fixture()

GENERAL_KEYS = """pid uptime time version pointer_size rusage_user rusage_system max_connections
curr_connections total_connections rejected_connections cmd_get cmd_set cmd_flush cmd_touch
get_hits get_misses get_expired get_flushed delete_misses delete_hits incr_misses incr_hits
decr_misses decr_hits cas_misses cas_hits cas_badval touch_hits touch_misses store_too_large
store_no_memory auth_cmds auth_errors bytes_read bytes_written limit_maxbytes accepting_conns
threads bytes curr_items total_items evictions reclaimed expired_unfetched
evicted_unfetched""".split()

COUNTERS = """cmd_get cmd_set cmd_flush cmd_touch get_hits get_misses get_expired get_flushed
delete_misses delete_hits incr_misses incr_hits decr_misses decr_hits cas_misses cas_hits
cas_badval touch_hits touch_misses store_too_large store_no_memory""".split()


def test_stats_general_keys_and_format(conn):
    conn.send(b"stats\r\n")
    items, st = read_stats(conn)
    names = [n for n, _ in items]
    assert len(names) == len(set(names)), "duplicate stat names"
    missing = [k for k in GENERAL_KEYS if k not in st]
    assert not missing, missing
    ints = [k for k in GENERAL_KEYS if k not in ("version", "rusage_user", "rusage_system")]
    for k in ints:
        assert re.fullmatch(r"\d+", st[k]), (k, st[k])
    for k in ("rusage_user", "rusage_system"):
        assert re.fullmatch(r"\d+\.\d{6}", st[k]), (k, st[k])
    assert st["pointer_size"] in ("32", "64")
    assert st["accepting_conns"] == "1"
    assert abs(int(st["time"]) - time.time()) < 5
    assert int(st["curr_connections"]) >= 1
    assert int(st["threads"]) >= 1
    # STAT version equals the version command's reply
    conn.send(b"version\r\n")
    assert conn.read_line() == b"VERSION " + st["version"].encode() + b"\r\n"
    # the connection is still in sync
    rt(conn, b"", b"")


def test_stats_fresh_server_values(spawn):
    srv = spawn()
    c = srv.connect()
    st = stats(c)
    assert int(st["pid"]) == srv.proc.pid
    assert int(st["uptime"]) < 30
    assert st["max_connections"] == "1024"
    assert st["limit_maxbytes"] == str(64 * 1024 * 1024)
    for k in COUNTERS + ["curr_items", "total_items", "bytes", "evictions", "rejected_connections"]:
        assert st[k] == "0", (k, st[k])


def test_stats_reflects_m_and_c(spawn):
    srv = spawn("-m", "100", "-c", "500")
    c = srv.connect()
    st = stats(c)
    assert st["limit_maxbytes"] == str(100 * 1024 * 1024)
    assert st["max_connections"] == "500"


def _delta(before, after):
    return {k: int(after[k]) - int(before[k]) for k in COUNTERS + ["curr_items", "total_items"]
            if int(after[k]) != int(before[k])}


@pytest.mark.parametrize("req,reply,delta", [
    (b"set {a} 0 0 1\r\na\r\n", b"STORED\r\n", {"cmd_set": 1, "total_items": 1}),
    (b"set {e} 0 0 1\r\na\r\n", b"STORED\r\n",
     {"cmd_set": 1, "curr_items": 1, "total_items": 1}),
    (b"get {a} {m} {m}\r\n", b"VALUE {a} 0 1\r\nA\r\nEND\r\n",
     {"cmd_get": 3, "get_hits": 1, "get_misses": 2}),
    (b"gets {a}\r\n", None, {"cmd_get": 1, "get_hits": 1}),
    (b"get {a} {a}\r\n", b"VALUE {a} 0 1\r\nA\r\nVALUE {a} 0 1\r\nA\r\nEND\r\n",
     {"cmd_get": 2, "get_hits": 2}),
    (b"touch {a} 0\r\ntouch {m} 0\r\n", b"TOUCHED\r\nNOT_FOUND\r\n",
     {"cmd_touch": 2, "touch_hits": 1, "touch_misses": 1}),
    # gat/gats count as touches, not gets
    (b"gat 0 {a} {m}\r\n", b"VALUE {a} 0 1\r\nA\r\nEND\r\n",
     {"cmd_touch": 2, "touch_hits": 1, "touch_misses": 1}),
    (b"delete {m}\r\ndelete {a}\r\n", b"NOT_FOUND\r\nDELETED\r\n",
     {"delete_misses": 1, "delete_hits": 1, "curr_items": -1}),
    (b"incr {n} 1\r\nincr {m} 1\r\ndecr {n} 1\r\ndecr {m} 1\r\n",
     b"6\r\nNOT_FOUND\r\n5\r\nNOT_FOUND\r\n",
     {"incr_hits": 1, "incr_misses": 1, "decr_hits": 1, "decr_misses": 1}),
    (b"cas {n} 0 0 1 999999\r\n1\r\ncas {m} 0 0 1 1\r\n1\r\n", b"EXISTS\r\nNOT_FOUND\r\n",
     {"cmd_set": 2, "cas_badval": 1, "cas_misses": 1}),
    (b"add {a} 0 0 1\r\nb\r\nreplace {m} 0 0 1\r\nb\r\n", b"NOT_STORED\r\nNOT_STORED\r\n",
     {"cmd_set": 2}),
    (b"append {a} 0 0 1\r\nb\r\n", b"STORED\r\n", {"cmd_set": 1, "total_items": 1}),
    (b"set {e} 0 -1 1\r\nx\r\nget {e}\r\n", b"STORED\r\nEND\r\n",
     {"cmd_set": 1, "total_items": 1, "cmd_get": 1, "get_misses": 1, "get_expired": 1}),
    (b"set {a} 0 0 1048577\r\n" + b"x" * 1048577 + b"\r\n",
     b"SERVER_ERROR object too large for cache\r\n", {"store_too_large": 1, "curr_items": -1}),
], ids=['set-existing', 'set-new', 'get-multi', 'gets', 'get-dup', 'touch', 'gat', 'delete', 'incr-decr', 'cas-badval-miss', 'failed-add-replace', 'append', 'expired-get', 'too-large'])
def test_stats_counters_move(private, key, req, reply, delta):
    srv = private
    c = srv.connect()
    names = {"a": key("a"), "m": key("m"), "n": key("n"), "e": key("e")}

    def fmt(b):
        for k, v in names.items():
            b = b.replace(b"{%s}" % k.encode(), v)
        return b
    rt(c, store(b"set", names["a"], b"A") + store(b"set", names["n"], b"5"),
       b"STORED\r\nSTORED\r\n")
    before = stats(c)
    c.send(fmt(req))
    if reply is None:
        c.read_until(b"END\r\n")
    else:
        c.expect(fmt(reply), timeout=10)
    after = stats(c)
    assert _delta(before, after) == delta


def test_stats_cas_hits(private, key):
    srv = private
    c = srv.connect()
    k = key()
    rt(c, store(b"set", k, b"a"), b"STORED\r\n")
    c.send(b"gets " + k + b"\r\n")
    u = int(c.read_line().split()[4])
    c.read_until(b"END\r\n")
    before = stats(c)
    rt(c, store(b"cas", k, b"b", extra=b"%d" % u), b"STORED\r\n")
    after = stats(c)
    d = _delta(before, after)
    assert d["cas_hits"] == 1 and d["cmd_set"] == 1 and d["cmd_get"] == 1   # +1: rt's sentinel
    assert d["get_misses"] == 1


def test_stats_flush_counters(private, key):
    srv = private
    c = srv.connect()
    k = key()
    rt(c, store(b"set", k, b"a"), b"STORED\r\n")
    before = stats(c)
    c.send(b"flush_all\r\nget " + k + b"\r\n")
    c.expect(b"OK\r\nEND\r\n")
    after = stats(c)
    assert int(after["cmd_flush"]) - int(before["cmd_flush"]) == 1
    assert int(after["get_flushed"]) - int(before["get_flushed"]) == 1
    assert int(after["get_misses"]) - int(before["get_misses"]) == 1


def test_stats_curr_items_and_bytes(spawn, key):
    # A server of its own: items with short TTLs set by other tests on a shared
    # server can expire in the middle and move curr_items.
    c = spawn().connect()
    before = stats(c)
    for i in range(10):
        rt(c, store(b"set", key("%d" % i), b"x" * 100), b"STORED\r\n")
    rt(c, store(b"set", key("0"), b"y" * 100), b"STORED\r\n")   # overwrite: still 10 items
    after = stats(c)
    assert int(after["curr_items"]) - int(before["curr_items"]) == 10
    assert int(after["total_items"]) - int(before["total_items"]) == 11
    assert int(after["bytes"]) - int(before["bytes"]) >= 10 * 100


def test_stats_bytes_read_written_grow(conn, key):
    before = stats(conn)
    k = key()
    rt(conn, store(b"set", k, b"z" * 1000) + b"get " + k + b"\r\n",
       b"STORED\r\n" + hit(k, b"z" * 1000))
    after = stats(conn)
    assert int(after["bytes_read"]) - int(before["bytes_read"]) >= 1000
    assert int(after["bytes_written"]) - int(before["bytes_written"]) >= 1000


def test_stats_connections(private):
    srv = private
    conns = [srv.connect() for _ in range(3)]
    for c in conns:
        rt(c, b"", b"")
    st = stats(conns[0])
    assert int(st["curr_connections"]) >= 3
    assert int(st["total_connections"]) >= 3
    conns[1].close()
    conns[2].close()
    time.sleep(0.3)
    st2 = stats(conns[0])
    assert int(st2["curr_connections"]) == int(st["curr_connections"]) - 2


def test_stats_reset(private, key):
    srv = private
    c = srv.connect()
    k = key()
    rt(c, store(b"set", k, b"a") + b"get " + k + b" " + key("m") + b"\r\n",
       b"STORED\r\n" + hit(k, b"a"))
    items_before = stats(c)["curr_items"]
    c.transact(b"stats reset\r\n", b"RESET\r\n")
    st = stats(c)
    for name in COUNTERS + ["total_items"]:
        assert st[name] == "0", (name, st[name])
    # current state is not a counter: the items are still there
    assert st["curr_items"] == items_before
    rt(c, b"get " + k + b"\r\n", hit(k, b"a"))


def test_stats_settings(private):
    srv = private
    c = srv.connect()
    c.send(b"stats settings\r\n")
    items, st = read_stats(c)
    expected = {
        "maxbytes": str(64 * 1024 * 1024), "maxconns": "1024", "tcpport": str(srv.port),
        "udpport": "0", "verbosity": "0", "evictions": "on", "cas_enabled": "yes",
        "item_size_max": "1048576", "flush_enabled": "yes", "shutdown_command": "no",
        "auth_enabled_sasl": "no", "auth_enabled_ascii": "no",
    }
    for k, v in expected.items():
        assert st.get(k) == v, (k, st.get(k), v)
    assert "binding_protocol" in st


def test_stats_settings_reflect_flags(spawn):
    srv = spawn("-m", "16", "-c", "300", "-I", "512k", "-C", "-F", "-A", "-M")
    c = srv.connect()
    st = stats(c, b"settings")
    expected = {
        "maxbytes": str(16 * 1024 * 1024), "maxconns": "300", "evictions": "off",
        "cas_enabled": "no", "item_size_max": str(512 * 1024), "flush_enabled": "no",
        "shutdown_command": "yes",
    }
    for k, v in expected.items():
        assert st.get(k) == v, (k, st.get(k), v)


def test_stats_items_slabs_fresh_server(spawn):
    srv = spawn()
    c = srv.connect()
    rt(c, b"stats slabs\r\n", b"STAT active_slabs 0\r\nSTAT total_malloced 0\r\nEND\r\n")
    rt(c, b"stats items\r\n", b"END\r\n")


def test_stats_items_slabs_with_data(conn, key):
    k = key()
    rt(conn, store(b"set", k, b"v"), b"STORED\r\n")
    for sub in (b"items", b"slabs"):
        conn.send(b"stats " + sub + b"\r\n")
        read_stats(conn)            # STAT lines then END
        rt(conn, b"", b"")


SLAB_FIELDS = ["chunk_size", "chunks_per_page", "total_pages", "total_chunks", "used_chunks",
               "free_chunks", "free_chunks_end", "get_hits", "cmd_set", "delete_hits",
               "incr_hits", "decr_hits", "cas_hits", "cas_badval", "touch_hits"]


def test_stats_slabs_fields_per_class(conn, key):
    """memcached's per-class names, in its order (memtwin: its one class as 1)."""
    k = key()
    rt(conn, store(b"set", k, b"v"), b"STORED\r\n")
    rt(conn, b"get " + k + b"\r\n", b"VALUE " + k + b" 0 1\r\nv\r\nEND\r\n")
    conn.send(b"stats slabs\r\n")
    items, st = read_stats(conn)
    names = [n for n, _ in items]
    classes = sorted({n.split(":")[0] for n in names if ":" in n}, key=int)
    assert classes, names
    for c in classes:
        assert [n.split(":", 1)[1] for n in names if n.startswith(c + ":")] == SLAB_FIELDS
    assert int(st["active_slabs"]) == len(classes)
    assert names[-2:] == ["active_slabs", "total_malloced"]
    assert sum(int(st[c + ":used_chunks"]) for c in classes) >= 1
    assert sum(int(st[c + ":get_hits"]) for c in classes) >= 1


def test_stats_sizes(conn):
    rt(conn, b"stats sizes\r\n", b"STAT sizes_status disabled\r\nEND\r\n")


def test_stats_conns(conn):
    conn.send(b"stats conns\r\n")
    items, _ = read_stats(conn)
    assert items
    for name, _ in items:
        assert re.fullmatch(r"\d+:\w+", name), name
    rt(conn, b"", b"")


def test_stats_detail(private, key):
    srv = private
    c = srv.connect()
    rt(c, b"stats detail on\r\n", b"OK\r\n")
    c.send(b"stats detail dump\r\n")
    c.read_until(b"END\r\n")
    rt(c, b"stats detail off\r\n", b"OK\r\n")
    rt(c, b"stats detail dump\r\n", b"END\r\n")


@pytest.mark.parametrize("arg", [b"", b" x", b" dumpx"])
def test_stats_detail_bad_arg(conn, arg):
    rt(conn, b"stats detail" + arg + b"\r\n", b"CLIENT_ERROR usage: stats detail on|off|dump\r\n")


@pytest.mark.parametrize("sub", [b"bogus", b"res", b"resetx", b"SETTINGS", b"item"])
def test_stats_unknown_subcommand(conn, sub):
    # no prefix matching in 1.6.18: only exact sub-command names
    rt(conn, b"stats " + sub + b"\r\n", b"ERROR\r\n")


def test_stats_pipelined_exporter_sequence(conn):
    """memcached_exporter sends stats, stats slabs, stats items on one connection."""
    conn.send(b"stats\r\nstats slabs\r\nstats items\r\nstats settings\r\n")
    for _ in range(4):
        read_stats(conn)
    rt(conn, b"", b"")


def _yields_after_pipeline(srv, n):
    """conn_yields after `n` pipelined gets in one write, all answered in order."""
    c = srv.connect()
    before = int(stats(c)["conn_yields"])
    c.send(b"".join(b"get yield:%d\r\n" % i for i in range(n)))
    for _ in range(n):
        assert c.read_line() == b"END\r\n"
    return int(stats(c)["conn_yields"]) - before


def test_conn_yields_counts_connections_that_hit_r(spawn):
    # memcached's default -R 20: a pipeline of 100 requests yields to other
    # connections, one of 10 does not.
    srv = spawn()
    assert _yields_after_pipeline(srv, 10) == 0
    assert _yields_after_pipeline(srv, 100) >= 1
    assert _yields_after_pipeline(spawn("-R", "200"), 100) == 0
    assert _yields_after_pipeline(spawn("-R", "5"), 100) >= 5
