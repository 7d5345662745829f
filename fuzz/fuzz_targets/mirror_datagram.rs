#![no_main]
//! `shoal::fuzzing::mirror_datagram` (see src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal::fuzzing::mirror_datagram(data));
