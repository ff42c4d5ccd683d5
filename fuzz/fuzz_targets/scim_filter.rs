//! Fuzz SCIM filter text: parse, print, re-parse, translate to LDAP against the default maps.
//! The checks live in `fuzz/harness.rs`, shared with the proptest stand-in
//! (`tests/fuzz_standin.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    harness::scim_filter(data);
});
