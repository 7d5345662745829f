//! Integration tests: real QUIC over loopback. One binary so the suite links once.

mod admin;
mod bad_input;
mod bench;
mod cli;
mod cli_input;
mod common;
mod core_path;
mod fuzz_corpus;
mod guard;
mod lb;
mod live_failover;
mod mirror;
mod mirror_faults;
mod pool;
mod priority;
mod profiles;
mod remote;
mod seq_limits;
mod wire_strict;
mod zero_rtt;
