#!/usr/bin/env python3
"""What a twin costs: one node alone vs a node with its twin attached, same run.

    python3 benches/replication.py            # 60 s budget per lag phase, 3 reps of throughput
    python3 benches/replication.py --quick    # 10 s lag phases, 1 rep (smoke)

Reported as ratios (twinned / single), markdown on stdout, JSON in --out:
  * throughput, write-heavy (100 % set, 100 B) and 90/10 get/set (100 B), text,
    closed loop, 50 conns: single node vs node A of a pair (B idle but applying);
    nodes started fresh per repetition, the order alternates, median of the
    per-repetition ratios (benches/compare.py's method);
  * replication lag p50/p99 at half and at the max write rate: while the load
    generator writes to A, a probe writes `lagprobe:<n>` = time on A every 20 ms
    and polls B (`mg`, 0.5 ms steps, at most 5 s) until it is there; `repl_lag_ms`
    sampled from A's stats alongside;
  * bytes on the link per 100 B and per 4 KB write: the link runs through the
    suite's byte-counting proxy (protocol-tests/replication/twinlib.py), idle
    bytes (pings, acks) over the same time subtracted.

  * catch-up (--catchup-only runs just this): a full sync of 1M sessions of 500 B
    to a node restarted empty, its rate (records/s, MB/s from the source's
    `repl_last_catchup_*` stats), the restarted node's time from start to
    serving, and the source's client throughput while it streams, as a ratio
    of the same load just before; then partial catch-ups after a clean restart
    of the twin with --data-dir while the source took 200k writes: from the
    backlog (the default) and by a table scan (--replication-backlog-mb 0).

Servers run on 127.0.0.2 / 127.0.0.3, free ports, stopped by pid. Skips (exit 0,
with a message) when the memtwin binary has no --peer. Needs the load generator:
cargo build --release -p memtwin-bench (target/release/memtwin-loadgen).
Not run in CI (scripts/test never calls it); --quick takes about 1.5 min.
--dry-run (both "nodes" one standalone server) checks the plumbing and shows the
lag probe's own floor under load (about 3 ms p50 on a busy 2-core machine):
read the lag numbers against it.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "protocol-tests", "replication"))
import twinlib  # noqa: E402

WORKLOADS = {
    "write": ("100 % set, 100 B", ["--get-ratio", "0", "--value-size", "100", "--key-prefix", "key:"]),
    "mixed": ("90 % get / 10 % set, 100 B", ["--get-ratio", "0.9", "--value-size", "100",
                                              "--key-prefix", "key:"]),
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


PIN = {"on": False}


def pin(pid, cpu):
    """All threads of `pid` onto one CPU (`--pin`)."""
    subprocess.run(["taskset", "-a", "-cp", str(cpu), str(pid)], check=True, capture_output=True)


def renice(pid, value):
    """Every thread of `pid` to nice `value` (Linux nice is per thread)."""
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), value)
        except OSError:
            pass


def loadgen(bin_, node, args, watch=(), timeout=600):
    cmd = [bin_, "--addr", node.addr, "--threads", "1"] + list(args)
    if PIN["on"]:
        cmd = ["taskset", "-c", "1"] + cmd
    for pid in watch:
        cmd += ["--watch-pid", str(pid)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0 or not r.stdout.strip():
        raise RuntimeError("loadgen failed (%s): %s\n%s" % (r.returncode, " ".join(cmd), r.stderr[-2000:]))
    return json.loads(r.stdout.strip().splitlines()[-1])


def preload(o, node, keys=10000, size=100, prefix="key:"):
    return loadgen(o.loadgen, node, ["--preload", "--conns", "4", "--keys", str(keys),
                                     "--value-size", str(size), "--key-prefix", prefix])


class Setup:
    """A single node, or a pair (optionally through the proxy); dry: a pair is
    one standalone node (checks the bench's own plumbing only)."""

    def __init__(self, o, kind, proxy=False):
        self.o, self.kind = o, kind
        self.dir = tempfile.mkdtemp(prefix="memtwin-replbench-%s-" % kind, dir=o.workdir)
        extra = ["-t", "2", "-m", "1024", "-c", "4096"]
        if kind == "ack":
            extra += ["--replication-ack"]
        if kind == "single" or o.dry_run:
            self.a = twinlib.Node(o.bin, "127.0.0.2", self.dir, "single", replicate=False, extra=extra)
            self.nodes, self.pair = [self.a], None
        else:
            self.pair = twinlib.TwinPair(o.bin, self.dir, self.dir, proxy=proxy, extra=extra)
            self.a, self.nodes = self.pair.a, self.pair.nodes

    def __enter__(self):
        if self.pair:
            self.pair.start(timeout=15)
        else:
            self.a.start()
        if PIN["on"]:
            # The node measured gets CPU 0 to itself; its twin shares CPU 1
            # with the load generator, so the ratio is what replication costs
            # the node, not what the twin's apply takes from the generator.
            pin(self.a.pid, 0)
            if self.pair:
                pin(self.pair.b.pid, 1)
        return self

    def __exit__(self, *exc):
        if self.pair:
            self.pair.stop()
        else:
            self.a.stop()

    @property
    def b(self):
        return self.pair.b if self.pair else self.a

    @property
    def link(self):
        return self.pair.link if self.pair else None


# ------------------------------------------------------------------ throughput


def throughput(o):
    rows = {wl: [] for wl in WORKLOADS}
    for rep in range(o.reps):
        for wi, wl in enumerate(WORKLOADS):
            order = ["single", "twin"] if (rep + wi) % 2 == 0 else ["twin", "single"]
            res = {}
            for kind in order:
                with Setup(o, kind) as s:
                    preload(o, s.a)
                    r = loadgen(o.loadgen, s.a, WORKLOADS[wl][1] + [
                        "--conns", "50", "--duration", str(o.tp_seconds), "--warmup", "1",
                        "--keys", "10000"], watch=[n.pid for n in s.nodes])
                    res[kind] = r
                    log("[rep %d] %-5s %-6s %9.0f ops/s p99 %7.0f us" % (
                        rep + 1, wl, kind, r["ops_per_sec"], r["lat_us"]["p99"]))
            rows[wl].append(res)
    out = {}
    for wl, reps in rows.items():
        out[wl] = {
            "single_ops": statistics.median(r["single"]["ops_per_sec"] for r in reps),
            "twin_ops": statistics.median(r["twin"]["ops_per_sec"] for r in reps),
            "ops_ratio": statistics.median(r["twin"]["ops_per_sec"] / max(r["single"]["ops_per_sec"], 1e-9)
                                           for r in reps),
            "p99_ratio": statistics.median(r["twin"]["lat_us"]["p99"] / max(r["single"]["lat_us"]["p99"], 1e-9)
                                           for r in reps),
        }
    return out


def ack_cost(o):
    """--replication-ack against asynchronous replication, same workload (100 %
    set), alternating order: what waiting for the twin costs a write."""
    reps = []
    for rep in range(o.reps):
        order = ["twin", "ack"] if rep % 2 == 0 else ["ack", "twin"]
        res = {}
        for kind in order:
            with Setup(o, kind) as s:
                preload(o, s.a)
                for conns in (1, 50):
                    r = loadgen(o.loadgen, s.a, WORKLOADS["write"][1] + [
                        "--conns", str(conns), "--duration", str(o.tp_seconds), "--warmup", "1",
                        "--keys", "10000"], watch=[n.pid for n in s.nodes])
                    res[(kind, conns)] = r
                    log("[rep %d] ack-cost %-4s %2d conns %9.0f ops/s p50 %6.0f us p99 %6.0f us" % (
                        rep + 1, kind, conns, r["ops_per_sec"], r["lat_us"]["p50"], r["lat_us"]["p99"]))
                timeouts = s.a.stat_int("ack_timeouts") if kind == "ack" else 0
                res[(kind, "timeouts")] = timeouts or 0
        reps.append(res)
    out = {}
    for conns in (1, 50):
        ratio = lambda f: statistics.median(f(r[("ack", conns)]) / max(f(r[("twin", conns)]), 1e-9) for r in reps)
        out[conns] = {
            "async_ops": statistics.median(r[("twin", conns)]["ops_per_sec"] for r in reps),
            "ack_ops": statistics.median(r[("ack", conns)]["ops_per_sec"] for r in reps),
            "ops_ratio": ratio(lambda x: x["ops_per_sec"]),
            "p50_ratio": ratio(lambda x: x["lat_us"]["p50"]),
            "p99_ratio": ratio(lambda x: x["lat_us"]["p99"]),
            "ack_p50_us": statistics.median(r[("ack", conns)]["lat_us"]["p50"] for r in reps),
            "ack_p99_us": statistics.median(r[("ack", conns)]["lat_us"]["p99"] for r in reps),
            "timeouts": sum(r[("ack", "timeouts")] for r in reps),
        }
    return out


# ------------------------------------------------------------------ lag


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def probe_lag(s, seconds, stop):
    """Write probes on A, poll B; returns (lags_ms, lost, repl_lag_ms samples,
    (seconds since start, lag_ms) per probe for the curve)."""
    ca, cb = s.a.connect(timeout=5), s.b.connect(timeout=5)
    lags, lost, stat_lag, timeline = [], 0, [], []
    start = time.monotonic()
    end = start + seconds
    i = 0
    try:
        for _ in range(int(seconds / 0.02) + 10):
            if time.monotonic() > end or stop.is_set():
                break
            k = b"lagprobe:%d" % i
            i += 1
            t0 = time.monotonic()
            ca.store("set", k, b"%.6f" % time.time())
            got = None
            for _ in range(10000):                 # <= 5 s at 0.5 ms
                if cb.mg(k, b"v") is not None:
                    got = time.monotonic()
                    break
                if time.monotonic() - t0 > 5:
                    break
                time.sleep(0.0005)
            if got is None:
                lost += 1
            else:
                lags.append((got - t0) * 1000)
                timeline.append((t0 - start, lags[-1]))
            if i % 10 == 0 and s.pair:
                v = s.a.stat_int("lag_ms")
                if v is not None:
                    stat_lag.append(v)
            time.sleep(max(0.0, 0.02 - (time.monotonic() - t0)))
    finally:
        ca.close()
        cb.close()
    return lags, lost, stat_lag, timeline


def curve(timeline, seconds, step=10):
    """p50/p99 of the probes in each `step`-second window: does lag grow?"""
    rows = []
    for w in range(0, int(seconds) + 1, step):
        xs = [lag for t, lag in timeline if w <= t < w + step]
        if xs:
            rows.append((w, w + step, len(xs), pct(xs, 0.5), pct(xs, 0.99)))
    return rows


def lag(o, max_write_rate):
    out = {}
    for label, rate in (("half", max_write_rate / 2), ("max", 0)):
        with Setup(o, "twin") as s:
            preload(o, s.a)
            args = WORKLOADS["write"][1] + ["--conns", "50", "--duration", str(o.lag_seconds),
                                            "--warmup", "0", "--keys", "10000"]
            if rate:
                args += ["--rate", str(int(rate))]
            stop = threading.Event()
            result = {}

            def run():
                try:
                    result["lg"] = loadgen(o.loadgen, s.a, args)
                finally:
                    stop.set()
            t = threading.Thread(target=run)
            t.start()
            time.sleep(0.5)
            lags, lost, stat_lag, timeline = probe_lag(s, o.lag_seconds - 1, stop)
            t.join(o.lag_seconds + 120)
            lg = result.get("lg", {})
            out[label] = {"rate": lg.get("ops_per_sec"), "probes": len(lags), "lost": lost,
                          "p50_ms": pct(lags, 0.5), "p99_ms": pct(lags, 0.99), "max_ms": pct(lags, 1.0),
                          "repl_lag_ms_p50": pct(stat_lag, 0.5), "repl_lag_ms_max": pct(stat_lag, 1.0),
                          "curve": curve(timeline, o.lag_seconds, 10 if o.lag_seconds >= 30 else 2)}
            log("lag at %s rate (%s ops/s): p50 %s ms p99 %s ms, %d probes, %d lost" % (
                label, lg.get("ops_per_sec"), out[label]["p50_ms"], out[label]["p99_ms"], len(lags), lost))
    return out


# ------------------------------------------------------------------ bytes on the link


def link_bytes(o):
    out = {}
    if o.dry_run:
        return out
    n = 5000 if not o.quick else 2000
    for size in (100, 4096):
        with Setup(o, "twin", proxy=True) as s:
            link = s.link
            t0, idle0 = time.monotonic(), link.bytes_from("a")
            time.sleep(1.0)
            idle_rate = (link.bytes_from("a") - idle0) / (time.monotonic() - t0)
            applied0 = s.b.stat_int("records_applied") or 0
            before, t1 = link.bytes_from("a"), time.monotonic()
            preload(o, s.a, keys=n, size=size, prefix="b%d:" % size)
            ok = twinlib.wait_until(lambda: (s.b.stat_int("records_applied") or 0) >= applied0 + n
                                    and s.a.stat_int("lag_records") == 0, timeout=60, step=0.05)
            dt = time.monotonic() - t1
            total = link.bytes_from("a") - before - idle_rate * dt
            back = None
            out[size] = {"writes": n, "bytes_per_write": total / n, "overhead_per_write": total / n - size,
                         "settled": bool(ok), "idle_bytes_per_s": idle_rate, "back_bytes": back}
            log("link bytes per %d B write: %.1f (%d writes, settled=%s)" % (size, total / n, n, bool(ok)))
    return out


# ------------------------------------------------------------------ report


def fmt(x, d=2):
    return "–" if x is None else "%.*f" % (d, x)


def markdown_ack(ac):
    lines = ["", "`--replication-ack` against asynchronous replication (100 % set, 100 B):", "",
             "| conns | async ops/s | ack ops/s | **ack/async ops** | ack/async p50 | ack/async p99 | ack p50 / p99 us | ack timeouts |",
             "|---|---|---|---|---|---|---|---|"]
    for conns, r in ac.items():
        lines.append("| %d | %.0f | %.0f | **%s** | %s | %s | %.0f / %.0f | %d |" % (
            conns, r["async_ops"], r["ack_ops"], fmt(r["ops_ratio"]), fmt(r["p50_ratio"]),
            fmt(r["p99_ratio"]), r["ack_p50_us"], r["ack_p99_us"], r["timeouts"]))
    return "\n".join(lines)


def markdown(tp, lg, lb, o):
    lines = ["## Twin replication cost (%s, %s, %d rep(s), throughput runs %d s, lag phases %d s)"
             % ("dry run: both nodes are one standalone server" if o.dry_run else "memtwin pair",
                "pinned: A on CPU 0, B and the generator on CPU 1" if o.pin else "unpinned",
                o.reps, o.tp_seconds, o.lag_seconds), "",
             "| workload | single ops/s | twinned ops/s | **twin/single ops** | twin/single p99 |",
             "|---|---|---|---|---|"]
    for wl, r in tp.items():
        lines.append("| %s | %.0f | %.0f | **%s** | %s |" % (WORKLOADS[wl][0], r["single_ops"], r["twin_ops"],
                                                          fmt(r["ops_ratio"]), fmt(r["p99_ratio"])))
    lines += ["", "| lag at | write rate ops/s | probes (lost) | p50 ms | **p99 ms** | max ms | repl_lag_ms p50 / max |",
              "|---|---|---|---|---|---|---|"]
    for label, r in lg.items():
        lines.append("| %s rate | %s | %d (%d) | %s | **%s** | %s | %s / %s |" % (
            label, fmt(r["rate"], 0), r["probes"], r["lost"], fmt(r["p50_ms"]), fmt(r["p99_ms"]),
            fmt(r["max_ms"]), fmt(r["repl_lag_ms_p50"], 0), fmt(r["repl_lag_ms_max"], 0)))
    lines += ["", "Lag over time (probe p50 / p99 ms per window; flat = the twin keeps up):", "",
              "| window s | " + " | ".join("%s rate" % label for label in lg) + " |",
              "|---|" + "---|" * len(lg)]
    windows = sorted({(r[0], r[1]) for v in lg.values() for r in v.get("curve", [])})
    for w0, w1 in windows:
        cells = []
        for v in lg.values():
            row = [r for r in v.get("curve", []) if (r[0], r[1]) == (w0, w1)]
            cells.append("%s / %s" % (fmt(row[0][3]), fmt(row[0][4])) if row else "-")
        lines.append("| %d-%d | %s |" % (w0, w1, " | ".join(cells)))
    if lb:
        lines += ["", "| write size | link bytes per write | overhead per write | settled |", "|---|---|---|---|"]
        for size, r in lb.items():
            lines.append("| %d B | %.1f | %.1f | %s |" % (size, r["bytes_per_write"], r["overhead_per_write"],
                                                          "yes" if r["settled"] else "**no**"))
    return "\n".join(lines)


# ------------------------------------------------------------------ catch-up


def catchup_stats(node):
    st = node.stats()
    us = max(int(st["repl_last_catchup_us"]), 1)
    rec, byt = int(st["repl_last_catchup_records"]), int(st["repl_last_catchup_bytes"])
    return {"kind": st["repl_last_catchup"], "records": rec, "bytes": byt, "seconds": us / 1e6,
            "records_per_sec": rec / (us / 1e6), "mb_per_sec": byt / 1e6 / (us / 1e6)}


def wait_items(node, n, timeout=300):
    return twinlib.wait_until(lambda: int(node.stats()["curr_items"]) >= n, timeout=timeout, step=0.1)


def full_sync(o, sessions, size):
    """B restarted empty while A holds `sessions`: rate, time to serve, and
    what streaming costs A (90/10 mixed, 50 conns, A's CPU watched) in two
    rounds: a closed loop (A's ops/s during the stream vs just before) and an
    open loop at half of A's closed-loop rate (does A still serve the offered
    load, and at what p99). With --pin, A has CPU 0 to itself."""
    extra = ["-t", "2", "-m", "4096", "-c", "4096"]
    if o.catchup_rate is not None:
        extra += ["--replication-catchup-rate", str(o.catchup_rate)]
    d = tempfile.mkdtemp(prefix="memtwin-replbench-catchup-", dir=o.workdir)
    pair = twinlib.TwinPair(o.bin, d, d, extra=extra)
    pair.start(timeout=15)
    try:
        a, b = pair.a, pair.b
        loadgen(o.loadgen, a, ["--preload", "--conns", "8", "--keys", str(sessions),
                               "--value-size", str(size), "--key-prefix", "sess:"], timeout=900)
        assert wait_items(b, sessions), "B never held the preload"
        load = WORKLOADS["mixed"][1][:-2] + ["--key-prefix", "sess:", "--value-size", str(size),
                                              "--conns", "50", "--keys", str(sessions)]
        window = max(1.0, o.catchup_window)
        if PIN["on"]:
            pin(a.pid, 0)
            pin(b.pid, 1)
        cs = {}
        for mode in ("closed", "open"):
            if mode == "open":
                load_m = load + ["--rate", str(int(cs["source_ops_before"] / 2))]
            else:
                load_m = load
            before = loadgen(o.loadgen, a, load_m + ["--duration", str(window), "--warmup", "0.5"],
                             watch=[a.pid])
            b.kill9()
            t0 = time.monotonic()
            b.start(serving=False, timeout=60)
            if PIN["on"]:
                # The source alone on CPU 0: what streaming costs it, not what the
                # twin's apply takes from the same cores. The twin shares CPU 1
                # with the load generator, at the lowest priority so the
                # generator's own latency is not the twin's apply.
                pin(b.pid, 1)
                renice(b.pid, 19)
            during = {}
            th = threading.Thread(target=lambda: during.update(
                loadgen(o.loadgen, a, load_m + ["--duration", str(window), "--warmup", "0"],
                        watch=[a.pid])))
            th.start()
            ok = twinlib.wait_until(b.serving, timeout=300, step=0.01)
            serve_s = time.monotonic() - t0
            th.join(600)
            assert ok, "B never served:\n" + b.log_tail()
            st = catchup_stats(a)
            cpu = lambda r: r["watched"][str(a.pid)]["cpu_s"]
            # A's CPU beyond what serving the same requests cost it just before.
            per_op = cpu(before) / max(before["ops"], 1)
            extra_cpu = max(cpu(during) - per_op * during["ops"], 0.0)
            streamed_mb = st["mb_per_sec"] * min(window, st["seconds"])
            prefix = "" if mode == "closed" else "open_"
            if mode == "closed":
                cs.update(st)
                cs.update({"sessions": sessions, "value_size": size,
                           "restart_to_serving_s": serve_s,
                           "caught_up_after_ms": int(b.stats()["repl_caught_up_after_ms"])})
            cs.update({
                prefix + "source_ops_before": before["ops_per_sec"],
                prefix + "source_ops_during": during["ops_per_sec"],
                prefix + "source_ops_ratio": during["ops_per_sec"] / max(before["ops_per_sec"], 1e-9),
                prefix + "source_p99_before_us": before["lat_us"]["p99"],
                prefix + "source_p99_during_us": during["lat_us"]["p99"],
                prefix + "source_cpu_ms_per_mb": extra_cpu * 1e3 / max(streamed_mb, 1e-9),
                prefix + "source_errors": during["errors"] + during["timeouts"],
            })
            log("full sync (%s loop): %d records, %.0f MB/s; B serving %.2f s after start; A %.2fx "
                "ops while streaming, p99 %.0f -> %.0f us, %.1f ms of A's CPU per MB streamed"
                % (mode, st["records"], st["mb_per_sec"], serve_s,
                   cs[prefix + "source_ops_ratio"], cs[prefix + "source_p99_before_us"],
                   cs[prefix + "source_p99_during_us"], cs[prefix + "source_cpu_ms_per_mb"]))
        return cs
    finally:
        pair.stop()


def partial(o, backlog_mb, writes, size=100, base=200000):
    """B (with --data-dir) stopped cleanly, `writes` sets on A, B started:
    what A sends it, from the backlog or by a scan of its `base` + `writes` items."""
    extra = ["-t", "2", "-m", "2048", "-c", "4096"]
    if backlog_mb is not None:
        extra += ["--replication-backlog-mb", str(backlog_mb)]
    d = tempfile.mkdtemp(prefix="memtwin-replbench-partial-", dir=o.workdir)
    pair = twinlib.TwinPair(o.bin, d, d, data_dir=True, extra=extra)
    pair.start(timeout=15)
    try:
        a, b = pair.a, pair.b
        loadgen(o.loadgen, a, ["--preload", "--conns", "8", "--keys", str(base),
                               "--value-size", str(size), "--key-prefix", "base:"], timeout=900)
        assert wait_items(b, base)
        # The twin resends from 2 s below a resume point (clock margin): let
        # the resume points move that far past the preload.
        time.sleep(3.0)
        b.stop()
        loadgen(o.loadgen, a, ["--preload", "--conns", "8", "--keys", str(writes),
                               "--value-size", str(size), "--key-prefix", "new:"], timeout=900)
        t0 = time.monotonic()
        b.start(serving=False, timeout=120)
        assert twinlib.wait_until(b.serving, timeout=300, step=0.01), b.log_tail()
        serve_s = time.monotonic() - t0
        cs = catchup_stats(a)
        cs.update({"writes": writes, "table": base + writes, "restart_to_serving_s": serve_s})
        log("partial (%s): %d records in %.3f s, %.0f records/s, %.0f MB/s; B serving %.2f s after start"
            % (cs["kind"], cs["records"], cs["seconds"], cs["records_per_sec"], cs["mb_per_sec"], serve_s))
        return cs
    finally:
        pair.stop()


def catchup(o):
    out = {"full": full_sync(o, o.catchup_sessions, 500)}
    if o.full_sync_only:
        return out
    out["backlog"] = partial(o, None, o.catchup_writes)
    out["scan"] = partial(o, 0, o.catchup_writes)
    return out


def markdown_catchup(c):
    f, bl, sc = c["full"], c["backlog"], c["scan"]
    lines = [
        "### Catch-up (same run)",
        "",
        "| catch-up | records | MB on the wire | time | records/s | MB/s | restarted node serving after |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in (("full sync to an empty node (%d x %d B)" % (f["sessions"], f["value_size"]), f),
                    ("after a clean restart, from the backlog (%s)" % bl["kind"], bl),
                    ("after a clean restart, by a table scan of %d items (%s)" % (sc["table"], sc["kind"]), sc)):
        lines.append("| %s | %d | %.0f | %.2f s | %.0f | %.0f | %.2f s |" % (
            name, r["records"], r["bytes"] / 1e6, r["seconds"], r["records_per_sec"], r["mb_per_sec"],
            r["restart_to_serving_s"]))
    lines += ["",
              "The source during the full sync (90/10 get/set, 50 conns, a %.0f s window from the "
              "twin's start): closed loop %.2fx its ops/s of the window just before (%.0f -> %.0f), "
              "p99 %.0f -> %.0f us; open loop at %.0f req/s: %.0f served, p99 %.0f -> %.0f us, %d errors; "
              "streaming cost it %.1f ms of CPU per MB sent."
              % (c.get("window", 0), f["source_ops_ratio"], f["source_ops_before"], f["source_ops_during"],
                 f["source_p99_before_us"], f["source_p99_during_us"], f["open_source_ops_before"],
                 f["open_source_ops_during"], f["open_source_p99_before_us"],
                 f["open_source_p99_during_us"], f["open_source_errors"], f["open_source_cpu_ms_per_mb"])]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--duration", type=float, help="seconds per lag phase (default 60, --quick 10)")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--bin", default=os.environ.get("MEMTWIN_BIN", os.path.join(ROOT, "target/release/memtwin")))
    ap.add_argument("--loadgen", default=os.path.join(ROOT, "target/release/memtwin-loadgen"))
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench-replication"))
    ap.add_argument("--pin", action="store_true",
                    help="node A on CPU 0, its twin and the load generator on CPU 1 (default: unpinned)")
    ap.add_argument("--ack-only", action="store_true",
                    help="only the --replication-ack cost (against asynchronous replication)")
    ap.add_argument("--catchup-only", action="store_true",
                    help="only the catch-up rates (full sync, backlog, scan)")
    ap.add_argument("--catchup-sessions", type=int, default=1000000)
    ap.add_argument("--catchup-writes", type=int, default=200000)
    ap.add_argument("--catchup-rate", type=int,
                    help="--replication-catchup-rate MB/s for the full sync (default: the daemon's)")
    ap.add_argument("--catchup-window", type=float, default=2.0,
                    help="seconds of load measured before and during the full sync")
    ap.add_argument("--full-sync-only", action="store_true",
                    help="with --catchup-only: only the full sync")
    ap.add_argument("--dry-run", action="store_true",
                    help="no twin: 'pair' = one standalone node (tests this script's plumbing)")
    o = ap.parse_args()
    o.lag_seconds = int(o.duration or (10 if o.quick else 60))
    PIN["on"] = o.pin
    o.tp_seconds = 3 if o.quick else 8
    o.reps = o.reps or (1 if o.quick else 3)
    o.bin = os.path.abspath(o.bin)
    if not o.dry_run:
        ok, why = twinlib.binary_supports_replication(o.bin)
        if not ok:
            print("benches/replication.py: skipped: %s" % why)
            return 0
    if not os.path.exists(o.loadgen):
        print("benches/replication.py: no load generator at %s "
              "(cargo build --release -p memtwin-bench)" % o.loadgen, file=sys.stderr)
        return 2
    os.makedirs(o.out, exist_ok=True)
    o.workdir = tempfile.mkdtemp(prefix="run-", dir=o.out)
    t0 = time.monotonic()
    cu = {}
    if o.catchup_only or o.ack_only:
        tp, lg, lb, md = {}, {}, {}, ""
    else:
        tp = throughput(o)
        lg = lag(o, tp["write"]["twin_ops"])
        lb = link_bytes(o)
        md = markdown(tp, lg, lb, o)
    ac = {} if o.dry_run or o.catchup_only else ack_cost(o)
    if ac:
        md += "\n" + markdown_ack(ac)
    if not o.dry_run and not o.ack_only:
        cu = catchup(o)
        cu["window"] = o.catchup_window
        if not o.full_sync_only:
            md += "\n" + markdown_catchup(cu)
    print(md)
    with open(os.path.join(o.workdir, "result.json"), "w") as f:
        json.dump({"throughput": tp, "lag": lg, "link_bytes": {str(k): v for k, v in lb.items()},
                   "ack": {str(k): v for k, v in ac.items()}, "catchup": cu,
                   "seconds": time.monotonic() - t0}, f, indent=2)
    with open(os.path.join(o.workdir, "result.md"), "w") as f:
        f.write(md + "\n")
    log("results in %s (%.0f s)" % (o.workdir, time.monotonic() - t0))
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(10)
    sys.exit(main())
