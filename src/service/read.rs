//! Making a read linearizable from whichever node it hit: get a read index (on the leader from
//! openraft's read-index check, on a follower from the leader over `rpc::READ_INDEX_PATH`),
//! both in rounds shared by concurrent reads (`read_index`), then wait until this node's state
//! machine has applied that far. Bounded by the request's deadline and a count.

use tokio::time::Instant;

use openraft::error::{CheckIsLeaderError, RaftError};

use super::read_index::ReadIndexAnswer;
use super::{wait_for_leader, Service, ServiceError, MAX_ATTEMPTS, RETRY_PAUSE};
use crate::raft::{NodeId, Raft};
use crate::rpc::client::RpcClient;
use crate::rpc::{LeaderAnswer, READ_INDEX_PATH};

impl Service {
    /// Returns once this node's state machine holds everything committed before the call: a
    /// read of the local store after it is linearizable.
    pub async fn linearizable_barrier(&self) -> Result<(), ServiceError> {
        self.check_storage()?;
        let deadline = Instant::now() + self.request_timeout;
        let mut last_err = ServiceError::NoLeader;
        for _ in 0..MAX_ATTEMPTS {
            let (leader, _) = wait_for_leader(&self.raft, deadline).await?;
            let answer = if leader == self.id {
                self.leader_reads.read_index(deadline).await
            } else {
                self.forwarded_reads.read_index(deadline).await
            };
            match answer {
                LeaderAnswer::Done(read_log_id) => {
                    let Some(read_log_id) = read_log_id else {
                        return Ok(());
                    };
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    return self
                        .raft
                        .wait(Some(remaining))
                        .applied_index_at_least(Some(read_log_id.index), "linearizable read")
                        .await
                        .map(|_| ())
                        .map_err(|_| {
                            ServiceError::Unavailable("this node could not catch up in time".into())
                        });
                }
                // A quorum check can fail on a slow round, a call to the leader on a
                // connection it dropped (killed mid-call) or on its refusal, and a leader whose
                // disk failed is about to be replaced: a read index has no side effects, so
                // retry until the deadline.
                LeaderAnswer::Failed(
                    e @ (ServiceError::NoQuorum
                    | ServiceError::Timeout(_)
                    | ServiceError::Unavailable(_)
                    | ServiceError::StorageFailed(_)),
                ) => last_err = e,
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
}

/// One read-index round on the leader: confirm leadership with a quorum, return the index a
/// read must see. Runs in `leader_reads`, shared by every read waiting for it.
pub(super) async fn read_index_as_leader(raft: &Raft, deadline: Instant) -> ReadIndexAnswer {
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
/// for this round). Runs in `forwarded_reads`. The round ends as soon as another leader is
/// known: against a leader that hangs, the call would hold every read waiting for the round
/// until its deadline, after a failover too.
pub(super) async fn read_index_from_leader(
    raft: &Raft,
    rpc: &RpcClient,
    id: NodeId,
    deadline: Instant,
) -> ReadIndexAnswer {
    match wait_for_leader(raft, deadline).await {
        // This node leads now: its reads go through `leader_reads` on the next attempt.
        Ok((leader, _)) if leader == id => LeaderAnswer::NotLeader(Some(id)),
        Ok((leader, addr)) => {
            let call = rpc.call_leader(&addr, READ_INDEX_PATH, &(), deadline);
            tokio::select! {
                answer = call => answer.map_err(ServiceError::from),
                now = another_leader(raft, leader) => LeaderAnswer::NotLeader(now),
            }
        }
        Err(e) => LeaderAnswer::Failed(e),
    }
}

/// Returns once this node knows of another leader than `leader`, or of none (never, if the
/// node stops).
async fn another_leader(raft: &Raft, leader: NodeId) -> Option<NodeId> {
    // The server metrics change only with the vote, the role, the leader or the membership.
    let mut server = raft.server_metrics();
    loop {
        let now = server.borrow_and_update().current_leader;
        if now != Some(leader) {
            return now;
        }
        if server.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}
