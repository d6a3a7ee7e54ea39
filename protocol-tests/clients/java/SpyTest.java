// spymemcached (libspymemcached-java 2.12.3) driving a server the way
// memcached-session-manager (msm) does, plus the other commands spymemcached offers.
//
// usage: java -cp /usr/share/java/spymemcached.jar:DIR SpyTest PORT text|binary [USER PASSWORD [badauth]]
//   badauth: the credentials are wrong; pass only if operations are refused
//
// Prints "PASS name" / "FAIL name: detail" per check and a final
// "SPYTEST passed=N failed=M"; exit code 0 only when every check passed.
// Only talks to loopback (127.0.0.1, or the 127.0.0.x given as HOST:PORT); every wait is bounded (op timeout 3 s, watchdog 90 s).

import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.TimeUnit;

import net.spy.memcached.CASResponse;
import net.spy.memcached.CASValue;
import net.spy.memcached.ConnectionFactoryBuilder;
import net.spy.memcached.FailureMode;
import net.spy.memcached.MemcachedClient;
import net.spy.memcached.auth.AuthDescriptor;
import net.spy.memcached.auth.PlainCallbackHandler;
import net.spy.memcached.internal.OperationFuture;

public class SpyTest {
    static int passed = 0;
    static int failed = 0;
    static final long WAIT = 5; // seconds for any future

    interface Check {
        Object run() throws Exception;
    }

    static void check(String name, Object expected, Check body) {
        try {
            Object got = body.run();
            boolean ok;
            if (expected instanceof byte[] && got instanceof byte[]) {
                ok = Arrays.equals((byte[]) expected, (byte[]) got);
            } else if (expected == null) {
                ok = got == null;
            } else {
                ok = expected.equals(got);
            }
            if (ok) {
                passed++;
                System.out.println("PASS " + name);
            } else {
                failed++;
                System.out.println("FAIL " + name + ": expected " + show(expected) + " got " + show(got));
            }
        } catch (Throwable t) {
            failed++;
            System.out.println("FAIL " + name + ": exception " + t);
        }
    }

    static String show(Object o) {
        if (o instanceof byte[]) {
            return "bytes" + Arrays.toString((byte[]) o);
        }
        return String.valueOf(o);
    }

    static <T> T w(java.util.concurrent.Future<T> f) throws Exception {
        return f.get(WAIT, TimeUnit.SECONDS);
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: SpyTest PORT text|binary [USER PASSWORD]");
            System.exit(2);
        }
        Thread watchdog = new Thread(() -> {
            try {
                Thread.sleep(90_000);
            } catch (InterruptedException e) {
                return;
            }
            System.out.println("FAIL watchdog: SpyTest took more than 90 s");
            System.out.flush();
            Runtime.getRuntime().halt(3);
        });
        watchdog.setDaemon(true);
        watchdog.start();

