//! Fuzz mapping-profile override TOML applied to each default profile.
//! The checks live in `fuzz/harness.rs`, shared with the proptest stand-in
//! (`tests/fuzz_standin.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    harness::profile(data);
});
