"""libmemcached-tools 1.1.4 (Debian names: memccp, memccat, memcexist, ...) and memccapable.

Each tool connects, does its command(s) and sends `quit`.  memcexist is
`add k 0 2678400 0`: the probe item must expire at once (absolute time in 1970).
memccapable runs libmemcached's conformance checks; it flushes the server, so it
gets a dedicated fresh server.
"""
import re
import shutil

import pytest

from clienthelpers import run_tool, text_get, text_gets

PROTOCOLS = [
    pytest.param([], id="text"),
    pytest.param(["--binary"], id="binary", marks=pytest.mark.binary),
]


def _need(tool):
    path = shutil.which(tool)
    if not path:
        pytest.skip("%s not installed (apt-get install libmemcached-tools)" % tool)
    return path


@pytest.fixture(params=PROTOCOLS)
def proto(request):
    return request.param


def servers(server):
    return "--servers=%s:%d" % (server.host, server.port)


def tool(name, server, proto, *args, timeout=30):
    return run_tool([_need(name), servers(server)] + list(proto) + list(args), timeout=timeout)


def test_memccp_memccat(shared_server, proto, ukey, tmp_path):
    k = ukey()
    f = tmp_path / k
    content = b"hello from memccp\r\nsecond line\x00\xff"
    f.write_bytes(content)
    r = tool("memccp", shared_server, proto, "--flags=77", "--expire=600", str(f))
    assert r.returncode == 0, r.stderr
    # stored under the file's basename, raw bytes, with the flags
    assert text_get(shared_server, k) == content
    r = tool("memccat", shared_server, proto, k)
    assert r.returncode == 0, r.stderr
    assert r.stdout == content + b"\n"  # memccat prints a newline after each value
    r = tool("memccat", shared_server, proto, "--flags", k)
    assert r.returncode == 0
    assert b"77" in r.stdout + r.stderr


def test_memccat_missing(shared_server, proto, ukey):
    r = tool("memccat", shared_server, proto, ukey("missing"))
    assert r.returncode != 0
    assert r.stdout == b""


def test_memccp_add_replace(shared_server, proto, ukey, tmp_path):
    k = ukey()
    f = tmp_path / k
    f.write_bytes(b"one")
    # replace of a missing key fails; add succeeds once; replace then works
    r = tool("memccp", shared_server, proto, "--replace", str(f))
    assert r.returncode != 0
    assert text_get(shared_server, k) is None
    r = tool("memccp", shared_server, proto, "--add", str(f))
    assert r.returncode == 0, r.stderr
    f.write_bytes(b"two")
    r = tool("memccp", shared_server, proto, "--add", str(f))
    assert r.returncode != 0
    assert text_get(shared_server, k) == b"one"
    r = tool("memccp", shared_server, proto, "--replace", str(f))
    assert r.returncode == 0, r.stderr
    assert text_get(shared_server, k) == b"two"


def test_memcexist(shared_server, proto, ukey, tmp_path):
    k = ukey()
    missing = ukey("missing")
    f = tmp_path / k
    f.write_bytes(b"x")
    assert tool("memccp", shared_server, proto, str(f)).returncode == 0
    r = tool("memcexist", shared_server, proto, k)
    assert r.returncode == 0, r.stdout + r.stderr
    r = tool("memcexist", shared_server, proto, missing)
    assert r.returncode != 0
    # the probe (add with an absolute expiry in 1970) must not leave an item behind
    assert text_get(shared_server, missing) is None
    r = tool("memcexist", shared_server, proto, missing)
    assert r.returncode != 0
    # and the existing value is untouched by the failed add
    assert text_get(shared_server, k) == b"x"


def test_memctouch(shared_server, proto, ukey, tmp_path):
    k = ukey()
    f = tmp_path / k
    f.write_bytes(b"touchme")
    assert tool("memccp", shared_server, proto, "--expire=1000", str(f)).returncode == 0
    before = text_gets(shared_server, k)
    r = tool("memctouch", shared_server, proto, "--expire=2000", k)
    assert r.returncode == 0, r.stdout + r.stderr
    assert text_gets(shared_server, k) == before  # value and cas unchanged
    r = tool("memctouch", shared_server, proto, "--expire=100", ukey("missing"))
    assert r.returncode != 0
    if not proto:
        # text: touch with a negative expiry expires the item.  (Binary carries
        # the expiry as uint32, so -1 there is a far-future absolute time.)
        r = tool("memctouch", shared_server, proto, "--expire=-1", k)
        assert r.returncode == 0
        assert text_get(shared_server, k) is None


