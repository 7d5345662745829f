#![no_main]
//! `shoal::fuzzing::token` (see src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal::fuzzing::token(data));
