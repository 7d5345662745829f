//! The tools around the service (feature `tools`): the demo, the traffic shapes it drives,
//! the load generator and the benchmarks against raw quinn.

pub mod bench;
pub mod demo;
pub mod loadgen;
pub mod netlab;
pub mod traffic;
