"""Small helpers shared by the test_text_*.py transcript tests (not a test module).

`rt()` appends a "sentinel" miss (`get <key that is never set>`) to a request and
expects the reply plus the sentinel's `END\\r\\n`.  Because replies are strictly
ordered, this proves the request produced *exactly* the expected bytes (no extra
line, e.g. from a noreply command) without having to sleep.
"""
import re
import time

SENTINEL = b"memtwin-text-sentinel-never-set"
SENTINEL_REQ = b"get " + SENTINEL + b"\r\n"


def rt(c, request: bytes, expected: bytes, timeout=None):
    """Send request + sentinel get; expect exactly `expected` then `END\\r\\n`."""
    c.send(request + SENTINEL_REQ)
    c.expect(expected + b"END\r\n", timeout)


def store(cmd: bytes, key: bytes, value: bytes, flags=0, exptime=0, extra=b""):
    """Build a storage command (`set/add/replace/append/prepend/cas`)."""
    line = b"%s %s %d %d %d" % (cmd, key, flags, exptime, len(value))
    if extra:
        line += b" " + extra
    return line + b"\r\n" + value + b"\r\n"


def value_reply(key: bytes, value: bytes, flags=0, cas=None):
    head = b"VALUE %s %d %d" % (key, flags, len(value))
    if cas is not None:
        head += b" %d" % cas
    return head + b"\r\n" + value + b"\r\n"


def hit(key: bytes, value: bytes, flags=0):
    """Exact reply to `get <key>` for a single hit."""
    return value_reply(key, value, flags) + b"END\r\n"


def gets_cas(c, key: bytes) -> int:
    """Return the CAS unique of `key` via `gets` (asserts a hit)."""
    c.send(b"gets " + key + b"\r\n")
    head = c.read_line()
    m = re.match(rb"^VALUE (\S+) (\d+) (\d+) (\d+)\r\n$", head)
    assert m, "expected a VALUE line with cas, got %r" % head
    assert m.group(1) == key
    c.read_exact(int(m.group(3)) + 2)
    c.expect(b"END\r\n")
    return int(m.group(4))


STAT_LINE = re.compile(rb"^STAT (\S+) (.*)\r\n$")


def read_stats(c):
    """Read `STAT name value` lines up to `END`, return (ordered list, dict)."""
    items = []
    while True:
        line = c.read_line()
        if line == b"END\r\n":
            break
        m = STAT_LINE.match(line)
        assert m, "not a STAT line: %r" % line
        items.append((m.group(1).decode(), m.group(2).decode()))
    return items, dict(items)


def stats(c, sub=b""):
    c.send(b"stats" + ((b" " + sub) if sub else b"") + b"\r\n")
    return read_stats(c)[1]


def wait_until(pred, timeout=5.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


class PrivateServer:
    """A server started by the suite itself (like conftest's `spawn`, but usable from
    a module-scoped fixture so several tests can share one private instance)."""

    def __init__(self, binary, *flags):
        import os
        import socket
        import subprocess
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.host = "127.0.0.1"
        argv = [binary, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0"]
        if os.geteuid() == 0:
            argv += ["-u", "root"]
        argv += list(flags)
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited with %s" % self.proc.returncode)
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("server did not start listening on %d" % self.port)
                time.sleep(0.05)

    def connect(self, timeout=3.0):
        from conftest import Conn
        return Conn(self.host, self.port, timeout)

    def stop(self):
        import subprocess
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def private_server_fixture(*flags):
    """Build a module-scoped fixture yielding a PrivateServer started with `flags`
    (skips when no --server-bin was given)."""
    import pytest

    @pytest.fixture(scope="module")
    def _fixture(request):
        binary = request.config.getoption("--server-bin")
        if not binary:
            pytest.skip("needs --server-bin to start a private server")
        srv = PrivateServer(binary, *flags)
        yield srv
        srv.stop()
    return _fixture
