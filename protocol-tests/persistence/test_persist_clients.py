"""Sessions written by real clients survive a restart and a crash of memtwin.

Clients: pymemcache (text protocol), python-binary-memcached (binary protocol)
and PHP's memcached session handler (binary and ASCII).  Restarts are graceful
(SIGTERM, any fsync mode) or crashes (SIGKILL, with --fsync always).
"""
import json
import os
import shutil
import subprocess
import uuid

import pytest

from clienthelpers import php_with_memcached

HERE = os.path.dirname(os.path.abspath(__file__))
SESS_PHP = os.path.join(HERE, "..", "clients", "php", "sess.php")

RESTARTS = [
    pytest.param(("--fsync", "everysec"), False, id="everysec-sigterm"),
    pytest.param(("--fsync", "always"), True, id="always-kill9"),
]


def sessions(n):
    tag = uuid.uuid4().hex[:8]
    return {"sess:%s:%04d" % (tag, i): {"user": i, "cart": ["item%d" % j for j in range(i % 7)],
                                        "csrf": uuid.uuid4().hex}
            for i in range(n)}


@pytest.mark.parametrize("flags,kill", RESTARTS)
def test_pymemcache_sessions_survive_restart(persistent, flags, kill):
    pymemcache = pytest.importorskip("pymemcache")
    from pymemcache import serde
    from pymemcache.client.base import Client

    srv = persistent(*flags)
    data = sessions(300)

    def client():
        return Client((srv.host, srv.port), serde=serde.pickle_serde, connect_timeout=5,
                      timeout=5)

    c = client()
    for k, v in data.items():
        assert c.set(k, v, expire=3600, noreply=False)
    c.set("sess:plain", "just a string", expire=3600, noreply=False)
    assert c.delete(next(iter(data)), noreply=False)
    deleted = next(iter(data))
    cas_before = c.gets("sess:plain")[1]
    c.close()

    srv.restart(kill=kill)
    c = client()
    got = c.get_many(list(data))
    for k, v in data.items():
        if k == deleted:
            assert k not in got, "a deleted session came back"
        else:
            assert got.get(k) == v, k
    # flags survive (pymemcache decodes by flags: str vs pickled dict)
    assert c.get("sess:plain") == "just a string"
    value, cas = c.gets("sess:plain")
    assert cas == cas_before
    assert c.cas("sess:plain", "updated", cas, noreply=False)
    c.close()


@pytest.mark.binary
@pytest.mark.parametrize("flags,kill", RESTARTS)
def test_binary_protocol_sessions_survive_restart(persistent, flags, kill):
    bmemcached = pytest.importorskip("bmemcached")
    srv = persistent(*flags)
    data = sessions(200)
    c = bmemcached.Client([srv.addr])
    for k, v in data.items():
        assert c.set(k, json.dumps(v), time=3600)
    assert c.set("counter", 10, time=3600)
    assert c.incr("counter", 5) == 15
    c.disconnect_all()

    srv.restart(kill=kill)
    c = bmemcached.Client([srv.addr])
    for k, v in data.items():
        assert json.loads(c.get(k)) == v, k
    assert c.incr("counter", 1) == 16
    c.disconnect_all()


def _php(srv, binary, mode, sid=""):
    argv = [shutil.which("php"), "-d", "memcached.sess_binary_protocol=%d" % int(binary),
            SESS_PHP, srv.addr, mode]
    if sid:
        argv.append(sid)
    r = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, (r.stdout, r.stderr)
    for line in r.stdout.decode(errors="replace").splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(r.stdout)


@pytest.mark.parametrize("binary", [pytest.param(True, id="binary", marks=pytest.mark.binary),
                                    pytest.param(False, id="ascii")])
@pytest.mark.parametrize("flags,kill", RESTARTS)
def test_php_sessions_survive_restart(persistent, binary, flags, kill):
    php_with_memcached()
    srv = persistent(*flags)
    sids = []
    for _ in range(5):
        res = _php(srv, binary, "create")
        assert res["started"] is True and res["n"] == 1, res
        sids.append(res["sid"])
    for sid in sids[:3]:
        res = _php(srv, binary, "incr", sid)
        assert res["n"] == 2, res
    destroyed = sids[4]
    assert _php(srv, binary, "destroy", destroyed)["destroyed"] is True

    srv.restart(kill=kill)
    for i, sid in enumerate(sids[:4]):
        res = _php(srv, binary, "incr", sid)
        assert res["started"] is True and res["sid"] == sid, res
        assert res["n_before"] == (2 if i < 3 else 1), ("session lost or stale", res)
    res = _php(srv, binary, "read", destroyed)
    assert res["n_before"] is None, ("a destroyed session came back", res)
