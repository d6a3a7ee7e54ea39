"""Harness for the twin-replication suite (imported by conftest.py, the tests,
pair.py and benches/replication.py; not a test module).

* `Node`: one memtwin daemon on its own loopback address (127.0.0.2, 127.0.0.3 ...),
  free ports, log file, stop by pid (SIGTERM, then SIGKILL after a bounded wait),
  restart in place, kill -9.
* `TwinPair`: two Nodes replicating to each other, optionally through a `Link`
  (two `Proxy`s, one per dialling direction) that can cut/heal or pause/resume.
* `Proxy`: a threaded TCP forwarder with byte counters.
* `Text`: a raw text/meta/binary connection with small helpers (`mg`, `stats`).
* `wait_until`: the one waiting loop, bounded in count and time.

Every name of a stats field the suite reads is in `STAT` below: adjust there if
the implementation names them differently (docs/replication.md section 8).
"""
import base64
import os
import re
import select
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

# ------------------------------------------------------------------ names in one place

#: CLI flags of the feature (docs/replication.md section 8).
FLAG_PEER = "--peer"
FLAG_LISTEN = "--replication-listen"
FLAG_SECRET = "--replication-secret"
FLAG_NODE_ID = "--node-id"
FLAG_PEER_WAIT = "--peer-wait"

#: --peer-wait the harness gives every node unless a test says otherwise: a
#: node whose twin never comes (wrong secret, clock skew, a twin left stopped)
#: serves after this long instead of the production default of 30 s.
HARNESS_PEER_WAIT = os.environ.get("MEMTWIN_REPL_PEER_WAIT", "2")

#: the first bytes of the reply to every request while a node catches up.
NOT_READY = b"SERVER_ERROR not ready"

#: logical name -> field name in plain `stats` (with the repl_ prefix).
#: `stats replication` shows the same fields without the prefix.
STAT = {
    "state": "repl_state",                  # catching_up / ready / alone
    "not_ready_replies": "repl_not_ready_replies",
    "link": "repl_link",                    # "up" when the link is established
    "peer_node_id": "repl_peer_node_id",
    "records_sent": "repl_records_sent",
    "records_applied": "repl_records_applied",
    "lag_records": "repl_lag_records",
    "lag_ms": "repl_lag_ms",
    "conflicts": "repl_conflicts",
    "tombstones": "repl_tombstones",
    "queue_bytes": "repl_queue_bytes",
    "queue_overflows": "repl_queue_overflows",
    "reconnects": "repl_reconnects",
    "scans": "repl_scans",
    "ack": "repl_ack",                      # 1 with --replication-ack
    "ack_timeouts": "repl_ack_timeouts",
    "ack_skipped": "repl_ack_skipped",
    "scan_records": "repl_scan_records",
    "backlog_replays": "repl_backlog_replays",      # gaps repaired from the backlog
    "backlog_replayed": "repl_backlog_replayed",    # records those replays shipped
    "backlog_bytes": "repl_backlog_bytes",
    "auth_failures": "repl_auth_failures",
    "full_syncs": "repl_full_syncs",
    "last_catchup": "repl_last_catchup",            # backlog, scan, full or none
    "last_catchup_records": "repl_last_catchup_records",
    "last_catchup_bytes": "repl_last_catchup_bytes",
    "last_catchup_us": "repl_last_catchup_us",
}
LINK_UP = "up"
STAT_PREFIX = "repl_"

#: regexes (case-insensitive) the daemon's log is expected to match
LOG_AUTH_FAILURE = r"auth"
LOG_SAME_NODE = r"node[ _-]?id"

# ------------------------------------------------------------------ wire format of the link
# src/protocol/twin.rs: frame = len u32 LE (kind + payload) | kind u8 | payload
TWIN_MAGIC = b"MTWN"
TWIN_PROTOCOL_VERSION = 1
K_HELLO, K_AUTH, K_POSITIONS, K_REFUSE, K_BATCH, K_ACK, K_PING = range(1, 8)
REFUSE_AUTH_FAILED, REFUSE_VERSION, REFUSE_CLOCK_SKEW, REFUSE_SAME_NODE = 1, 2, 3, 4
MAX_FRAME_DEFAULT = 4 << 20


def frame(kind, payload=b""):
    return struct.pack("<IB", 1 + len(payload), kind) + payload


