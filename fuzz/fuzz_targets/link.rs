#![no_main]
//! `shoal::fuzzing::link` (see src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal::fuzzing::link(data));
