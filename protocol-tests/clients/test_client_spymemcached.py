"""spymemcached 2.12.3 emulating memcached-session-manager (java/SpyTest.java).

SpyTest does msm's get/set/add/delete patterns (`<id>`, `validity:<id>`,
`lock:<id>`, `bak:<id>`, `add <id> 5 0x01` pings, `get ping-<node>`) and
touch/incr/decr/cas/append/prepend/getBulk; it exits 0 only when every check
passes.  Compiled once per source version into /tmp.
"""
import os
import shutil
import subprocess

import pytest

from clienthelpers import spymemcached_classpath

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "java", "SpyTest.java")


@pytest.fixture(scope="module")
def spytest_classpath():
    return spymemcached_classpath(SOURCE)


def run_spytest(classpath, server, mode, *extra):
    argv = [shutil.which("java"), "-Xmx256m", "-cp", classpath, "SpyTest", "%s:%d" % (server.host, server.port), mode]
    argv += list(extra)
    r = subprocess.run(argv, capture_output=True, timeout=150, stdin=subprocess.DEVNULL)
    out = r.stdout.decode(errors="replace")
    failures = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert r.returncode == 0 and not failures and "SPYTEST passed=" in out, \
        "SpyTest %s rc=%d\n%s\n--- stderr (tail) ---\n%s" % (
            mode, r.returncode, "\n".join(failures) or out,
            r.stderr.decode(errors="replace")[-3000:])
    return out


def test_spymemcached_text(spytest_classpath, shared_server):
    out = run_spytest(spytest_classpath, shared_server, "text")
    assert "PASS msm ping add <id> 5 0x01 -> NOT_STORED" in out


@pytest.mark.binary
def test_spymemcached_binary(spytest_classpath, shared_server):
    out = run_spytest(spytest_classpath, shared_server, "binary")
    assert "PASS getAndTouch (binary GAT)" in out


@pytest.mark.binary
def test_spymemcached_binary_sasl(spytest_classpath, sasl_server):
    run_spytest(spytest_classpath, sasl_server, "binary", sasl_server.user, sasl_server.password)


@pytest.mark.binary
def test_spymemcached_binary_sasl_wrong_password(spytest_classpath, sasl_server):
    run_spytest(spytest_classpath, sasl_server, "binary", sasl_server.user,
                "wrong-" + sasl_server.password, "badauth")
