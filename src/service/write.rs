//! Getting a write committed from whichever node a request hit. On the leader it is stamped
//! with the cluster's time and proposed to openraft (`proposer`); on a follower it is sent to
//! the leader (`forward`, batched with the node's other forwarded writes), which does the
//! same there. Every node that proposes a write validates it first, whoever sent it.
//!
//! Bounded by the request's deadline and a count; past it the caller gets 503 (`no_leader` /
//! `no_quorum`) or, once a proposal may have been appended, an unknown outcome (504).

use tokio::time::Instant;

use super::{wait_for_leader, Answer, Service, ServiceError, MAX_ATTEMPTS, RETRY_PAUSE};
use crate::order::CommandOutcome;
use crate::rpc::{LeaderAnswer, WriteRequest};

impl Service {
    /// Commits one order operation through Raft from any node and returns its outcome.
    pub async fn submit_write(&self, req: WriteRequest) -> Result<CommandOutcome, ServiceError> {
        req.validate().map_err(ServiceError::Invalid)?;
        self.check_storage()?;
        let deadline = Instant::now() + self.request_timeout;
        // Once a proposal may have been appended, running out of time means "unknown", not
        // "unavailable".
        let mut maybe_appended = false;
        let give_up = |maybe_appended: bool, e: ServiceError| match e {
            ServiceError::NoLeader
            | ServiceError::NoQuorum
            | ServiceError::Unavailable(_)
            | ServiceError::StorageFailed(_)
                if maybe_appended =>
            {
                ServiceError::OutcomeUnknown(
                    "leadership changed after the write was proposed".into(),
                )
            }
            e => e,
        };
        for _ in 0..MAX_ATTEMPTS {
            let (leader, addr) = wait_for_leader(&self.raft, deadline)
                .await
                .map_err(|e| give_up(maybe_appended, e))?;
            let answer: Answer<CommandOutcome> = if leader == self.id {
                self.write_as_leader(req.clone(), deadline).await
            } else {
                self.forwarder.forward(addr, req.clone(), deadline).await
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

    /// The leader's half of a write: hand it to the proposer (which stamps the time and
    /// batches it with other writes), wait for the applied outcome.
    pub(super) async fn write_as_leader(
        &self,
        req: WriteRequest,
        deadline: Instant,
    ) -> Answer<CommandOutcome> {
        if !self.leader_has_quorum() {
            return LeaderAnswer::Failed(ServiceError::NoQuorum);
        }
        self.proposer.propose(req, deadline).await
    }

    /// True unless the leader has not heard from a quorum for a while: a leader cut off from
    /// its followers refuses writes up front (503) instead of proposing ones that cannot
    /// commit. A leader with no acknowledgement yet has just won a quorum's votes, so it may
    /// propose.
    fn leader_has_quorum(&self) -> bool {
        let m = self.raft.metrics();
        let ms = m.borrow().millis_since_quorum_ack;
        ms.is_none_or(|ms| ms <= self.quorum_stale_after.as_millis() as u64)
    }
}
