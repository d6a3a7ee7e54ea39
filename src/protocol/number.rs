//! Number tokens exactly as memcached's `safe_strto*` helpers accept them.
//!
//! Tokens never contain spaces (the tokenizer splits on them), so "followed by
//! whitespace or end" reduces to "the whole token is the number".

/// `safe_strtoull`: optional sign, digits, no overflow; a '-' whose result
/// would look negative as i64 is rejected (so "-1" fails but "-0" passes).
pub fn strtoull(tok: &[u8]) -> Option<u64> {
    let (neg, digits) = sign(tok);
    let n = digits_u64(digits)?;
    if neg {
        let r = n.wrapping_neg();
        return if (r as i64) < 0 { None } else { Some(r) };
    }
    Some(n)
}

/// `safe_strtoul` into a `uint32_t` (client flags): parsed as 64-bit, then truncated.
pub fn strtoul_u32(tok: &[u8]) -> Option<u32> {
    strtoull(tok).map(|n| n as u32)
}

/// `safe_strtol` into a 32-bit int (exptime, value length, delays).
pub fn strtol_i32(tok: &[u8]) -> Option<i32> {
    let (neg, digits) = sign(tok);
    let n = digits_u64(digits)?;
    let v: i64 = if neg {
        -(i64::try_from(n).ok()?)
    } else {
        i64::try_from(n).ok()?
    };
    i32::try_from(v).ok()
}

/// A plain decimal u32 with no sign (meta flag tokens such as `F`).
pub fn plain_u32(tok: &[u8]) -> Option<u32> {
    u32::try_from(digits_u64(tok)?).ok()
}

fn sign(tok: &[u8]) -> (bool, &[u8]) {
    match tok.first() {
        Some(b'-') => (true, &tok[1..]),
        Some(b'+') => (false, &tok[1..]),
        _ => (false, tok),
    }
}

fn digits_u64(d: &[u8]) -> Option<u64> {
    if d.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &c in d {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memcached_number_rules() {
        assert_eq!(strtoull(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(strtoull(b"18446744073709551616"), None);
        assert_eq!(strtoull(b"-1"), None);
        assert_eq!(strtoull(b"-0"), Some(0));
        assert_eq!(strtoull(b"+7"), Some(7));
        assert_eq!(strtoull(b""), None);
        assert_eq!(strtoull(b"1x"), None);
        assert_eq!(strtoul_u32(b"4294967296"), Some(0));
        assert_eq!(strtoul_u32(b"-1"), None);
        assert_eq!(strtol_i32(b"-1"), Some(-1));
        assert_eq!(strtol_i32(b"2147483648"), None);
        assert_eq!(strtol_i32(b"abc"), None);
    }
}
