//! ordo: a replicated order store. Orders live in a Raft log (openraft) and a state machine
//! (sled) on every node; every node serves the HTTP JSON API (axum).
//!
//! Layers, each depending only on the ones above it in this list:
//! - [`order`]: the domain — types, validation, status transitions, commands. No I/O.
//! - [`wire`]: the public JSON of the HTTP API and its error codes (shared with the client).
//! - [`codec`]: bincode bytes for disk and wire, behind a format version byte.
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
pub mod tls;
pub mod wire;
