//! Batching of read-index requests, the expensive half of a linearizable read.
//!
//! Getting a read index costs the leader one heartbeat round to a quorum, and a follower one
//! HTTP request to the leader. Doing that per read caps linearizable reads far below what the
//! store can serve, so reads share rounds: a `ReadIndexBatcher` runs one round at a time, and
//! every read that arrived before a round started is answered by that round. A read that
//! arrives while a round is in flight waits for the next one, because the round in flight may
//! have confirmed leadership before the read arrived; that is what keeps each read
//! linearizable.
//!
//! A node has two batchers (`Service`): `leader_reads` runs openraft's read-index check and
//! serves this node's reads while it leads as well as the followers' `/raft/read-index`
//! requests; `forwarded_reads` asks the leader once per round for this node's reads while it
//! follows.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::error::{Answer, ServiceError};
use crate::raft::LogId;
use crate::rpc::LeaderAnswer;
use crate::telemetry;

/// Reads waiting for a round before senders wait too.
const QUEUE: usize = 8192;

/// What a round answers: the index a read must see, or why there is none.
pub type ReadIndexAnswer = Answer<Option<LogId>>;

type Waiter = oneshot::Sender<ReadIndexAnswer>;

/// The handle reads ask for a read index through.
#[derive(Clone)]
pub struct ReadIndexBatcher {
    tx: mpsc::Sender<Waiter>,
}

impl ReadIndexBatcher {
    /// Starts the batching task on the current runtime. `round` runs one read-index round and
    /// must end within `round_timeout` (it is cut off there with `NoQuorum`).
    pub fn start<F, Fut>(round_timeout: Duration, mut round: F) -> ReadIndexBatcher
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ReadIndexAnswer> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Waiter>(QUEUE);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Everyone queued now arrived before this round starts.
                let mut waiters = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiters.push(w);
                }
                waiters.retain(|w| !w.is_closed());
                if waiters.is_empty() {
                    continue;
                }
                metrics::counter!(telemetry::READ_INDEX_ROUNDS).increment(1);
                metrics::histogram!(telemetry::READ_INDEX_WAITERS).record(waiters.len() as f64);
                let answer = tokio::time::timeout(round_timeout, round())
                    .await
                    .unwrap_or(LeaderAnswer::Failed(ServiceError::NoQuorum));
                for w in waiters {
                    let _ = w.send(answer.clone());
                }
            }
        });
        ReadIndexBatcher { tx }
    }

    /// The read index from the first round that starts after this call, or `NoQuorum` if
    /// none answers before `deadline`.
    pub async fn read_index(&self, deadline: Instant) -> ReadIndexAnswer {
        let (waiter, answer) = oneshot::channel();
        let asked = async {
            self.tx.send(waiter).await.ok()?;
            answer.await.ok()
        };
        match tokio::time::timeout_at(deadline, asked).await {
            Ok(Some(answer)) => answer,
            Ok(None) => {
                LeaderAnswer::Failed(ServiceError::Unavailable("node is shutting down".into()))
            }
            Err(_) => LeaderAnswer::Failed(ServiceError::NoQuorum),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use tokio::sync::Notify;

    use super::*;
    use crate::raft::NodeId;

    fn log_id(index: u64) -> Option<LogId> {
        Some(openraft::LogId::new(
            openraft::CommittedLeaderId::new(1, 1 as NodeId),
            index,
        ))
    }

    /// Reads that arrive while a round is in flight are not answered by it: they get the
    /// next round's index, and many of them share that one round.
    #[tokio::test]
    async fn a_read_is_answered_by_a_round_that_started_after_it() {
        let rounds = Arc::new(AtomicU64::new(0));
        let release = Arc::new(Notify::new());
        let batcher = {
            let (rounds, release) = (rounds.clone(), release.clone());
            ReadIndexBatcher::start(Duration::from_secs(30), move || {
                let (rounds, release) = (rounds.clone(), release.clone());
                async move {
                    let n = rounds.fetch_add(1, Ordering::SeqCst) + 1;
                    release.notified().await;
                    LeaderAnswer::Done(log_id(n))
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);

        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.read_index(deadline).await }
        });
        // Wait (bounded) until round 1 is in flight, then queue ten more reads behind it.
        for _ in 0..1000 {
            if rounds.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(rounds.load(Ordering::SeqCst), 1, "round 1 never started");
        let later: Vec<_> = (0..10)
            .map(|_| {
                let b = batcher.clone();
                tokio::spawn(async move { b.read_index(deadline).await })
            })
            .collect();
        for _ in 0..1000 {
            if batcher.tx.capacity() == QUEUE - 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            batcher.tx.capacity(),
            QUEUE - 10,
            "the ten reads never queued"
        );
        release.notify_one(); // round 1 ends
        match first.await.unwrap() {
            LeaderAnswer::Done(id) => assert_eq!(id, log_id(1)),
            other => panic!("first read: {other:?}"),
        }
        for _ in 0..1000 {
            if rounds.load(Ordering::SeqCst) == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        release.notify_one(); // round 2 ends
        for r in later {
            match r.await.unwrap() {
                LeaderAnswer::Done(id) => assert_eq!(id, log_id(2), "a later read used round 1"),
                other => panic!("later read: {other:?}"),
            }
        }
        assert_eq!(
            rounds.load(Ordering::SeqCst),
            2,
            "ten queued reads shared one round"
        );
    }

    #[tokio::test]
    async fn a_round_that_never_ends_is_a_no_quorum_answer() {
        let batcher = ReadIndexBatcher::start(Duration::from_millis(50), || {
            std::future::pending::<ReadIndexAnswer>()
        });
        let answer = batcher
            .read_index(Instant::now() + Duration::from_secs(30))
            .await;
        assert!(matches!(
            answer,
            LeaderAnswer::Failed(ServiceError::NoQuorum)
        ));
    }
}
