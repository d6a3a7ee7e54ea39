//! Credentials for SASL PLAIN (binary protocol) and ASCII auth (`-Y`).
//!
//! Both mechanisms check a `user:password` pair against a file loaded at
//! start-up and again on SIGHUP ([`LiveCredentials`]: a bad new file keeps the
//! users in force), so they share this module: file parsing, the constant-time
//! comparison and the RFC 4616 PLAIN message. Keeping it in one place means
//! there is exactly one piece of code that ever touches a password.
//!
//! Two memcached file formats exist and differ in one detail:
//!
//! * the SASL password database (`--sasl-pwdb FILE`, or `MEMCACHED_SASL_PWDB`
//!   as memcached reads it): the password ends at the next `:` (memcached
//!   allows "additional tokens" after it) or at the end of the line;
//! * the ASCII auth file (`-Y FILE`): the password is the rest of the line.
//!
//! Secrets are never logged and never printed by `Debug`; comparisons take
//! time that depends only on the length of what the client sent.

use crate::config::{BindingProtocol, Settings};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The environment variable memcached's SASL support reads its password file from.
pub const SASL_PWDB_ENV: &str = "MEMCACHED_SASL_PWDB";

/// How a credential line is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// SASL password database: `user:password[:ignored...]`.
    SaslPwdb,
    /// ASCII auth file (`-Y`): `user:password` where the password may contain `:`.
    AuthFile,
}

/// A credential file problem, reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read credential file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credential file {path}, line {line}: expected user:password")]
    Malformed { path: PathBuf, line: usize },
    #[error("credential file {0} has no entries")]
    Empty(PathBuf),
    #[error("SASL (-S) needs a password file: --sasl-pwdb FILE or ${SASL_PWDB_ENV}")]
    NoPwdb,
}

struct Entry {
    user: Vec<u8>,
    password: Vec<u8>,
}

/// A set of `user:password` entries.
pub struct Credentials {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets, not even the user names.
        f.debug_struct("Credentials")
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl Credentials {
    /// Parse file contents. Blank lines are skipped; any other line must contain a `:`.
    /// Returns the 1-based number of the first malformed line on error.
    pub fn parse(text: &[u8], format: Format) -> Result<Credentials, usize> {
        let mut entries = Vec::new();
        for (i, raw) in text.split(|&c| c == b'\n').enumerate() {
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            if line.is_empty() {
                continue;
            }
            let Some(colon) = memchr::memchr(b':', line) else {
                return Err(i + 1);
            };
            let user = &line[..colon];
            let rest = &line[colon + 1..];
            let password = match format {
                Format::AuthFile => rest,
                Format::SaslPwdb => match memchr::memchr(b':', rest) {
                    Some(end) => &rest[..end],
                    None => rest,
                },
            };
            entries.push(Entry {
                user: user.to_vec(),
                password: password.to_vec(),
            });
        }
        Ok(Credentials { entries })
    }

    /// Load and parse a credential file.
    pub fn load(path: &Path, format: Format) -> Result<Credentials, AuthError> {
        let text = std::fs::read(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let creds = Credentials::parse(&text, format).map_err(|line| AuthError::Malformed {
            path: path.to_path_buf(),
            line,
        })?;
        if creds.entries.is_empty() {
            return Err(AuthError::Empty(path.to_path_buf()));
        }
        Ok(creds)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `user` / `password` match an entry. Every entry is compared in
    /// full, so the time taken does not reveal which user exists or how much of
    /// a password was right.
    pub fn verify(&self, user: &[u8], password: &[u8]) -> bool {
        let mut ok = false;
        for e in &self.entries {
            // Non-short-circuit `&` and `|`: both comparisons always run.
            ok |= ct_eq(user, &e.user) & ct_eq(password, &e.password);
        }
        ok
    }
}

/// Compare a client-supplied `given` with a `secret` in time that depends only
/// on `given.len()`: every byte of `given` is visited, and no branch depends on
/// the contents of either slice.
pub fn ct_eq(given: &[u8], secret: &[u8]) -> bool {
    let mut diff = u64::from(given.len() != secret.len());
    if secret.is_empty() {
        return std::hint::black_box(diff) == 0 && given.is_empty();
    }
    let mut acc = 0u8;
    for (i, &b) in given.iter().enumerate() {
        // Wrap around the secret so the loop length is the client's, not the secret's.
        acc |= b ^ secret[i % secret.len()];
    }
    diff |= u64::from(std::hint::black_box(acc));
    std::hint::black_box(diff) == 0
}

/// An RFC 4616 PLAIN message: `[authzid] NUL authcid NUL passwd`.
#[derive(Debug, PartialEq, Eq)]
pub struct Plain<'a> {
    pub authzid: &'a [u8],
    pub user: &'a [u8],
    pub password: &'a [u8],
}

/// Split a PLAIN message; `None` when it does not have the two NUL separators.
/// The password is everything after the second NUL (so a trailing NUL is part
/// of it and makes the check fail, as with Cyrus SASL).
pub fn parse_plain(msg: &[u8]) -> Option<Plain<'_>> {
    let first = memchr::memchr(0, msg)?;
    let rest = &msg[first + 1..];
    let second = memchr::memchr(0, rest)?;
    Some(Plain {
        authzid: &msg[..first],
        user: &rest[..second],
        password: &rest[second + 1..],
    })
}

impl Credentials {
    /// Check a PLAIN message: the credentials must match, and an authorization
    /// identity, when given, must be the user itself (no proxy authorization).
    pub fn verify_plain(&self, msg: &[u8]) -> bool {
        match parse_plain(msg) {
            Some(p) if !p.user.is_empty() && (p.authzid.is_empty() || p.authzid == p.user) => {
                self.verify(p.user, p.password)
            }
            _ => false,
        }
    }
}

/// A credential file's users as they are now: read at every authentication
/// (a few per connection, so an uncontended lock), replaced by a reload.
#[derive(Debug)]
pub struct LiveCredentials {
    format: Format,
    current: RwLock<Arc<Credentials>>,
}

impl LiveCredentials {
    pub fn new(format: Format, creds: Credentials) -> Self {
        LiveCredentials {
            format,
            current: RwLock::new(Arc::new(creds)),
        }
    }

