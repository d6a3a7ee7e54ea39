"""Persistence with real clients: sessions written, daemon restarted, sessions read.

memtwin only (memcached has no --data-dir): every test here is skipped for
``--target memcached``.  Needs ``--server-bin`` (the memtwin binary); each test
starts its own daemon on a data directory and restarts it on the same port, so
clients reconnect exactly as they would after a real restart.

Run: ``pytest protocol-tests/persistence --server-bin target/release/memtwin``
(scripts/test does this after the client suites).
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "clients"))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "binary: uses the binary protocol (skipped when MEMTWIN_SKIP_BINARY=1)")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("MEMTWIN_SKIP_BINARY", "") not in ("1", "true", "yes"):
        return
    skip = pytest.mark.skip(reason="MEMTWIN_SKIP_BINARY=1")
    for item in items:
        if item.get_closest_marker("binary"):
            item.add_marker(skip)


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class PersistentServer:
    """A memtwin daemon on a data directory that can be restarted in place."""

    def __init__(self, binary, datadir, flags):
        self.binary = binary
        self.datadir = datadir
        self.flags = list(flags)
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.proc = None
        self.log = open(datadir + ".log", "ab")

    @property
    def addr(self):
        return "%s:%d" % (self.host, self.port)

    def start(self):
        argv = [self.binary, "-l", self.host, "-p", str(self.port), "-U", "0",
                "--data-dir", self.datadir] + self.flags
        if os.geteuid() == 0:
            argv += ["-u", "root"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("memtwin exited (rc=%s), see %s.log"
                                   % (self.proc.returncode, self.datadir))
            try:
                s = socket.create_connection((self.host, self.port), timeout=1)
                s.sendall(b"version\r\n")
                if s.recv(100).startswith(b"VERSION"):
                    s.close()
                    return self
                s.close()
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("memtwin did not come up on %d" % self.port)

    def stop(self, kill=False):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if not kill:
            assert self.proc.returncode == 0, "unclean shutdown, see %s.log" % self.datadir

    def restart(self, kill=False):
        self.stop(kill=kill)
        return self.start()


@pytest.fixture
def persistent(request):
    """Factory: persistent(flags...) -> a started PersistentServer (stopped at teardown)."""
    if request.config.getoption("--target") != "memtwin":
        pytest.skip("persistence is a memtwin feature")
    binary = request.config.getoption("--server-bin")
    if not binary:
        pytest.skip("needs --server-bin (the memtwin binary)")
    tmp = tempfile.mkdtemp(prefix="memtwin-persist-")
    servers = []

    def make(*flags):
        srv = PersistentServer(binary, os.path.join(tmp, "data%d" % len(servers)), flags)
        servers.append(srv)
        return srv.start()

    yield make
    for srv in servers:
        srv.stop(kill=True)
        srv.log.close()
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