def hello_frame(version=TWIN_PROTOCOL_VERSION, node_id=77, history_id=0, wall_ms=None, nonce=None):
    if wall_ms is None:
        wall_ms = int(time.time() * 1000)
    nonce = nonce if nonce is not None else os.urandom(32)
    payload = (TWIN_MAGIC + struct.pack("<HH", version, node_id)
               + history_id.to_bytes(16, "little") + struct.pack("<Q", wall_ms) + nonce)
    return frame(K_HELLO, payload)


def read_frames(sock, timeout=5.0, max_frames=50):
    """Frames (kind, payload) read until EOF/reset or `timeout`; returns (frames, closed)."""
    frames, buf, closed = [], b"", False
    deadline = time.monotonic() + timeout
    for _ in range(10000):
        while len(buf) >= 4:
            n = struct.unpack("<I", buf[:4])[0]
            if n == 0 or n > MAX_FRAME_DEFAULT or len(buf) < 4 + n:
                break
            frames.append((buf[4], buf[5:4 + n]))
            buf = buf[4 + n:]
            if len(frames) >= max_frames:
                return frames, closed
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except (ConnectionResetError, BrokenPipeError):
            closed = True
            break
        if not chunk:
            closed = True
            break
        buf += chunk
    return frames, closed


def parse_refuse(payload):
    reason = payload[0]
    n = struct.unpack("<H", payload[1:3])[0]
    return reason, payload[3:3 + n].decode(errors="replace")


# ------------------------------------------------------------------ waiting


