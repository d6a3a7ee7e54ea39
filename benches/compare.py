#!/usr/bin/env python3
"""Side-by-side load benchmark: memtwin vs memcached vs a null server.

The one command (see docs/performance.md):

    python3 benches/compare.py            # full: 5 reps x 8 s, 4/50/200 conns, both placements
    python3 benches/compare.py --quick    # 2 reps x 3 s, 50 conns only
    python3 benches/compare.py --scaling  # (a) at 50..1000 conns and 100k..10M keys, 3 reps x 4 s

Method (docs/performance.md, shared/reference/performance.md section 4):
  * all three servers are started fresh for each repetition, on unusual free ports
    (we refuse ports that already answer and check with `ss` that the PID we
    started owns the listener), preloaded with 100k keys, and stopped by PID;
  * within a repetition every workload runs against every server back to back
    (interleaved; the order rotates between repetitions), so slow drifts in
    the machine's load hit all servers alike;
  * per run: ops/s, p50/p99/p99.9 (our load generator), server CPU per op from
    /proc/PID/stat, generator CPU, and foreign CPU (machine busy time from
    /proc/stat minus ours); a run disturbed by foreign load is retried and the
    least disturbed attempt kept;
  * the report is the MEDIAN OF PER-REPETITION RATIOS memtwin/memcached (and
    null/memcached): ratios from the same repetition, not ratios of medians.
  * placements: pinned (each server `-t 1` on CPU1 via taskset, generator one
    thread on CPU0) and shared (servers `-t 2`, generator 2 threads, unpinned).

The reference server's binary comes from $MEMCACHED_BIN (default
/usr/bin/memcached), so an upstream build can be compared too; memtwin's from
$MEMTWIN_BIN (default target/release/memtwin, built if missing).
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (description, loadgen args)
WORKLOADS = {
    "a": ("90% get / 10% set, 100 B, text",
          ["--get-ratio", "0.9", "--value-size", "100", "--key-prefix", "key:"]),
    "b": ("set 4 KB, text",
          ["--get-ratio", "0", "--value-size", "4096", "--key-prefix", "s4k:"]),
    "c": ("multi-get 10 keys, text (per request)",
          ["--get-ratio", "1", "--multiget", "10", "--value-size", "100", "--key-prefix", "key:"]),
    "d": ("get, pipelined 10 deep, text",
          ["--get-ratio", "1", "--pipeline", "10", "--value-size", "100", "--key-prefix", "key:"]),
    "ea": ("(a) over binary",
           ["--proto", "binary", "--get-ratio", "0.9", "--value-size", "100", "--key-prefix", "key:"]),
    "eb": ("(b) over binary",
           ["--proto", "binary", "--get-ratio", "0", "--value-size", "4096", "--key-prefix", "s4k:"]),
    "f": ("(a) at a fixed 40k req/s (open loop)",
          ["--get-ratio", "0.9", "--value-size", "100", "--key-prefix", "key:", "--rate", "40000"]),
}
SERVERS = ["memcached", "memtwin", "null"]
PORT_BASE = 21460
PORT_RANGE = range(PORT_BASE, PORT_BASE + 40)  # replaced by --port-base


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---- processes and ports ------------------------------------------------------

def port_answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def listener_pids(port):
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    return {int(p) for p in re.findall(r"pid=(\d+)", out)}, bool(out.strip())


def free_ports(n, taken=()):
    ports = []
    for p in PORT_RANGE:
        if p in taken:
            continue
        if port_answers(p) or listener_pids(p)[1]:
            continue
        ports.append(p)
        if len(ports) == n:
            return ports
    sys.exit(f"not enough free ports in {PORT_RANGE.start}-{PORT_RANGE.stop - 1}")


class Server:
    def __init__(self, name, cmd, port):
        self.name, self.cmd, self.port = name, cmd, port
        self.proc = None

    def start(self):
        if port_answers(self.port) or listener_pids(self.port)[1]:
            raise RuntimeError(f"port {self.port} is already in use; refusing to start {self.name}")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start: {' '.join(self.cmd)}")
            pids, listening = listener_pids(self.port)
            if listening and pids:
                if self.proc.pid not in pids:
                    pid = self.proc.pid
                    self.stop()
                    raise RuntimeError(f"port {self.port} is owned by {pids}, not our {self.name} "
                                       f"(pid {pid})")
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen on {self.port}")

    @property
    def pid(self):
        return self.proc.pid

    def rss_kb(self):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


def server_cmd(name, port, threads, pinned, bins, mem_mb=1024, extra=()):
    if name == "null":
        cmd = [bins["null"], "-l", "127.0.0.1", "-p", str(port), "-t", str(threads)]
    else:
        cmd = [bins[name], "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-t", str(threads),
               "-m", str(mem_mb), "-c", "4096"]
        if os.geteuid() == 0:
            cmd += ["-u", "root"]
        cmd += list(extra)
    if pinned:
        cmd = ["taskset", "-c", "1"] + cmd
    return cmd


# ---- load generator -------------------------------------------------------------

def loadgen(bins, port, args, pinned, threads, watch=(), timeout=600, tolerate=False):
    """Run the generator, return its JSON. With `tolerate`, a run whose workers failed
    (connect refused, connection closed, ...) still returns its JSON (partial counts,
    `failures` filled in) instead of raising, so the report can show the failure."""
    cmd = [bins["loadgen"], "--addr", f"127.0.0.1:{port}", "--threads", str(threads)] + list(args)
    for p in watch:
        cmd += ["--watch-pid", str(p)]
    if pinned:
        cmd = ["taskset", "-c", "0"] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0 or not r.stdout.strip():
        if tolerate and r.stdout.strip().startswith("{"):
            res = json.loads(r.stdout.strip().splitlines()[-1])
            res["failures"] = res.get("failures") or [f"exit {r.returncode}: {r.stderr.strip()[-300:]}"]
            return res
        raise RuntimeError(f"loadgen failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr}{r.stdout}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def preload(bins, port, keys, value_size, prefix, pinned, conns=4, threads=1):
    return loadgen(bins, port, ["--preload", "--conns", str(conns), "--keys", str(keys),
                                "--value-size", str(value_size), "--key-prefix", prefix],
                   pinned, threads)


def measure(bins, servers, target, wl, conns, opts, pinned, keys=None, tolerate=False):
    """One run against `target`, retried while foreign load is above the limit."""
    threads = 1 if pinned else 2
    args = WORKLOADS[wl][1] + ["--conns", str(conns), "--duration", str(opts.duration),
                               "--warmup", str(opts.warmup), "--keys", str(keys or opts.keys),
                               "--connect-order", opts.connect_order]
    best = None
    for attempt in range(opts.retries + 1):
        res = loadgen(bins, target.port, args, pinned, threads, watch=[s.pid for s in servers],
                      tolerate=tolerate)
        ours = res["gen_cpu_s"] + sum(v["cpu_s"] or 0 for v in res["watched"].values())
        foreign = max(0.0, res["sys_busy_s"] - ours) / max(res["seconds"], 1e-9)
        srv = res["watched"][str(target.pid)]
        row = {
            "ops": res["ops_per_sec"], "keys_per_sec": res["keys_per_sec"],
            "p50": res["lat_us"]["p50"], "p90": res["lat_us"]["p90"], "p99": res["lat_us"]["p99"],
            "p999": res["lat_us"]["p999"], "max": res["lat_us"]["max"],
            "cpu_us": srv["cpu_us_per_op"], "gen_cpu_us": res["gen_cpu_us_per_op"],
            "foreign_cores": round(foreign, 3), "errors": res["errors"], "timeouts": res["timeouts"],
            "hits": res["hits"], "keys_requested": res["keys_requested"], "attempts": attempt + 1,
            "failures": res.get("failures") or [], "idle_conns": res.get("idle_conns", 0),
        }
        if best is None or row["foreign_cores"] < best["foreign_cores"]:
            best = row
        if foreign <= opts.foreign_limit:
            break
    best["disturbed"] = best["foreign_cores"] > opts.foreign_limit
    return best


# ---- the load benchmark -------------------------------------------------------------

def run_load(opts, bins, out):
    results = []  # dicts with placement, rep, wl, conns, server, metrics
    runs_path = os.path.join(out, "runs.jsonl")
    for placement in opts.placements:
        pinned = placement == "pinned"
        threads = 1 if pinned else 2
        for rep in range(opts.reps):
            ports = free_ports(len(opts.servers))
            servers = {name: Server(name, server_cmd(name, port, threads, pinned, bins), port)
                       for name, port in zip(opts.servers, ports)}
            try:
                for s in servers.values():
                    s.start()
                for s in servers.values():
                    preload(bins, s.port, opts.keys, 100, "key:", pinned)
                order = opts.servers[rep % len(opts.servers):] + opts.servers[:rep % len(opts.servers)]
                for wi, wl in enumerate(opts.workloads):
                    for conns in opts.conns:
                        # Alternate direction too, so no server always runs right after another.
                        seq = order if (wi + rep) % 2 == 0 else list(reversed(order))
                        for name in seq:
                            row = measure(bins, list(servers.values()), servers[name], wl, conns,
                                          opts, pinned)
                            row.update(placement=placement, rep=rep, wl=wl, conns=conns, server=name)
                            results.append(row)
                            with open(runs_path, "a") as f:
                                f.write(json.dumps(row) + "\n")
                            log(f"[{placement} rep {rep + 1}/{opts.reps}] {wl:>2} c={conns:<3} {name:<9} "
                                f"{row['ops']:>9.0f} ops/s p50 {row['p50']:>7.0f} p99 {row['p99']:>7.0f} "
                                f"p99.9 {row['p999']:>7.0f} us  cpu {row['cpu_us']:>6.2f} us/op  "
                                f"gen {row['gen_cpu_us']:.2f}  foreign {row['foreign_cores']:.2f}"
                                + (" DISTURBED" if row["disturbed"] else "")
                                + (f" ERR {row['errors']}/{row['timeouts']}" if row["errors"] or row["timeouts"] else ""))
            finally:
                for s in servers.values():
                    s.stop()
    return results


def ratio_table(results, opts):
    """Median of per-repetition ratios, per (placement, workload, conns)."""
    by = {}
    for r in results:
        by.setdefault((r["placement"], r["wl"], r["conns"], r["rep"]), {})[r["server"]] = r
    cells = {}
    for (placement, wl, conns, rep), srv in by.items():
        cells.setdefault((placement, wl, conns), []).append(srv)

    def med(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    def ratio(a, b, k):
        if a is None or b is None or not b.get(k):
            return None
        return a[k] / b[k]

    rows = []
    for (placement, wl, conns), reps in sorted(cells.items(),
                                               key=lambda kv: (opts.placements.index(kv[0][0]),
                                                               opts.workloads.index(kv[0][1]), kv[0][2])):
        mc = [s.get("memcached") for s in reps]
        mt = [s.get("memtwin") for s in reps]
        nl = [s.get("null") for s in reps]
        row = {"placement": placement, "wl": wl, "conns": conns, "n": len(reps)}
        for k in ("ops", "p50", "p99", "p999", "cpu_us"):
            row["mt_" + k] = med([ratio(a, b, k) for a, b in zip(mt, mc)])
            row["null_" + k] = med([ratio(a, b, k) for a, b in zip(nl, mc)])
            row["abs_mc_" + k] = med([x[k] for x in mc if x])
            row["abs_mt_" + k] = med([x[k] for x in mt if x])
            row["abs_null_" + k] = med([x[k] for x in nl if x])
        allruns = [x for s in reps for x in s.values()]
        row["foreign"] = med([x["foreign_cores"] for x in allruns])
        row["disturbed"] = sum(1 for x in allruns if x["disturbed"])
        row["runs"] = len(allruns)
        row["errors"] = sum(x["errors"] + x["timeouts"] + x.get("idle_conns", 0) for x in allruns)
        rows.append(row)
    return rows


def fmt(x, d=2):
    return "–" if x is None else f"{x:.{d}f}"


def kfmt(x):
    return "–" if x is None else (f"{x / 1000:.0f}k" if x >= 1000 else f"{x:.0f}")


def markdown(rows):
    out = ["| placement | workload | conns | memcached ops/s | **mt/mc ops** | mt/mc p50 | **mt/mc p99** "
           "| mt/mc p99.9 | **mt/mc CPU/op** | CPU µs/op mc / mt / null | null/mc ops | p99 µs mc / mt "
           "| foreign cores | disturbed |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['placement']} | {r['wl']} | {r['conns']} | {kfmt(r['abs_mc_ops'])} | "
            f"{fmt(r['mt_ops'])} | {fmt(r['mt_p50'])} | {fmt(r['mt_p99'])} | {fmt(r['mt_p999'])} | "
            f"{fmt(r['mt_cpu_us'])} | {fmt(r['abs_mc_cpu_us'], 1)} / {fmt(r['abs_mt_cpu_us'], 1)} / "
            f"{fmt(r['abs_null_cpu_us'], 1)} | {fmt(r['null_ops'])} | "
            f"{fmt(r['abs_mc_p99'], 0)} / {fmt(r['abs_mt_p99'], 0)} | {fmt(r['foreign'])} | "
            f"{r['disturbed']}/{r['runs']}" + (f" (errors {r['errors']})" if r["errors"] else "") + " |")
    return "\n".join(out)


def targets(rows):
    """The issue's targets, judged per cell."""
    out = ["| target | placement | conns | value | met |", "|---|---|---|---|---|"]

    def add(name, r, value, ok):
        out.append(f"| {name} | {r['placement']} | {r['conns']} | {value} | {'yes' if ok else '**no**'} |")

    for r in rows:
        wl = r["wl"]
        if r["mt_ops"] is None:
            continue
        if wl in ("a", "b", "ea", "eb"):
            ok = r["mt_ops"] >= 1.0 and r["mt_p99"] <= 1.1 and r["mt_cpu_us"] <= 1.0
            add(f"({wl}) ops ≥ 1.0, p99 ≤ 1.1, CPU ≤ 1.0", r,
                f"{r['mt_ops']:.2f} / {r['mt_p99']:.2f} / {r['mt_cpu_us']:.2f}", ok)
        elif wl == "d":
            ok = r["mt_ops"] >= 3.5 and (r["abs_mt_cpu_us"] or 99) <= 2.0
            add("(d) ops ≥ 3.5×, CPU ≤ 2.0 µs", r, f"{r['mt_ops']:.2f}× / {fmt(r['abs_mt_cpu_us'])} µs", ok)
        elif wl == "c":
            add("(c) ops ≥ 1.15×", r, f"{r['mt_ops']:.2f}×", r["mt_ops"] >= 1.15)
        elif wl == "f":
            ok = r["mt_p99"] <= 1.0 and r["mt_p999"] <= 1.0
            add("(f) p99, p99.9 ≤ memcached", r, f"{r['mt_p99']:.2f} / {r['mt_p999']:.2f}", ok)
    return "\n".join(out)


