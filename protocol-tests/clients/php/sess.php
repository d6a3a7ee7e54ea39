<?php
// One "request" of a PHP application using the php-memcached session handler.
//
// usage: php [-d ini=value ...] sess.php ADDR MODE [SID] [HOLD_MS]
//   ADDR     host:port of the server (session.save_path)
//   MODE     create  - start a new session (no id), set n=1
//            incr    - open SID, n = n + 1, hold the session (and its lock) HOLD_MS, write
//            read    - open SID, read n, change nothing (lazy_write => touch, not set)
//            destroy - open SID and session_destroy()
//            strict  - open SID (run with -d session.use_strict_mode=1), report the id PHP kept
// Prints one line "RESULT {json}" at the end; PHP warnings go to stderr.
ini_set('display_errors', 'stderr');
error_reporting(E_ALL);
if ($argc < 3) {
    fwrite(STDERR, "usage: sess.php ADDR MODE [SID] [HOLD_MS]\n");
    exit(2);
}
$addr = $argv[1];
$mode = $argv[2];
$sid = $argv[3] ?? '';
$hold_ms = (int)($argv[4] ?? 0);

ini_set('session.save_handler', 'memcached');
ini_set('session.save_path', $addr);
ini_set('session.use_cookies', '0');
ini_set('session.use_only_cookies', '0');
ini_set('session.cache_limiter', '');

if (!extension_loaded('memcached')) {
    echo "RESULT " . json_encode(['error' => 'memcached extension not loaded']) . "\n";
    exit(3);
}

if ($sid !== '') {
    session_id($sid);
}
$t0 = microtime(true);
$started = @session_start();
$start_ms = (int)round((microtime(true) - $t0) * 1000);
$err = error_get_last();
$out = [
    'mode' => $mode,
    'started' => $started,
    'start_ms' => $start_ms,
    'sid' => session_id(),
    'binary' => ini_get('memcached.sess_binary_protocol'),
    'error' => $err ? $err['message'] : null,
];
if (!$started) {
    echo "RESULT " . json_encode($out) . "\n";
    exit(0);
}
$out['n_before'] = $_SESSION['n'] ?? null;
switch ($mode) {
    case 'create':
        $_SESSION['n'] = 1;
        break;
    case 'incr':
        $_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
        if ($hold_ms > 0) {
            usleep($hold_ms * 1000);
        }
        break;
    case 'read':
    case 'strict':
        break;
    case 'destroy':
        $out['destroyed'] = session_destroy();
        echo "RESULT " . json_encode($out) . "\n";
        exit(0);
    default:
        fwrite(STDERR, "unknown mode $mode\n");
        exit(2);
}
$out['n'] = $_SESSION['n'] ?? null;
$out['closed'] = session_write_close();
echo "RESULT " . json_encode($out) . "\n";
