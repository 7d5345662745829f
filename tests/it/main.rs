//! Integration tests: real QUIC over loopback. One binary so the suite links once.

mod admin;
mod admin_auth;
mod bad_input;
mod bench;
mod cli;
mod cli_input;
mod common;
mod config_env;
mod config_example;
mod core_path;
mod fuzz_corpus;
mod guard;
mod lb;
mod live_failover;
mod metrics_families;
mod mirror;
mod mirror_faults;
mod operator;
mod pool;
mod priority;
mod profiles;
mod prometheus;
mod remote;
mod seq_limits;
mod wire_strict;
mod zero_rtt;
