"""Black-box protocol test harness.

The suite talks to a server over TCP and compares raw reply bytes.  It runs
against any address (``--addr`` / ``$MEMTWIN_ADDR``) and, for tests that need a
server started with particular flags, against a binary it spawns itself
(``--server-bin`` / ``$MEMTWIN_SERVER_BIN``).  Both memcached and memtwin accept
the same command-line flags, so the same tests prove the expectations on the
reference (Debian memcached 1.6.18) and then hold memtwin to them.

``--target`` names what is under test (``memcached`` or ``memtwin``) for the
few places where the reference and memtwin legitimately differ (e.g. memtwin
extensions); use ``target`` fixture and keep such branches rare and explained.
"""
import os
import socket
import subprocess
import time
import uuid

import pytest


def pytest_addoption(parser):
    parser.addoption("--addr", default=os.environ.get("MEMTWIN_ADDR", "127.0.0.1:11211"),
                     help="host:port of the server under test")
    parser.addoption("--server-bin", default=os.environ.get("MEMTWIN_SERVER_BIN", ""),
                     help="server binary to spawn for tests that need special flags")
    parser.addoption("--target", default=os.environ.get("MEMTWIN_TARGET", "memtwin"),
                     choices=["memtwin", "memcached"], help="what is under test")


def parse_addr(addr):
    host, port = addr.rsplit(":", 1)
    return host, int(port)


class Conn:
    """A raw connection with byte-exact expectations."""

    def __init__(self, host, port, timeout=3.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.timeout = timeout

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for reply; have %r" % self.buf[:200])
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed connection; have %r" % self.buf[:200])
        self.buf += chunk

    def read_exact(self, n, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_until(self, marker: bytes, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while marker not in self.buf:
            self._fill(deadline)
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_line(self, timeout=None):
        return self.read_until(b"\r\n", timeout)

    def expect(self, expected: bytes, timeout=None):
        got = self.read_exact(len(expected), timeout)
        assert got == expected, "expected %r\n     got %r" % (expected, got)

    def transact(self, request: bytes, expected: bytes, timeout=None):
        self.send(request)
        self.expect(expected, timeout)

    def expect_nothing(self, wait=0.3):
        """Assert no bytes arrive within `wait` seconds (e.g. after noreply)."""
        self.sock.settimeout(wait)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            chunk = None
        finally:
            self.sock.settimeout(self.timeout)
        if chunk is not None:
            self.buf += chunk
        assert not self.buf, "expected silence, got %r" % self.buf

    def expect_closed(self, timeout=None):
        """Assert the server closes the connection (EOF or reset) without more bytes."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "connection not closed; have %r" % self.buf
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            self.buf += chunk
        assert self.buf == b"", "unexpected bytes before close: %r" % self.buf

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Spawned:
    def __init__(self, proc, port):
        self.proc = proc
        self.port = port
        self.host = "127.0.0.1"

    def connect(self, timeout=3.0):
        return Conn(self.host, self.port, timeout)


@pytest.fixture
def target(request):
    return request.config.getoption("--target")


@pytest.fixture
def addr(request):
    return parse_addr(request.config.getoption("--addr"))


@pytest.fixture
def conn(addr):
    c = Conn(*addr)
    yield c
    c.close()


@pytest.fixture
def connect(addr):
    """Factory for extra connections to the server under test."""
    conns = []

    def make(timeout=3.0):
        c = Conn(*addr, timeout=timeout)
        conns.append(c)
        return c
    yield make
    for c in conns:
        c.close()


@pytest.fixture
def key():
    """A key unique to this test, so tests do not interfere without a global flush."""
    prefix = "t" + uuid.uuid4().hex[:12]

    def make(suffix=""):
        return (prefix + suffix).encode()
    return make


@pytest.fixture
def spawn(request):
    """Start the server binary with extra memcached-style flags on a free port.

    Skips when no --server-bin was given.  Returns a `Spawned`.
    """
    binary = request.config.getoption("--server-bin")
    procs = []
    if not binary:
        pytest.skip("needs --server-bin to start a server with special flags")

    def start(*flags):
        port = free_port()
        argv = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0"]
        if os.geteuid() == 0:
            argv += ["-u", "root"]
        argv += list(flags)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("server exited: %s" % proc.stderr.read().decode(errors="replace"))
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return Spawned(proc, port)
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not start listening on %d" % port)
    yield start
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