        // PORT, or HOST:PORT (a twin pair runs on 127.0.0.2, 127.0.0.3...).
        String host = "127.0.0.1";
        String portArg = args[0];
        int colon = portArg.lastIndexOf(':');
        if (colon > 0) {
            host = portArg.substring(0, colon);
            portArg = portArg.substring(colon + 1);
        }
        if (!host.startsWith("127.")) {
            System.err.println("SpyTest only talks to loopback, not " + host);
            System.exit(2);
        }
        int port = Integer.parseInt(portArg);
        boolean binary = args[1].equals("binary");
        ConnectionFactoryBuilder b = new ConnectionFactoryBuilder()
                .setProtocol(binary ? ConnectionFactoryBuilder.Protocol.BINARY
                        : ConnectionFactoryBuilder.Protocol.TEXT)
                .setOpTimeout(3000)
                .setFailureMode(FailureMode.Cancel)
                .setDaemon(true);
        if (args.length >= 4) {
            b.setAuthDescriptor(new AuthDescriptor(new String[] {"PLAIN"},
                    new PlainCallbackHandler(args[2], args[3])));
        }
        List<InetSocketAddress> addrs = new ArrayList<>();
        addrs.add(new InetSocketAddress(host, port));
        final MemcachedClient c = new MemcachedClient(b.build(), addrs);
        try {
            if (args.length >= 5 && args[4].equals("badauth")) {
                runBadAuth(c);
            } else {
                if (args.length >= 4) {
                    awaitAuthenticated(c);
                }
                run(c, binary);
            }
        } finally {
            c.shutdown(3, TimeUnit.SECONDS);
        }
        System.out.println("SPYTEST passed=" + passed + " failed=" + failed);
        System.out.flush();
        Runtime.getRuntime().halt(failed == 0 && passed > 0 ? 0 : 1);
    }

    // spymemcached 2.12.3 can start two AuthThreads for one fresh connection; the
    // monitor interrupts the first after it sent SASL_AUTH, the second auth on that
    // connection may then be refused (memcached 1.6.18 with Cyrus SASL answers 0x20
    // "Auth failure" to a second PLAIN on an already-authenticated conn), and the
    // client reconnects after 2 s. Operations issued in that window are cancelled,
    // which is the client's race, not the server's answer. So wait (bounded) until
    // one round trip succeeds before the checks; the number of tries is printed so
    // a server that keeps refusing the first attempt is visible, and a server that
    // never accepts the credentials still fails every check below.
    static void awaitAuthenticated(final MemcachedClient c) {
        long deadline = System.currentTimeMillis() + 20_000;
        int tries = 0;
        int inARow = 0; // two successes 250 ms apart: a late refusal of the
                        // interrupted attempt would have forced a reconnect by then
        while (System.currentTimeMillis() < deadline) {
            tries++;
            boolean ok = false;
            try {
                Map<SocketAddress, String> v = c.getVersions();
                ok = v.size() == 1 && v.values().iterator().next() != null;
            } catch (Exception e) {
                // cancelled by the client's reconnect: try again
            }
            inARow = ok ? inARow + 1 : 0;
            if (inARow == 2) {
                System.out.println("INFO authenticated after " + tries + " tries");
                return;
            }
            try {
                Thread.sleep(250);
            } catch (InterruptedException e) {
                return;
            }
        }
        System.out.println("INFO not authenticated after " + tries + " tries (20 s)");
    }

    // With wrong credentials the server answers 0x20 and spymemcached reconnects and
    // retries; operations must never succeed.
    static void runBadAuth(final MemcachedClient c) {
        final String k = "badauth-" + UUID.randomUUID();
        check("set refused without valid auth", Boolean.TRUE, () -> {
            try {
                return !c.set(k, 0, "x").get(WAIT, TimeUnit.SECONDS);
            } catch (Exception e) {
                return true;
            }
        });
        check("get refused without valid auth", Boolean.TRUE, () -> {
            try {
                c.get(k);
                return false;
            } catch (Exception e) {
                return true;
            }
        });
    }

    static void run(final MemcachedClient c, boolean binary) throws Exception {
        final String node = "n1";
        final String id = UUID.randomUUID().toString().replace("-", "").toUpperCase() + "-" + node;
        final byte[] session = new byte[300];
        for (int i = 0; i < session.length; i++) {
            session[i] = (byte) (i * 7);
        }
        final byte[] validity = new byte[20];
        for (int i = 0; i < validity.length; i++) {
            validity[i] = (byte) (255 - i);
        }
        final int now = (int) (System.currentTimeMillis() / 1000);

        // --- server basics
        check("version", Boolean.TRUE, () -> {
            Map<SocketAddress, String> v = c.getVersions();
            return v.size() == 1 && v.values().iterator().next().matches("^[0-9].*");
        });
        check("stats", Boolean.TRUE, () -> {
            Map<SocketAddress, Map<String, String>> s = c.getStats();
            Map<String, String> st = s.values().iterator().next();
            return st.containsKey("curr_items") && st.containsKey("cmd_get") && st.containsKey("pid");
        });

        // --- msm: node health probe
        check("msm get ping-<node> misses", null, () -> c.get("ping-" + node + "-" + id));

        // --- msm: store and load the session
        check("msm set <id>", Boolean.TRUE, () -> w(c.set(id, 1800, session)));
        check("msm get <id>", session, () -> c.get(id));
        check("msm set validity:<id>", Boolean.TRUE, () -> w(c.set("validity:" + id, 1800, validity)));
        check("msm get validity:<id>", validity, () -> c.get("validity:" + id));

        // --- msm: locking
        check("msm add lock:<id>", Boolean.TRUE, () -> w(c.add("lock:" + id, 5, "locked")));
        check("msm second add lock:<id> fails", Boolean.FALSE, () -> w(c.add("lock:" + id, 5, "locked")));
        check("msm lock value", "locked", () -> c.get("lock:" + id));
        check("msm delete lock:<id>", Boolean.TRUE, () -> w(c.delete("lock:" + id)));
        check("msm add lock:<id> after release", Boolean.TRUE, () -> w(c.add("lock:" + id, 5, "locked")));
        check("msm delete lock:<id> again", Boolean.TRUE, () -> w(c.delete("lock:" + id)));

        // --- msm: keep-alive ping via add on a live session must fail and change nothing
        check("msm ping add <id> 5 0x01 -> NOT_STORED", Boolean.FALSE,
                () -> w(c.add(id, 5, new byte[] {1})));
        check("msm ping add <id> 1 0x01 -> NOT_STORED", Boolean.FALSE,
                () -> w(c.add(id, 1, new byte[] {1})));
        check("msm session unchanged after ping", session, () -> c.get(id));
        check("msm ping backup add bak:<id> on missing backup succeeds", Boolean.TRUE,
                () -> w(c.add("bak:" + id, 5, new byte[] {1})));
        check("msm ping backup value", new byte[] {1}, () -> c.get("bak:" + id));

        // --- msm: non-sticky backup keys
        check("msm set bak:<id>", Boolean.TRUE, () -> w(c.set("bak:" + id, 1800, session)));
        check("msm set bak:validity:<id>", Boolean.TRUE,
                () -> w(c.set("bak:validity:" + id, 1800, validity)));
        check("msm get bak:<id>", session, () -> c.get("bak:" + id));
        check("msm get bak:validity:<id>", validity, () -> c.get("bak:validity:" + id));

        // --- msm: expiry > 30 days is sent as absolute unix time; absolute past is expired
        final String longId = "long-" + id;
        check("msm set with absolute expiry (> 30 days)", Boolean.TRUE,
                () -> w(c.set(longId, now + 40 * 86400, session)));
        check("msm get absolute-expiry item", session, () -> c.get(longId));
        final String pastId = "past-" + id;
        check("set with absolute expiry in the past", Boolean.TRUE, () -> w(c.set(pastId, now - 60, "x")));
        check("absolute-past item is expired", null, () -> c.get(pastId));

        // --- msm: delete removes all four keys
        check("msm delete <id>", Boolean.TRUE, () -> w(c.delete(id)));
        check("msm delete validity:<id>", Boolean.TRUE, () -> w(c.delete("validity:" + id)));
        check("msm delete bak:<id>", Boolean.TRUE, () -> w(c.delete("bak:" + id)));
        check("msm delete bak:validity:<id>", Boolean.TRUE, () -> w(c.delete("bak:validity:" + id)));
        check("msm get deleted <id>", null, () -> c.get(id));
        check("msm get deleted bak:<id>", null, () -> c.get("bak:" + id));
        check("delete missing key", Boolean.FALSE, () -> w(c.delete(id)));
        check("msm ping add on missing session succeeds", Boolean.TRUE, () -> w(c.add(id, 1, new byte[] {1})));
        check("delete ping item", Boolean.TRUE, () -> w(c.delete(id)));
        check("delete long item", Boolean.TRUE, () -> w(c.delete(longId)));

        // --- other spymemcached operations
        final String k = "spy-" + id;
        check("set string", Boolean.TRUE, () -> w(c.set(k, 0, "value")));
        check("get string", "value", () -> c.get(k));
        check("replace existing", Boolean.TRUE, () -> w(c.replace(k, 0, "replaced")));
        check("replace missing", Boolean.FALSE, () -> w(c.replace(k + "-missing", 0, "x")));
        check("append", Boolean.TRUE, () -> w(c.append(0, k, "+app")));
        check("prepend", Boolean.TRUE, () -> w(c.prepend(0, k, "pre+")));
        check("get after append/prepend", "pre+replaced+app", () -> c.get(k));
        check("append missing", Boolean.FALSE, () -> w(c.append(0, k + "-missing", "x")));

        // touch
        check("touch existing", Boolean.TRUE, () -> w(c.touch(k, 100)));
        check("touch missing", Boolean.FALSE, () -> w(c.touch(k + "-missing", 100)));
        check("value unchanged after touch", "pre+replaced+app", () -> c.get(k));

        // cas
        check("gets/cas ok", CASResponse.OK, () -> {
            CASValue<Object> cv = c.gets(k);
            return c.cas(k, cv.getCas(), "cas-1");
        });
        check("cas stale -> EXISTS", CASResponse.EXISTS, () -> {
            CASValue<Object> cv = c.gets(k);
            w(c.set(k, 0, "changed"));
            return c.cas(k, cv.getCas(), "cas-2");
        });
        check("cas missing -> NOT_FOUND", CASResponse.NOT_FOUND,
                () -> c.cas(k + "-missing", 12345L, "x"));
        check("value after cas", "changed", () -> c.get(k));
        check("touch keeps cas", Boolean.TRUE, () -> {
            long before = c.gets(k).getCas();
            w(c.touch(k, 200));
            return c.gets(k).getCas() == before;
        });
        check("failed add keeps cas", Boolean.TRUE, () -> {
            long before = c.gets(k).getCas();
            boolean added = w(c.add(k, 0, "nope"));
            return !added && c.gets(k).getCas() == before && "changed".equals(c.get(k));
        });

        // incr / decr
        final String ctr = "ctr-" + id;
        check("incr missing without default", -1L, () -> c.incr(ctr, 1));
        check("incr with default creates", 10L, () -> c.incr(ctr, 1, 10));
        check("incr with default increments", 11L, () -> c.incr(ctr, 1, 10));
        check("incr by 100", 111L, () -> c.incr(ctr, 100));
        check("decr", 106L, () -> c.decr(ctr, 5));
        check("decr saturates at 0", 0L, () -> c.decr(ctr, 1000));
        check("decr with default on missing", 7L, () -> c.decr(ctr + "-d", 1, 7));
        check("asyncIncr", 1L, () -> w(c.asyncIncr(ctr, 1)));

        // getBulk (text: one multi-get; binary: GETQ... + NOOP)
        final Map<String, Object> data = new HashMap<>();
        for (int i = 0; i < 25; i++) {
            data.put("bulk-" + i + "-" + id, "v" + i);
        }
        check("set bulk keys", Boolean.TRUE, () -> {
            List<OperationFuture<Boolean>> fs = new ArrayList<>();
            for (Map.Entry<String, Object> e : data.entrySet()) {
                fs.add(c.set(e.getKey(), 60, e.getValue()));
            }
            for (OperationFuture<Boolean> f : fs) {
                if (!w(f)) {
                    return false;
                }
            }
            return true;
        });
        check("getBulk", data, () -> {
            List<String> keys = new ArrayList<>(data.keySet());
            keys.add("bulk-missing-1-" + id);
            keys.add("bulk-missing-2-" + id);
            return c.getBulk(keys);
        });
        check("getBulk all missing", 0, () -> c.getBulk("nx1-" + id, "nx2-" + id).size());
        check("asyncGet", "v3", () -> w(c.asyncGet("bulk-3-" + id)));

        // large value (compressed by the transcoder above 16 KiB) and big raw bytes
        final byte[] big = new byte[500_000];
        for (int i = 0; i < big.length; i++) {
            big[i] = (byte) (i % 251);
        }
        check("set 500 KB", Boolean.TRUE, () -> w(c.set("big-" + id, 60, big)));
        check("get 500 KB", big, () -> c.get("big-" + id));

        if (binary) {
            check("getAndTouch (binary GAT)", "v5", () -> {
                CASValue<Object> cv = c.getAndTouch("bulk-5-" + id, 100);
                return cv == null ? null : cv.getValue();
            });
            check("getAndTouch missing", null, () -> c.getAndTouch("gat-missing-" + id, 100));
        }

        // pipelined async sets then gets on one connection
        check("100 pipelined async ops", Boolean.TRUE, () -> {
            List<OperationFuture<Boolean>> fs = new ArrayList<>();
            for (int i = 0; i < 100; i++) {
                fs.add(c.set("pipe-" + (i % 10) + "-" + id, 60, Integer.valueOf(i)));
            }
            for (OperationFuture<Boolean> f : fs) {
                if (!w(f)) {
                    return false;
                }
            }
            for (int i = 0; i < 10; i++) {
                Object v = c.get("pipe-" + i + "-" + id);
                if (!Integer.valueOf(90 + i).equals(v)) {
                    return false;
                }
            }
            return true;
        });

        // clean up what this run stored
        List<String> all = new ArrayList<>(data.keySet());
        all.addAll(Arrays.asList(k, ctr, ctr + "-d", "big-" + id));
        for (int i = 0; i < 10; i++) {
            all.add("pipe-" + i + "-" + id);
        }
        check("cleanup deletes", Boolean.TRUE, () -> {
            for (String key : all) {
                w(c.delete(key));
            }
            return c.get(k) == null;
        });
    }
}
