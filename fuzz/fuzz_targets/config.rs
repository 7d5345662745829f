#![no_main]
//! `shoal::fuzzing::config` (see src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal::fuzzing::config(data));
