<?php
// A session-backed page served by PHP's built-in web server, with the
// memcached session handler (save_path and handler settings come from -d on
// the server's command line). One JSON object per response.
//
//   ?op=login   start a new session: user = ?user, n = 1
//   ?op=hit     the session must hold a user; n = n + 1
//   ?op=logout  destroy the session
//
// Status 200: the session was read and (for login and hit) written back, the
// write confirmed by session_write_close() before the reply. Status 503: the
// session could not be opened or written (the client retries; the user is not
// logged out). A hit on a session without a user answers 200 with
// "lost": true: that is a user logged out.
header('Content-Type: application/json');
header('Cache-Control: no-store');
$op = $_GET['op'] ?? 'hit';

function reply(int $code, array $body): void
{
    http_response_code($code);
    echo json_encode($body), "\n";
    exit(0);
}

if (!@session_start()) {
    $err = error_get_last();
    reply(503, ['error' => $err ? $err['message'] : 'session_start failed']);
}
$sid = session_id();
switch ($op) {
    case 'login':
        $_SESSION['user'] = (string)($_GET['user'] ?? 'anonymous');
        $_SESSION['n'] = 1;
        $out = ['sid' => $sid, 'n' => 1];
        break;
    case 'hit':
        if (!isset($_SESSION['user'])) {
            // Nothing to write back: keep the store as it is.
            session_abort();
            reply(200, ['sid' => $sid, 'lost' => true]);
        }
        $before = (int)$_SESSION['n'];
        $_SESSION['n'] = $before + 1;
        $out = ['sid' => $sid, 'user' => $_SESSION['user'], 'n_before' => $before, 'n' => $before + 1];
        break;
    case 'logout':
        $ok = session_destroy();
        reply($ok ? 200 : 503, ['sid' => $sid, 'destroyed' => $ok]);
    default:
        reply(400, ['error' => "unknown op $op"]);
}
// session_write_close() returns true even when the handler failed to write
// (PHP 8.2 only warns "Failed to write session data"): check the warning too,
// or a write that never reached a server would count as acknowledged.
error_clear_last();
$closed = @session_write_close();
$err = error_get_last();
if (!$closed || $err !== null) {
    reply(503, ['error' => $err ? $err['message'] : 'session write failed']);
}
reply(200, $out);
