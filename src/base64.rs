//! Standard base64 (RFC 4648 §4: alphabet `A-Z a-z 0-9 + /`, `=` padding), encode and decode.
//!
//! Owns the one base64 codec of the agent. Its main use is the Active Directory anchor:
//! Entra's `immutableId` convention is the base64 of the 16 raw bytes of
//! `mS-DS-ConsistencyGuid` / `objectGUID`, so the SCIM `externalId` must match other tools
//! bit for bit.
//!
//! Invariants and limits:
//! * [`encode`] always pads to a multiple of 4 characters.
//! * [`decode`] is strict, so that `decode` and `encode` are inverse bijections: the input
//!   length must be a multiple of 4, padding (`=`) may appear only as the last one or two
//!   characters, whitespace and line breaks are rejected (callers trim), and the unused low
//!   bits of the last symbol must be zero (RFC 4648 §3.5 allows a decoder to reject them).
//! * No allocation beyond the output; no panics on any input.

use std::fmt;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Why a base64 text could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Base64Error {
    /// The input length is not a multiple of 4.
    Length {
        /// The length of the input, in bytes.
        len: usize,
    },
    /// A byte that is not in the standard alphabet (nor a well-placed `=`).
    Symbol {
        /// Offset of the byte in the input.
        offset: usize,
        /// The offending byte.
        byte: u8,
    },
    /// Padding in the wrong place, or non-zero bits under the padding.
    Padding {
        /// Offset of the first character of the bad final group.
        offset: usize,
    },
}

impl fmt::Display for Base64Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Base64Error::Length { len } => {
                write!(f, "base64 length {len} is not a multiple of 4")
            }
            Base64Error::Symbol { offset, byte } => {
                write!(f, "byte 0x{byte:02x} at offset {offset} is not base64")
            }
            Base64Error::Padding { offset } => {
                write!(f, "bad base64 padding in the group at offset {offset}")
            }
        }
    }
}

impl std::error::Error for Base64Error {}

/// Encodes `data` as padded standard base64.
pub fn encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    let mut chunks = data.chunks_exact(3);
    for c in &mut chunks {
        let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        for shift in [18, 12, 6, 0] {
            out.push(symbol(n >> shift));
        }
    }
    match *chunks.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out.push(symbol(n >> 18));
            out.push(symbol(n >> 12));
            out.push_str("==");
        }
        [a, b] => {
            let n = (u32::from(a) << 16) | (u32::from(b) << 8);
            out.push(symbol(n >> 18));
            out.push(symbol(n >> 12));
            out.push(symbol(n >> 6));
            out.push('=');
        }
        _ => {}
    }
    out
}

fn symbol(six: u32) -> char {
    char::from(ALPHABET[(six & 0x3f) as usize])
}

fn value(byte: u8) -> Option<u32> {
    let v = match byte {
        b'A'..=b'Z' => byte - b'A',
        b'a'..=b'z' => byte - b'a' + 26,
        b'0'..=b'9' => byte - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Decodes padded standard base64 (strict; see the module doc).
pub fn decode(text: &str) -> Result<Vec<u8>, Base64Error> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return Err(Base64Error::Length { len: bytes.len() });
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let groups = bytes.len() / 4;
    for (g, group) in bytes.chunks_exact(4).enumerate() {
        let start = g * 4;
        let last = g + 1 == groups;
        let pad = if last {
            group.iter().rev().take_while(|&&b| b == b'=').count()
        } else {
            0
        };
        if pad > 2 {
            return Err(Base64Error::Padding { offset: start });
        }
        let mut n = 0u32;
        for (i, &b) in group[..4 - pad].iter().enumerate() {
            let v = value(b).ok_or(Base64Error::Symbol {
                offset: start + i,
                byte: b,
            })?;
            n |= v << (18 - 6 * i);
        }
        match pad {
            0 => out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]),
            1 => {
                if n & 0xff != 0 {
                    return Err(Base64Error::Padding { offset: start });
                }
                out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8]);
            }
            _ => {
                if n & 0xffff != 0 {
                    return Err(Base64Error::Padding { offset: start });
                }
                out.push((n >> 16) as u8);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{decode, encode, Base64Error};
    use proptest::prelude::*;

    /// RFC 4648 §10 test vectors.
    const RFC4648: &[(&str, &str)] = &[
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];

    #[test]
    fn rfc4648_vectors_encode() {
        for (plain, coded) in RFC4648 {
            assert_eq!(encode(plain.as_bytes()), *coded, "encode({plain:?})");
        }
    }

    #[test]
    fn rfc4648_vectors_decode() {
        for (plain, coded) in RFC4648 {
            assert_eq!(
                decode(coded).unwrap(),
                plain.as_bytes(),
                "decode({coded:?})"
            );
        }
    }

    #[test]
    fn uses_plus_and_slash_not_url_alphabet() {
        assert_eq!(encode(&[0xfb, 0xff, 0xbf]), "+/+/");
        assert_eq!(decode("+/+/").unwrap(), vec![0xfb, 0xff, 0xbf]);
        assert!(matches!(
            decode("-_-_"),
            Err(Base64Error::Symbol {
                offset: 0,
                byte: b'-'
            })
        ));
    }

    #[test]
    fn object_guid_from_samba() {
        // objectGUID of a Samba AD Administrator, as ldapsearch prints it (`::`).
        let raw = decode("4yaF1mOfqUOOLknr7MjvDA==").unwrap();
        assert_eq!(raw.len(), 16);
        assert_eq!(encode(&raw), "4yaF1mOfqUOOLknr7MjvDA==");
    }

    #[test]
    fn rejects_bad_length() {
        assert_eq!(decode("Zg="), Err(Base64Error::Length { len: 3 }));
        assert_eq!(decode("Zg"), Err(Base64Error::Length { len: 2 }));
    }

    #[test]
    fn rejects_padding_in_the_middle_or_too_much() {
        assert_eq!(
            decode("Zg==Zg=="),
            Err(Base64Error::Symbol {
                offset: 2,
                byte: b'='
            })
        );
        assert_eq!(decode("Z==="), Err(Base64Error::Padding { offset: 0 }));
        assert_eq!(decode("===="), Err(Base64Error::Padding { offset: 0 }));
        assert!(matches!(
            decode("Z=g="),
            Err(Base64Error::Symbol { offset: 1, .. })
        ));
    }

    #[test]
    fn rejects_non_canonical_trailing_bits() {
        // "Zh==" would decode to "f" with stray bits set.
        assert_eq!(decode("Zh=="), Err(Base64Error::Padding { offset: 0 }));
        assert_eq!(decode("Zm9="), Err(Base64Error::Padding { offset: 0 }));
    }

    #[test]
    fn rejects_whitespace() {
        assert!(matches!(
            decode("Zm9v\nYmFy"),
            Err(Base64Error::Length { .. })
        ));
        assert!(matches!(
            decode("Zm 9"),
            Err(Base64Error::Symbol {
                offset: 2,
                byte: b' '
            })
        ));
    }

    proptest! {
        #[test]
        fn roundtrip(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let text = encode(&data);
            prop_assert_eq!(text.len() % 4, 0);
            prop_assert_eq!(decode(&text).unwrap(), data);
        }

        #[test]
        fn decode_never_panics_and_accepts_only_canonical(text in "[A-Za-z0-9+/=\\- ]{0,40}") {
            if let Ok(data) = decode(&text) {
                prop_assert_eq!(encode(&data), text);
            }
        }
    }
}
