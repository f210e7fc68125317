//! Batching of the writes a follower forwards to the leader. Sent one HTTP request each, the
//! forwarded writes cost the leader a request per order on top of the order itself: creates
//! spread over three nodes ran 15-20 % slower than the same load sent to the leader alone.
//! A `WriteForwarder` sends a write at once when a call slot is free (so batching adds no wait
//! of its own); writes that arrive while `MAX_IN_FLIGHT` calls are out queue and go together
//! in the next call (`rpc::WRITE_BATCH_PATH`), where the leader proposes each as if it had come
//! alone and answers each. Every write keeps its own answer, so the caller's retry rules
//! (`write`) are the same as for a write forwarded alone; a call that fails gives each of its
//! writes the failure (a timeout leaves each outcome unknown). A leader that does not know
//! the batch route (an older build) gets the writes one by one. A write that goes alone
//! carries its client request's id to the leader's log; a batch carries none.
//!
//! Each write is bounded by its own deadline: one still queued at it is answered without
//! being sent (nothing was done), and a caller waits for a sent write's answer at most a
//! little past it (then its outcome is unknown). A batch call waits for the latest deadline
//! among its writes.
//!
//! Each leader address has a batching task and call slots of its own: after a failover,
//! writes for the new leader do not wait behind calls still out to the old one (a frozen
//! leader holds them until their deadlines).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use super::error::{Answer, ServiceError};
use super::{queue_and_wait, QueueWords};
use crate::order::CommandOutcome;
use crate::rpc::client::{leader_answer_of, CallError, RpcClient};
use crate::rpc::{
    LeaderAnswer, RpcError, WriteRequest, BATCH_ANSWER_CLAIM_LIMIT, MAX_FORWARD_BATCH,
    MAX_FORWARD_BATCH_BYTES, REQUEST_ID, WRITE_BATCH_PATH, WRITE_PATH,
};

/// Forward calls out at once; while they are, writes queue and form the next batch.
const MAX_IN_FLIGHT: usize = 4;
/// Writes waiting for a call before senders wait too.
const QUEUE: usize = 4096;
/// How long past its deadline a caller waits for a sent write's answer: the call itself gives
/// up half a second past the deadline (`call_leader`).
const ANSWER_GRACE: Duration = Duration::from_secs(1);
/// Leader addresses with a batching task; past it, the tasks are let go (each ends once its
/// queue is empty). Leaders are the cluster's members: a handful.
const MAX_LEADER_QUEUES: usize = 16;

struct Forward {
    /// The leader's peer address, as the caller found it.
    addr: String,
    req: WriteRequest,
    deadline: Instant,
    /// The id of the client request it serves, sent along when the write goes alone.
    request_id: Option<String>,
    reply: oneshot::Sender<Answer<CommandOutcome>>,
}

/// The handle `write` forwards through.
#[derive(Clone)]
pub struct WriteForwarder {
    rpc: RpcClient,
    /// Each leader address's batching task (started by the first write for it).
    queues: Arc<Mutex<HashMap<String, mpsc::Sender<Forward>>>>,
}

impl WriteForwarder {
    /// A forwarder whose batching tasks run on the runtime of the writes that start them.
    pub fn new(rpc: RpcClient) -> WriteForwarder {
        WriteForwarder {
            rpc,
            queues: Default::default(),
        }
    }

    /// The queue of `addr`'s batching task, started if there is none.
    fn queue_for(&self, addr: &str) -> mpsc::Sender<Forward> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = queues.get(addr) {
            return queue.clone();
        }
        if queues.len() >= MAX_LEADER_QUEUES {
            // Only the senders go: each task answers what it has queued, then ends.
            queues.clear();
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(self.rpc.clone(), rx));
        queues.insert(addr.to_string(), tx.clone());
        tx
    }

    /// Sends `req` to the leader at `addr` and waits for its answer (as `call_leader` does).
    pub async fn forward(
        &self,
        addr: String,
        req: WriteRequest,
        deadline: Instant,
    ) -> Answer<CommandOutcome> {
        let (reply, answer) = oneshot::channel();
        let forward = Forward {
            addr,
            req,
            deadline,
            request_id: REQUEST_ID.try_with(Clone::clone).ok(),
            reply,
        };
        let words = QueueWords {
            full: "no room to forward the write to the leader before its deadline",
            lost: "the forwarded write's answer was lost",
            late: "the leader did not answer the forwarded write in time",
        };
        let answer_by = deadline + ANSWER_GRACE;
        let queue = self.queue_for(&forward.addr);
        queue_and_wait(&queue, forward, answer, deadline, answer_by, words).await
    }
}