def test_memcrm(shared_server, proto, ukey, tmp_path):
    k = ukey()
    f = tmp_path / k
    f.write_bytes(b"x")
    assert tool("memccp", shared_server, proto, str(f)).returncode == 0
    r = tool("memcrm", shared_server, proto, k)
    assert r.returncode == 0, r.stdout + r.stderr
    assert text_get(shared_server, k) is None
    r = tool("memcrm", shared_server, proto, k)
    assert r.returncode != 0


def test_memcflush(own_server, proto, ukey, tmp_path):
    k = ukey()
    f = tmp_path / k
    f.write_bytes(b"x")
    assert tool("memccp", own_server, proto, str(f)).returncode == 0
    assert text_get(own_server, k) == b"x"
    r = tool("memcflush", own_server, proto)
    assert r.returncode == 0, r.stdout + r.stderr
    assert text_get(own_server, k) is None


def test_memcstat(shared_server, proto):
    r = tool("memcstat", shared_server, proto)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "Server: %s (%d)" % (shared_server.host, shared_server.port) in out
    for name in ("pid", "uptime", "version", "curr_items", "cmd_get", "cmd_set", "get_hits"):
        assert re.search(r"^\s+%s: " % name, out, re.M), name


def test_memcping(shared_server):
    # memcping has no --binary option: it sends `version` over text
    r = tool("memcping", shared_server, [])
    assert r.returncode == 0, r.stdout + r.stderr


def test_memcping_nothing_listening():
    # a port nothing listens on: the tool must report failure (bounded by its own timeout)
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = run_tool([_need("memcping"), "--servers=127.0.0.1:%d" % port], timeout=30)
    assert r.returncode != 0


@pytest.mark.binary
def test_tools_sasl(sasl_server, ukey, tmp_path):
    """memccp/memccat/memcrm with --binary --username/--password (libmemcached SASL PLAIN)."""
    k = ukey()
    f = tmp_path / k
    f.write_bytes(b"sasl-data")
    auth = ["--binary", "--username=%s" % sasl_server.user, "--password=%s" % sasl_server.password]
    r = run_tool([_need("memccp"), servers(sasl_server)] + auth + [str(f)])
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_tool([_need("memccat"), servers(sasl_server)] + auth + [k])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == b"sasl-data\n"
    bad = ["--binary", "--username=%s" % sasl_server.user, "--password=wrong"]
    r = run_tool([_need("memccat"), servers(sasl_server)] + bad + [k])
    assert r.returncode != 0
    assert r.stdout == b""
    r = run_tool([_need("memcrm"), servers(sasl_server)] + auth + [k])
    assert r.returncode == 0, r.stdout + r.stderr


def _memccapable(server, flag):
    r = run_tool([_need("memccapable"), "-h", server.host, "-p", str(server.port), "-t", "5", flag],
                 timeout=120)
    out = (r.stdout + r.stderr).decode(errors="replace")
    results = re.findall(r"^(.+?)\s+\[(\w+)\]\s*$", out, re.M)
    failed = [name for name, res in results if res != "pass"]
    return r.returncode, out, results, failed


def test_memccapable_ascii(fresh_server):
    rc, out, results, failed = _memccapable(fresh_server, "-a")
    assert results, out
    assert not failed, "memccapable -a failures: %s\n%s" % (failed, out)
    assert rc == 0, out
    assert "All tests passed" in out


@pytest.mark.binary
def test_memccapable_binary(fresh_server):
    rc, out, results, failed = _memccapable(fresh_server, "-b")
    assert results, out
    assert not failed, "memccapable -b failures: %s\n%s" % (failed, out)
    assert rc == 0, out
    assert "All tests passed" in out
