//! What a node does, without HTTP: commit a write through Raft from any node (`write`,
//! batched into log entries by `proposer`, and into calls to the leader by `forward`), make
//! a read linearizable (`read`, with read-index rounds shared by concurrent reads in
//! `read_index`), change the membership (`membership`), decide when to snapshot
//! (`snapshot_schedule`), and the errors of all of them (`error`). A node that is not the
//! leader sends the request to the leader over `rpc`; the leader's side of those calls is
//! `LeaderCalls` below. `api` calls the service from its handlers and maps `ServiceError` to
//! HTTP; `node` starts it.

pub mod backup;
pub mod clock_keeper;
pub mod error;
pub mod forward;
pub mod membership;
pub mod observer;
pub mod proposer;
pub mod read;
pub mod read_index;
pub mod snapshot_schedule;
pub mod write;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::order::CommandOutcome;
use crate::raft::{LogId, NodeId, Raft};
use crate::rpc::client::RpcClient;
use crate::rpc::clock::PeerClocks;
use crate::rpc::server::LeaderCalls;
use crate::rpc::{LeaderAnswer, MembershipChange, PeerDirectory, WriteRequest};
use crate::store::LogReader;
pub use error::{Answer, ServiceError};

/// Upper bound on leader look-ups / forwards for one request, whatever the deadline: with
/// `RETRY_PAUSE`, over 5 s of asking, past the default request deadline (3 s) and an election
/// (0.9-2 s), during which a follower still naming the dead leader is refused at once.
const MAX_ATTEMPTS: u32 = 200;
/// Pause before asking again when the leader moved or is not yet known.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// A node's service: the handles every write, linearizable read and membership change goes
/// through. One `Arc` to clone: axum clones the state for every extractor of every request,
/// and a clone per handle inside (a dozen atomic increments, contended across cores) measured
/// about 5 % of a stale read.
#[derive(Clone)]
pub struct Service(Arc<ServiceParts>);

/// What a `Service` holds (reached through `Deref`).
pub struct ServiceParts {
    id: NodeId,
    raft: Raft,
    /// For calls to the leader (the node's one node-to-node client).
    rpc: RpcClient,
    /// Where clients reach the other nodes (for the leader hint).
    directory: Arc<PeerDirectory>,
    /// Batches this node's writes into log entries while it leads.
    proposer: proposer::Proposer,
    /// Batches the writes this node forwards to the leader while it follows.
    forwarder: forward::WriteForwarder,
    /// Read-index rounds while this node leads: its own reads and the followers' requests.
    leader_reads: read_index::ReadIndexBatcher,
    /// Read-index rounds while this node follows: one request to the leader per round.
    forwarded_reads: read_index::ReadIndexBatcher,
    /// How long a request may wait for a leader, a commit or a read index.
    request_timeout: Duration,
    /// A leader that has not heard from a quorum for this long refuses writes.
    quorum_stale_after: Duration,
    /// This node's log, read for its last entry (`status`).
    log: LogReader,
}

impl Service {
    /// Starts the proposer and the read-index rounds on the current runtime.
    /// `clocks`: the peers' clocks as the Raft network measures them (see `rpc::clock`).
    // Each argument is a distinct handle `node` wires in, once.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        id: NodeId,
        raft: Raft,
        rpc: RpcClient,
        directory: Arc<PeerDirectory>,
        clocks: Arc<PeerClocks>,
        request_timeout: Duration,
        quorum_stale_after: Duration,
        log: LogReader,
        state_clock: clock_keeper::StateClock,
    ) -> Service {
        let leader_reads = read_index::ReadIndexBatcher::start(request_timeout, {
            let raft = raft.clone();
            move || {
                let raft = raft.clone();
                async move { read::read_index_as_leader(&raft, Instant::now() + request_timeout).await }
            }
        });
        let forwarded_reads = read_index::ReadIndexBatcher::start(request_timeout, {
            let (raft, rpc) = (raft.clone(), rpc.clone());
            move || {
                let (raft, rpc) = (raft.clone(), rpc.clone());
                async move {
                    read::read_index_from_leader(&raft, &rpc, id, Instant::now() + request_timeout)
                        .await
                }
            }
        });
        let proposer = proposer::Proposer::start(
            raft.clone(),
            clocks.clone(),
            state_clock.clone(),
            request_timeout,
        );
        clock_keeper::spawn(
            raft.clone(),
            clocks,
            proposer.clone(),
            state_clock,
            request_timeout,
        );
        Service(Arc::new(ServiceParts {
            id,
            proposer,
            forwarder: forward::WriteForwarder::new(rpc.clone()),
            raft,
            rpc,
            directory,
            leader_reads,
            forwarded_reads,
            request_timeout,
            quorum_stale_after,
            log,
        }))
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The current leader's address, as far as this node knows: the membership address, or
    /// where clients reach it when it has said so (it differs with a peer port).
    pub fn leader_addr(&self) -> Option<String> {
        let leader = self.raft.metrics().borrow().current_leader?;
        self.directory
            .client_addr(leader)
            .or_else(|| self.leader_peer_addr())
    }

    /// Where the other nodes reach the current leader (its membership address): for calls
    /// to it over `rpc`.
    fn leader_peer_addr(&self) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// Why this node's Raft core stopped on a storage error (disk full, I/O error), if it
    /// did: such a node serves no writes or linearizable reads (503 `storage_failed`), fails
    /// `/readyz`, and `node` makes it exit so that a supervisor restarts it.
    pub fn storage_failure(&self) -> Option<String> {
        storage_failure(&self.raft)
    }

    /// Refuses up front when this node's storage has failed.
    fn check_storage(&self) -> Result<(), ServiceError> {
        match self.storage_failure() {
            Some(cause) => Err(ServiceError::StorageFailed(cause)),
            None => Ok(()),
        }
    }

    /// The last log index this node's state machine has applied.
    pub fn applied_index(&self) -> Option<u64> {
        self.raft.metrics().borrow().last_applied.map(|l| l.index)
    }
}

