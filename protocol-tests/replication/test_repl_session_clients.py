"""Real session clients through a failover and a failback (issue 12).

Both twins are in each client's server list, as a web tier configures them:

* spymemcached 2.12.3 (java/SpySessions.java): ketama, FailureMode.Redistribute,
  text and binary; each round takes a lock (`add lock:<id>`), reads the session,
  checks it, writes the next value, releases the lock.
* PHP's memcached session handler under PHP's built-in web server
  (php/app/index.php): `save_path` with both nodes, consistent hashing,
  `sess_remove_failed_servers`, persistent connections, locking on; HTTP users
  each keep their session cookie.

The timeline, while the clients run: kill -9 node A; A restarts and is held
catching up (its link to B paused: it refuses connections); the link
resumes, A catches up and serves; the clients fail back to A; then the same for
B, restarted without a pause. With `--replication-ack` on both nodes the server
promises no lost session and no stale read however the kills fall; errors while
a node is down or catching up are expected and counted.
"""
import http.client
import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from clienthelpers import php_with_memcached, spymemcached_classpath
from twinlib import free_port, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
SPY_SOURCE = os.path.join(HERE, "java", "SpySessions.java")
PHP_APP = os.path.join(HERE, "php", "app")

# A held catch-up lasts this long; the node's --peer-wait must outlast it.
HOLD_SECS = 3
OUTAGE_SECS = 3
AFTER_SECS = 4


def failover_timeline(pair, mark, hold_secs=HOLD_SECS):
    """Kill A, restart it held in catch-up, release it, let clients fail
    back; then kill and restart B. `mark(name)` labels what follows."""
    p = pair
    mark("a-down")
    p.a.kill9()
    time.sleep(OUTAGE_SECS)
    mark("a-catching-up")
    p.link.pause()
    p.a.peer_wait = 60
    p.a.start(serving=False)
    time.sleep(hold_secs)
    assert not p.a.serving(), "A serves while its link is paused:\n" + p.a.log_tail()
    p.link.resume()
    assert wait_until(p.a.serving, timeout=30), p.a.log_tail()
    mark("a-back")
    time.sleep(AFTER_SECS)
    # A restarted with zeroed counters: hits now are the clients' failback.
    a_back_hits = hits(p.a)
    mark("b-down")
    p.b.kill9()
    time.sleep(OUTAGE_SECS)
    mark("b-returning")
    p.b.start(serving=False)
    assert wait_until(p.b.serving, timeout=30), p.b.log_tail()
    mark("b-back")
    time.sleep(AFTER_SECS)
    return a_back_hits, hits(p.b)


def hits(node):
    return int(node.stats()["get_hits"])


# ---------------------------------------------------------------- spymemcached

@pytest.fixture(scope="module")
def spy_classpath():
    return spymemcached_classpath(SPY_SOURCE)


