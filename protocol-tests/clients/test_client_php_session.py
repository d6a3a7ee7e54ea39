"""PHP memcached session handler (php8.2-memcached 3.2.0 on libmemcached 1.1.4).

Drives php/sess.php, one PHP CLI process per "request", in binary protocol (the
extension's default) and ASCII (`-d memcached.sess_binary_protocol=0`).

Keys: `memc.sess.key.<sid>` holds the session, `memc.sess.key.lock.<sid>` the
lock (`add ... 1`, deleted at close).  Checks read the keys back with a plain
text client.
"""
import json
import os
import shutil
import subprocess
import time

import pytest

from clienthelpers import php_with_memcached, text_get, text_gets

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "php", "sess.php")
PREFIX = "memc.sess.key."

PROTOCOLS = [
    pytest.param(True, id="binary", marks=pytest.mark.binary),
    pytest.param(False, id="ascii"),
]

# enough lock retries to wait out a held session (50 x 100 ms = 5 s)
PATIENT = {"memcached.sess_lock_retries": "50",
           "memcached.sess_lock_wait_min": "100",
           "memcached.sess_lock_wait_max": "100"}


@pytest.fixture(scope="module", autouse=True)
def php_ready():
    php_with_memcached()


@pytest.fixture(params=PROTOCOLS)
def binary(request):
    return request.param


def php_argv(server, binary, mode, sid="", hold_ms=0, ini=None):
    argv = [shutil.which("php"), "-d", "memcached.sess_binary_protocol=%d" % int(binary)]
    for k, v in (ini or {}).items():
        argv += ["-d", "%s=%s" % (k, v)]
    argv += [SCRIPT, "%s:%d" % (server.host, server.port), mode]
    if sid or hold_ms:
        argv.append(sid)
    if hold_ms:
        argv.append(str(hold_ms))
    return argv


def parse(stdout, stderr=b""):
    for line in stdout.decode(errors="replace").splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError("no RESULT line; stdout=%r stderr=%r" % (stdout, stderr))


