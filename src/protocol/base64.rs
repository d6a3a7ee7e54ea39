//! Base64 for meta-protocol binary keys (`b` flag), matching memcached's codec.
//!
//! Why not a general-purpose base64 crate: memcached's decoder (the hostap one)
//! is lenient in ways clients can observe, and memtwin must accept and reject
//! exactly the same keys. It skips bytes outside the alphabet, needs a multiple
//! of four alphabet characters, stops after the first block that carries `=`
//! padding (ignoring the rest), and fails on three or more `=` in a block.
//! Encoding is plain RFC 4648 with padding.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Marker for bytes outside the alphabet in the decode table.
const SKIP: u8 = 0x80;

const fn decode_table() -> [u8; 256] {
    let mut t = [SKIP; 256];
    let mut i = 0;
    while i < 64 {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t[b'=' as usize] = 0;
    t
}

static DECODE: [u8; 256] = decode_table();

/// Append the base64 encoding of `src` to `out`.
pub fn encode_into(src: &[u8], out: &mut Vec<u8>) {
    out.reserve(src.len().div_ceil(3) * 4);
    for chunk in src.chunks(3) {
        let b0 = chunk[0];
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        out.push(ALPHABET[usize::from(b0 >> 2)]);
        out.push(ALPHABET[usize::from(((b0 & 0x03) << 4) | (b1 >> 4))]);
        out.push(if chunk.len() > 1 {
            ALPHABET[usize::from(((b1 & 0x0f) << 2) | (b2 >> 6))]
        } else {
            b'='
        });
        out.push(if chunk.len() > 2 {
            ALPHABET[usize::from(b2 & 0x3f)]
        } else {
            b'='
        });
    }
}

/// The base64 encoding of `src`.
pub fn encode(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(src, &mut out);
    out
}

/// Decode as memcached does; `None` where memcached's decoder returns 0 (failure).
pub fn decode(src: &[u8]) -> Option<Vec<u8>> {
    let count = src
        .iter()
        .filter(|&&c| DECODE[usize::from(c)] != SKIP)
        .count();
    if count == 0 || count % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(count / 4 * 3);
    let mut block = [0u8; 4];
    let mut n = 0;
    let mut pad = 0;
    for &c in src {
        let v = DECODE[usize::from(c)];
        if v == SKIP {
            continue;
        }
        if c == b'=' {
            pad += 1;
        }
        block[n] = v;
        n += 1;
        if n == 4 {
            out.push((block[0] << 2) | (block[1] >> 4));
            out.push((block[1] << 4) | (block[2] >> 2));
            out.push((block[2] << 6) | block[3]);
            n = 0;
            if pad > 0 {
                match pad {
                    1 => out.truncate(out.len() - 1),
                    2 => out.truncate(out.len() - 2),
                    _ => return None,
                }
                break;
            }
        }
    }
    if out.is_empty() {
        None
    } else {
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn memcached_decoder_quirks() {
        assert_eq!(decode(b"aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(decode(b"aGk="), Some(b"hi".to_vec()));
        // Bytes outside the alphabet are skipped, not rejected.
        assert_eq!(decode(b"aG*Vs"), Some(b"hel".to_vec()));
        assert_eq!(decode(b"a\x80Gk="), Some(b"hi".to_vec()));
        // Decoding stops after the first padded block.
        assert_eq!(decode(b"aGk=aGk="), Some(b"hi".to_vec()));
        assert_eq!(decode(b"a=bc"), Some(vec![b'h', 0x06]));
        // Failures (memcached returns 0).
        for bad in [
            &b"!!!!"[..],
            b"aGVsbG8",
            b"aGVsbG8===",
            b"aGVs*G8=",
            b"A===",
            b"====",
            b"",
        ] {
            assert_eq!(decode(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn encoding() {
        assert_eq!(encode(b""), b"".to_vec());
        assert_eq!(encode(b"h"), b"aA==".to_vec());
        assert_eq!(encode(b"hi"), b"aGk=".to_vec());
        assert_eq!(encode(b"hel"), b"aGVs".to_vec());
        assert_eq!(encode(b"hello"), b"aGVsbG8=".to_vec());
    }

    proptest! {
        #[test]
        fn roundtrip(data in proptest::collection::vec(any::<u8>(), 1..300)) {
            prop_assert_eq!(decode(&encode(&data)), Some(data));
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&data);
        }
    }
}
