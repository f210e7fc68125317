//! The sending side of Raft RPCs: HTTP POSTs with `codec` bodies to a peer's `/raft/*` routes.
//!
//! Calls go through the node's one `RpcClient`. A refused connection is reported as
//! `Unreachable`, which makes openraft back off from a dead peer instead of hammering it, for
//! `unreachable_retry` between attempts (half the shortest election timeout): openraft's default
//! of 500 ms was longer than a restarted peer waited before it campaigned itself with the
//! timings of the time, and the peer deposed a healthy leader with a stale log.
//!
//! Appends are bounded in bytes, not only in entries: openraft 0.9 gives every AppendEntries
//! (heartbeats included) a timeout of one heartbeat interval, so a lagging follower sent
//! hundreds of large entries at once times out on every try and never catches up. A batch
//! whose encoding passes `max_append_bytes` is refused here with `PayloadTooLarge` and a hint
//! of how many entries fit, which makes openraft send smaller batches; so is a batch the peer
//! answers 413 to. One entry is always sent, however large.
//!
//! The budget adapts to the peer (`AppendBudget`): a fixed one still livelocked a lagging
//! follower on a loaded machine, where decoding, writing and fsyncing 1 MiB of large orders
//! takes longer than the heartbeat, so every retry of the same batch timed out again (a
//! minute-long catch-up in the real-sizes torture run). An append with entries that gets no
//! answer within its deadline halves the budget for that peer, down to `MIN_APPEND_BUDGET`;
//! an answered one that used at least half of the budget grows it by a quarter. The budget is
//! kept per peer across replication streams, which openraft makes anew at every election.
//!
//! A peer that stops answering is logged once when it goes (WARN, with the cause) and once
//! when it answers again (INFO, with how long it was gone), not on every retry: openraft's
//! own line per failed heartbeat is filtered out by default (see `main`). `PeerHealth` keeps
//! that state, and the `ordo_peer_unreachable` gauge.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::client::{CallError, RpcClient};
use super::clock::{wall_clock_ms, PeerClocks};
use super::removal::RemovalNotices;
use super::{APPEND_PATH, SNAPSHOT_PATH, VOTE_PATH};
use crate::codec;
use crate::raft::{NodeId, TypeConfig};
use crate::telemetry;

/// Builds one `PeerClient` per target; cheap, the connection pool is shared.
#[derive(Clone)]
pub struct PeerNetwork {
    client: RpcClient,
    unreachable_retry: Duration,
    max_append_bytes: usize,
    clocks: Arc<PeerClocks>,
    health: Arc<PeerHealth>,
    removal: Arc<RemovalNotices>,
    budgets: Arc<std::sync::Mutex<std::collections::HashMap<NodeId, Arc<AppendBudget>>>>,
}

/// A peer counts as unreachable once its calls have failed for this long without one
/// answered: a heartbeat that times out on a busy machine is not an outage.
const UNREACHABLE_AFTER: Duration = Duration::from_secs(1);

/// Which peers are failing, since when, and whether that was said.
#[derive(Default)]
struct PeerHealth {
    failing: std::sync::Mutex<std::collections::HashMap<NodeId, (std::time::Instant, bool)>>,
}

impl PeerHealth {
    fn answered(&self, peer: NodeId, addr: &str) {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((since, said)) = failing.remove(&peer) {
            if said {
                metrics::gauge!(telemetry::PEER_UNREACHABLE, "peer" => peer.to_string()).set(0.0);
                tracing::info!(
                    peer,
                    addr,
                    down_for_ms = since.elapsed().as_millis() as u64,
                    "peer reachable again"
                );
            }
        }
    }

    fn failed(&self, peer: NodeId, addr: &str, cause: &dyn std::fmt::Display) {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        let (since, said) = failing
            .entry(peer)
            .or_insert((std::time::Instant::now(), false));
        if !*said && since.elapsed() >= UNREACHABLE_AFTER {
            *said = true;
            metrics::gauge!(telemetry::PEER_UNREACHABLE, "peer" => peer.to_string()).set(1.0);
            tracing::warn!(
                peer,
                addr,
                %cause,
                failing_for_ms = since.elapsed().as_millis() as u64,
                "peer unreachable (logged again when it answers)"
            );
        }
    }

    /// Whether the peer's calls are failing for a while now (said as unreachable).
    fn is_down(&self, peer: NodeId) -> bool {
        let failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        failing.get(&peer).is_some_and(|(_, said)| *said)
    }
}