def wait_until(pred, timeout=5.0, step=0.02, what="condition"):
    """Poll `pred` until it returns a truthy value; bounded in time and count.
    Returns the value, or the last (falsy) value on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    for _ in range(int(timeout / step) + 2):
        try:
            last = pred()
        except (OSError, ConnectionError, TimeoutError, AssertionError) as e:
            last = None
            _ = e
        if last:
            return last
        if time.monotonic() >= deadline:
            break
        time.sleep(step)
    return last


# ------------------------------------------------------------------ addresses and ports


#: ports free_port() has handed out in this process: the kernel may hand the
#: same free port to two binds in a row, and a node binds its ports only when
#: it starts, so without this a node could get one port as client and
#: replication port ("Address already in use" at start).
_HANDED_OUT = set()


def free_port(host):
    """A free TCP port on `host` (never 11211/22122), never one handed out before."""
    for _ in range(50):
        s = socket.socket()
        try:
            s.bind((host, 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in (11211, 22122, 12211, 23122) and port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port on %s" % host)


def make_secret(path):
    """A secret file: 32 random bytes, base64 (what the docs tell operators to do)."""
    with open(path, "wb") as f:
        f.write(base64.b64encode(os.urandom(32)) + b"\n")
    os.chmod(path, 0o600)
    return path


def binary_supports_replication(binary):
    """(True, '') if `binary --help` lists --peer, else (False, reason)."""
    if not binary or not os.path.exists(binary):
        return False, "memtwin binary %r not found (set --server-bin or MEMTWIN_BIN)" % binary
    try:
        r = subprocess.run([binary, "--help"], capture_output=True, timeout=20,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, "cannot run %s --help: %s" % (binary, e)
    text = (r.stdout + r.stderr).decode(errors="replace")
    if FLAG_PEER not in text:
        return False, ("%s does not know %s (twin replication not in this build yet)"
                       % (binary, FLAG_PEER))
    return True, ""


# ------------------------------------------------------------------ a raw client connection


class Text:
    """A client connection (text, meta and, via binproto, binary)."""

    def __init__(self, host, port, timeout=3.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.timeout = timeout

    # -- the subset of protocol-tests/conftest.Conn that binproto uses
    def send(self, data):
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

    def read_line(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        i = self.buf.index(b"\r\n") + 2
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # -- helpers
    def cmd(self, line, value=None):
        """Send one command line (+ data block), return the first reply line (stripped)."""
        if isinstance(line, str):
            line = line.encode()
        data = line + b"\r\n"
        if value is not None:
            data += value + b"\r\n"
        self.send(data)
        return self.read_line().rstrip(b"\r\n")

    def store(self, verb, key, value, flags=0, exptime=0, cas=None, noreply=False):
        line = b"%s %s %d %d %d" % (verb.encode() if isinstance(verb, str) else verb,
                                     _b(key), flags, exptime, len(value))
        if cas is not None:
            line += b" %d" % cas
        if noreply:
            line += b" noreply"
            self.send(line + b"\r\n" + value + b"\r\n")
            return None
        return self.cmd(line, value)

    def retrieve(self, line):
        """A get-like command: returns {key: (flags, value, cas or None)}."""
        self.send(_b(line) + b"\r\n")
        out = {}
        for _ in range(10000):
            head = self.read_line()
            if head == b"END\r\n":
                return out
            parts = head.split()
            assert parts[0] == b"VALUE", "unexpected %r" % head
            n = int(parts[3])
            val = self.read_exact(n + 2)[:-2]
            out[parts[1]] = (int(parts[2]), val, int(parts[4]) if len(parts) > 4 else None)
        raise AssertionError("too many VALUE lines")

    def gets(self, key):
        r = self.retrieve(b"gets " + _b(key))
        if _b(key) not in r:
            return None
        flags, val, cas = r[_b(key)]
        return val, cas

    def mg(self, key, flags=b"v f t c"):
        """Item via `mg <key> v f t c`: dict(value, flags, ttl, cas, tokens) or None."""
        self.send(b"mg " + _b(key) + b" " + _b(flags) + b"\r\n")
        head = self.read_line().rstrip(b"\r\n")
        if head == b"EN":
            return None
        parts = head.split()
        item = {"tokens": set()}
        if parts[0] == b"VA":
            n = int(parts[1])
            item["value"] = self.read_exact(n + 2)[:-2]
            rest = parts[2:]
        elif parts[0] == b"HD":
            rest = parts[1:]
        else:
            raise AssertionError("unexpected mg reply %r" % head)
        for t in rest:
            c, arg = chr(t[0]), t[1:]
            if c == "f":
                item["flags"] = int(arg)
            elif c == "t":
                item["ttl"] = int(arg)
            elif c == "c":
                item["cas"] = int(arg)
            else:
                item["tokens"].add(t.decode())
        return item

    def meta(self, line, value=None):
        """A meta command; returns the reply line split into tokens (value block consumed)."""
        self.send(_b(line) + b"\r\n" + (value + b"\r\n" if value is not None else b""))
        head = self.read_line().rstrip(b"\r\n")
        parts = head.split()
        if parts and parts[0] == b"VA":
            val = self.read_exact(int(parts[1]) + 2)[:-2]
            return parts, val
        return parts, None

    def stats(self, sub=b""):
        self.send(b"stats" + (b" " + _b(sub) if sub else b"") + b"\r\n")
        out = {}
        for _ in range(10000):
            line = self.read_line()
            if line == b"END\r\n":
                return out
            m = re.match(rb"^STAT (\S+) ?(.*)\r\n$", line)
            if not m:
                raise AssertionError("not a STAT line: %r (after stats %r)" % (line, sub))
            out[m.group(1).decode()] = m.group(2).decode()
        raise AssertionError("endless stats")


def _b(x):
    return x.encode() if isinstance(x, str) else x


# ------------------------------------------------------------------ daemons


class Node:
    """One daemon on `host` (a distinct 127.0.0.x), stopped by pid."""

    def __init__(self, binary, host, logdir, name, node_id=None, peer=None, secret=None,
                 data_dir=None, extra=(), repl_port=None, port=None, replicate=True,
                 peer_wait=HARNESS_PEER_WAIT):
        self.binary = binary
        self.host = host
        self.name = name
        self.node_id = node_id
        self.peer = peer            # "host:port" this node dials
        self.secret = secret
        self.data_dir = data_dir
        self.extra = list(extra)
        self.replicate = replicate
        self.peer_wait = peer_wait  # None: the daemon's default
        self.port = port or free_port(host)
        self.repl_port = repl_port or free_port(host)
        self.log_path = os.path.join(logdir, "%s.log" % name)
        self.proc = None
        self.starts = 0

    @property
    def addr(self):
        return "%s:%d" % (self.host, self.port)

    @property
    def repl_addr(self):
        return "%s:%d" % (self.host, self.repl_port)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def argv(self):
        argv = [self.binary, "-l", self.host, "-p", str(self.port), "-U", "0"]
        if os.geteuid() == 0:
            argv += ["-u", "root"]
        if self.replicate:
            if self.peer:
                argv += [FLAG_PEER, self.peer]
            argv += [FLAG_LISTEN, self.repl_addr]
            if self.secret:
                argv += [FLAG_SECRET, self.secret]
            if self.node_id is not None:
                argv += [FLAG_NODE_ID, str(self.node_id)]
            if self.peer and self.peer_wait is not None:
                argv += [FLAG_PEER_WAIT, str(self.peer_wait)]
        if self.data_dir:
            argv += ["--data-dir", self.data_dir]
        return argv + self.extra

    def start(self, timeout=20.0, serving=True):
        """Spawn and wait until it answers `version` with VERSION (`serving`),
        or accepts at all (a node with a twin refuses requests until it has
        caught up: it closes the connection, or answers the not-ready error)."""
        self.starts += 1
        argv = self.argv()
        log_from = self.log_size()
        with open(self.log_path, "ab") as log:
            log.write(("\n+ [start %d] %s\n" % (self.starts, " ".join(argv))).encode())
            log.flush()
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.05) + 1):
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited at start (rc=%s):\n%s"
                                   % (self.name, self.proc.returncode, self.log_tail()))
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    s.sendall(b"version\r\n")
                    s.settimeout(1.0)
                    got = s.recv(100)
                    # Catching up, the node refuses `version`: the not-ready
                    # error (--not-ready error) or a close without a reply.
                    if got.startswith(b"VERSION") or (
                            not serving and (got.startswith(NOT_READY) or got == b"")):
                        return self
            except OSError:
                pass
            # --not-ready refuse (the default): the client port listens only
            # once caught up; the log says the node is up and catching up.
            if not serving and self.log_matches(r"before serving: client requests are refused",
                                                since=log_from):
                return self
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        self.stop(kill=True)
        raise RuntimeError("%s did not answer on %s:\n%s" % (self.name, self.addr, self.log_tail()))

    def serving(self):
        """True once `version` gets VERSION (not the not-ready error)."""
        try:
            c = self.connect(timeout=1.0)
            try:
                return c.cmd("version").startswith(b"VERSION")
            finally:
                c.close()
        except (OSError, ConnectionError, AssertionError):
            return False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, kill=False, wait=10.0):
        """SIGTERM (or SIGKILL), then SIGKILL after `wait` s; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def kill9(self):
        return self.stop(kill=True)

    def restart(self, kill=False):
        self.stop(kill=kill)
        return self.start()

    def connect(self, timeout=3.0):
        return Text(self.host, self.port, timeout)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines=40):
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_matches(self, pattern, since=0):
        return re.search(pattern, self.log_text()[since:], re.I) is not None

    def log_size(self):
        return len(self.log_text())

    # -- stats
    def stats(self):
        c = self.connect()
        try:
            return c.stats()
        finally:
            c.close()

    def repl_stats(self):
        """Replication fields keyed by their `stats` name (repl_...). Read from
        `stats`, completed from `stats replication` (whose names lack the prefix)."""
        c = self.connect()
        try:
            plain = c.stats()
            try:
                group = c.stats(b"replication")
            except (AssertionError, ConnectionError, TimeoutError):
                group = {}
        finally:
            c.close()
        out = {k: v for k, v in plain.items() if k.startswith(STAT_PREFIX)}
        for k, v in group.items():
            out.setdefault(k if k.startswith(STAT_PREFIX) else STAT_PREFIX + k, v)
        return out

    def stat(self, logical):
        return self.repl_stats().get(STAT[logical])

    def stat_int(self, logical):
        v = self.stat(logical)
        return int(v) if v is not None and re.fullmatch(r"-?\d+", v) else None

    def link_up(self):
        return self.stat("link") == LINK_UP


