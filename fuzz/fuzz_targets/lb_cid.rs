#![no_main]
//! `shoal::fuzzing::lb_cid` (see src/fuzzing.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal::fuzzing::lb_cid(data));