def php(server, binary, mode, sid="", hold_ms=0, ini=None, timeout=30):
    r = subprocess.run(php_argv(server, binary, mode, sid, hold_ms, ini),
                       capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    res = parse(r.stdout, r.stderr)
    assert res["binary"] == str(int(binary)), res
    return res


def php_bg(server, binary, mode, sid="", hold_ms=0, ini=None):
    return subprocess.Popen(php_argv(server, binary, mode, sid, hold_ms, ini),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def finish(proc, timeout=30):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=5)
        raise
    assert proc.returncode == 0, (proc.returncode, out, err)
    return parse(out, err)


def wait_for(pred, timeout=10.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False


def create(server, binary):
    res = php(server, binary, "create")
    assert res["started"] is True, res
    assert res["n"] == 1
    return res["sid"]


def test_create_read_write(shared_server, binary):
    sid = create(shared_server, binary)
    assert text_get(shared_server, PREFIX + sid) == b"n|i:1;"
    assert text_get(shared_server, PREFIX + "lock." + sid) is None  # unlocked at close
    for expect in (2, 3):
        res = php(shared_server, binary, "incr", sid)
        assert res["started"] is True and res["sid"] == sid
        assert res["n_before"] == expect - 1 and res["n"] == expect
        assert text_get(shared_server, PREFIX + sid) == b"n|i:%d;" % expect
    assert text_get(shared_server, PREFIX + "lock." + sid) is None


def test_unknown_id_without_strict_mode_is_used(shared_server, binary):
    sid = "phpnostrict" + os.urandom(8).hex()
    res = php(shared_server, binary, "incr", sid)
    assert res["started"] is True and res["sid"] == sid and res["n"] == 1
    assert text_get(shared_server, PREFIX + sid) == b"n|i:1;"


def test_lock_held_while_request_runs(shared_server, binary):
    sid = create(shared_server, binary)
    lock = PREFIX + "lock." + sid
    p = php_bg(shared_server, binary, "incr", sid, hold_ms=1500)
    try:
        assert wait_for(lambda: text_get(shared_server, lock) is not None, timeout=10), \
            "lock key never appeared"
        assert text_get(shared_server, lock) == b"1"
        # data is not written until the request ends
        assert text_get(shared_server, PREFIX + sid) == b"n|i:1;"
    finally:
        res = finish(p)
    assert res["n"] == 2
    assert text_get(shared_server, lock) is None
    assert text_get(shared_server, PREFIX + sid) == b"n|i:2;"


def test_lazy_write_touches_unchanged_session(shared_server, binary):
    """Unchanged data with session.lazy_write=1 => `touch key maxlifetime`, not `set`:
    value and CAS stay, the TTL becomes gc_maxlifetime."""
    sid = create(shared_server, binary)
    key = PREFIX + sid
    before = text_gets(shared_server, key)
    assert before[0] == b"n|i:1;"
    res = php(shared_server, binary, "read", sid,
              ini={"session.lazy_write": "1", "session.gc_maxlifetime": "2"})
    assert res["started"] is True and res["n"] == 1
    after = text_gets(shared_server, key)
    assert after == before, "lazy write must touch (same value and CAS), got %r -> %r" % (before, after)
    # the touch set a 2 s TTL: the session expires
    assert wait_for(lambda: text_get(shared_server, key) is None, timeout=6, step=0.2), \
        "touch did not set the TTL"


def test_write_without_lazy_write_sets(shared_server, binary):
    sid = create(shared_server, binary)
    key = PREFIX + sid
    before = text_gets(shared_server, key)
    res = php(shared_server, binary, "read", sid, ini={"session.lazy_write": "0"})
    assert res["n"] == 1
    after = text_gets(shared_server, key)
    assert after[0] == before[0]
    assert after[1] != before[1], "without lazy_write the session is re-set (new CAS)"


def test_destroy(shared_server, binary):
    sid = create(shared_server, binary)
    res = php(shared_server, binary, "destroy", sid)
    assert res["started"] is True and res["destroyed"] is True
    assert text_get(shared_server, PREFIX + sid) is None
    assert text_get(shared_server, PREFIX + "lock." + sid) is None
    res = php(shared_server, binary, "incr", sid)
    assert res["n_before"] is None and res["n"] == 1


def test_strict_mode(shared_server, binary):
    strict = {"session.use_strict_mode": "1"}
    sid = create(shared_server, binary)
    # an existing session id is accepted (exist probe: add -> NOT_STORED)
    res = php(shared_server, binary, "strict", sid, ini=strict)
    assert res["started"] is True and res["sid"] == sid and res["n"] == 1
    assert text_get(shared_server, PREFIX + sid) == b"n|i:1;"  # failed add left it alone
    # an unknown id is rejected and replaced (exist probe: add -> STORED, expired at once)
    unknown = "phpstrict" + os.urandom(8).hex()
    res = php(shared_server, binary, "strict", unknown, ini=strict)
    assert res["started"] is True
    assert res["sid"] != unknown and res["sid"]
    assert res["n"] is None
    assert text_get(shared_server, PREFIX + unknown) is None, "existence probe left an item behind"
    # and it is still unknown on a second try
    res2 = php(shared_server, binary, "strict", unknown, ini=strict)
    assert res2["sid"] != unknown


def test_concurrent_requests_serialised_by_lock(shared_server, binary):
    sid = create(shared_server, binary)
    lock = PREFIX + "lock." + sid
    hold_ms = 1500
    p1 = php_bg(shared_server, binary, "incr", sid, hold_ms=hold_ms, ini=PATIENT)
    p2 = None
    try:
        assert wait_for(lambda: text_get(shared_server, lock) is not None, timeout=10)
        t_start = time.monotonic()
        p2 = php_bg(shared_server, binary, "incr", sid, ini=PATIENT)
        r2 = finish(p2)
        r1 = finish(p1)
    finally:
        for p in (p1, p2):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(5)
    assert r1["started"] and r2["started"], (r1, r2)
    assert (r1["n_before"], r1["n"]) == (1, 2), r1
    # the second request waited for the first to write and unlock, then saw n=2
    assert (r2["n_before"], r2["n"]) == (2, 3), r2
    assert r2["start_ms"] >= 500, "second request did not wait for the lock: %r" % r2
    assert time.monotonic() - t_start < 15
    assert text_get(shared_server, PREFIX + sid) == b"n|i:3;"
    assert text_get(shared_server, lock) is None


def test_lock_contention_gives_up(shared_server, binary):
    """With few retries the second request cannot get the lock and fails to start."""
    sid = create(shared_server, binary)
    lock = PREFIX + "lock." + sid
    impatient = {"memcached.sess_lock_retries": "2",
                 "memcached.sess_lock_wait_min": "50",
                 "memcached.sess_lock_wait_max": "50"}
    p1 = php_bg(shared_server, binary, "incr", sid, hold_ms=2000)
    try:
        assert wait_for(lambda: text_get(shared_server, lock) is not None, timeout=10)
        r2 = php(shared_server, binary, "incr", sid, ini=impatient)
    finally:
        r1 = finish(p1)
    assert r1["n"] == 2
    assert r2["started"] is False, r2
    assert text_get(shared_server, PREFIX + sid) == b"n|i:2;"
    assert text_get(shared_server, lock) is None


def test_many_sequential_requests(shared_server, binary):
    sid = create(shared_server, binary)
    for i in range(2, 12):
        res = php(shared_server, binary, "incr", sid)
        assert res["n"] == i
    assert text_get(shared_server, PREFIX + sid) == b"n|i:11;"


@pytest.mark.binary
def test_sasl_session(sasl_server):
    """memcached.sess_sasl_username/password: SASL PLAIN, forces the binary protocol."""
    auth = {"memcached.sess_sasl_username": sasl_server.user,
            "memcached.sess_sasl_password": sasl_server.password}
    res = php(sasl_server, True, "create", ini=auth)
    assert res["started"] is True and res["n"] == 1
    sid = res["sid"]
    res = php(sasl_server, True, "incr", sid, ini=auth)
    assert res["started"] is True and (res["n_before"], res["n"]) == (1, 2)
    res = php(sasl_server, True, "destroy", sid, ini=auth)
    assert res["destroyed"] is True
    res = php(sasl_server, True, "incr", sid, ini=auth)
    assert res["n_before"] is None and res["n"] == 1


@pytest.mark.binary
def test_sasl_session_wrong_password(sasl_server):
    ini = {"memcached.sess_sasl_username": sasl_server.user,
           "memcached.sess_sasl_password": "wrong-" + sasl_server.password}
    r = subprocess.run(php_argv(sasl_server, True, "create", ini=ini),
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    # PHP cannot even create a session id: uncaught Error, exit 255
    assert r.returncode != 0 or parse(r.stdout, r.stderr)["started"] is False, (r.stdout, r.stderr)
    assert b"n\":1" not in r.stdout