class Proxy:
    """A TCP forwarder on (host, port) -> (to_host, to_port), threads.

    `cut()` closes every connection and refuses new ones (accepts and closes at
    once) until `heal()`. `pause()` stops forwarding but keeps connections and
    buffers what arrives; `resume()` delivers it. `sent`/`received` count bytes
    client->upstream and upstream->client."""

    def __init__(self, host, to_host, to_port, port=None):
        self.host, self.to = host, (to_host, to_port)
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port or 0))
        self.port = self.lsock.getsockname()[1]
        self.lsock.listen(16)
        self.lock = threading.Lock()
        self.pairs = []           # [client_sock, upstream_sock]
        self.sent = 0
        self.received = 0
        self.accepted = 0
        self.refused = 0
        self._cut = False
        self._paused = threading.Event()
        self._stop = threading.Event()
        self.threads = []
        t = threading.Thread(target=self._accept_loop, daemon=True, name="proxy-accept")
        t.start()
        self.threads.append(t)

    @property
    def addr(self):
        return "%s:%d" % (self.host, self.port)

    def _accept_loop(self):
        self.lsock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                c, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self._cut:
                self.refused += 1
                _close(c)
                continue
            try:
                u = socket.create_connection(self.to, timeout=2)
            except OSError:
                self.refused += 1
                _close(c)
                continue
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(None)
            pair = [c, u]
            with self.lock:
                self.pairs.append(pair)
                self.accepted += 1
                cut_meanwhile = self._cut
            if cut_meanwhile:
                # cut() ran while this connection was being set up, after it
                # had walked `pairs`: cut it too (the pump then drops it).
                for s in pair:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            t = threading.Thread(target=self._pump, args=(pair,), daemon=True, name="proxy-pump")
            t.start()
            self.threads.append(t)

    def _pump(self, pair):
        c, u = pair
        pending = {c: b"", u: b""}       # bytes read from key, not yet forwarded
        other = {c: u, u: c}
        try:
            while not self._stop.is_set():
                if self._paused.is_set():
                    rd = [s for s in (c, u) if len(pending[s]) < (64 << 20)]
                    r, _, _ = select.select(rd, [], [], 0.05)
                else:
                    for s in (c, u):
                        if pending[s]:
                            self._count(s is c, len(pending[s]))
                            other[s].sendall(pending[s])
                            pending[s] = b""
                    r, _, _ = select.select([c, u], [], [], 0.05)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        if pending[s] and not self._paused.is_set():
                            other[s].sendall(pending[s])
                        return
                    if self._paused.is_set():
                        pending[s] += data
                    else:
                        self._count(s is c, len(data))
                        other[s].sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            _close(c)
            _close(u)
            with self.lock:
                if pair in self.pairs:
                    self.pairs.remove(pair)

    def _count(self, upstream, n):
        with self.lock:
            if upstream:
                self.sent += n
            else:
                self.received += n

    def connections(self):
        with self.lock:
            return len(self.pairs)

    def cut(self):
        self._cut = True
        with self.lock:
            pairs = list(self.pairs)
        for c, u in pairs:
            for s in (c, u):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def heal(self):
        self._cut = False

    def pause(self):
        self._paused.set()

    def resume(self):
        self._paused.clear()

    def close(self):
        self._stop.set()
        self.cut()
        _close(self.lsock)
        for t in self.threads:
            t.join(2)


