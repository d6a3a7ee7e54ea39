// A session workload on spymemcached (libspymemcached-java 2.12.3) with both twins in
// its server list, the way a Java web tier keeps sessions: consistent hashing (ketama),
// FailureMode.Redistribute (a dead node's keys go to the next node), 1 s op timeout,
// reconnect at most 1 s apart. The test kills and restarts a node while this runs.
//
// usage: java -cp spymemcached.jar:DIR SpySessions text|binary SESSIONS HOST:PORT HOST:PORT...
//
// Each round reads every session, checks it against the last value the server
// acknowledged, and writes the next value; a session also takes a lock (add lock:<id>,
// delete after the write), as memcached-session-manager does. Lines on stdin steer it:
//   phase NAME   count what follows under NAME
//   stop         run one more round, print the counters, exit
// Output: "READY" once every session is written, then on stop one line per phase
// "PHASE name rounds=R ops=N errors=E lost=L stale=S" and a final
// "SESSIONS lost=L stale=S errors=E". A read that finds no session the server
// acknowledged is lost; a value older than the acknowledged one is stale.
// Only loopback addresses; every wait is bounded (op timeout 1 s, watchdog 300 s).

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.net.InetSocketAddress;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicReference;

import net.spy.memcached.ConnectionFactoryBuilder;
import net.spy.memcached.DefaultHashAlgorithm;
import net.spy.memcached.FailureMode;
import net.spy.memcached.MemcachedClient;

public class SpySessions {
    static final class Phase {
        long rounds, ops, errors, lost, stale;
        final List<String> examples = new ArrayList<>();
    }

    static final Map<String, Phase> phases = new LinkedHashMap<>();
    static final AtomicReference<String> current = new AtomicReference<>("start");
    static final AtomicBoolean stop = new AtomicBoolean(false);

    static Phase phase() {
        synchronized (phases) {
            return phases.computeIfAbsent(current.get(), k -> new Phase());
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 4) {
            System.err.println("usage: SpySessions text|binary SESSIONS HOST:PORT HOST:PORT...");
            System.exit(2);
        }
        Thread watchdog = new Thread(() -> {
            try {
                Thread.sleep(300_000);
            } catch (InterruptedException e) {
                return;
            }
            System.out.println("FAIL watchdog: SpySessions ran more than 300 s");
            System.out.flush();
            Runtime.getRuntime().halt(3);
        });
        watchdog.setDaemon(true);
        watchdog.start();

        boolean binary = args[0].equals("binary");
        int sessions = Integer.parseInt(args[1]);
        List<InetSocketAddress> addrs = new ArrayList<>();
        for (int i = 2; i < args.length; i++) {
            int colon = args[i].lastIndexOf(':');
            String host = args[i].substring(0, colon);
            if (!host.startsWith("127.")) {
                System.err.println("SpySessions only talks to loopback, not " + host);
                System.exit(2);
            }
            addrs.add(new InetSocketAddress(host, Integer.parseInt(args[i].substring(colon + 1))));
        }
        ConnectionFactoryBuilder b = new ConnectionFactoryBuilder()
                .setProtocol(binary ? ConnectionFactoryBuilder.Protocol.BINARY
                        : ConnectionFactoryBuilder.Protocol.TEXT)
                .setLocatorType(ConnectionFactoryBuilder.Locator.CONSISTENT)
                .setHashAlg(DefaultHashAlgorithm.KETAMA_HASH)
                .setFailureMode(FailureMode.Redistribute)
                .setOpTimeout(1000)
                .setMaxReconnectDelay(1)
                .setDaemon(true);
        MemcachedClient c = new MemcachedClient(b.build(), addrs);

        Thread control = new Thread(() -> {
            try (BufferedReader in = new BufferedReader(new InputStreamReader(System.in))) {
                String line;
                while ((line = in.readLine()) != null) {
                    if (line.startsWith("phase ")) {
                        current.set(line.substring(6).trim());
                    } else if (line.trim().equals("stop")) {
                        break;
                    }
                }
            } catch (Exception e) {
                // stdin closed: stop
            }
            stop.set(true);
        });
        control.setDaemon(true);
        control.start();

        long[] acked = new long[sessions];
        // Create every session (retrying: the pair may still be settling).
        long until = System.currentTimeMillis() + 30_000;
        for (int i = 0; i < sessions; i++) {
            while (acked[i] == 0 && System.currentTimeMillis() < until) {
                try {
                    if (c.set(key(i), 3600, "1").get(1, TimeUnit.SECONDS)) {
                        acked[i] = 1;
                    }
                } catch (Exception e) {
                    Thread.sleep(50);
                }
            }
            if (acked[i] == 0) {
                System.out.println("FAIL could not create session " + i);
                System.out.flush();
                Runtime.getRuntime().halt(1);
            }
        }
        System.out.println("READY");
        System.out.flush();
        int limit = 100_000; // rounds: bounded even if stop never comes
        for (int r = 0; r < limit; r++) {
            boolean last = stop.get();
            if (last) {
                current.set("final");
            }
            round(c, acked);
            if (last) {
                break;
            }
        }
        c.shutdown(2, TimeUnit.SECONDS);
        long lost = 0, stale = 0, errors = 0;
        for (Map.Entry<String, Phase> e : phases.entrySet()) {
            Phase p = e.getValue();
            lost += p.lost;
            stale += p.stale;
            errors += p.errors;
            System.out.println("PHASE " + e.getKey() + " rounds=" + p.rounds + " ops=" + p.ops
                    + " errors=" + p.errors + " lost=" + p.lost + " stale=" + p.stale
                    + (p.examples.isEmpty() ? "" : " e.g. " + String.join("; ", p.examples)));
        }
        System.out.println("SESSIONS lost=" + lost + " stale=" + stale + " errors=" + errors);
        System.out.flush();
        Runtime.getRuntime().halt(0);
    }

    static String key(int i) {
        return "spysess:" + i;
    }

    static void round(MemcachedClient c, long[] acked) {
        Phase p = phase();
        synchronized (phases) {
            p.rounds++;
        }
        for (int i = 0; i < acked.length; i++) {
            String k = key(i);
            String lock = "lock:" + k;
            try {
                p.ops++;
                boolean locked = c.add(lock, 5, "locked").get(1, TimeUnit.SECONDS);
                Object got = c.asyncGet(k).get(1, TimeUnit.SECONDS);
                if (got == null) {
                    p.lost++;
                    note(p, k + " missing (acked " + acked[i] + ")");
                } else {
                    long v = Long.parseLong(got.toString());
                    if (v < acked[i]) {
                        p.stale++;
                        note(p, k + " read " + v + " < acked " + acked[i]);
                    }
                }
                long next = acked[i] + 1;
                if (c.set(k, 3600, Long.toString(next)).get(1, TimeUnit.SECONDS)) {
                    acked[i] = next;
                }
                if (locked) {
                    c.delete(lock).get(1, TimeUnit.SECONDS);
                }
            } catch (Exception e) {
                p.errors++;
                if (p.errors <= 3) {
                    note(p, k + " error " + e.getClass().getSimpleName());
                }
            }
        }
    }

    static void note(Phase p, String what) {
        if (p.examples.size() < 5) {
            p.examples.add(what);
        }
    }
}
