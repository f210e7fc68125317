//! The node-to-node protocol, in one place: the routes under `/raft`, what each carries
//! (`codec` bodies both ways) and what a leader answers, the one client every node-to-node
//! call goes through (`client`), the Raft network on top of it (`network`), the receiving
//! router (`server`, with `election_hold`), the cluster clock measured over it (`clock`), and
//! how a node removed before it heard of it learns so (`removal`).
//!
//! Two kinds of calls share it: openraft's own (append, vote, snapshot chunks) and ordo's
//! leader calls (a forwarded write, a read-index request, a membership change), which a node
//! sends to the leader when it cannot serve a request itself. A leader call answers a
//! `LeaderAnswer` whose error is `RpcError`, this protocol's own type: the service's and the
//! HTTP API's errors can grow without changing what travels between nodes. Everything that
//! arrives here is decoded with a size bound and validated again before it is acted on: a
//! peer's bytes are as untrusted as a client's.

pub mod client;
pub mod clock;
pub mod cluster_id;
pub mod election_hold;
pub mod network;
pub mod removal;
pub mod server;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::order::{validate_idempotency_key, OrderOp, ValidationError};
use crate::raft::NodeId;

/// The route of each call on the receiving node.
/// The id of a client request, made by (or given to) the node it reached and carried on the
/// calls it makes to the leader for it, so one write can be followed through both logs.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    /// The request id of the client request this task serves (`api` sets it per request).
    pub static REQUEST_ID: String;
}

pub const APPEND_PATH: &str = "/raft/append";
pub const VOTE_PATH: &str = "/raft/vote";
pub const SNAPSHOT_PATH: &str = "/raft/snapshot";
pub const WRITE_PATH: &str = "/raft/write";
/// Several forwarded writes in one call (`service::forward`), each answered.
pub const WRITE_BATCH_PATH: &str = "/raft/write-batch";
pub const READ_INDEX_PATH: &str = "/raft/read-index";
pub const MEMBERSHIP_PATH: &str = "/raft/membership";
/// Every route above.
pub const ROUTES: [&str; 7] = [
    APPEND_PATH,
    VOTE_PATH,
    SNAPSHOT_PATH,
    WRITE_PATH,
    WRITE_BATCH_PATH,
    READ_INDEX_PATH,
    MEMBERSHIP_PATH,
];

/// Largest append body: a batch of entries. Senders cut batches at `--max-append-kib` (at most
/// 8 MiB) and proposers keep an entry near 256 KB, so twice the largest budget is room enough.
pub const BODY_LIMIT_APPEND: usize = 16 * 1024 * 1024;
/// Largest snapshot chunk (openraft's chunk size plus the meta).
pub const BODY_LIMIT_SNAPSHOT: usize = 16 * 1024 * 1024;
/// Largest forwarded write: one order operation (~40 KB at the legal maximum).
pub const BODY_LIMIT_WRITE: usize = 1024 * 1024;
/// Most writes in one forwarded batch...
pub const MAX_FORWARD_BATCH: usize = 256;
/// ...and about their most encoded bytes (a lone larger write still goes, alone).
pub const MAX_FORWARD_BATCH_BYTES: usize = 256 * 1024;
/// Largest forwarded batch: one write of the largest size, or a batch up to its byte budget
/// plus its last write.
pub const BODY_LIMIT_WRITE_BATCH: usize = BODY_LIMIT_WRITE + MAX_FORWARD_BATCH_BYTES;
/// What the answer to a forwarded batch may claim when decoded: each write's answer carries
/// at most one order (about 40 KB claimed at the legal maximum), whatever the write's own size
/// (a status change is small, the order it answers need not be).
pub const BATCH_ANSWER_CLAIM_LIMIT: usize = MAX_FORWARD_BATCH * 64 * 1024;
/// Largest vote, read-index or membership request (a few log ids, ids or one address).
pub const BODY_LIMIT_SMALL: usize = 64 * 1024;