/// The batching task of one leader address: ends once every sender is gone and its queue is
/// empty.
async fn run(rpc: RpcClient, mut rx: mpsc::Receiver<Forward>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        // Waiting for a free slot is what lets the next batch grow; not past the first
        // write's deadline, though (the ones behind it are looked at as they come up).
        let permit = tokio::select! {
            permit = in_flight.clone().acquire_owned() => {
                permit.expect("the forwarder's semaphore is never closed")
            }
            _ = tokio::time::sleep_until(first.deadline) => {
                answer_unsent(first);
                continue;
            }
        };
        let mut bytes = first.req.approx_encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_FORWARD_BATCH && bytes < MAX_FORWARD_BATCH_BYTES {
            let Ok(next) = rx.try_recv() else { break };
            bytes += next.req.approx_encoded_len();
            batch.push(next);
        }
        // Callers that gave up (their request ended) need no answer; writes whose time ran
        // out while they queued are answered unsent.
        let now = Instant::now();
        let (batch, expired): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .filter(|f| !f.reply.is_closed())
            .partition(|f| f.deadline > now);
        expired.into_iter().for_each(answer_unsent);
        if batch.is_empty() {
            continue;
        }
        let rpc = rpc.clone();
        tokio::spawn(async move {
            call(&rpc, batch).await;
            drop(permit);
        });
    }
}

/// Answers a write whose deadline came while it waited for a call: nothing was sent.
fn answer_unsent(f: Forward) {
    let _ = f.reply.send(LeaderAnswer::Failed(ServiceError::Unavailable(
        "the write waited past its deadline to be forwarded; it was not sent".into(),
    )));
}

/// One call to the leader for `batch` (all for the same address), answering each write.
async fn call(rpc: &RpcClient, batch: Vec<Forward>) {
    let addr = batch[0].addr.clone();
    if batch.len() == 1 {
        let f = batch.into_iter().next().expect("one");
        forward_alone(rpc, &addr, f).await;
        return;
    }
    let deadline = batch.iter().map(|f| f.deadline).max().expect("not empty");
    let reqs: Vec<&WriteRequest> = batch.iter().map(|f| &f.req).collect();
    let answers = match rpc
        .try_call_leader::<_, Vec<LeaderAnswer<CommandOutcome>>, BATCH_ANSWER_CLAIM_LIMIT>(
            &addr,
            WRITE_BATCH_PATH,
            &reqs,
            deadline,
        )
        .await
    {
        Ok(LeaderAnswer::Done(answers)) if answers.len() == batch.len() => answers,
        Ok(LeaderAnswer::Done(answers)) => {
            let lost = RpcError::Timeout(format!(
                "the leader at {addr} answered {} of {} forwarded writes",
                answers.len(),
                batch.len()
            ));
            vec![LeaderAnswer::Failed(lost); batch.len()]
        }
        // A leader of an older build, without the batch route: nothing was done; forward
        // the writes one by one.
        Err(CallError::Status(404)) => {
            let calls = batch.into_iter().map(|f| forward_alone(rpc, &addr, f));
            futures_util::future::join_all(calls).await;
            return;
        }
        // The call failed as a whole: the same for every write (a refused connection sent
        // nothing; any later failure leaves every outcome unknown).
        result => {
            let answer = match leader_answer_of(&addr, result) {
                LeaderAnswer::NotLeader(hint) => LeaderAnswer::NotLeader(hint),
                LeaderAnswer::Deposed(hint) => LeaderAnswer::Deposed(hint),
                LeaderAnswer::Failed(e) => LeaderAnswer::Failed(e),
                LeaderAnswer::Done(_) => unreachable!("every Done is matched above"),
            };
            vec![answer; batch.len()]
        }
    };
    for (f, answer) in batch.into_iter().zip(answers) {
        let _ = f.reply.send(answer.map_err(ServiceError::from));
    }
}

