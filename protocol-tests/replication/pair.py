#!/usr/bin/env python3
"""Start a twin pair and keep it up, for running other suites against node A.

    python3 protocol-tests/replication/pair.py --bin target/release/memtwin \\
        --logs DIR --addr-file FILE [--max-seconds 1800]

Writes "127.0.0.2:PORT" (node A's client address) to FILE once the link is up,
then waits until SIGTERM/SIGINT or --max-seconds, and stops both daemons by pid.
On exit it prints both nodes' replication stats and whether both were alive
and linked; exit code 0 only if both daemons were still alive and linked at
the end (so a crash during the run is reported). Exit 3: the binary has no
--peer (the caller reports the step as skipped).
"""
import argparse
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import twinlib  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--logs", required=True)
    ap.add_argument("--addr-file", required=True)
    ap.add_argument("--max-seconds", type=float, default=1800)
    o = ap.parse_args()
    ok, why = twinlib.binary_supports_replication(o.bin)
    if not ok:
        print(why)
        return 3
    os.makedirs(o.logs, exist_ok=True)
    pair = twinlib.TwinPair(os.path.abspath(o.bin), o.logs, o.logs)
    stop = {"now": False}

    def on_signal(signum, _frame):
        stop["now"] = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        pair.start(timeout=15)
        with open(o.addr_file + ".pids", "w") as f:
            f.write("%d %d\n" % (pair.a.pid, pair.b.pid))
        tmp = o.addr_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(pair.a.addr + "\n")
        os.replace(tmp, o.addr_file)
        print("pair up: A=%s (pid %d) B=%s (pid %d)" % (pair.a.addr, pair.a.pid, pair.b.addr, pair.b.pid),
              flush=True)
        deadline = time.monotonic() + o.max_seconds
        while not stop["now"] and time.monotonic() < deadline:
            time.sleep(0.2)
            if not (pair.a.alive() and pair.b.alive()):
                break
        alive = pair.a.alive() and pair.b.alive()
        linked = alive and pair.a.link_up() and pair.b.link_up()
        for n in pair.nodes:
            if n.alive():
                st = n.repl_stats()
                print("%s: %s" % (n.name, " ".join("%s=%s" % kv for kv in sorted(st.items()))))
            else:
                print("%s: DIED (rc=%s)\n%s" % (n.name, n.proc.returncode, n.log_tail()))
        print("both alive: %s, link up on both: %s" % (alive, linked))
        return 0 if linked else 1
    except Exception as e:  # noqa: BLE001
        print("pair failed: %s" % e)
        return 2
    finally:
        pair.stop()


if __name__ == "__main__":
    sys.exit(main())