/// Request header of every node-to-node call: `ID=HOST:PORT`, the sender's id and the address
/// clients reach it at (which differs from its membership address when it has a peer port).
pub const FROM_HEADER: &str = "x-ordo-from";

/// Where clients reach each node, as the nodes told each other (`FROM_HEADER`): the leader
/// hint must name the leader's client port, not its peer port.
pub struct PeerDirectory {
    own: (NodeId, String),
    header: String,
    client_addrs: std::sync::RwLock<std::collections::HashMap<NodeId, String>>,
}

impl PeerDirectory {
    pub fn new(id: NodeId, client_addr: String) -> PeerDirectory {
        PeerDirectory {
            header: format!("{id}={client_addr}"),
            own: (id, client_addr),
            client_addrs: Default::default(),
        }
    }

    /// What this node sends in `FROM_HEADER`.
    pub fn header(&self) -> &str {
        &self.header
    }

    /// Records a `FROM_HEADER` value (a malformed one is ignored).
    pub fn heard(&self, header: &str) {
        let Some((id, addr)) = header.split_once('=') else {
            return;
        };
        let (Ok(id), Ok(())) = (id.parse::<NodeId>(), check_host_port(addr)) else {
            return;
        };
        let mut addrs = self.client_addrs.write().unwrap_or_else(|p| p.into_inner());
        if addrs.get(&id).map(String::as_str) != Some(addr) {
            addrs.insert(id, addr.to_string());
        }
    }

    /// Where clients reach node `id`, if it has said so.
    pub fn client_addr(&self, id: NodeId) -> Option<String> {
        if id == self.own.0 {
            return Some(self.own.1.clone());
        }
        self.client_addrs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }
}

/// A write as a follower forwards it: not yet stamped, the leader stamps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRequest {
    pub op: OrderOp,
    pub idempotency_key: Option<String>,
}

impl WriteRequest {
    pub fn approx_encoded_len(&self) -> usize {
        self.op.approx_encoded_len() + self.idempotency_key.as_ref().map_or(0, String::len)
    }

    /// The checks a client's request passed on the node it reached, made again: every node
    /// that proposes a write checks it itself.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.op.validate()?;
        if let Some(key) = &self.idempotency_key {
            if matches!(self.op, crate::order::OrderOp::Admin(_)) {
                return Err(ValidationError::new(
                    "Idempotency-Key",
                    "changes to users take no idempotency key",
                ));
            }
            validate_idempotency_key(key)?;
        }
        Ok(())
    }
}

/// A membership change as a node forwards it to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add (or update) a non-voting member and wait until it has caught up.
    AddLearner { id: NodeId, addr: String },
    /// Make exactly these nodes the voters.
    SetVoters(BTreeSet<NodeId>),
    /// Take a learner out of the membership (last: a node of an older build refuses it as
    /// undecodable rather than reading it as another change).
    RemoveLearner { id: NodeId },
}

/// The longest `HOST:PORT` accepted: a 253-character DNS name, a colon and a port.
pub const MAX_ADDR_LEN: usize = 253 + 6;

/// The most voters a membership change may name. Raft clusters have a handful; the bound
/// keeps the change inside what a node-to-node call carries (`BODY_LIMIT_SMALL`), so a
/// follower refuses a longer list as the leader would instead of failing to forward it.
pub const MAX_VOTERS: usize = 100;

/// Checks that `addr` is `HOST:PORT` as nodes address each other: a DNS name, an IPv4
/// address or a bracketed IPv6 address, and a port from 1 to 65535. Names are resolved only
/// when a connection is made (and again for every new connection), so a peer whose address
/// changes, a restarted container say, is found again.
pub fn check_host_port(addr: &str) -> Result<(), String> {
    // A DNS name is at most 253 characters, a bracketed IPv6 address with a zone less: a
    // longer address is not one, and would travel in every membership entry and status.
    if addr.len() > MAX_ADDR_LEN {
        return Err(format!(
            "an address is at most {MAX_ADDR_LEN} characters (HOST:PORT), this one has {}",
            addr.len()
        ));
    }
    let url = reqwest::Url::parse(&format!("http://{addr}/"))
        .map_err(|e| format!("{addr:?} is not HOST:PORT ({e})"))?;
    let whole = url.host_str().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    match url.port() {
        Some(port) if whole && port > 0 => Ok(()),
        // The URL parser drops a scheme-default port (80): take it from the text.
        None if whole && addr.ends_with(":80") => Ok(()),
        _ => Err(format!(
            "{addr:?} is not HOST:PORT (a host name, IPv4 or [IPv6] address, and a port)"
        )),
    }
}

