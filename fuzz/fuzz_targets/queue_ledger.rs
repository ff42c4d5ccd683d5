//! Fuzz the change queue's ledger decoder: no input may panic, and a ledger that decodes
//! must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    idrelay::queue::fuzzing::ledger(data);
});