/// The default byte budget of one AppendEntries body: small enough that a follower decodes,
/// writes and fsyncs it well inside one heartbeat interval on a slow disk.
pub const DEFAULT_MAX_APPEND_BYTES: usize = 1024 * 1024;

impl PeerNetwork {
    /// `unreachable_retry`: the pause before trying an unreachable peer again; keep it well
    /// under the election timeout, so a peer that comes back hears from the leader before it
    /// would start an election of its own.
    /// `max_append_bytes`: the encoded size past which an append batch is cut (see above).
    pub fn new(client: RpcClient, unreachable_retry: Duration, max_append_bytes: usize) -> Self {
        PeerNetwork {
            client,
            unreachable_retry,
            max_append_bytes,
            clocks: Arc::default(),
            health: Arc::default(),
            removal: Arc::default(),
            budgets: Arc::default(),
        }
    }

    /// The peers' clock offsets, as measured on every answered append.
    pub fn clocks(&self) -> Arc<PeerClocks> {
        self.clocks.clone()
    }

    /// Peers' answers that this node is not in their membership (`removal`).
    pub fn removal_notices(&self) -> Arc<RemovalNotices> {
        self.removal.clone()
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            client: self.client.clone(),
            target,
            addr: node.addr.clone(),
            unreachable_retry: self.unreachable_retry,
            append_budget: self
                .budgets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(target)
                .or_insert_with(|| Arc::new(AppendBudget::new(self.max_append_bytes)))
                .clone(),
            clocks: self.clocks.clone(),
            health: self.health.clone(),
            removal: self.removal.clone(),
        }
    }
}

/// The smallest byte budget an append to a peer shrinks to (one entry is sent whatever it is).
const MIN_APPEND_BUDGET: usize = 64 * 1024;

/// The byte budget of appends to one peer: the configured maximum while appends are answered
/// in time, smaller after appends with entries time out (see the module header).
struct AppendBudget {
    max: usize,
    current: std::sync::atomic::AtomicUsize,
}

impl AppendBudget {
    fn new(max: usize) -> Self {
        AppendBudget {
            max,
            current: std::sync::atomic::AtomicUsize::new(max),
        }
    }

    fn get(&self) -> usize {
        self.current.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An append of `bytes` got no answer in time: the next ones get at most half of it.
    fn timed_out(&self, bytes: usize) {
        let shrunk = (bytes / 2).max(MIN_APPEND_BUDGET.min(self.max));
        let before = self
            .current
            .fetch_min(shrunk, std::sync::atomic::Ordering::Relaxed);
        if shrunk < before {
            tracing::debug!(
                bytes,
                budget = shrunk,
                "append timed out; smaller batches for a while"
            );
        }
    }

    /// An append of `bytes` was answered in time: if it used most of the budget, allow more.
    fn answered(&self, bytes: usize) {
        let current = self.get();
        if bytes >= current / 2 {
            let grown = (current + (current / 4).max(MIN_APPEND_BUDGET)).min(self.max);
            self.current
                .fetch_max(grown, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Marks an append in flight; dropped unanswered (openraft's timeout drops the call's future),
/// it shrinks the peer's budget.
struct AppendInFlight<'a> {
    budget: &'a AppendBudget,
    bytes: usize,
    settled: bool,
}

impl AppendInFlight<'_> {
    /// How the call ended: answered (`Some(true)`), sent but not answered in time
    /// (`Some(false)`), or neither, such as a refused connection (`None`).
    fn settle(mut self, answered: Option<bool>) {
        self.settled = true;
        match answered {
            Some(true) => self.budget.answered(self.bytes),
            Some(false) => self.budget.timed_out(self.bytes),
            None => {}
        }
    }
}

impl Drop for AppendInFlight<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.budget.timed_out(self.bytes);
        }
    }
}

/// Sends Raft RPCs to one peer.
pub struct PeerClient {
    client: RpcClient,
    target: NodeId,
    addr: String,
    unreachable_retry: Duration,
    append_budget: Arc<AppendBudget>,
    clocks: Arc<PeerClocks>,
    health: Arc<PeerHealth>,
    removal: Arc<RemovalNotices>,
}

/// How many of `entries` entries to send instead of a batch of `bytes` encoded bytes, to stay
/// under `budget`: proportional, with a margin, and never less than one.
fn entries_that_fit(entries: usize, bytes: usize, budget: usize) -> u64 {
    let fit = (entries as u128 * budget as u128 * 9 / 10) / (bytes.max(1) as u128);
    (fit as u64).clamp(1, entries.saturating_sub(1).max(1) as u64)
}

