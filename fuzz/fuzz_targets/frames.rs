#![no_main]
//! `shoal::fuzzing::frames` (see src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal::fuzzing::frames(data));