/// One write in a call of its own, as the request it serves (its id goes in the call).
async fn forward_alone(rpc: &RpcClient, addr: &str, f: Forward) {
    let call = rpc.call_leader(addr, WRITE_PATH, &f.req, f.deadline);
    let answer = match f.request_id {
        Some(id) => REQUEST_ID.scope(id, call).await,
        None => call.await,
    };
    let _ = f.reply.send(answer.map_err(ServiceError::from));
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::body::Bytes;
    use axum::routing::post;

    use super::*;
    use crate::order::{LineItem, NewOrder, OrderOp};

    /// What the fake leader saw: the number of writes in each call, by route.
    type Calls = Arc<Mutex<Vec<(&'static str, usize)>>>;

    /// Write `n`, which the fake leader answers `NotLeader(Some(n))`: each answer is told
    /// apart by the write it belongs to.
    fn write(n: u64) -> WriteRequest {
        WriteRequest {
            op: OrderOp::Create(NewOrder {
                customer_id: "c".into(),
                items: vec![LineItem {
                    sku: "s".into(),
                    quantity: 1,
                    unit_price_cents: 1,
                }],
                note: None,
            }),
            idempotency_key: Some(n.to_string()),
        }
    }

    fn answer_for(req: &WriteRequest) -> LeaderAnswer<CommandOutcome> {
        LeaderAnswer::NotLeader(req.idempotency_key.as_ref().map(|k| k.parse().unwrap()))
    }

    /// A fake leader on loopback: each call waits `delay` (so that writes queue behind the
    /// calls in flight), then answers each write (`batch_route`: also on the batch route,
    /// with `drop_last` leaving the last answer out).
    async fn fake_leader(batch_route: bool, drop_last: bool, delay: Duration) -> (String, Calls) {
        let calls: Calls = Default::default();
        let mut router = axum::Router::new().route(
            WRITE_PATH,
            post({
                let calls = calls.clone();
                move |body: Bytes| async move {
                    calls.lock().unwrap().push((WRITE_PATH, 1));
                    tokio::time::sleep(delay).await;
                    let req: WriteRequest = crate::codec::decode(&body).unwrap();
                    crate::codec::encode(&answer_for(&req)).unwrap()
                }
            }),
        );
        if batch_route {
            let calls = calls.clone();
            router = router.route(
                WRITE_BATCH_PATH,
                post(move |body: Bytes| async move {
                    let reqs: Vec<WriteRequest> = crate::codec::decode(&body).unwrap();
                    calls.lock().unwrap().push((WRITE_BATCH_PATH, reqs.len()));
                    tokio::time::sleep(delay).await;
                    let mut answers: Vec<_> = reqs.iter().map(answer_for).collect();
                    if drop_last {
                        answers.pop();
                    }
                    crate::codec::encode(&LeaderAnswer::<_, RpcError>::Done(answers)).unwrap()
                }),
            );
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, router).await });
        (addr, calls)
    }

    fn forwarder() -> WriteForwarder {
        WriteForwarder::new(RpcClient::new(
            None,
            Arc::new(crate::rpc::PeerDirectory::new(2, "127.0.0.1:1".into())),
            Arc::new(
                crate::rpc::cluster_id::ClusterId::load(std::path::Path::new("/nonexistent"))
                    .unwrap(),
            ),
        ))
    }

    /// Forwards writes 0..n at once; returns each one's answer, in order.
    async fn forward_all(addr: &str, n: u64) -> Vec<Answer<CommandOutcome>> {
        let forwarder = forwarder();
        let deadline = Instant::now() + Duration::from_secs(20);
        let sends = (0..n).map(|i| forwarder.forward(addr.to_string(), write(i), deadline));
        futures_util::future::join_all(sends).await
    }

    /// Forwards writes 0..n to a fake leader (`batch_route`, 50 ms a call), checks that
    /// write `i` got the answer the leader gives write `i` (`answer_for`), and returns the
    /// calls the leader saw.
    async fn forward_answered_in_place(batch_route: bool, n: u64) -> Vec<(&'static str, usize)> {
        let (addr, calls) = fake_leader(batch_route, false, Duration::from_millis(50)).await;
        for (i, answer) in forward_all(&addr, n).await.into_iter().enumerate() {
            assert_eq!(answer, LeaderAnswer::NotLeader(Some(i as u64)));
        }
        let calls = calls.lock().unwrap().clone();
        calls
    }

    #[tokio::test]
    async fn queued_writes_go_in_batches_and_each_gets_its_own_answer() {
        let calls = forward_answered_in_place(true, 40).await;
        assert_eq!(calls.iter().map(|(_, n)| n).sum::<usize>(), 40, "{calls:?}");
        assert!(calls.len() <= MAX_IN_FLIGHT + 2, "40 writes took {calls:?}");
        assert!(calls
            .iter()
            .any(|(path, n)| *path == WRITE_BATCH_PATH && *n > 1));
    }

    #[tokio::test]
    async fn a_leader_without_the_batch_route_gets_the_writes_one_by_one() {
        let calls = forward_answered_in_place(false, 12).await;
        let alone = calls.iter().filter(|(path, _)| *path == WRITE_PATH).count();
        assert_eq!(alone, 12, "{calls:?}");
    }

    #[tokio::test]
    async fn an_answer_missing_a_write_leaves_every_outcome_in_its_batch_unknown() {
        let (addr, calls) = fake_leader(true, true, Duration::from_millis(50)).await;
        let answers = forward_all(&addr, 20).await;
        let calls = calls.lock().unwrap().clone();
        let batched: usize = calls
            .iter()
            .filter(|(path, _)| *path == WRITE_BATCH_PATH)
            .map(|(_, n)| n)
            .sum();
        assert!(batched > 0, "{calls:?}");
        let unknown = answers
            .iter()
            .filter(|a| matches!(a, LeaderAnswer::Failed(ServiceError::Timeout(_))))
            .count();
        // Writes sent alone got their answers; every batched one is a timeout, not a guess.
        assert_eq!(unknown, batched, "{answers:?}");
    }

    /// Forwards writes 0..`MAX_IN_FLIGHT` to the fake leader at `addr`, one at a time, each
    /// once the one before reached it: each call holds one of the leader's slots.
    async fn take_every_slot(
        forwarder: &WriteForwarder,
        addr: &str,
        calls: &Calls,
    ) -> Vec<tokio::task::JoinHandle<Answer<CommandOutcome>>> {
        let later = Instant::now() + Duration::from_secs(20);
        let mut held = Vec::new();
        for i in 0..MAX_IN_FLIGHT as u64 {
            let (forwarder, addr) = (forwarder.clone(), addr.to_string());
            held.push(tokio::spawn(async move {
                forwarder.forward(addr, write(i), later).await
            }));
            let deadline = Instant::now() + Duration::from_secs(10);
            while calls.lock().unwrap().len() <= i as usize {
                assert!(
                    Instant::now() < deadline,
                    "call {i} never reached the leader"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        held
    }

    #[tokio::test]
    async fn a_write_still_queued_at_its_deadline_is_answered_unsent() {
        let (addr, calls) = fake_leader(true, false, Duration::from_secs(2)).await;
        let forwarder = forwarder();
        // Four calls of one write each hold the four slots for 2 s...
        let busy = take_every_slot(&forwarder, &addr, &calls).await;
        // ...while a write with 100 ms left waits for one.
        let late = forwarder
            .forward(
                addr.clone(),
                write(9),
                Instant::now() + Duration::from_millis(100),
            )
            .await;
        assert!(
            matches!(late, LeaderAnswer::Failed(ServiceError::Unavailable(_))),
            "{late:?}"
        );
        for (i, task) in busy.into_iter().enumerate() {
            assert_eq!(task.await.unwrap(), LeaderAnswer::NotLeader(Some(i as u64)));
        }
        assert_eq!(
            calls.lock().unwrap().len(),
            MAX_IN_FLIGHT,
            "the late write was not sent"
        );
    }

    /// After a failover, a write for the new leader goes at once, though every slot of the
    /// old leader (frozen: its calls are held until their deadlines) is taken. It used to
    /// wait behind them and be answered unsent at its deadline.
    #[tokio::test]
    async fn a_write_for_a_new_leader_does_not_wait_behind_calls_to_the_old_one() {
        let (old, old_calls) = fake_leader(true, false, Duration::from_secs(10)).await;
        let (new, _) = fake_leader(true, false, Duration::ZERO).await;
        let forwarder = forwarder();
        let held = take_every_slot(&forwarder, &old, &old_calls).await;
        let answer = forwarder
            .forward(new, write(9), Instant::now() + Duration::from_secs(2))
            .await;
        assert_eq!(
            answer,
            LeaderAnswer::NotLeader(Some(9)),
            "answered by the new leader"
        );
        held.into_iter().for_each(|t| t.abort());
    }
}