impl PeerClient {
    /// Sends an encoded request; `too_large` is the error to report when the peer answers 413.
    async fn rpc<Resp, E>(
        &self,
        path: &str,
        body: Vec<u8>,
        option: &RPCOption,
        too_large: impl FnOnce() -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>>,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let sent_ms = wall_clock_ms();
        let answered = self
            .client
            .post::<Result<Resp, RaftError<NodeId, E>>>(&self.addr, path, body, option.hard_ttl())
            .await;
        match &answered {
            Ok(_) => self.health.answered(self.target, &self.addr),
            Err(e @ (CallError::Refused(_) | CallError::NoAnswer(_))) => {
                self.health.failed(self.target, &self.addr, e)
            }
            Err(_) => {}
        }
        match answered {
            Ok(answered) => {
                if let Some(peer_ms) = answered.peer_clock_ms {
                    self.clocks
                        .observe(self.target, sent_ms, wall_clock_ms(), peer_ms);
                }
                if let Some(index) = answered.not_a_member {
                    self.removal.record(self.target, index);
                }
                answered
                    .value
                    .map_err(|remote| RPCError::RemoteError(RemoteError::new(self.target, remote)))
            }
            Err(CallError::Refused(e)) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(CallError::TooLarge) => Err(too_large()),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

// The error type is openraft's, as large as it is.
#[allow(clippy::result_large_err)]
fn encoded<T: Serialize, E: std::error::Error>(
    req: &T,
) -> Result<Vec<u8>, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
    codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

fn network_error<E: std::error::Error>(
    msg: String,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(msg)))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let entries = rpc.entries.len();
        let body = encoded(&rpc)?;
        let budget = self.append_budget.get();
        if entries > 1 && body.len() > budget {
            let hint = entries_that_fit(entries, body.len(), budget);
            tracing::debug!(
                target = self.target,
                entries,
                bytes = body.len(),
                budget,
                hint,
                "append batch over the byte budget; asking for a smaller one"
            );
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        // Heartbeats carry nothing to shrink; only appends with entries move the budget.
        let in_flight = (entries > 0).then(|| AppendInFlight {
            budget: &self.append_budget,
            bytes: body.len(),
            settled: false,
        });
        let target = self.target;
        let started = std::time::Instant::now();
        let sent = self
            .rpc(APPEND_PATH, body, &option, || {
                if entries > 1 {
                    RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(
                        (entries / 2) as u64,
                    ))
                } else {
                    network_error(format!("peer {target} refused one log entry as too large"))
                }
            })
            .await;
        if let Some(in_flight) = in_flight {
            match &sent {
                Ok(_) => in_flight.settle(Some(true)),
                // The client's own deadline (openraft's) ran out; other failures (a reset, a
                // peer's 5xx) say nothing about the batch's size.
                Err(RPCError::Network(_)) if started.elapsed() >= option.hard_ttl() * 9 / 10 => {
                    in_flight.settle(Some(false))
                }
                Err(_) => in_flight.settle(None),
            }
        }
        sent
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let target = self.target;
        let sent = self
            .rpc(SNAPSHOT_PATH, encoded(&rpc)?, &option, || {
                network_error(format!(
                    "peer {target} refused a snapshot chunk as too large"
                ))
            })
            .await;
        // openraft's own line for this is off by default (it repeats per retry); a snapshot
        // that does not get through to a peer that answers otherwise is worth a line each.
        if let Err(e) = &sent {
            if !self.health.is_down(target) {
                tracing::warn!(peer = target, error = %e, "snapshot chunk not delivered");
            }
        }
        sent
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let target = self.target;
        self.rpc(VOTE_PATH, encoded(&rpc)?, &option, || {
            network_error(format!("peer {target} refused a vote request as too large"))
        })
        .await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.unreachable_retry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_over_budget_is_cut_in_proportion_but_never_to_nothing() {
        // 256 entries of 40 KB against a 1 MiB budget: about 23 fit.
        assert_eq!(entries_that_fit(256, 256 * 40_000, 1 << 20), 23);
        // One huge entry among two: send it alone.
        assert_eq!(entries_that_fit(2, 100 << 20, 1 << 20), 1);
        // Barely over: still strictly fewer than before, so openraft makes progress.
        assert_eq!(entries_that_fit(10, (1 << 20) + 1, 1 << 20), 8);
    }

    fn network(max_append_bytes: usize) -> PeerNetwork {
        PeerNetwork::new(
            RpcClient::new(
                None,
                Arc::new(crate::rpc::PeerDirectory::new(1, "127.0.0.1:1".into())),
                Arc::new(
                    crate::rpc::cluster_id::ClusterId::load(std::path::Path::new("/nonexistent"))
                        .unwrap(),
                ),
            ),
            Duration::from_millis(10),
            max_append_bytes,
        )
    }

    /// An append of 20 entries of 8 large orders each, about 1.1 MB encoded.
    fn large_append() -> AppendEntriesRequest<TypeConfig> {
        use openraft::{CommittedLeaderId, EntryPayload, LogId};
        let leader = CommittedLeaderId::new(1, 1);
        use crate::order::{CommandBatch, LineItem, NewOrder, OrderCommand, OrderOp};
        let item = LineItem {
            sku: "s".repeat(64),
            quantity: 1,
            unit_price_cents: 1,
        };
        let order = NewOrder {
            customer_id: "c".into(),
            items: vec![item; 100],
            note: None,
        };
        let command = OrderCommand {
            op: OrderOp::Create(order),
            idempotency_key: None,
            stamped_at_ms: 0,
        };
        // About 8 x 7 KB per entry, 20 entries: ~1.1 MB against a 64 KiB budget.
        let big = CommandBatch {
            commands: vec![command; 8],
        };
        let entries = (1..=20)
            .map(|i| crate::raft::Entry {
                log_id: LogId::new(leader, i),
                payload: EntryPayload::Normal(big.clone()),
            })
            .collect::<Vec<_>>();
        AppendEntriesRequest {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries,
        }
    }

    #[tokio::test]
    async fn an_append_over_the_byte_budget_asks_for_fewer_entries_before_sending() {
        let mut factory = network(64 * 1024);
        // Port 9 (discard) on loopback: nothing is sent if the budget check works; if it
        // did not, the call would fail with a connection error instead.
        let mut client = factory.new_client(2, &BasicNode::new("127.0.0.1:9")).await;
        let option = RPCOption::new(Duration::from_millis(500));
        match client.append_entries(large_append(), option).await {
            Err(RPCError::PayloadTooLarge(p)) => {
                let hint = p.entries_hint();
                assert!((1..20).contains(&hint), "hint {hint}");
            }
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_append_that_times_out_shrinks_the_batches_that_follow() {
        // A peer that takes the connection and the bytes but never answers, like a follower
        // too busy to write and fsync the batch within the heartbeat.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = silent.accept().await {
                held.push(conn);
            }
        });
        let mut factory = network(4 * 1024 * 1024);
        let mut client = factory.new_client(2, &BasicNode::new(&addr)).await;
        let bytes = codec::encode(&large_append()).unwrap().len();
        assert!(bytes > 1024 * 1024 && bytes < 4 * 1024 * 1024, "{bytes}");

        // openraft's heartbeat-long timeout drops the call: the batch fit the budget, was sent,
        // and got no answer.
        let option = RPCOption::new(Duration::from_secs(30));
        let dropped = tokio::time::timeout(
            Duration::from_millis(300),
            client.append_entries(large_append(), option.clone()),
        )
        .await;
        assert!(dropped.is_err(), "the silent peer answered: {dropped:?}");
        assert_eq!(client.append_budget.get(), bytes / 2);

        // The same batch again is cut before it is sent.
        match client.append_entries(large_append(), option).await {
            Err(RPCError::PayloadTooLarge(p)) => {
                let hint = p.entries_hint();
                assert!((1..20).contains(&hint), "hint {hint}");
            }
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }

        // The client's own deadline (the same as openraft's) counts the same way.
        let option = RPCOption::new(Duration::from_millis(200));
        let mut one = large_append();
        one.entries.truncate(1);
        let one_bytes = codec::encode(&one).unwrap().len();
        assert!(matches!(
            client.append_entries(one, option).await,
            Err(RPCError::Network(_))
        ));
        assert_eq!(
            client.append_budget.get(),
            MIN_APPEND_BUDGET.max(one_bytes / 2)
        );

        // An answered append grows it back only if it used at least half of the budget.
        let shrunk = MIN_APPEND_BUDGET.max(one_bytes / 2);
        client.append_budget.answered(shrunk / 2 - 1);
        assert_eq!(client.append_budget.get(), shrunk);
        client.append_budget.answered(shrunk / 2);
        assert_eq!(
            client.append_budget.get(),
            shrunk + MIN_APPEND_BUDGET.max(shrunk / 4)
        );

        // The budget is the peer's, not the replication stream's: a new stream (a new term)
        // starts where the last one left off.
        let next = factory.new_client(2, &BasicNode::new(&addr)).await;
        assert_eq!(next.append_budget.get(), client.append_budget.get());
        held.abort();
    }
}
