//! Getting a write committed, or a read made linearizable, from whichever node a request hit.
//!
//! On the leader a write is stamped with the leader's clock and proposed to openraft; on a
//! follower it is forwarded (`forward_to_leader`) as a `codec` body to the leader's internal
//! `/raft/write` route, which does the same there. A linearizable read gets a read index,
//! on the leader from openraft's read-index check, on a follower from the leader
//! (`/raft/read-index`), both batched across concurrent reads (`read_index`), and waits until
//! this node's state machine has applied that far.
//!
//! Every loop here is bounded by the request's deadline and a count; past it the caller gets
//! 503 (`no_leader` / `no_quorum`) or, when a proposal was made and its fate is unknown, 504.

use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::error::ServiceError;
use super::read_index::ReadIndexAnswer;
use super::Service;
use crate::codec;
use crate::order::{CommandOutcome, OrderOp};
use crate::raft::{NodeId, Raft};

pub const WRITE_PATH: &str = "/raft/write";
pub const READ_INDEX_PATH: &str = "/raft/read-index";

/// Upper bound on leader look-ups / forwards for one request, whatever the deadline.
const MAX_ATTEMPTS: u32 = 100;
/// Pause before asking again when the leader moved or is not yet known.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// A write as a follower forwards it: not yet stamped, the leader stamps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteRequest {
    pub op: OrderOp,
    pub idempotency_key: Option<String>,
}

impl WriteRequest {
    pub fn approx_encoded_len(&self) -> usize {
        self.op.approx_encoded_len() + self.idempotency_key.as_ref().map_or(0, String::len)
    }
}

/// What the leader's internal routes answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderAnswer<T> {
    Done(T),
    /// This node is not the leader (any more); here is who it thinks is.
    NotLeader(Option<NodeId>),
    /// This node lost the lead after proposing the write, which carries an idempotency key:
    /// it may still be committed, and a retry with the key is safe.
    Deposed(Option<NodeId>),
    Failed(ServiceError),
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

