"""Real clients across the pair: what a client writes to A, another client
(other library, other protocol) reads from B, flags and CAS included; a PHP
session written through A is seen by a request configured on B alone."""
import json
import os
import subprocess

import pytest

from clienthelpers import php_with_memcached
from twinlib import converged, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
SESS_PHP = os.path.join(HERE, "..", "clients", "php", "sess.php")
PREFIX = "memc.sess.key."


def test_pymemcache_to_pymemcache(pair, key):
    pm = pytest.importorskip("pymemcache.client.base")
    k = key().decode()
    a = pm.Client((pair.a.host, pair.a.port), connect_timeout=3, timeout=3)
    b = pm.Client((pair.b.host, pair.b.port), connect_timeout=3, timeout=3)
    assert a.set(k, b"pm-value", expire=300, flags=17)
    assert converged(pair.a, pair.b, k.encode())["flags"] == 17
    got = b.gets(k)
    assert got[0] == b"pm-value"
    assert int(got[1]) == int(a.gets(k)[1]) and int(got[1]) == pair.a.connect().mg(k.encode())["cas"]
    assert b.cas(k, b"pm-v2", got[1]) is True
    converged(pair.b, pair.a, k.encode())
    assert a.get(k) == b"pm-v2"
    assert a.cas(k, b"stale", got[1]) is False


@pytest.mark.binary
def test_pymemcache_writes_a_pylibmc_binary_reads_b(pair, key):
    pm = pytest.importorskip("pymemcache.client.base")
    pylibmc = pytest.importorskip("pylibmc")
    ks, ki = key("s").decode(), key("i").decode()
    a = pm.Client((pair.a.host, pair.a.port), connect_timeout=3, timeout=3)
    assert a.set(ks, b"plain bytes", flags=0)
    assert a.set(ki, b"12345", flags=2)          # pylibmc's FLAG_INTEGER
    converged(pair.a, pair.b, ks.encode())
    converged(pair.a, pair.b, ki.encode())
    b = pylibmc.Client(["%s:%d" % (pair.b.host, pair.b.port)], binary=True,
                       behaviors={"cas": True, "connect_timeout": 3000, "receive_timeout": 3000000,
                                  "send_timeout": 3000000})
    try:
        assert b.get(ks) == b"plain bytes"
        assert b.get(ki) == 12345, "flags did not travel: pylibmc got %r" % (b.get(ki),)
        # CAS across libraries and nodes: token from pymemcache on A, cas via pylibmc on B
        _, token = a.gets(ks)
        token = int(token)                       # pymemcache returns the token as bytes
        v, cas_b = b.gets(ks)
        assert cas_b == token
        assert b.cas(ks, b"via pylibmc", token) is True
        converged(pair.b, pair.a, ks.encode())
        assert a.get(ks) == b"via pylibmc"
        assert b.cas(ks, b"stale", token) is False
        b.delete(ki)
        assert wait_until(lambda: a.get(ki) is None, timeout=5)
    finally:
        b.disconnect_all()


@pytest.mark.binary
def test_bmemcached_binary_across(pair, key):
    bmemcached = pytest.importorskip("bmemcached")
    k = key().decode()
    a = bmemcached.Client(("%s:%d" % (pair.a.host, pair.a.port),))
    b = bmemcached.Client(("%s:%d" % (pair.b.host, pair.b.port),))
    try:
        assert a.set(k, "bm-text", time=100)
        converged(pair.a, pair.b, k.encode())
        assert b.get(k) == "bm-text"
        assert b.replace(k, "bm-text-2", time=500)
        it = converged(pair.b, pair.a, k.encode())
        assert it["ttl"] > 400
        assert a.get(k) == "bm-text-2"
    finally:
        a.disconnect_all()
        b.disconnect_all()


# ------------------------------------------------------------------ PHP session handler


@pytest.fixture(scope="module")
def php():
    return php_with_memcached()


def run_php(php, node, binary, mode, sid="", ini=None):
    argv = [php, "-d", "memcached.sess_binary_protocol=%d" % int(binary)]
    for k, v in (ini or {}).items():
        argv += ["-d", "%s=%s" % (k, v)]
    argv += [SESS_PHP, node.addr, mode] + ([sid] if sid else [])
    r = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    for line in r.stdout.decode(errors="replace").splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError("no RESULT line: %r %r" % (r.stdout, r.stderr))


@pytest.mark.parametrize("binary", [pytest.param(True, id="binary", marks=pytest.mark.binary),
                                    pytest.param(False, id="ascii")])
def test_php_session_written_on_a_read_on_b(pair, php, binary):
    res = run_php(php, pair.a, binary, "create")
    assert res["started"] is True and res["n"] == 1, res
    sid = res["sid"]
    skey = (PREFIX + sid).encode()
    converged(pair.a, pair.b, skey)
    # failover: the next request only knows B
    res = run_php(php, pair.b, binary, "incr", sid)
    assert res["started"] is True and res["sid"] == sid, res
    assert (res["n_before"], res["n"]) == (1, 2), res
    it = converged(pair.b, pair.a, skey)
    assert it["value"] == b"n|i:2;"
    # the lock taken and released on B is gone on A too (replicated delete)
    lock = (PREFIX + "lock." + sid).encode()
    assert wait_until(lambda: pair.a.connect().mg(lock) is None, timeout=5)
    # lazy write on A: a touch, same CAS on both
    res = run_php(php, pair.a, binary, "read", sid, ini={"session.lazy_write": "1"})
    assert res["n"] == 2
    after = converged(pair.a, pair.b, skey)
    assert after["cas"] == it["cas"], "lazy_write touch changed the CAS"
    res = run_php(php, pair.b, binary, "destroy", sid)
    assert res["destroyed"] is True
    assert wait_until(lambda: pair.a.connect().mg(skey) is None, timeout=5), \
        "destroyed session still on A"
