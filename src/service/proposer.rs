//! Batching of writes on the leader. Requests that arrive while the previous proposal is in
//! flight are proposed together as one log entry (`CommandBatch`), so one fsync and one
//! replication round carry many orders. One proposal runs at a time (`MAX_IN_FLIGHT`); while
//! it does, new requests queue and form the next batch. A lone request is proposed at once,
//! so batching adds no wait of its own.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::BasicNode;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use super::clock_keeper::{self, StateClock};
use super::error::{Answer, ServiceError};
use super::{queue_and_wait, QueueWords};
use crate::order::{CommandBatch, CommandOutcome, OrderCommand};
use crate::raft::{NodeId, Raft, TypeConfig};
use crate::rpc::clock::{wall_clock_ms, PeerClocks};
use crate::rpc::{LeaderAnswer, WriteRequest};
use crate::telemetry;

/// Proposals in flight at once. One: a second proposal would overlap the first one's
/// replication, commit and apply, but it splits the queue into smaller entries (more fsyncs,
/// appends and apply chunks per order), and on a CPU-bound node that cost more than the
/// overlap gave (A/B against 2 and 4 in docs/performance.md, "One proposal at a time").
const MAX_IN_FLIGHT: usize = 1;
/// Commands per log entry, at most.
const MAX_BATCH: usize = 256;
/// Estimated encoded bytes per log entry, at most (a lone larger command still goes alone):
/// an entry is never split across appends, and a follower must write and fsync a whole append
/// within one heartbeat interval.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// A clock further than this off the cluster's median is worth a warning.
const CLOCK_WARN_OFFSET_MS: i64 = 1000;
const CLOCK_WARN_EVERY: Duration = Duration::from_secs(10);
/// How long a new leader waits for its peers' clocks before refusing writes (503).
const CLOCK_WAIT: Duration = Duration::from_millis(500);
/// Requests waiting to be batched before senders wait too.
const QUEUE: usize = 4096;

struct Pending {
    req: WriteRequest,
    reply: oneshot::Sender<Answer<CommandOutcome>>,
    /// When the caller stops waiting for the answer.
    deadline: Instant,
}

/// The handle the API proposes writes through.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the batching task on the current runtime.
    /// `clocks`: the peers' clocks, for stamping with the cluster's time (see `rpc::clock`).
    /// `state_clock`: the state machine's clock, caught up before a batch is proposed
    /// (`catch_up_clock`).
    pub fn start(
        raft: Raft,
        clocks: Arc<PeerClocks>,
        state_clock: StateClock,
        commit_timeout: Duration,
    ) -> Proposer {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(raft, clocks, state_clock, rx, commit_timeout));
        Proposer { tx }
    }

    /// Proposes one write (stamped by this leader) and waits for its outcome until
    /// `deadline`; past it the outcome is unknown (504). A write that cannot even join the
    /// queue by then was never proposed: 503, safe to retry.
    pub async fn propose(&self, req: WriteRequest, deadline: Instant) -> Answer<CommandOutcome> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            req,
            reply,
            deadline,
        };
        let words = QueueWords {
            full: "too many writes are waiting on this leader; retry",
            lost: "the write's outcome was lost",
            late: "write was not committed in time",
        };
        queue_and_wait(&self.tx, pending, answer, deadline, deadline, words).await
    }
}

/// The time to stamp into commands now: the median clock of a quorum of voters, `None` until
/// fresh readings of a quorum are known (a leader gets them from its first heartbeats). Says
/// so (at most every 10 s) when this node's clock is far off.
fn cluster_time_ms(
    raft: &Raft,
    clocks: &PeerClocks,
    last_warned: &mut Option<Instant>,
) -> Option<i64> {
    let own = wall_clock_ms();
    let (me, voters) = {
        let m = raft.metrics();
        let m = m.borrow();
        let voters: Vec<_> = m.membership_config.membership().voter_ids().collect();
        (m.id, voters)
    };
    let offset = clocks.median_offset_ms(me, &voters)?;
    if offset.abs() > CLOCK_WARN_OFFSET_MS
        && last_warned.is_none_or(|t| t.elapsed() > CLOCK_WARN_EVERY)
    {
        tracing::warn!(
            offset_ms = offset,
            "this node's clock is off the cluster's median clock; stamping with the median"
        );
        *last_warned = Some(Instant::now());
    }
    Some(own + offset)
}