impl MembershipChange {
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            MembershipChange::AddLearner { id, addr } => {
                if *id == 0 {
                    // `ordo serve --id 0` is refused: no node could answer for it.
                    return Err(ValidationError::new("id", "must be 1 or more"));
                }
                check_host_port(addr).map_err(|why| ValidationError::new("addr", why))?;
            }
            MembershipChange::RemoveLearner { .. } => {}
            MembershipChange::SetVoters(ids) => {
                if ids.is_empty() {
                    return Err(ValidationError::new(
                        "members",
                        "must name at least one voter",
                    ));
                }
                if ids.len() > MAX_VOTERS {
                    return Err(ValidationError::new(
                        "members",
                        format!("names {} voters; at most {MAX_VOTERS}", ids.len()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What a leader call answers. `E` is `RpcError` on the wire; the service uses the same shape
/// with its own error inside one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaderAnswer<T, E = RpcError> {
    Done(T),
    /// This node is not the leader (any more); here is who it thinks is.
    NotLeader(Option<NodeId>),
    /// This node lost the lead after proposing the write, which carries an idempotency key:
    /// it may still be committed, and a retry with the key is safe.
    Deposed(Option<NodeId>),
    Failed(E),
}

impl<T, E> LeaderAnswer<T, E> {
    pub fn map_err<F>(self, f: impl FnOnce(E) -> F) -> LeaderAnswer<T, F> {
        match self {
            LeaderAnswer::Done(t) => LeaderAnswer::Done(t),
            LeaderAnswer::NotLeader(l) => LeaderAnswer::NotLeader(l),
            LeaderAnswer::Deposed(l) => LeaderAnswer::Deposed(l),
            LeaderAnswer::Failed(e) => LeaderAnswer::Failed(f(e)),
        }
    }
}

/// Why a leader call failed, as it travels between nodes. Part of the protocol: change it
/// only together with the codec's format version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RpcError {
    #[error("no leader is known")]
    NoLeader,
    #[error("the leader has no quorum")]
    NoQuorum,
    #[error("{0}")]
    Unavailable(String),
    /// A write was proposed and its fate is unknown.
    #[error("{0}")]
    OutcomeUnknown(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Internal(String),
    /// The request failed the receiving node's own validation. (Last: the variants above
    /// encode as the error that travelled before this type existed.)
    #[error("{0}")]
    Invalid(ValidationError),
    /// The receiving node's log or state store failed (disk full, I/O error): it serves no
    /// writes or linearizable reads until restarted.
    #[error("{0}")]
    StorageFailed(String),
}

#[cfg(test)]
mod tests {
    use super::check_host_port;

    #[test]
    fn addresses_are_host_port_with_names_or_ip_addresses() {
        for ok in [
            "127.0.0.1:7000",
            "localhost:7000",
            "node1:7001",
            "ordo-1.ordo.svc.cluster.local:7000",
            "[::1]:7000",
            "example.com:80",
            &format!("{}:7000", "a".repeat(253)),
        ] {
            assert!(check_host_port(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "localhost",
            "localhost:",
            ":7000",
            "localhost:0",
            "localhost:70000",
            "user@host:7000",
            "host:7000/path",
            "http://host:7000",
            "::1:7000",
            "not an address",
            // Longer than any DNS name: a follower could not forward it to the leader.
            &format!("{}:7000", "a".repeat(100_000)),
        ] {
            assert!(check_host_port(bad).is_err(), "{bad:?} accepted");
        }
    }
}
