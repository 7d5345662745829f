#![no_main]
//! `shoal::fuzzing::control` (see src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal::fuzzing::control(data));