def _close(s):
    try:
        s.close()
    except OSError:
        pass


class Link:
    """The twin link through two proxies: A dials B through `to_b`, B dials A
    through `to_a` (both nodes dial, so both directions need a proxy for a cut
    to cut)."""

    def __init__(self, to_a, to_b):
        self.to_a, self.to_b = to_a, to_b
        self.proxies = (to_a, to_b)

    def cut(self):
        for p in self.proxies:
            p.cut()

    def heal(self):
        for p in self.proxies:
            p.heal()

    def pause(self):
        for p in self.proxies:
            p.pause()

    def resume(self):
        for p in self.proxies:
            p.resume()

    def bytes_total(self):
        return sum(p.sent + p.received for p in self.proxies)

    def bytes_from(self, node_name):
        """Bytes node `node_name` ("a"/"b") sent on the link, whichever side dialled."""
        # to_b carries A (client) -> B (upstream); to_a carries B -> A
        if node_name == "a":
            return self.to_b.sent + self.to_a.received
        return self.to_a.sent + self.to_b.received

    def close(self):
        for p in self.proxies:
            p.close()


class TwinPair:
    """Nodes `a` (127.0.0.2, node id 1) and `b` (127.0.0.3, node id 2)."""

    def __init__(self, binary, workdir, logdir, proxy=False, data_dir=False,
                 node_ids=(1, 2), secrets=None, hosts=("127.0.0.2", "127.0.0.3"), extra=()):
        self.workdir = workdir
        self.secret = make_secret(os.path.join(workdir, "twin.secret"))
        sa, sb = secrets or (self.secret, self.secret)
        ha, hb = hosts
        ddir = (lambda n: os.path.join(workdir, "data-" + n)) if data_dir else (lambda n: None)
        self.a = Node(binary, ha, logdir, "node-a", node_id=node_ids[0], secret=sa,
                      data_dir=ddir("a"), extra=extra)
        self.b = Node(binary, hb, logdir, "node-b", node_id=node_ids[1], secret=sb,
                      data_dir=ddir("b"), extra=extra)
        self.link = None
        if proxy:
            self.link = Link(Proxy(ha, ha, self.a.repl_port), Proxy(hb, hb, self.b.repl_port))
            self.a.peer = self.link.to_b.addr
            self.b.peer = self.link.to_a.addr
        else:
            self.a.peer = self.b.repl_addr
            self.b.peer = self.a.repl_addr
        self.nodes = [self.a, self.b]

    def start(self, wait_link=True, timeout=10.0):
        # Each node is gated until it has caught up with the other: both must
        # be up before either serves.
        self.a.start(serving=False)
        self.b.start(serving=False)
        for n in self.nodes:
            if not wait_until(n.serving, timeout=20.0, step=0.05):
                raise AssertionError("%s never served:\n%s" % (n.name, self.log_tails()))
        if wait_link:
            ok = wait_until(lambda: self.a.link_up() and self.b.link_up(), timeout=timeout, step=0.05)
            if not ok:
                raise AssertionError("twin link not up within %.0f s: a=%r b=%r\n%s"
                                     % (timeout, self.a.repl_stats(), self.b.repl_stats(),
                                        self.log_tails()))
        return self

    def stop(self):
        for n in self.nodes:
            n.stop()
        if self.link:
            self.link.close()

    def log_tails(self, lines=40):
        return "\n".join("---- %s (%s) ----\n%s" % (n.name, n.log_path, n.log_tail(lines))
                         for n in self.nodes)