/// The time this leader would stamp into a command now (`cluster_time_ms`, without its
/// warning), `None` without fresh readings of a quorum's clocks.
pub fn cluster_time_now_ms(raft: &Raft, clocks: &PeerClocks) -> Option<i64> {
    let mut warned = Some(Instant::now());
    cluster_time_ms(raft, clocks, &mut warned)
}

/// `cluster_time_ms`, waiting up to `CLOCK_WAIT` for readings: a leader does not stamp its own
/// clock, which may be the one that is wrong.
async fn wait_cluster_time_ms(
    raft: &Raft,
    clocks: &PeerClocks,
    last_warned: &mut Option<Instant>,
) -> Option<i64> {
    let deadline = Instant::now() + CLOCK_WAIT;
    loop {
        if let Some(t) = cluster_time_ms(raft, clocks, last_warned) {
            return Some(t);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn run(
    raft: Raft,
    clocks: Arc<PeerClocks>,
    state_clock: StateClock,
    mut rx: mpsc::Receiver<Pending>,
    commit_timeout: Duration,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut last_warned = None;
    while let Some(first) = rx.recv().await {
        // Waiting for a free slot is what lets the next batch grow.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.req.approx_encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.req.approx_encoded_len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        // A caller that gave up (its deadline passed while queued) has been told the outcome
        // is unknown; proposing its write now would only make that answer come true late.
        batch.retain(|p| !p.reply.is_closed());
        let Some(latest) = batch.iter().map(|p| p.deadline).max() else {
            continue;
        };
        // A node that no longer leads has no fresh clock readings (only a leader measures
        // them): say where the leader is instead of waiting for them and answering 503.
        if !leads(&raft) {
            let leader = raft.current_leader().await;
            for p in batch {
                let _ = p.reply.send(LeaderAnswer::NotLeader(leader));
            }
            continue;
        }
        let Some(stamped_at_ms) = wait_cluster_time_ms(&raft, &clocks, &mut last_warned).await
        else {
            // Not proposed: no quorum's clocks, and very likely no quorum either.
            for p in batch {
                let _ = p.reply.send(LeaderAnswer::Failed(ServiceError::NoQuorum));
            }
            continue;
        };
        let (raft, state_clock) = (raft.clone(), state_clock.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let (commands, replies): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|p| {
                    let cmd = OrderCommand {
                        op: p.req.op,
                        idempotency_key: p.req.idempotency_key,
                        stamped_at_ms,
                    };
                    (cmd, p.reply)
                })
                .unzip();
            // Known not to be appended anywhere: this node does not lead (any more).
            if !leads(&raft) {
                let leader = raft.current_leader().await;
                for reply in replies {
                    let _ = reply.send(LeaderAnswer::NotLeader(leader));
                }
                return;
            }
            let keyed: Vec<bool> = commands
                .iter()
                .map(|c| c.idempotency_key.is_some())
                .collect();
            // Not past the last caller's deadline: then every caller has been told the outcome
            // is unknown, and the one proposal slot would only keep the writes queued behind
            // this one waiting (a leader cut off from its followers answers nothing).
            let until = latest.min(Instant::now() + commit_timeout);
            // A keyed write's record expires by the state machine's clock, which lags after a
            // stop of the whole cluster (or a restore of an older backup): catch it up first.
            // Nothing of this batch is proposed if that fails (503: safe to retry).
            if !catch_up_clock(&raft, &state_clock, stamped_at_ms, until).await {
                for reply in replies {
                    let _ = reply.send(LeaderAnswer::Failed(ServiceError::Unavailable(
                        "the state machine's clock is catching up after a long stop; retry".into(),
                    )));
                }
                return;
            }
            metrics::counter!(telemetry::PROPOSALS).increment(1);
            metrics::histogram!(telemetry::PROPOSAL_BATCH).record(keyed.len() as f64);
            let written =
                tokio::time::timeout_at(until, raft.client_write(CommandBatch { commands })).await;
            let answers = answers_for(written, &keyed);
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        });
    }
}

/// Catches the state machine's clock up to `stamp`, the batch's, when it lags by more than
/// `clock_keeper::MAX_LAG_MS`: one log entry of ticks (`clock_keeper::ticks`), each a step
/// on. False when that entry failed or timed out at `until`, or could not cover the whole lag
/// (over a week): the caller proposes nothing then.
async fn catch_up_clock(raft: &Raft, state_clock: &StateClock, stamp: i64, until: Instant) -> bool {
    let clock = state_clock();
    let Some(from) = clock.filter(|_| clock_keeper::lags(clock, stamp)) else {
        return true;
    };
    let commands = clock_keeper::ticks(from, stamp);
    let written =
        tokio::time::timeout_at(until, raft.client_write(CommandBatch { commands })).await;
    matches!(written, Ok(Ok(_))) && !clock_keeper::lags(state_clock(), stamp)
}

/// Whether this node leads, as far as its Raft core knows.
fn leads(raft: &Raft) -> bool {
    let m = raft.metrics();
    let m = m.borrow();
    m.current_leader == Some(m.id)
}

type WriteResult = Result<
    Result<ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>,
    tokio::time::error::Elapsed,
>;

/// What each caller of a proposed batch is told, given how `client_write` ended (or timed
/// out) and which commands carry an idempotency key.
fn answers_for(written: WriteResult, keyed: &[bool]) -> Vec<Answer<CommandOutcome>> {
    let n = keyed.len();
    let all = |answer: Answer<CommandOutcome>| vec![answer; n];
    match written {
        Ok(Ok(resp)) if resp.data.len() == n => {
            resp.data.into_iter().map(LeaderAnswer::Done).collect()
        }
        Ok(Ok(resp)) => all(LeaderAnswer::Failed(ServiceError::Internal(format!(
            "a batch of {n} commands applied with {} outcomes",
            resp.data.len()
        )))),
        // Either refused before it was appended (this node had just lost the lead) or
        // appended and then truncated here when a new leader took over, in which case that
        // leader, or a later one, may still commit it (five voters or more). Retrying is safe
        // only with an idempotency key; without one the outcome is unknown.
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => keyed
            .iter()
            .map(|&keyed| {
                if keyed {
                    LeaderAnswer::Deposed(f.leader_id)
                } else {
                    LeaderAnswer::Failed(ServiceError::OutcomeUnknown(
                        "leadership changed while the write was in flight (send an \
                         Idempotency-Key to make a retry safe)"
                            .into(),
                    ))
                }
            })
            .collect(),
        // The log store failed under this batch (disk full): it reached the log, but not
        // disk, here; followers may still have it, so it may yet commit. Unknown, not 503:
        // a 503 says "not applied, retry", which would duplicate a write without a key.
        Ok(Err(RaftError::Fatal(openraft::error::Fatal::StorageError(e)))) => {
            all(LeaderAnswer::Failed(ServiceError::OutcomeUnknown(format!(
                "this node's storage failed under the write ({e})"
            ))))
        }
        Ok(Err(e)) => all(LeaderAnswer::Failed(ServiceError::OutcomeUnknown(format!(
            "write did not complete: {e}"
        )))),
        Err(_) => all(LeaderAnswer::Failed(ServiceError::OutcomeUnknown(
            "write was not committed in time".into(),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::error::ForwardToLeader;

    /// A proposal that comes back ForwardToLeader may have been appended and may still be
    /// committed: never "not leader, try again" for a write without a key.
    #[test]
    fn forward_to_leader_after_proposing_is_unknown_without_a_key() {
        let deposed: WriteResult = Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(
            ForwardToLeader::new(2, BasicNode::new("n2")),
        ))));
        let answers = answers_for(deposed, &[true, false]);
        assert!(matches!(answers[0], LeaderAnswer::Deposed(Some(2))));
        assert!(
            matches!(
                &answers[1],
                LeaderAnswer::Failed(ServiceError::OutcomeUnknown(_))
            ),
            "{:?}",
            answers[1]
        );
    }
}
