//! Numbers stored in values, as `incr`/`decr` see them.
//!
//! memcached parses the stored value with `strtoull` and accepts it when the
//! number is followed by whitespace or the end of the value; a result that
//! fits in fewer digits is written back space-padded to the old length.

/// Parse a stored value as memcached's `safe_strtoull` does on item data.
pub fn parse_stored(value: &[u8]) -> Option<u64> {
    let mut i = 0;
    while i < value.len() && is_c_space(value[i]) {
        i += 1;
    }
    let mut negative = false;
    if i < value.len() && (value[i] == b'+' || value[i] == b'-') {
        negative = value[i] == b'-';
        i += 1;
    }
    let start = i;
    let mut n: u64 = 0;
    while i < value.len() && value[i].is_ascii_digit() {
        n = n.checked_mul(10)?.checked_add(u64::from(value[i] - b'0'))?;
        i += 1;
    }
    if i == start {
        return None;
    }
    if i < value.len() && !is_c_space(value[i]) && value[i] != 0 {
        return None;
    }
    if negative {
        // strtoull negates; safe_strtoull rejects a '-' whose result looks negative.
        let r = n.wrapping_neg();
        if (r as i64) < 0 {
            return None;
        }
        return Some(r);
    }
    Some(n)
}

fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Apply a delta: `incr` wraps modulo 2^64, `decr` saturates at 0.
pub fn apply_delta(old: u64, delta: u64, incr: bool) -> u64 {
    if incr {
        old.wrapping_add(delta)
    } else {
        old.saturating_sub(delta)
    }
}

/// The bytes to store for a new number: space-padded to the old length when shorter.
pub fn render(n: u64, old_len: usize) -> Vec<u8> {
    let mut buf = itoa::Buffer::new();
    let s = buf.format(n).as_bytes();
    let mut out = Vec::with_capacity(old_len.max(s.len()));
    out.extend_from_slice(s);
    if s.len() < old_len {
        out.resize(old_len, b' ');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_numbers() {
        assert_eq!(parse_stored(b"123"), Some(123));
        assert_eq!(parse_stored(b"99 "), Some(99));
        assert_eq!(parse_stored(b"+5"), Some(5));
        assert_eq!(parse_stored(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_stored(b"18446744073709551616"), None);
        assert_eq!(parse_stored(b""), None);
        assert_eq!(parse_stored(b"1x"), None);
        assert_eq!(parse_stored(b"x"), None);
        assert_eq!(parse_stored(b"-1"), None);
        // strtoull leniency that meta `ma` clients rely on (memcached 1.6.18).
        assert_eq!(parse_stored(b" 1"), Some(1));
        assert_eq!(parse_stored(b"1 "), Some(1));
        assert_eq!(parse_stored(b"+1"), Some(1));
        assert_eq!(parse_stored(b"  "), None);
    }

    #[test]
    fn deltas_wrap_and_saturate() {
        assert_eq!(apply_delta(u64::MAX, 1, true), 0);
        assert_eq!(apply_delta(3, 10, false), 0);
        assert_eq!(render(99, 3), b"99 ".to_vec());
        assert_eq!(render(10, 1), b"10".to_vec());
    }
}
