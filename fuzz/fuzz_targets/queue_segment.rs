//! Fuzz the change queue's segment scan and record decoder (framing, checksums, inflate
//! with its size limit): no input may panic, and a record that decodes must re-frame to the
//! same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    idrelay::queue::fuzzing::segment_and_record(data);
});