def tmpdir(prefix):
    return tempfile.mkdtemp(prefix=prefix)


# ------------------------------------------------------------------ assertions shared by the tests

REPL_TIMEOUT = float(os.environ.get("MEMTWIN_REPL_TIMEOUT", "5"))


def same_item(a_item, b_item, ttl_slack=1):
    """Value, flags, CAS equal; remaining TTL equal within `ttl_slack` s (-1 exact)."""
    if a_item is None or b_item is None:
        return a_item is b_item
    for k in ("value", "flags", "cas"):
        if a_item.get(k) != b_item.get(k):
            return False
    ta, tb = a_item.get("ttl"), b_item.get("ttl")
    if (ta == -1) != (tb == -1):
        return False
    return ta is None or abs(ta - tb) <= ttl_slack


def converged(src, dst, key, timeout=REPL_TIMEOUT):
    """Wait until `dst` shows `key` exactly as `src` does (value, flags, cas, ttl).
    Returns the item; fails with both sides' view."""
    ca, cb = src.connect(), dst.connect()
    try:
        state = {}

        def check():
            state["a"], state["b"] = ca.mg(key), cb.mg(key)
            return state["a"] is not None and same_item(state["a"], state["b"])
        ok = wait_until(check, timeout=timeout)
        assert ok, "%s never converged within %.0fs: %s has %r, %s has %r" % (
            key, timeout, src.name, state.get("a"), dst.name, state.get("b"))
        return state["a"]
    finally:
        ca.close()
        cb.close()


def absent_on(n, key, timeout=REPL_TIMEOUT):
    c = n.connect()
    try:
        ok = wait_until(lambda: c.mg(key) is None, timeout=timeout)
        assert ok, "%s still has %r after %.0fs: %r" % (n.name, key, timeout, c.mg(key))
    finally:
        c.close()


def present_on(n, key, timeout=REPL_TIMEOUT):
    c = n.connect()
    try:
        it = wait_until(lambda: c.mg(key), timeout=timeout)
        assert it, "%s never got %r within %.0fs" % (n.name, key, timeout)
        return it
    finally:
        c.close()
