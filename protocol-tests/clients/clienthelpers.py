"""Helpers shared by the real-client tests (import as `clienthelpers`)."""
import os
import shutil
import socket
import subprocess
import time


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """A server process this suite started (or the shared --addr one)."""

    def __init__(self, host, port, proc=None, workdir=None):
        self.host = host
        self.port = port
        self.proc = proc
        self.workdir = workdir

    @property
    def addr(self):
        return "%s:%d" % (self.host, self.port)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _wait_listening(proc, port, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError("%s exited (rc=%s): %s" % (what, proc.returncode, err))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("%s did not start listening on %d" % (what, port))


def start_server(binary, flags=(), env=None, workdir=None):
    """Start `binary` (memcached or memtwin: same flags) on a free loopback port."""
    last = None
    for _ in range(3):  # retry on a port race
        port = _free_port()
        argv = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0"]
        if os.geteuid() == 0:
            argv += ["-u", "root"]
        argv += list(flags)
        full_env = dict(os.environ)
        full_env.update(env or {})
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=full_env, stdin=subprocess.DEVNULL)
        try:
            _wait_listening(proc, port, " ".join(argv))
            return Server("127.0.0.1", port, proc, workdir)
        except RuntimeError as e:
            last = e
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    raise last



def raw_text(server, request_bytes, until=b"\r\n", timeout=3.0):
    """One text-protocol exchange on a fresh connection (for independent checks)."""
    s = socket.create_connection((server.host, server.port), timeout=timeout)
    try:
        s.sendall(request_bytes)
        buf = b""
        deadline = time.monotonic() + timeout
        while not buf.endswith(until):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no %r in %r" % (until, buf))
            s.settimeout(remaining)
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf
    finally:
        s.close()


def text_get(server, key):
    """Value of `key` via a plain text `get` (None on miss)."""
    reply = raw_text(server, b"get " + key.encode() + b"\r\n", until=b"END\r\n")
    if reply == b"END\r\n":
        return None
    header, rest = reply.split(b"\r\n", 1)
    n = int(header.split()[3])
    return rest[:n]


def text_gets(server, key):
    """(value, cas) via text `gets` (None on miss)."""
    reply = raw_text(server, b"gets " + key.encode() + b"\r\n", until=b"END\r\n")
    if reply == b"END\r\n":
        return None
    header, rest = reply.split(b"\r\n", 1)
    parts = header.split()
    n = int(parts[3])
    return rest[:n], int(parts[4])


def run_tool(argv, timeout=30, **kw):
    """Run a command-line client with a time bound; returns CompletedProcess."""
    return subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)


def php_with_memcached():
    """The php binary, if it has the memcached extension; else skip the test."""
    import pytest
    exe = shutil.which("php")
    if not exe:
        pytest.skip("php not installed (apt-get install php-cli php-memcached)")
    r = subprocess.run([exe, "-r", "echo extension_loaded('memcached') ? 'yes' : 'no';"],
                       capture_output=True, timeout=30)
    if r.stdout.strip() != b"yes":
        pytest.skip("php memcached extension not loaded (apt-get install php-memcached)")
    return exe


SPY_JAR = "/usr/share/java/spymemcached.jar"


def spymemcached_classpath(source):
    """Compile `source` (a .java file using spymemcached) once per content
    into /tmp; the classpath to run it with. Skips without a JDK or the jar."""
    import hashlib
    import pytest
    javac, java = shutil.which("javac"), shutil.which("java")
    if not javac or not java:
        pytest.skip("JDK not installed (apt-get install default-jdk-headless)")
    if not os.path.exists(SPY_JAR):
        pytest.skip("%s missing (apt-get install libspymemcached-java)" % SPY_JAR)
    name = os.path.splitext(os.path.basename(source))[0]
    with open(source, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    outdir = os.path.join("/tmp", "memtwin-%s-%s" % (name.lower(), digest))
    if not os.path.exists(os.path.join(outdir, name + ".class")):
        tmp = outdir + ".tmp%d" % os.getpid()
        os.makedirs(tmp, exist_ok=True)
        r = subprocess.run([javac, "-d", tmp, "-cp", SPY_JAR, source], capture_output=True, timeout=180)
        assert r.returncode == 0, "javac failed:\n%s" % r.stderr.decode(errors="replace")
        try:
            os.rename(tmp, outdir)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another run won the race
    return SPY_JAR + ":" + outdir
