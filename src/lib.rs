//! ordo: a replicated order store. Orders live in a Raft log (openraft) and a state machine
//! (sled) on every node; every node serves the HTTP JSON API (axum).
//!
//! Layers, each depending only on the ones above it in this list:
//! - [`order`]: the domain — types, validation, status transitions, commands. No I/O.
//! - [`wire`]: the public JSON of the HTTP API and its error codes (shared with the client).
//! - [`codec`]: bincode bytes for disk and wire, behind a format version byte.
//! - [`telemetry`]: the metrics' names and the Prometheus recorder (recorded from every
//!   layer below through the `metrics` facade).
//! - [`tls`]: rustls configurations from PEM files (node and client sides), reload, and
//!   development certificates.
//! - [`raft`]: the openraft type configuration.
//! - [`store`]: sled log store, order state machine, snapshots (openraft storage traits).
//! - [`rpc`]: the node-to-node protocol — routes, messages, its client, the Raft network, its
//!   router, the cluster clock measured over it.
//! - [`service`]: writes, linearizable reads and membership through Raft, from any node; no
//!   HTTP.
//! - [`api`]: HTTP only — axum routes, the listener, the one error→HTTP mapping.
//! - [`node`]: wiring a node together and serving it.
//! - [`client`]: a Rust client for the HTTP API (on `wire`); [`cli`]: the `ordo` command line.
//!
//! Beside this crate: `testkit/` (the process-cluster fixture and the torture run,
//! `ordo-torture`), `bench/` (the load generator, `ordo-bench`) and `benches/storage.rs`.

/// This build's version: the crate version and the git commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("ORDO_GIT_COMMIT"),
    ")"
);
/// The log filter when `RUST_LOG` is not set. openraft's replication lines are off: they
/// repeat on every retry to an unreachable peer (~100 lines a second); ordo logs a peer going
/// and coming back once each instead, and a snapshot that fails to reach a peer that answers
/// (`rpc::network`). The access log (`ordo::access`) is
/// off; `RUST_LOG=info,ordo::access=info` turns it on.
pub const DEFAULT_LOG_FILTER: &str = "info,openraft=warn,openraft::replication=off,\
     openraft::engine::handler::replication_handler=off,ordo::access=warn";

/// The git commit this binary was built from (`-dirty` with uncommitted changes).
pub const GIT_COMMIT: &str = env!("ORDO_GIT_COMMIT");

pub mod api;
pub mod cli;
pub mod client;
pub mod codec;
pub mod node;
pub mod order;
pub mod raft;
pub mod rpc;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod wire;