impl std::ops::Deref for Service {
    type Target = ServiceParts;

    fn deref(&self) -> &ServiceParts {
        &self.0
    }
}

/// The storage error that stopped `raft`'s core, if one did.
pub fn storage_failure(raft: &Raft) -> Option<String> {
    storage_failure_in(&raft.metrics().borrow().running_state)
}

/// The storage error (or panic) in a Raft core's running state, if that is why it stopped;
/// `None` while it runs or after a shutdown that was asked for.
pub fn storage_failure_in(running: &Result<(), openraft::error::Fatal<NodeId>>) -> Option<String> {
    match running {
        Err(openraft::error::Fatal::StorageError(e)) => Some(e.to_string()),
        Err(openraft::error::Fatal::Panicked) => Some("the Raft core panicked".into()),
        _ => None,
    }
}

/// The current leader and its address, waiting (bounded) until one is known.
async fn wait_for_leader(raft: &Raft, deadline: Instant) -> Result<(NodeId, String), ServiceError> {
    let mut rx = raft.metrics();
    loop {
        {
            let m = rx.borrow_and_update();
            if let Some(leader) = m.current_leader {
                if let Some(node) = m.membership_config.membership().get_node(&leader) {
                    return Ok((leader, node.addr.clone()));
                }
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => return Err(ServiceError::Unavailable("node is shutting down".into())),
            Err(_) => return Err(ServiceError::NoLeader),
        }
    }
}

/// The leader's side of the calls other nodes send it over `rpc` (requests already decoded
/// and validated there). A node that does not lead answers `NotLeader` and never forwards
/// again.
impl LeaderCalls for Service {
    async fn write(&self, req: WriteRequest) -> LeaderAnswer<CommandOutcome> {
        if let Err(e) = self.check_storage() {
            return LeaderAnswer::Failed(e.into());
        }
        let deadline = Instant::now() + self.request_timeout;
        self.write_as_leader(req, deadline)
            .await
            .map_err(Into::into)
    }

    async fn read_index(&self) -> LeaderAnswer<Option<LogId>> {
        if let Err(e) = self.check_storage() {
            return LeaderAnswer::Failed(e.into());
        }
        let deadline = Instant::now() + self.request_timeout;
        self.leader_reads
            .read_index(deadline)
            .await
            .map_err(Into::into)
    }

    async fn change_membership(&self, change: MembershipChange) -> LeaderAnswer<Option<LogId>> {
        self.change_membership_as_leader(change)
            .await
            .map_err(Into::into)
    }
}

/// What the caller of a batching queue (`proposer`, `forward`) is told when its write does not
/// get an answer: it could not join the queue by its deadline (`full`: never sent, 503, safe
/// to retry), the queue's task dropped it (`lost`), or no answer came in time (`late`); the
/// last two leave the outcome unknown (504).
struct QueueWords {
    full: &'static str,
    lost: &'static str,
    late: &'static str,
}

/// Puts `item` on a batching task's queue by `deadline`, then waits until `answer_by` for the
/// answer the task sends on `answer`.
async fn queue_and_wait<T>(
    queue: &tokio::sync::mpsc::Sender<T>,
    item: T,
    answer: tokio::sync::oneshot::Receiver<Answer<CommandOutcome>>,
    deadline: Instant,
    answer_by: Instant,
    words: QueueWords,
) -> Answer<CommandOutcome> {
    let failed = |e: ServiceError| LeaderAnswer::Failed(e);
    match tokio::time::timeout_at(deadline, queue.send(item)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return failed(ServiceError::Unavailable("node is shutting down".into())),
        Err(_) => return failed(ServiceError::Unavailable(words.full.into())),
    }
    match tokio::time::timeout_at(answer_by, answer).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => failed(ServiceError::OutcomeUnknown(words.lost.into())),
        Err(_) => failed(ServiceError::OutcomeUnknown(words.late.into())),
    }
}
