//! Benchmarks that print figures: `storage` measures the sled store alone.

pub mod storage;
