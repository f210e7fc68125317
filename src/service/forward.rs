//! Batching of the writes a follower forwards to the leader. Sent one HTTP request each, the
//! forwarded writes cost the leader a request per order on top of the order itself: creates
//! spread over three nodes ran 15-25 % slower than the same load sent to the leader alone.
//! A `WriteForwarder` sends a write at once when a call slot is free (so batching adds no wait
//! of its own); writes that arrive while `MAX_IN_FLIGHT` calls are out queue and go together
//! in the next call (`rpc::WRITE_BATCH_PATH`), where the leader proposes each as if it had come
//! alone and answers each. Every write keeps its own answer, so the caller's retry rules
//! (`write`) are the same as for a write forwarded alone; a call that fails gives each of its
//! writes the failure (a timeout leaves each outcome unknown). A leader that does not know
//! the batch route (an older build) gets the writes one by one. A write that goes alone
//! carries its client request's id to the leader's log; a batch carries none.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use super::error::{Answer, ServiceError};
use crate::order::CommandOutcome;
use crate::rpc::client::{leader_answer_of, CallError, RpcClient};
use crate::rpc::{
    LeaderAnswer, RpcError, WriteRequest, MAX_FORWARD_BATCH, MAX_FORWARD_BATCH_BYTES, REQUEST_ID,
    WRITE_BATCH_PATH, WRITE_PATH,
};

/// Forward calls out at once; while they are, writes queue and form the next batch.
const MAX_IN_FLIGHT: usize = 4;
/// Writes waiting for a call before senders wait too.
const QUEUE: usize = 4096;

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
    tx: mpsc::Sender<Forward>,
}

impl WriteForwarder {
    /// Starts the batching task on the current runtime.
    pub fn start(rpc: RpcClient) -> WriteForwarder {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(rpc, rx));
        WriteForwarder { tx }
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
        if self.tx.send(forward).await.is_err() {
            return LeaderAnswer::Failed(ServiceError::Unavailable("node is shutting down".into()));
        }
        // The call answers by its deadline (a little past it: see `call_leader`).
        match answer.await {
            Ok(answer) => answer,
            Err(_) => LeaderAnswer::Failed(ServiceError::OutcomeUnknown(
                "the forwarded write's answer was lost".into(),
            )),
        }
    }
}

async fn run(rpc: RpcClient, mut rx: mpsc::Receiver<Forward>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // A write for another leader than the batch before it starts the next batch.
    let mut carried: Option<Forward> = None;
    loop {
        let first = match carried.take() {
            Some(f) => f,
            None => match rx.recv().await {
                Some(f) => f,
                None => return,
            },
        };
        // Waiting for a free slot is what lets the next batch grow.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.req.approx_encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_FORWARD_BATCH && bytes < MAX_FORWARD_BATCH_BYTES {
            let Ok(next) = rx.try_recv() else { break };
            if next.addr != batch[0].addr {
                carried = Some(next);
                break;
            }
            bytes += next.req.approx_encoded_len();
            batch.push(next);
        }
        // Callers that gave up (their request ended) need no answer.
        batch.retain(|f| !f.reply.is_closed());
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

/// One call to the leader for `batch` (all for the same address), answering each write.
async fn call(rpc: &RpcClient, batch: Vec<Forward>) {
    let addr = batch[0].addr.clone();
    if batch.len() == 1 {
        let f = batch.into_iter().next().expect("one");
        forward_alone(rpc, &addr, f).await;
        return;
    }
    let deadline = batch.iter().map(|f| f.deadline).min().expect("not empty");
    let reqs: Vec<&WriteRequest> = batch.iter().map(|f| &f.req).collect();
    let answers = match rpc
        .try_call_leader::<_, Vec<LeaderAnswer<CommandOutcome>>>(
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
        result => {
            let answer = match leader_answer_of(&addr, result) {
                LeaderAnswer::Done(_) => unreachable!("answers are matched above"),
                LeaderAnswer::NotLeader(hint) => LeaderAnswer::NotLeader(hint),
                LeaderAnswer::Deposed(hint) => LeaderAnswer::Deposed(hint),
                LeaderAnswer::Failed(e) => LeaderAnswer::Failed(e),
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