# ---- memory efficiency --------------------------------------------------------------

def text_cmd(port, line, timeout=5.0):
    """Send one text command, return the reply up to END/STORED/... (or raise on timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(line)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return buf
            buf += chunk
            if buf.endswith(b"END\r\n") or re.search(rb"(STORED|ERROR[^\r]*|NOT_FOUND|DELETED)\r\n$", buf):
                return buf


def stats(port):
    out = {}
    for line in text_cmd(port, b"stats\r\n").decode().splitlines():
        p = line.split()
        if len(p) == 3 and p[0] == "STAT":
            out[p[1]] = p[2]
    return out


def run_memory(opts, bins):
    rows = []
    budget = opts.mem_budget
    n_small = int(budget * 1024 * 1024 / 100 * 1.6)  # overfill: ~2x what memcached can keep
    n_big = opts.mem_big_items
    for name in ("memcached", "memtwin"):
        for test in ("100B", "4KB"):
            mb = budget if test == "100B" else max(1024, int(n_big * 4.5 / 1024) + 64)
            port = free_ports(1)[0]
            s = Server(name, server_cmd(name, port, 2, False, bins, mem_mb=mb), port).start()
            try:
                time.sleep(0.2)
                rss0 = s.rss_kb()
                if test == "100B":
                    res = preload(bins, port, n_small, 100, "m:", False)
                    written, vsize = n_small, 100
                else:
                    res = preload(bins, port, n_big, 4096, "b:", False)
                    written, vsize = n_big, 4096
                time.sleep(0.5)
                st = stats(port)
                rss = s.rss_kb() * 1024
                items = int(st.get("curr_items", 0))
                keylen = 2 + 8
                raw = items * (keylen + vsize)
                # Still answering after memory is full: a set and a get of the last key.
                t0 = time.time()
                probe = text_cmd(port, b"set probe:1 0 0 5\r\nhello\r\n").strip().decode()
                got = text_cmd(port, b"get probe:1\r\n")
                answered = f"{probe} / {'hit' if b'hello' in got else 'miss'} in {1000 * (time.time() - t0):.0f} ms"
                rows.append({
                    "server": name, "test": test, "budget_mb": mb, "written": written, "items": items,
                    "errors": res["errors"] + res["timeouts"],
                    "budget_per_item": mb * 1024 * 1024 / items if items else None,
                    "rss_per_item": rss / items if items else None,
                    "rss_growth_per_item": (rss - rss0 * 1024) / items if items else None,
                    "rss_over_raw": rss / raw if raw else None,
                    "evictions": int(st.get("evictions", 0)), "answered": answered,
                })
                log(f"[memory] {name} {test}: {rows[-1]}")
            finally:
                s.stop()
        # Without eviction (-M): writes must fail with SERVER_ERROR, reads keep working.
        port = free_ports(1)[0]
        s = Server(name, server_cmd(name, port, 2, False, bins, mem_mb=64, extra=["-M"]), port).start()
        try:
            res = preload(bins, port, int(64 * 1024 * 1024 / 100), 100, "m:", False)
            t0 = time.time()
            probe = text_cmd(port, b"set probe:2 0 0 5\r\nhello\r\n").strip().decode()
            got = text_cmd(port, b"get m:00000001\r\n")
            rows.append({"server": name, "test": "-M full", "budget_mb": 64, "items": int(stats(port).get("curr_items", 0)),
                         "written": int(64 * 1024 * 1024 / 100), "errors": res["errors"],
                         "answered": f"{probe} / {'hit' if b'VALUE' in got else 'miss'} in "
                                     f"{1000 * (time.time() - t0):.0f} ms"})
            log(f"[memory] {name} -M: {rows[-1]}")
        finally:
            s.stop()
    return rows


def memory_markdown(rows):
    out = ["| server | test | -m MB | written | items kept | budget B/item | RSS B/item | RSS/raw | "
           "refused/evicted | still answering (set / get) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['server']} | {r['test']} | {r['budget_mb']} | {r['written']} | {r['items']} | "
                   f"{fmt(r.get('budget_per_item'), 0)} | {fmt(r.get('rss_per_item'), 0)} | "
                   f"{fmt(r.get('rss_over_raw'), 3)} | {r.get('errors', 0)} / {r.get('evictions', '–')} | "
                   f"{r['answered']} |")
    by = {(r["server"], r["test"]): r for r in rows}
    for t in ("100B", "4KB"):
        a, b = by.get(("memtwin", t)), by.get(("memcached", t))
        if a and b and a["items"] and b["items"]:
            out.append(f"\n{t}: memtwin keeps {a['items'] / b['items']:.2f}× memcached's items in the same budget; "
                       f"RSS/raw {fmt(a['rss_over_raw'], 3)} vs {fmt(b['rss_over_raw'], 3)}.")
    return "\n".join(out)


# ---- scaling: connections and items ---------------------------------------------------

SCALE_WL = "a"
SCALE_MEM_MB = 4096  # 10M x 100 B items fit without eviction in both servers


def raise_nofile(need):
    """Raise RLIMIT_NOFILE for us and every child we start (inherited through fork/exec).

    memcached raises its own limit to `-c` when started as root; memtwin's `-c` only caps
    connections and keeps the inherited limit; the generator needs one fd per connection.
    Returns (soft, hard) after the change."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft, hard
    if hard != resource.RLIM_INFINITY and hard < need and os.geteuid() == 0:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return resource.getrlimit(resource.RLIMIT_NOFILE)
        except (ValueError, OSError):
            pass
    new = need if hard == resource.RLIM_INFINITY else min(need, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def server_state(s):
    """RSS and, for the real servers, curr_items / evictions from `stats`."""
    st = {}
    if s.name != "null":
        try:
            st = stats(s.port)
        except OSError:
            st = {}
    return {"rss_kb": s.rss_kb(), "items": int(st["curr_items"]) if "curr_items" in st else None,
            "evictions": int(st["evictions"]) if "evictions" in st else None}


def run_scaling(opts, bins, out):
    """Workload (a) against every server, interleaved per repetition, in two series:
    connections (opts.scale_conns at opts.keys keys) and items (50 conns, the key space
    preloaded to each of opts.scale_keys and then used by the workload)."""
    results, loads = [], []
    runs_path = os.path.join(out, "scaling-runs.jsonl")
    key_steps = sorted(opts.scale_keys)
    for placement in opts.placements:
        pinned = placement == "pinned"
        threads = 1 if pinned else 2
        for rep in range(opts.reps):
            ports = free_ports(len(opts.servers))
            servers = {name: Server(name, server_cmd(name, port, threads, pinned, bins,
                                                     mem_mb=SCALE_MEM_MB), port)
                       for name, port in zip(opts.servers, ports)}
            order = opts.servers[rep % len(opts.servers):] + opts.servers[:rep % len(opts.servers)]
            step = [0]

            def run_point(series, conns, keys):
                seq = order if (step[0] + rep) % 2 == 0 else list(reversed(order))
                step[0] += 1
                for name in seq:
                    row = measure(bins, list(servers.values()), servers[name], SCALE_WL, conns, opts,
                                  pinned, keys=keys, tolerate=True)
                    row.update(placement=placement, rep=rep, series=series, conns=conns, keys=keys,
                               server=name)
                    results.append(row)
                    with open(runs_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    bad = row["errors"] or row["timeouts"] or row["failures"] or row["idle_conns"]
                    log(f"[scaling {placement} rep {rep + 1}/{opts.reps}] {series:<5} c={conns:<4} "
                        f"k={kfmt(keys):>5} {name:<9} {row['ops']:>9.0f} ops/s p99 {row['p99']:>7.0f} us  "
                        f"cpu {row['cpu_us']:>6.2f} us/op  foreign {row['foreign_cores']:.2f}"
                        + (" DISTURBED" if row["disturbed"] else "")
                        + (f" ERR {row['errors']}/{row['timeouts']} idle conns {row['idle_conns']} "
                           f"{row['failures']}" if bad else ""))

            def load_to(keys):
                # Key ids are 0..keys-1, so a larger preload covers the smaller ones.
                for s in servers.values():
                    rss0 = s.rss_kb()
                    t0 = time.time()
                    res = preload(bins, s.port, keys, 100, "key:", pinned,
                                  conns=opts.preload_conns, threads=threads)
                    secs = time.time() - t0
                    time.sleep(0.2)
                    st = server_state(s)
                    rec = {"placement": placement, "rep": rep, "server": s.name, "keys": keys,
                           "preload_s": round(secs, 2), "preload_per_s": round(keys / secs),
                           "preload_errors": res["errors"] + res["timeouts"], "rss_before_kb": rss0,
                           "rss_start_kb": base.get(s.name, 0),
                           **st}
                    loads.append(rec)
                    with open(runs_path, "a") as f:
                        f.write(json.dumps({"preload": rec}) + "\n")
                    log(f"[scaling {placement} rep {rep + 1}/{opts.reps}] preload {kfmt(keys)} -> "
                        f"{s.name}: {secs:.1f} s ({keys / secs / 1000:.0f}k/s), RSS {st['rss_kb'] / 1024:.0f} MB"
                        + (f", items {st['items']}, evictions {st['evictions']}" if st["items"] is not None
                           else "")
                        + (f", ERRORS {rec['preload_errors']}" if rec["preload_errors"] else ""))
            base = {}
            try:
                for s in servers.values():
                    s.start()
                time.sleep(0.2)
                base.update({s.name: s.rss_kb() for s in servers.values()})
                if opts.scale_conns:
                    load_to(opts.keys)
                    for conns in opts.scale_conns:
                        run_point("conns", conns, opts.keys)
                for keys in key_steps:
                    load_to(keys)
                    time.sleep(min(2.0, keys / 5e6))  # let a big preload's aftermath settle
                    run_point("items", opts.scale_items_conns, keys)
            finally:
                for s in servers.values():
                    s.stop()
    return results, loads


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def scaling_table(results, loads, opts):
    """Per (placement, series, conns, keys): medians per server and median of
    per-repetition ratios memtwin/memcached."""
    by = {}
    for r in results:
        by.setdefault((r["placement"], r["series"], r["conns"], r["keys"]), {}) \
          .setdefault(r["rep"], {})[r["server"]] = r
    rows = []
    for (placement, series, conns, keys), reps in by.items():
        row = {"placement": placement, "series": series, "conns": conns, "keys": keys, "n": len(reps)}
        for k in ("ops", "p50", "p99", "p999", "cpu_us"):
            for name in opts.servers:
                row[f"{name}_{k}"] = _med([srv[name][k] for srv in reps.values() if name in srv])
            row["mt_" + k] = _med([srv["memtwin"][k] / srv["memcached"][k] for srv in reps.values()
                                   if "memtwin" in srv and "memcached" in srv and srv["memcached"][k]])
        for name in opts.servers:
            runs = [srv[name] for srv in reps.values() if name in srv]
            req = sum(x["keys_requested"] for x in runs)
            row[f"{name}_hit"] = sum(x["hits"] for x in runs) / req if req else None
        allruns = [x for srv in reps.values() for x in srv.values()]
        row["errors"] = sum(x["errors"] for x in allruns)
        row["timeouts"] = sum(x["timeouts"] for x in allruns)
        row["idle_conns"] = {n: max((x["idle_conns"] for x in allruns if x["server"] == n), default=0)
                             for n in opts.servers}
        row["failures"] = sorted({f"{x['server']}: {f}" for x in allruns for f in x["failures"]})
        row["disturbed"] = sum(1 for x in allruns if x["disturbed"])
        row["runs"] = len(allruns)
        row["foreign"] = _med([x["foreign_cores"] for x in allruns])
        if series == "items":
            for name in opts.servers:
                ld = [x for x in loads if x["placement"] == placement and x["server"] == name
                      and x["keys"] == keys]
                row[f"{name}_rss_mb"] = _med([x["rss_kb"] / 1024 for x in ld])
                row[f"{name}_rss_per_item"] = _med([(x["rss_kb"] - x["rss_start_kb"]) * 1024 / keys
                                                     for x in ld])
                row[f"{name}_preload_per_s"] = _med([x["preload_per_s"] for x in ld])
                row[f"{name}_items"] = _med([x["items"] for x in ld])
                row[f"{name}_evictions"] = max([x["evictions"] or 0 for x in ld], default=None)
                row[f"{name}_preload_errors"] = sum(x["preload_errors"] for x in ld)
        rows.append(row)
    rows.sort(key=lambda r: (opts.placements.index(r["placement"]), r["series"] != "conns",
                             r["conns"], r["keys"]))
    return rows


def scaling_growth(results, opts):
    """Items series: per server, median over repetitions of (value at the largest key
    space / value at the smallest), for CPU/op, p99 and ops/s."""
    out = []
    for placement in opts.placements:
        items = [r for r in results if r["series"] == "items" and r["placement"] == placement]
        ks = sorted({r["keys"] for r in items})
        if len(ks) < 2:
            continue
        lo, hi = ks[0], ks[-1]
        for name in opts.servers:
            g = {"placement": placement, "server": name, "from_keys": lo, "to_keys": hi}
            for k in ("cpu_us", "p99", "ops"):
                per_rep = []
                for rep in sorted({r["rep"] for r in items}):
                    a = [r[k] for r in items if r["rep"] == rep and r["server"] == name and r["keys"] == lo]
                    b = [r[k] for r in items if r["rep"] == rep and r["server"] == name and r["keys"] == hi]
                    if a and b and a[0]:
                        per_rep.append(b[0] / a[0])
                g[k + "_lo"] = _med([r[k] for r in items if r["server"] == name and r["keys"] == lo])
                g[k + "_hi"] = _med([r[k] for r in items if r["server"] == name and r["keys"] == hi])
                g[k + "_growth"] = _med(per_rep)
            out.append(g)
    return out


def scaling_markdown(rows, growth, opts):
    names = opts.servers
    short = {"memcached": "mc", "memtwin": "mt", "null": "null"}
    sl = " / ".join(short[n] for n in names)

    def trio(r, k, d, scale=1.0):
        return " / ".join(fmt(None if r.get(f"{n}_{k}") is None else r[f"{n}_{k}"] * scale, d)
                          for n in names)

    def trouble(r):
        t = f"{r['errors']} / {r['timeouts']}"
        idle = {n: v for n, v in r["idle_conns"].items() if v}
        if idle:
            t += " **idle conns: " + ", ".join(f"{short[n]} {v}" for n, v in idle.items()) + "**"
        if r["failures"]:
            t += " **failed: " + "; ".join(r["failures"])[:200].replace("|", "/") + "**"
        return t

    out = []
    for series, title in (("conns", f"### Connections (workload a, {kfmt(opts.keys)} keys)"),
                          ("items", f"### Items (workload a, {opts.scale_items_conns} connections, "
                                    "key space preloaded and then used)")):
        sr = [r for r in rows if r["series"] == series]
        if not sr:
            continue
        head = (f"| placement | conns | keys | ops/s {sl} | **mt/mc ops** | p99 µs {sl} | **mt/mc p99** "
                f"| CPU µs/op {sl} | **mt/mc CPU/op** | hit % {sl} ")
        sep = "|---|---|---|---|---|---|---|---|---|---"
        if series == "items":
            head += ("| RSS MB after preload mc / mt | RSS growth B/item mc / mt | evictions mc / mt "
                     "| preload k/s mc / mt ")
            sep += "|---|---|---|---"
        head += "| errors / timeouts (idle conns) | disturbed |"
        sep += "|---|---|"
        out += [title, "", head, sep]
        for r in sr:
            line = (f"| {r['placement']} | {r['conns']} | {kfmt(r['keys'])} | "
                    + " / ".join(kfmt(r.get(f"{n}_ops")) for n in names)
                    + f" | {fmt(r['mt_ops'])} | {trio(r, 'p99', 0)} | {fmt(r['mt_p99'])} | "
                    f"{trio(r, 'cpu_us', 2)} | {fmt(r['mt_cpu_us'])} | {trio(r, 'hit', 1, 100)} ")
            if series == "items":
                per_item = [r.get(f"{n}_rss_per_item") for n in ("memcached", "memtwin")]
                line += (f"| {fmt(r.get('memcached_rss_mb'), 0)} / {fmt(r.get('memtwin_rss_mb'), 0)} "
                         f"| {fmt(per_item[0], 0)} / {fmt(per_item[1], 0)} "
                         f"| {r.get('memcached_evictions', '–')} / {r.get('memtwin_evictions', '–')} "
                         f"| {kfmt(r.get('memcached_preload_per_s'))} / {kfmt(r.get('memtwin_preload_per_s'))} ")
            line += f"| {trouble(r)} | {r['disturbed']}/{r['runs']} |"
            out.append(line)
        out.append("")
    if growth:
        out += ["### Cost per op against the number of items (issue 6: must not grow)", "",
                "Growth = median over repetitions of (value at the largest key space / value at the "
                "smallest), same server, same repetition. 1.00 = no growth.", "",
                "| placement | server | keys | CPU µs/op | **CPU/op growth** | p99 µs | **p99 growth** "
                "| ops/s | ops growth |", "|---|---|---|---|---|---|---|---|---|"]
        for g in growth:
            out.append(f"| {g['placement']} | {g['server']} | {kfmt(g['from_keys'])} → {kfmt(g['to_keys'])} | "
                       f"{fmt(g['cpu_us_lo'])} → {fmt(g['cpu_us_hi'])} | {fmt(g['cpu_us_growth'])} | "
                       f"{fmt(g['p99_lo'], 0)} → {fmt(g['p99_hi'], 0)} | {fmt(g['p99_growth'])} | "
                       f"{kfmt(g['ops_lo'])} → {kfmt(g['ops_hi'])} | {fmt(g['ops_growth'])} |")
        for placement in opts.placements:
            gg = {g["server"]: g for g in growth if g["placement"] == placement}
            if "memtwin" in gg and "memcached" in gg:
                mt, mc = gg["memtwin"], gg["memcached"]
                ok = (mt["cpu_us_growth"] is not None and mc["cpu_us_growth"] is not None
                      and mt["cpu_us_growth"] <= max(1.1, mc["cpu_us_growth"] * 1.05))
                out.append(f"\n{placement}: CPU/op growth memtwin {fmt(mt['cpu_us_growth'])} vs memcached "
                           f"{fmt(mc['cpu_us_growth'])}; p99 growth {fmt(mt['p99_growth'])} vs "
                           f"{fmt(mc['p99_growth'])} — {'met' if ok else '**not met**'} (memtwin's "
                           "CPU/op growth ≤ max(1.10, memcached's + 5 %)).")
        out.append("")
    return "\n".join(out)


# ---- main ----------------------------------------------------------------------------

def build(opts):
    bins = {
        "memcached": os.environ.get("MEMCACHED_BIN", "/usr/bin/memcached"),
        "memtwin": os.environ.get("MEMTWIN_BIN", os.path.join(ROOT, "target/release/memtwin")),
        "loadgen": os.path.join(ROOT, "target/release/memtwin-loadgen"),
        "null": os.path.join(ROOT, "target/release/memtwin-nullserver"),
    }
    if not opts.no_build:
        log("building (cargo build --release; -p memtwin-bench) ...")
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "memtwin-bench"], cwd=ROOT, check=True)
    for k, v in bins.items():
        if not (os.path.isfile(v) and os.access(v, os.X_OK)):
            sys.exit(f"{k} binary not found: {v}")
    for tool in ("taskset", "ss"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is required")
    return bins


def _terminate(signum, _frame):
    # Turn SIGTERM into an exception so every `finally` stops the servers we started.
    raise KeyboardInterrupt(f"signal {signum}")


def main():
    signal.signal(signal.SIGTERM, _terminate)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 reps x 3 s, 50 connections only")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--duration", type=float)
    ap.add_argument("--warmup", type=float)
    ap.add_argument("--conns", help="comma list, default 4,50,200 (quick: 50)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list of " + ",".join(WORKLOADS))
    ap.add_argument("--placements", help="default pinned,shared (scaling: shared)")
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--retries", type=int,
                    help="reruns of a disturbed run (keep the least disturbed); default 2 (scaling: 1)")
    ap.add_argument("--foreign-limit", type=float, default=0.19,
                    help="foreign CPU (cores) above which a run counts as disturbed (1.5 CPU-s per 8 s)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory-efficiency test")
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--mem-budget", type=int, help="-m for the 100-byte test (default 256, quick 64)")
    ap.add_argument("--mem-big-items", type=int, help="4 KB items for RSS/raw (default 100000, quick 30000)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--ref-label", default=os.environ.get("REF_LABEL", ""),
                    help="name for the reference server in the report (e.g. an older memtwin build "
                         "given as MEMCACHED_BIN for an A/B run)")
    ap.add_argument("--out", help="results directory (default target/bench-results/<time>)")
    ap.add_argument("--scaling", action="store_true",
                    help="scaling mode instead of the load and memory tests: workload (a) over "
                         "50..1000 connections and 100k..10M items (3 reps x 4 s, shared placement)")
    ap.add_argument("--scale-conns", help="scaling: connection counts (default 50,200,500,1000; "
                                          "empty string skips the series)")
    ap.add_argument("--scale-keys", help="scaling: key spaces of the items series "
                                         "(default 100000,1000000,10000000; empty skips it)")
    ap.add_argument("--scale-items-conns", type=int, default=50,
                    help="scaling: connections in the items series (default 50)")
    ap.add_argument("--preload-conns", type=int, default=8,
                    help="scaling: generator connections for the preload (default 8)")
    ap.add_argument("--connect-order", default="free", choices=["free", "interleaved", "blocked"],
                    help="order in which the generator's threads connect (default free: a race). "
                         "Servers deal connections to workers round robin, so with few connections "
                         "'interleaved' gives each generator thread its own server worker and "
                         "'blocked' makes every generator thread talk to every worker; "
                         "see docs/performance.md, 'The 4-connection lottery'")
    ap.add_argument("--port-base", type=int, default=PORT_BASE,
                    help=f"servers get free ports in PORT_BASE..PORT_BASE+39 (default {PORT_BASE}); "
                         "give another base when a second benchmark runs on the machine")
    opts = ap.parse_args()
    global PORT_RANGE
    PORT_RANGE = range(opts.port_base, opts.port_base + 40)
    q = opts.quick
    sc = opts.scaling
    opts.reps = opts.reps or (3 if sc else 2 if q else 5)
    opts.retries = opts.retries if opts.retries is not None else (1 if sc else 2)
    opts.duration = opts.duration or (4.0 if sc else 3.0 if q else 8.0)
    opts.warmup = opts.warmup if opts.warmup is not None else (0.5 if q else 1.0)
    opts.conns = [int(c) for c in (opts.conns or ("50" if q else "4,50,200")).split(",")]
    opts.workloads = opts.workloads.split(",")
    opts.placements = (opts.placements or ("shared" if sc else "pinned,shared")).split(",")
    ints = lambda v, d: [int(float(x)) for x in (d if v is None else v).split(",") if x.strip()]
    opts.scale_conns = ints(opts.scale_conns, "50,200,500,1000")
    opts.scale_keys = ints(opts.scale_keys, "100000,1000000,10000000")
    opts.servers = opts.servers.split(",")
    opts.mem_budget = opts.mem_budget or (64 if q else 256)
    opts.mem_big_items = opts.mem_big_items or (30_000 if q else 100_000)
    for w in opts.workloads:
        if w not in WORKLOADS:
            sys.exit(f"unknown workload {w}")
    if "memcached" not in opts.servers:
        sys.exit("memcached is the reference: keep it in --servers")
    # One fd per connection in the generator and in memtwin (its -c only caps connections;
    # it keeps the limit it inherits from us). memcached raises its own limit to -c as root.
    need = max([4096] + opts.scale_conns) + 256
    nofile_before = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = raise_nofile(need)
    if nofile[0] < need:
        log(f"warning: RLIMIT_NOFILE is {nofile[0]} (< {need}); many connections may fail")
    bins = build(opts)
    out = opts.out or os.path.join(ROOT, "target", "bench-results", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    mc_version = opts.ref_label or subprocess.run([bins["memcached"], "-V"], capture_output=True,
                                                  text=True).stdout.strip()
    head = [f"# memtwin vs {mc_version or bins['memcached']}", "",
            f"Reference (\"mc\" below): `{bins['memcached']}`. ",
            f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, reps {opts.reps} x {opts.duration} s "
            f"(+{opts.warmup} s warm-up), conns {opts.conns}, keys {opts.keys}.", ""]
    if sc:
        head[-2] = (f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, reps {opts.reps} x "
                    f"{opts.duration} s (+{opts.warmup} s warm-up), placements {','.join(opts.placements)}, "
                    f"servers -m {SCALE_MEM_MB} -c 4096, RLIMIT_NOFILE {nofile_before[0]} -> {nofile[0]} "
                    f"(hard {nofile[1]}) for the generator and the servers.")
    report = list(head)
    if sc:
        t0 = time.time()
        results, loads = run_scaling(opts, bins, out)
        rows = scaling_table(results, loads, opts)
        growth = scaling_growth(results, opts)
        with open(os.path.join(out, "scaling.json"), "w") as f:
            json.dump({"rows": rows, "growth": growth, "preloads": loads,
                       "seconds": round(time.time() - t0)}, f, indent=1)
        report = head[:1] + ["", "## Scaling: connections and items (issue 6)", ""] + head[2:] + [
            f"Workload (a) {WORKLOADS[SCALE_WL][0]}; medians over repetitions, ratios are medians of "
            f"per-repetition ratios memtwin/memcached. Took {(time.time() - t0) / 60:.1f} min.", "",
            scaling_markdown(rows, growth, opts)]
        text = "\n".join(report)
        with open(os.path.join(out, "results.md"), "a") as f:
            f.write(text + "\n")
        print(text)
        log(f"raw runs and summary in {out} (scaling-runs.jsonl, scaling.json, results.md)")
        return
    if not opts.memory_only:
        results = run_load(opts, bins, out)
        rows = ratio_table(results, opts)
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(rows, f, indent=1)
        report += ["## Load: medians of per-repetition ratios (memtwin / memcached; < 1 is better for "
                   "latency and CPU, > 1 for ops)", "",
                   "Workloads: " + "; ".join(f"**{w}** {WORKLOADS[w][0]}" for w in opts.workloads), "",
                   markdown(rows), "", "## Targets (issue 6)", "", targets(rows), ""]
    if not opts.no_memory:
        mem = run_memory(opts, bins)
        with open(os.path.join(out, "memory.json"), "w") as f:
            json.dump(mem, f, indent=1)
        report += ["## Memory efficiency (equal -m budgets)", "", memory_markdown(mem), ""]
    text = "\n".join(report)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    log(f"raw runs and summary in {out}")


if __name__ == "__main__":
    main()