    /// The users in force.
    pub fn current(&self) -> Arc<Credentials> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Read `path` and, if it is a valid non-empty file, make it the users in
    /// force (returns how many); otherwise keep the current ones.
    pub fn reload(&self, path: &Path) -> Result<usize, AuthError> {
        let creds = Credentials::load(path, self.format)?;
        let n = creds.len();
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(creds),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(creds),
        }
        Ok(n)
    }
}

/// A reload of `what` failed: say why, and that the users in force stay.
fn warn_kept(what: &str, live: &LiveCredentials, e: &AuthError) {
    let why = match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    };
    tracing::warn!(
        "reload: {what}: keeping the {} user(s) in force: {why}",
        live.current().len()
    );
}

/// The credentials a running server checks: loaded at start-up, reloaded on
/// SIGHUP. Whether each mechanism is on is fixed at start-up (it decides which
/// protocols a connection may speak); only the users change.
#[derive(Debug, Default)]
pub struct Auth {
    /// SASL PLAIN users (`-S`); `None` when SASL is off.
    pub sasl: Option<LiveCredentials>,
    /// ASCII auth users (`-Y`); `None` when ASCII auth is off.
    pub ascii: Option<LiveCredentials>,
}

impl Auth {
    /// Load the credential files the settings name. `-S` without a password
    /// file (flag, config or `MEMCACHED_SASL_PWDB`) is an error: memtwin has no
    /// Cyrus SASL to fall back on.
    pub fn load(settings: &Settings) -> Result<Auth, AuthError> {
        let sasl = match Self::sasl_path(settings)? {
            Some(path) => {
                let c = Credentials::load(&path, Format::SaslPwdb)?;
                tracing::info!(
                    "SASL PLAIN enabled: {} user(s) from {}",
                    c.len(),
                    path.display()
                );
                Some(LiveCredentials::new(Format::SaslPwdb, c))
            }
            None => None,
        };
        let ascii = match &settings.auth_file {
            Some(path) => {
                let c = Credentials::load(path, Format::AuthFile)?;
                tracing::info!(
                    "ASCII auth enabled: {} user(s) from {}",
                    c.len(),
                    path.display()
                );
                Some(LiveCredentials::new(Format::AuthFile, c))
            }
            None => None,
        };
        Ok(Auth { sasl, ascii })
    }

    /// The SASL password database `settings` name, None with SASL off.
    fn sasl_path(settings: &Settings) -> Result<Option<PathBuf>, AuthError> {
        if !settings.sasl {
            return Ok(None);
        }
        settings
            .sasl_pwdb
            .clone()
            .or_else(|| std::env::var_os(SASL_PWDB_ENV).map(PathBuf::from))
            .ok_or(AuthError::NoPwdb)
            .map(Some)
    }

    /// SIGHUP: re-read both files as `new` (freshly parsed settings) names
    /// them, each one on its own: a file that cannot be used keeps its
    /// current users, and the log says why. Turning a mechanism on or off
    /// needs a restart (it changes which protocols connections may speak).
    pub fn reload(&self, new: &Settings) {
        let wanted = [
            ("SASL", &self.sasl, Self::sasl_path(new)),
            ("ASCII auth", &self.ascii, Ok(new.auth_file.clone())),
        ];
        for (what, live, path) in wanted {
            let (live, path) = match (live, path) {
                (Some(l), Ok(Some(p))) => (l, p),
                (None, Ok(None)) => continue,
                (Some(l), Err(e)) => {
                    warn_kept(what, l, &e);
                    continue;
                }
                (live, _) => {
                    tracing::warn!(
                        "reload: turning {what} on or off needs a restart; it stays {}",
                        if live.is_some() { "on" } else { "off" }
                    );
                    continue;
                }
            };
            match live.reload(&path) {
                Ok(n) => tracing::info!("reload: {what}: {n} user(s) from {}", path.display()),
                Err(e) => warn_kept(what, live, &e),
            }
        }
    }

