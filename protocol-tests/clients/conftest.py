"""Real-client tests: shared fixtures.

These tests drive the server with the clients memtwin's users actually run
(pymemcache, pylibmc, python-binary-memcached, libmemcached-tools, the PHP
memcached session handler, spymemcached).  They reuse the parent harness's
options (``--addr``, ``--server-bin``, ``--target``; see ../conftest.py), so the
same files run against Debian's memcached (to prove the tests) and memtwin.

* Tests that only store keys unique to themselves use the server at ``--addr``.
* Tests that flush, or need special flags (SASL), start their own server from
  ``--server-bin`` on a free port; without ``--server-bin`` the flushing tests
  fall back to ``--addr`` and the flag-dependent ones skip.
* Tests marked ``binary`` need the binary protocol (or SASL, which is binary
  only).  ``MEMTWIN_SKIP_BINARY=1`` skips them (while memtwin's binary protocol
  is not there yet).
"""
import os
import shutil
import subprocess
import tempfile
import uuid

import pytest

from clienthelpers import Server, start_server

HERE = os.path.dirname(os.path.abspath(__file__))

SASL_USER = "memtwin"
SASL_PASSWORD = "s3cret-pw"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "binary: uses the binary protocol or SASL (skipped when MEMTWIN_SKIP_BINARY=1)")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("MEMTWIN_SKIP_BINARY", "") not in ("1", "true", "yes"):
        return
    skip = pytest.mark.skip(reason="MEMTWIN_SKIP_BINARY=1: binary protocol tests skipped")
    for item in items:
        if item.get_closest_marker("binary") and str(item.fspath).startswith(HERE):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def server_bin(request):
    return request.config.getoption("--server-bin")


@pytest.fixture(scope="session")
def target_name(request):
    return request.config.getoption("--target")


@pytest.fixture(scope="session")
def shared_server(request):
    """The server under test at --addr (not flushed by any test)."""
    host, port = request.config.getoption("--addr").rsplit(":", 1)
    return Server(host, int(port))


@pytest.fixture(scope="module")
def own_server(server_bin, shared_server):
    """A server this module may flush: a fresh spawned one when --server-bin is
    given, else the --addr server."""
    if not server_bin:
        yield shared_server
        return
    srv = start_server(server_bin)
    yield srv
    srv.stop()


@pytest.fixture
def fresh_server(server_bin):
    """A brand-new spawned server for one test (memccapable flushes and
    expects an empty server).  Skips without --server-bin."""
    if not server_bin:
        pytest.skip("needs --server-bin to start a dedicated server")
    srv = start_server(server_bin)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def sasl_server(server_bin, target_name):
    """A server requiring SASL PLAIN auth for SASL_USER/SASL_PASSWORD.

    memtwin: ``-S --sasl-pwdb FILE`` with ``user:password`` lines.
    memcached: ``-S`` with Cyrus SASL, SASL_CONF_PATH pointing at a
    memcached.conf (``mech_list: plain``) and a sasldb made by saslpasswd2.
    """
    if not server_bin:
        pytest.skip("needs --server-bin to start a SASL server")
    workdir = tempfile.mkdtemp(prefix="memtwin-sasl-")
    if target_name == "memcached":
        saslpasswd2 = shutil.which("saslpasswd2") or "/usr/sbin/saslpasswd2"
        if not os.path.exists(saslpasswd2):
            shutil.rmtree(workdir, ignore_errors=True)
            pytest.skip("saslpasswd2 not installed (apt-get install sasl2-bin)")
        sasldb = os.path.join(workdir, "sasldb")
        r = subprocess.run([saslpasswd2, "-p", "-a", "memcached", "-c", "-f", sasldb, SASL_USER],
                           input=SASL_PASSWORD.encode(), capture_output=True, timeout=30)
        if r.returncode != 0:
            shutil.rmtree(workdir, ignore_errors=True)
            pytest.skip("saslpasswd2 failed: %s" % r.stderr.decode(errors="replace"))
        with open(os.path.join(workdir, "memcached.conf"), "w") as f:
            f.write("mech_list: plain\nsasldb_path: %s\n" % sasldb)
        try:
            srv = start_server(server_bin, ["-S"], env={"SASL_CONF_PATH": workdir}, workdir=workdir)
        except RuntimeError as e:
            shutil.rmtree(workdir, ignore_errors=True)
            pytest.skip("cannot start memcached with SASL: %s" % e)
    else:
        pwdb = os.path.join(workdir, "pwdb")
        with open(pwdb, "w") as f:
            f.write("%s:%s\n" % (SASL_USER, SASL_PASSWORD))
        try:
            srv = start_server(server_bin, ["-S", "--sasl-pwdb", pwdb], workdir=workdir)
        except RuntimeError as e:
            shutil.rmtree(workdir, ignore_errors=True)
            pytest.fail("memtwin did not start with -S --sasl-pwdb: %s" % e)
    srv.user = SASL_USER
    srv.password = SASL_PASSWORD
    yield srv
    srv.stop()


@pytest.fixture
def ukey():
    """Keys unique to this test (str), so tests share a server safely."""
    prefix = "c" + uuid.uuid4().hex[:12]

    def make(suffix=""):
        return prefix + suffix
    return make
