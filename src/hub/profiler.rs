//! Client profiler (being written).