    /// The protocol binding in force, given `-B`. Authentication narrows it so
    /// that no connection can skip it, as memcached does: SASL alone is
    /// binary-only, ASCII auth alone is ASCII-only. With both, each protocol
    /// authenticates with its own mechanism and `-B` applies.
    pub fn binding(&self, configured: BindingProtocol) -> BindingProtocol {
        match (self.sasl.is_some(), self.ascii.is_some()) {
            (true, false) => BindingProtocol::Binary,
            (false, true) => BindingProtocol::Ascii,
            _ => configured,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_formats() {
        let text = b"alice:s3cret\r\n\nbob:pw:with:colons\n";
        let sasl = Credentials::parse(text, Format::SaslPwdb).expect("ok");
        assert!(sasl.verify(b"alice", b"s3cret"));
        assert!(sasl.verify(b"bob", b"pw"));
        assert!(!sasl.verify(b"bob", b"pw:with:colons"));
        let file = Credentials::parse(text, Format::AuthFile).expect("ok");
        assert!(file.verify(b"bob", b"pw:with:colons"));
        assert!(!file.verify(b"bob", b"pw"));
        assert_eq!(file.len(), 2);
        assert_eq!(
            Credentials::parse(b"ok:1\nnocolon\n", Format::AuthFile).err(),
            Some(2)
        );
    }

    #[test]
    fn constant_time_compare_is_exact() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"ab", b"abc"));
        assert!(!ct_eq(b"abcabc", b"abc"));
        assert!(!ct_eq(b"", b"abc"));
        assert!(!ct_eq(b"a", b""));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn plain_messages() {
        let c = Credentials::parse(b"alice:s3cret\n", Format::SaslPwdb).expect("ok");
        assert!(c.verify_plain(b"\0alice\0s3cret"));
        assert!(c.verify_plain(b"alice\0alice\0s3cret"));
        assert!(!c.verify_plain(b"bob\0alice\0s3cret"));
        assert!(!c.verify_plain(b"\0alice\0s3cret\0"));
        assert!(!c.verify_plain(b"\0alice\0wrong"));
        assert!(!c.verify_plain(b"alice s3cret"));
        assert!(!c.verify_plain(b""));
        assert_eq!(
            parse_plain(b"z\0u\0p"),
            Some(Plain {
                authzid: b"z",
                user: b"u",
                password: b"p"
            })
        );
    }

    #[test]
    fn a_reload_replaces_the_users_and_a_bad_file_keeps_them() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("users");
        std::fs::write(&path, "alice:one\n").expect("write");
        let live = LiveCredentials::new(
            Format::AuthFile,
            Credentials::load(&path, Format::AuthFile).expect("load"),
        );
        let held = live.current();
        std::fs::write(&path, "bob:two\ncarol:three\n").expect("write");
        assert_eq!(live.reload(&path).expect("reload"), 2);
        assert!(live.current().verify(b"bob", b"two"));
        assert!(!live.current().verify(b"alice", b"one"));
        assert!(
            held.verify(b"alice", b"one"),
            "a reader keeps the set it took"
        );
        for bad in ["no colon here\n", ""] {
            std::fs::write(&path, bad).expect("write");
            assert!(live.reload(&path).is_err(), "{bad:?} accepted");
            assert!(live.current().verify(b"bob", b"two"), "kept after {bad:?}");
        }
        assert!(live.reload(&tmp.path().join("missing")).is_err());
    }

    #[test]
    fn authentication_narrows_the_binding() {
        let creds = || {
            Credentials::parse(b"a:b\n", Format::AuthFile)
                .ok()
                .map(|c| LiveCredentials::new(Format::AuthFile, c))
        };
        let none = Auth::default();
        assert_eq!(none.binding(BindingProtocol::Auto), BindingProtocol::Auto);
        let sasl = Auth {
            sasl: creds(),
            ascii: None,
        };
        assert_eq!(
            sasl.binding(BindingProtocol::Ascii),
            BindingProtocol::Binary
        );
        let ascii = Auth {
            sasl: None,
            ascii: creds(),
        };
        assert_eq!(
            ascii.binding(BindingProtocol::Binary),
            BindingProtocol::Ascii
        );
        let both = Auth {
            sasl: creds(),
            ascii: creds(),
        };
        assert_eq!(both.binding(BindingProtocol::Auto), BindingProtocol::Auto);
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credentials::parse(b"alice:s3cret\n", Format::AuthFile).expect("ok");
        let s = format!("{c:?}");
        assert!(!s.contains("s3cret") && !s.contains("alice"));
    }
}
