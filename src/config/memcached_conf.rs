//! `--memcached-conf FILE`: read Debian's `/etc/memcached.conf`, so migrating
//! from memcached is pointing memtwin at the file that is already there.
//!
//! The format is what Debian's `systemd-memcached-wrapper` reads: one option
//! per line as it would appear on memcached's command line (`-m 64`,
//! `-l 127.0.0.1`), `#` starts a comment, blank lines are skipped, `-d` and
//! `-h` are dropped, and a line that does not start with `-` is a directive of
//! the wrapper's (`logfile FILE`), which memtwin ignores with a warning (it
//! logs to stderr, i.e. the journal). Words are split like the shell the
//! wrapper hands them to: whitespace, single and double quotes, backslash.
//!
//! The options are memtwin's own memcached-compatible flags, so an option
//! memtwin does not take is an error that names the line. The file is the
//! lowest layer: memtwin's TOML file and then the command line override it.

use super::{Cli, ConfigError};
use clap::Parser;
use std::path::Path;

/// What a memcached.conf contributed: the options, parsed, and what was
/// skipped (as warnings for the start-up log).
#[derive(Debug)]
pub struct Legacy {
    pub cli: Cli,
    pub warnings: Vec<String>,
}

/// Read and parse `path`.
pub fn read(path: &Path) -> Result<Legacy, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

fn bad(path: &Path, line: usize, why: impl std::fmt::Display) -> ConfigError {
    ConfigError::MemcachedConf {
        path: path.to_path_buf(),
        line,
        why: why.to_string(),
    }
}

/// Parse the text of a memcached.conf (`path` only names it in messages).
pub fn parse(path: &Path, text: &str) -> Result<Legacy, ConfigError> {
    let mut args = vec!["memtwin".to_string()];
    let mut warnings = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        let words = split_words(line).map_err(|why| bad(path, n, why))?;
        let Some(first) = words.first() else { continue };
        if !first.starts_with('-') {
            warnings.push(format!(
                "{}:{n}: `{first}` ignored (a directive of Debian's memcached wrapper; memtwin \
                 logs to stderr, which systemd sends to the journal)",
                path.display()
            ));
            continue;
        }
        if first.starts_with("-d") || first.starts_with("-h") {
            // The wrapper drops these too: systemd runs the daemon in the foreground.
            continue;
        }
        // Each line alone must be valid, so an error can name its line.
        let mut one = vec!["memtwin".to_string()];
        one.extend(words.iter().cloned());
        if let Err(e) = Cli::try_parse_from(&one) {
            let msg = e.to_string();
            let first_line = msg.lines().next().unwrap_or("invalid option").trim();
            return Err(bad(path, n, format!("`{line}`: {first_line}")));
        }
        args.extend(words);
    }
    let cli = Cli::try_parse_from(&args).map_err(|e| {
        let msg = e.to_string();
        bad(
            path,
            0,
            msg.lines().next().unwrap_or("invalid options").trim(),
        )
    })?;
    Ok(Legacy { cli, warnings })
}

/// Everything before the first `#` that is not escaped by a backslash.
fn strip_comment(line: &str) -> &str {
    let b = line.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'#' && (i == 0 || b[i - 1] != b'\\') {
            return &line[..i];
        }
    }
    line
}

/// Shell-like word splitting: whitespace separates, '...' and "..." quote,
/// a backslash escapes the next character (outside single quotes).
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(q) => cur.push(q),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e) => cur.push(e),
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(q) => cur.push(q),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(e) = chars.next() {
                    cur.push(e);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 12's /etc/memcached.conf (memcached 1.6.18), comments shortened.
    const DEBIAN: &str = "# memcached default config file
# 2003 - Jay Bonci <jaybonci@debian.org>
-d
# Log memcached's output to /var/log/memcached
logfile /var/log/memcached.log
# -v
-m 64
# Default connection port is 11211
-p 11211
-u memcache
-l 127.0.0.1
# -c 1024
# -M
-P /var/run/memcached/memcached.pid
";

    #[test]
    fn debians_file_reads_as_its_flags() {
        let l = parse(Path::new("/etc/memcached.conf"), DEBIAN).expect("parses");
        let c = &l.cli;
        assert_eq!(
            (c.memory_limit, c.port, c.user.as_deref()),
            (Some(64), Some(11211), Some("memcache"))
        );
        assert_eq!(c.listen, vec!["127.0.0.1".to_string()]);
        assert_eq!(
            c.pidfile.as_deref(),
            Some(Path::new("/var/run/memcached/memcached.pid"))
        );
        assert!(!c.daemon, "-d is dropped, as Debian's wrapper does");
        assert!(!c.disable_evictions, "commented out");
        assert_eq!(l.warnings.len(), 1);
        assert!(
            l.warnings[0].contains(":5: `logfile` ignored"),
            "{:?}",
            l.warnings
        );
    }

    #[test]
    fn quoting_comments_and_bad_lines() {
        let l = parse(
            Path::new("m.conf"),
            "  -m 128   # trailing comment\n-l '127.0.0.2,127.0.0.3'\n-o idle_timeout=30\n-M\n",
        )
        .expect("parses");
        assert_eq!(l.cli.memory_limit, Some(128));
        assert_eq!(l.cli.listen, vec!["127.0.0.2", "127.0.0.3"]);
        assert!(l.cli.disable_evictions);
        assert_eq!(l.cli.extended, vec!["idle_timeout=30"]);
        let e = parse(Path::new("m.conf"), "-m 64\n--no-such-flag\n").expect_err("refused");
        assert!(e.to_string().contains("m.conf line 2"), "{e}");
        let e = parse(Path::new("m.conf"), "-m banana\n").expect_err("refused");
        assert!(
            e.to_string().contains("line 1") && e.to_string().contains("banana"),
            "{e}"
        );
        assert!(parse(Path::new("m.conf"), "-l 'open\n").is_err());
        assert_eq!(
            split_words(r#"a "b c" d\ e 'f g'"#).expect("words"),
            vec!["a", "b c", "d e", "f g"]
        );
        assert_eq!(strip_comment(r"-D \#x # c"), r"-D \#x ");
    }
}
