//! FNV-1a, the one stable hash of the crate (64 and 128 bits): the same bytes hash to the
//! same value on every build, platform and release (unlike `DefaultHasher`), so a hash kept
//! on disk (the anchor index's representation hash, the member store's file names) still
//! matches after an upgrade. Not for anything an attacker must not collide.

const OFFSET_64: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME_64: u64 = 0x0000_0100_0000_01b3;
const OFFSET_128: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
const PRIME_128: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

/// FNV-1a 64 as an `io::Write` sink: a serializer can write straight into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv64(pub u64);

impl Default for Fnv64 {
    fn default() -> Fnv64 {
        Fnv64(OFFSET_64)
    }
}

impl std::io::Write for Fnv64 {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(PRIME_64);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// FNV-1a 64 of `data`.
pub fn hash64(data: &[u8]) -> u64 {
    data.iter()
        .fold(OFFSET_64, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME_64))
}

/// FNV-1a 128 of `data`.
pub fn hash128(data: &[u8]) -> u128 {
    data.iter().fold(OFFSET_128, |h, &b| {
        (h ^ u128::from(b)).wrapping_mul(PRIME_128)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn known_answers() {
        // The published FNV-1a test vectors.
        assert_eq!(hash64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(hash128(b""), 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d);
        assert_eq!(hash128(b"a"), 0xd228_cb69_6f1a_8caf_7891_2b70_4e4a_8964);
    }

    #[test]
    fn the_sink_equals_the_function_however_the_bytes_arrive() {
        let mut h = Fnv64::default();
        h.write_all(b"foo").unwrap();
        h.write_all(b"bar").unwrap();
        assert_eq!(h.0, hash64(b"foobar"));
    }
}
