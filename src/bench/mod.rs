//! Benchmarks that print figures: `load` drives a running cluster (ordo or etcd) over HTTP,
//! `storage` measures the sled store alone.

pub mod load;
pub mod storage;
