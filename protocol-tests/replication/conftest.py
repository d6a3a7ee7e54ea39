"""Twin replication, black box: two memtwin daemons on 127.0.0.2 and 127.0.0.3.

Run: ``pytest protocol-tests/replication --server-bin target/release/memtwin``
(scripts/test does this; the binary also comes from ``$MEMTWIN_BIN``, default
``target/release/memtwin``).

* Skipped as a whole when the binary's ``--help`` does not list ``--peer`` (the
  feature is not in that build yet), and for ``--target memcached``. Tests
  marked ``harness`` (test_harness.py: proxy and fixture lifecycle) run anyway,
  against Debian's memcached or a standalone memtwin.
* Every stats field name and CLI flag the suite relies on is in ``twinlib.py``
  (``STAT``, ``FLAG_*``): one place to adjust if the implementation differs.
* Logs: ``$MEMTWIN_TEST_LOGS/replication/<test>/node-*.log`` (else a temp dir);
  a failing test shows the tail of every node's log in its report.

Fixtures:
``pair``        module-scoped pair (direct link), for tests on keys of their own
``make_pair``   factory for a fresh pair: make_pair(proxy=True, data_dir=True,
                node_ids=(1, 1), secrets=(...), start=True, wait_link=True)
``node``        factory for one extra Node (e.g. a third node with another secret)

Dry run of the test mechanics (not a test of replication): with
``MEMTWIN_REPL_DRYRUN=1`` both "nodes" of every pair are one standalone server
(``--server-bin``, e.g. /usr/bin/memcached), so each replication check is
trivially met and what remains checked is the tests' own protocol usage
(commands, reply parsing, clients). Link, stats and outage tests fail there
by design.
"""
import os
import re
import shutil
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))   # binproto.py
sys.path.insert(2, os.path.join(os.path.dirname(HERE), "clients"))   # clienthelpers.py

import twinlib  # noqa: E402
from twinlib import Node, TwinPair, binary_supports_replication  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "harness: tests of the harness itself (run without the feature)")
    config.addinivalue_line(
        "markers", "binary: uses the binary protocol (skipped when MEMTWIN_SKIP_BINARY=1)")


def resolve_bin(config):
    b = config.getoption("--server-bin") or os.environ.get("MEMTWIN_BIN") \
        or os.path.join(ROOT, "target", "release", "memtwin")
    if not os.path.isabs(b):
        b = os.path.join(os.getcwd(), b) if os.path.exists(b) else os.path.join(ROOT, b)
    return b


DRYRUN = os.environ.get("MEMTWIN_REPL_DRYRUN", "") in ("1", "true", "yes")


class DryPair:
    """Both nodes are one standalone server (see MEMTWIN_REPL_DRYRUN above)."""

    def __init__(self, binary, workdir):
        n = Node(binary, "127.0.0.2", workdir, "dry", replicate=False)
        self.a = self.b = n
        self.nodes = [n]
        self.link = None

    def start(self, wait_link=True):
        self.a.start()
        return self

    def stop(self):
        self.a.stop()

    def log_tails(self, lines=40):
        return self.a.log_tail(lines)


def pytest_collection_modifyitems(config, items):
    mine = [i for i in items if str(i.fspath).startswith(HERE + os.sep)]
    if not mine:
        return
    reason = None
    if DRYRUN:
        pass
    elif config.getoption("--target") != "memtwin":
        reason = "twin replication is a memtwin feature (target is %s)" % config.getoption("--target")
    else:
        ok, why = binary_supports_replication(resolve_bin(config))
        if not ok:
            reason = why + ": replication suite skipped"
    skip_bin = os.environ.get("MEMTWIN_SKIP_BINARY", "") in ("1", "true", "yes")
    for item in mine:
        if item.get_closest_marker("harness"):
            continue
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
        elif skip_bin and item.get_closest_marker("binary"):
            item.add_marker(pytest.mark.skip(reason="MEMTWIN_SKIP_BINARY=1"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        nodes = list(getattr(item, "_twin_nodes", []))
        for fixturename in ("pair",):
            p = item.funcargs.get(fixturename) if hasattr(item, "funcargs") else None
            if p is not None:
                nodes += p.nodes
        seen = set()
        for n in nodes:
            if id(n) in seen:
                continue
            seen.add(id(n))
            rep.sections.append(("log tail of %s (%s)" % (n.name, n.log_path), n.log_tail(40)))


@pytest.fixture(scope="session")
def server_bin(request):
    return resolve_bin(request.config)


@pytest.fixture(scope="session")
def logroot():
    base = os.environ.get("MEMTWIN_TEST_LOGS")
    if base:
        d = os.path.join(base, "replication")
        os.makedirs(d, exist_ok=True)
        yield d
    else:
        d = tempfile.mkdtemp(prefix="memtwin-repl-logs-")
        yield d


def _slug(name):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:100]


@pytest.fixture
def workdir(request, logroot):
    """Per-test directory: secrets, data dirs and node logs."""
    d = os.path.join(logroot, _slug(request.node.name))
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    yield d
    # keep logs; drop data dirs
    for sub in os.listdir(d):
        p = os.path.join(d, sub)
        if os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)


class Swapped:
    """A pair seen from the other side: `a` is node B, `b` is node A, so every
    test written as "write on a, read on b" also runs from B to A."""

    def __init__(self, pair):
        self._pair = pair

    @property
    def a(self):
        return self._pair.b

    @property
    def b(self):
        return self._pair.a

    def __getattr__(self, name):
        return getattr(self._pair, name)


@pytest.fixture(scope="module", params=["a-to-b", "b-to-a"])
def pair(request, server_bin, logroot):
    """Each module's shared pair, once per direction: the writes of every test
    go to A then to B (issue 11: every command on either node)."""
    d = os.path.join(logroot, _slug(request.module.__name__) + "-shared-" + request.param)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    p = DryPair(server_bin, d) if DRYRUN else TwinPair(server_bin, d, d)
    try:
        p.start()
    except Exception:
        p.stop()
        raise
    yield p if request.param == "a-to-b" else Swapped(p)
    p.stop()


@pytest.fixture
def make_pair(request, server_bin, workdir):
    pairs = []
    request.node._twin_nodes = []

    def make(proxy=False, data_dir=False, node_ids=(1, 2), secrets=None, start=True,
             wait_link=True, extra=()):
        sub = os.path.join(workdir, "pair%d" % len(pairs))
        os.makedirs(sub)
        if DRYRUN:
            p = DryPair(server_bin, sub)
        else:
            p = TwinPair(server_bin, sub, sub, proxy=proxy, data_dir=data_dir, node_ids=node_ids,
                         secrets=secrets, extra=extra)
        pairs.append(p)
        request.node._twin_nodes += p.nodes
        if start:
            p.start(wait_link=wait_link)
        return p
    yield make
    for p in pairs:
        p.stop()


@pytest.fixture
def node(request, server_bin, workdir):
    nodes = []
    if not hasattr(request.node, "_twin_nodes"):
        request.node._twin_nodes = []

    def make(host, name, start=True, **kw):
        n = Node(server_bin, host, workdir, name, **kw)
        nodes.append(n)
        request.node._twin_nodes.append(n)
        if start:
            n.start()
        return n
    yield make
    for n in nodes:
        n.stop()


@pytest.fixture
def conns():
    """conns(node) -> a Text connection closed at teardown."""
    opened = []

    def make(n, timeout=3.0):
        c = n.connect(timeout)
        opened.append(c)
        return c
    yield make
    for c in opened:
        c.close()