/// Commits one order operation through Raft from any node and returns its outcome.
pub async fn submit_write(
    state: &Service,
    req: WriteRequest,
) -> Result<CommandOutcome, ServiceError> {
    let deadline = Instant::now() + state.request_timeout;
    // Once a proposal may have been appended, running out of time means "unknown", not
    // "unavailable".
    let mut maybe_appended = false;
    let give_up = |maybe_appended: bool, e: ServiceError| match e {
        ServiceError::NoLeader | ServiceError::NoQuorum | ServiceError::Unavailable(_)
            if maybe_appended =>
        {
            ServiceError::OutcomeUnknown("leadership changed after the write was proposed".into())
        }
        e => e,
    };
    for _ in 0..MAX_ATTEMPTS {
        let (leader, addr) = wait_for_leader(&state.raft, deadline)
            .await
            .map_err(|e| give_up(maybe_appended, e))?;
        let answer = if leader == state.id {
            write_as_leader(state, req.clone(), deadline).await
        } else {
            forward_to_leader(&state.http, &addr, WRITE_PATH, &req, deadline).await
        };
        match answer {
            LeaderAnswer::Done(outcome) => return Ok(outcome),
            // Past the send, a forwarded write that timed out has an unknown outcome.
            LeaderAnswer::Failed(ServiceError::Timeout(m)) => {
                return Err(ServiceError::OutcomeUnknown(m))
            }
            LeaderAnswer::Failed(e) => return Err(give_up(maybe_appended, e)),
            LeaderAnswer::NotLeader(_) | LeaderAnswer::Deposed(_) => {
                maybe_appended |= matches!(answer, LeaderAnswer::Deposed(_));
                if Instant::now() + RETRY_PAUSE >= deadline {
                    break;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    Err(give_up(maybe_appended, ServiceError::NoLeader))
}

/// True unless the leader has not heard from a quorum for a while: a leader cut off from its
/// followers refuses writes up front (503) instead of proposing ones that cannot commit. A
/// leader with no acknowledgement yet has just won a quorum's votes, so it may propose.
fn leader_has_quorum(state: &Service) -> bool {
    let m = state.raft.metrics();
    let ms = m.borrow().millis_since_quorum_ack;
    ms.is_none_or(|ms| ms <= state.quorum_stale_after.as_millis() as u64)
}

/// The leader's half of a write: hand it to the proposer (which stamps the time and batches
/// it with other writes), wait for the applied outcome.
pub async fn write_as_leader(
    state: &Service,
    req: WriteRequest,
    deadline: Instant,
) -> LeaderAnswer<CommandOutcome> {
    if !leader_has_quorum(state) {
        return LeaderAnswer::Failed(ServiceError::NoQuorum);
    }
    state.proposer.propose(req, deadline).await
}

/// Sends an internal request to the leader. A refused connection means the leader is gone
/// (nothing was sent): the caller looks for the new one. Any later failure leaves the outcome
/// unknown, so it is a timeout, never a silent retry.
async fn forward_to_leader<Req: Serialize, T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    addr: &str,
    path: &str,
    req: &Req,
    deadline: Instant,
) -> LeaderAnswer<T> {
    let body = match codec::encode(req) {
        Ok(b) => b,
        Err(e) => return LeaderAnswer::Failed(ServiceError::Internal(e.to_string())),
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    let sent = http
        .post(format!("http://{addr}{path}"))
        .timeout(remaining + Duration::from_millis(500))
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .send()
        .await;
    let resp = match sent {
        Ok(resp) if resp.status().is_success() => resp,
        Ok(resp) => {
            return LeaderAnswer::Failed(ServiceError::Unavailable(format!(
                "leader answered HTTP {}",
                resp.status()
            )))
        }
        Err(e) if e.is_connect() => return LeaderAnswer::NotLeader(None),
        Err(e) => {
            return LeaderAnswer::Failed(ServiceError::Timeout(format!(
                "forwarding to the leader failed: {e}"
            )))
        }
    };
    match resp
        .bytes()
        .await
        .map_err(|e| e.to_string())
        .and_then(|b| codec::decode(&b).map_err(|e| e.to_string()))
    {
        Ok(answer) => answer,
        Err(e) => LeaderAnswer::Failed(ServiceError::Timeout(format!(
            "no answer from the leader: {e}"
        ))),
    }
}

/// One read-index round on the leader: confirm leadership with a quorum, return the index a
/// read must see. Runs in `Service::leader_reads`, shared by every read waiting for it.
pub async fn read_index_as_leader(raft: &Raft, deadline: Instant) -> ReadIndexAnswer {
    match tokio::time::timeout_at(deadline, raft.get_read_log_id()).await {
        Ok(Ok((read_log_id, _applied))) => LeaderAnswer::Done(read_log_id),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
            LeaderAnswer::NotLeader(f.leader_id)
        }
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
            LeaderAnswer::Failed(ServiceError::NoQuorum)
        }
        Ok(Err(e)) => LeaderAnswer::Failed(ServiceError::Unavailable(e.to_string())),
        Err(_) => LeaderAnswer::Failed(ServiceError::NoQuorum),
    }
}

/// One read-index round on a follower: ask the leader (one request for every read waiting
/// for this round). Runs in `Service::forwarded_reads`.
pub async fn read_index_from_leader(
    raft: &Raft,
    http: &reqwest::Client,
    id: NodeId,
    deadline: Instant,
) -> ReadIndexAnswer {
    match wait_for_leader(raft, deadline).await {
        // This node leads now: its reads go through `leader_reads` on the next attempt.
        Ok((leader, _)) if leader == id => LeaderAnswer::NotLeader(Some(id)),
        Ok((_, addr)) => forward_to_leader(http, &addr, READ_INDEX_PATH, &(), deadline).await,
        Err(e) => LeaderAnswer::Failed(e),
    }
}

/// Returns once this node's state machine holds everything committed before the call: a read
/// of the local store after it is linearizable.
pub async fn linearizable_barrier(state: &Service) -> Result<(), ServiceError> {
    let deadline = Instant::now() + state.request_timeout;
    let mut last_err = ServiceError::NoLeader;
    for _ in 0..MAX_ATTEMPTS {
        let (leader, _) = wait_for_leader(&state.raft, deadline).await?;
        let answer = if leader == state.id {
            state.leader_reads.read_index(deadline).await
        } else {
            state.forwarded_reads.read_index(deadline).await
        };
        match answer {
            LeaderAnswer::Done(read_log_id) => {
                let Some(read_log_id) = read_log_id else {
                    return Ok(());
                };
                let remaining = deadline.saturating_duration_since(Instant::now());
                return state
                    .raft
                    .wait(Some(remaining))
                    .applied_index_at_least(Some(read_log_id.index), "linearizable read")
                    .await
                    .map(|_| ())
                    .map_err(|_| {
                        ServiceError::Unavailable("this node could not catch up in time".into())
                    });
            }
            // A quorum check can fail on a slow round; retry until the deadline.
            LeaderAnswer::Failed(ServiceError::NoQuorum) => last_err = ServiceError::NoQuorum,
            LeaderAnswer::Failed(e) => return Err(e),
            LeaderAnswer::NotLeader(_) | LeaderAnswer::Deposed(_) => {
                last_err = ServiceError::NoLeader
            }
        }
        if Instant::now() + RETRY_PAUSE >= deadline {
            break;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    Err(last_err)
}