class Spy:
    """SpySessions as a child process steered through its stdin."""

    def __init__(self, classpath, protocol, pair, sessions=200):
        argv = [shutil.which("java"), "-Xmx256m", "-cp", classpath, "SpySessions", protocol,
                str(sessions), pair.a.addr, pair.b.addr]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.lines = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if line == "READY":
                self.ready.set()

    def mark(self, name):
        self.proc.stdin.write(("phase %s\n" % name).encode())
        self.proc.stdin.flush()

    def finish(self, timeout=60):
        try:
            self.proc.stdin.write(b"stop\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout)
        finally:
            self.kill()
        self.reader.join(5)
        return self.lines

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stderr_tail(self):
        try:
            return self.proc.stderr.read()[-3000:].decode(errors="replace")
        except (OSError, ValueError):
            return ""


@pytest.mark.parametrize("protocol", [
    "text",
    pytest.param("binary", marks=pytest.mark.binary),
])
def test_spymemcached_failover_and_failback(make_pair, spy_classpath, protocol):
    p = make_pair(proxy=True, extra=("--replication-ack",))
    spy = Spy(spy_classpath, protocol, p)
    try:
        assert spy.ready.wait(60), "SpySessions never got ready:\n%s\n%s" % (
            "\n".join(spy.lines), spy.stderr_tail())
        time.sleep(1)
        a_back, b_back = failover_timeline(p, spy.mark)
        lines = spy.finish()
    finally:
        spy.kill()
    out = "\n".join(lines)
    print(out)
    final = [ln for ln in lines if ln.startswith("SESSIONS ")]
    assert final, "no result:\n" + out
    counts = dict(kv.split("=") for kv in final[0].split()[1:])
    assert counts["lost"] == "0", "sessions lost:\n" + out
    assert counts["stale"] == "0", "stale reads:\n" + out
    final_phase = [ln for ln in lines if ln.startswith("PHASE final ")]
    assert final_phase and " errors=0 " in final_phase[0], "errors after both nodes returned:\n" + out
    assert a_back > 0 and b_back > 0, "the client failed back to each returned node"
    assert p.a.stat("ack_timeouts") == "0" and p.b.stat("ack_timeouts") == "0"


# ---------------------------------------------------------------- PHP sessions

PHP_WORKERS = 4
WEB_USERS = 40
WEB_THREADS = 8
LOGGED_OUT = 8


@pytest.fixture(scope="module")
def php_bin():
    return php_with_memcached()


class PhpServer:
    """`php -S` serving php/app with sessions on both twins, stopped by pid."""

    def __init__(self, php, pair, logdir, host="127.0.0.4"):
        self.host, self.port = host, free_port(host)
        ini = {
            "session.save_handler": "memcached",
            "session.save_path": "%s,%s" % (pair.a.addr, pair.b.addr),
            "session.use_strict_mode": "0",
            "session.gc_maxlifetime": "3600",
            "memcached.sess_binary_protocol": "1",
            "memcached.sess_consistent_hash": "1",
            "memcached.sess_remove_failed_servers": "1",
            "memcached.sess_server_failure_limit": "1",
            "memcached.sess_persistent": "0",
            "memcached.sess_connect_timeout": "500",
            "memcached.sess_locking": "1",
            "memcached.sess_lock_retries": "20",
            "memcached.sess_lock_wait_min": "50",
            "memcached.sess_lock_wait_max": "100",
            # A request that fails after taking its lock (its other node
            # died) leaves the lock behind; under php -S max_execution_time is
            # 0, so without this the lock would never expire.
            "memcached.sess_lock_expire": "3",
        }
        argv = [php]
        for k, v in ini.items():
            argv += ["-d", "%s=%s" % (k, v)]
        argv += ["-S", "%s:%d" % (self.host, self.port), "-t", PHP_APP]
        env = dict(os.environ, PHP_CLI_SERVER_WORKERS=str(PHP_WORKERS))
        self.log_path = os.path.join(logdir, "php-server.log")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
        if not wait_until(self._answers, timeout=20):
            self.stop()
            raise RuntimeError("php -S did not start:\n" + self.log_tail())

    def _answers(self):
        return self.request("/index.php?op=logout")[0] in (200, 503)

    def request(self, path, sid=None, timeout=10):
        """(status, json body or None, session id from Set-Cookie or None)."""
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            headers = {"Connection": "close"}
            if sid:
                headers["Cookie"] = "PHPSESSID=" + sid
            c.request("GET", path, headers=headers)
            r = c.getresponse()
            body = r.read()
            cookie = None
            for k, v in r.getheaders():
                if k.lower() == "set-cookie" and v.startswith("PHPSESSID="):
                    cookie = v.split(";", 1)[0].split("=", 1)[1]
            try:
                data = json.loads(body)
            except ValueError:
                data = None
            return r.status, data, cookie
        finally:
            c.close()

    def log_tail(self, n=4000):
        with open(self.log_path, "rb") as f:
            return f.read()[-n:].decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class WebUsers:
    """HTTP users, each with its own session cookie, hitting the app in
    threads. Per phase: requests, errors (503 or no answer), lost (a logged-in
    user's session gone), stale (n older than the last acknowledged), and
    resurrected (a logged-out session found again)."""

    def __init__(self, web):
        self.web = web
        self.phase = "start"
        self.counts = {}
        self.examples = []
        self.errors_seen = {}   # phase -> {error message: count}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.users = {}        # sid -> last acknowledged n
        self.gone = []         # sids logged out
        for i in range(WEB_USERS + LOGGED_OUT):
            sid = self._login("user%d" % i)
            if i < WEB_USERS:
                self.users[sid] = 1
            else:
                status, data, _ = web.request("/index.php?op=logout", sid)
                assert status == 200 and data["destroyed"], (status, data)
                self.gone.append(sid)
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True)
                        for k in range(WEB_THREADS)]

    def _login(self, user):
        for _ in range(50):
            status, data, cookie = self.web.request("/index.php?op=login&user=" + user)
            if status == 200 and cookie and data and data.get("n") == 1:
                return cookie
            time.sleep(0.1)
        raise AssertionError("login of %s failed: %r %r\n%s" % (user, status, data, self.web.log_tail()))

    def count(self, what, example=None):
        with self.lock:
            c = self.counts.setdefault(self.phase, {})
            c[what] = c.get(what, 0) + 1
            if example and len(self.examples) < 20:
                self.examples.append("%s: %s" % (self.phase, example))

    def total(self, what):
        return sum(c.get(what, 0) for c in self.counts.values())

    def hit(self, sid):
        try:
            status, data, _ = self.web.request("/index.php?op=hit", sid)
        except OSError:
            self.count("errors")
            return
        self.count("requests")
        if status != 200 or not data:
            err = (data or {}).get("error", "status %d" % status)
            with self.lock:
                seen = self.errors_seen.setdefault(self.phase, {})
                seen[err] = seen.get(err, 0) + 1
            self.count("errors")
            return
        if sid in self.users:
            if data.get("lost"):
                self.count("lost", "%s lost (acked n=%d)" % (sid, self.users[sid]))
                return
            if data["n_before"] < self.users[sid]:
                self.count("stale", "%s read n=%d < acked %d" % (sid, data["n_before"], self.users[sid]))
            self.users[sid] = max(self.users[sid], data["n"])
        elif not data.get("lost"):
            self.count("resurrected", "%s readable after logout: %r" % (sid, data))

    def _run(self, k):
        mine = [s for i, s in enumerate(self.users) if i % WEB_THREADS == k]
        mine += [s for i, s in enumerate(self.gone) if i % WEB_THREADS == k]
        for _ in range(100_000):
            if self.stop.is_set():
                return
            for sid in mine:
                self.hit(sid)

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)
        # One last pass, every user, after both nodes are back; a session
        # whose lock leaked in a failed request waits out its expiry.
        self.phase = "final"
        for sid in list(self.users) + self.gone:
            for _ in range(10):
                before = self.total("errors")
                self.hit(sid)
                if self.total("errors") == before:
                    break
                time.sleep(1)

    def report(self):
        return "\n".join("PHASE %s %s" % (p, " ".join("%s=%d" % kv for kv in sorted(c.items())))
                         for p, c in self.counts.items()) + "\n" + "\n".join(self.examples) + "\n" + \
            "\n".join("ERRORS %s %r" % kv for kv in self.errors_seen.items())


def test_php_sessions_failover_and_failback(make_pair, php_bin, workdir):
    p = make_pair(proxy=True, extra=("--replication-ack",))
    web = PhpServer(php_bin, p, workdir)
    try:
        users = WebUsers(web)
        users.start()
        time.sleep(2)

        def mark(name):
            users.phase = name
        a_back, b_back = failover_timeline(p, mark)
        users.finish()
    finally:
        web.stop()
    report = users.report()
    print(report)
    assert users.total("lost") == 0, "sessions lost:\n" + report
    assert users.total("stale") == 0, "stale reads:\n" + report
    assert users.total("resurrected") == 0, "logged-out sessions back:\n" + report
    final = users.counts.get("final", {})
    assert final.get("requests", 0) - final.get("errors", 0) == WEB_USERS + LOGGED_OUT, \
        "a session unusable after both nodes returned:\n" + report
    assert users.total("requests") > 10 * WEB_USERS, report
    assert a_back > 0 and b_back > 0, "PHP failed back to each returned node:\n" + report
    assert p.a.stat("ack_timeouts") == "0" and p.b.stat("ack_timeouts") == "0"
