//! The node's recent change events, each serialized once, shared by every change-feed stream.
//!
//! One task per node (`EventRing::start`) follows the applied revision: it reads each new
//! change from the change log once, writes it as a complete server-sent event (`id:`,
//! `event:`, `data:` a `wire::ChangeJson`) and appends it to a bounded ring of the newest
//! events. A stream that is caught up copies bytes from the ring (several events per chunk, so
//! one socket write carries them all) and filters them by the customer and status kept beside
//! each event, without reading the store or serializing anything itself. A stream behind the
//! ring reads the log on its own (`format_event`), as fast as its client takes events. Without
//! the ring, a hundred subscribers meant a hundred log reads and JSON serializations per change.
//! While a node has no subscriber the task only follows the revision, reading nothing. If it
//! cannot read the log for `FAILED_AFTER`, or ends for any reason but the node stopping, it
//! raises `failed`: caught-up streams then end with `feed.error`, so that their clients go to
//! another node. It keeps trying meanwhile, and lowers `failed` again after a good read (or
//! when the last subscriber has gone: a new stream reads the log itself first).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::order::{Change, OrderStatus};
use crate::store::OrderReader;
use crate::wire::ChangeJson;

/// At most this many events are kept...
const MAX_EVENTS: usize = 8192;
/// ...and at most this many bytes of them (large orders make large events).
const MAX_BYTES: usize = 16 << 20;
/// How long the follower's reads may keep failing before streams are sent elsewhere (one
/// failed read is retried; a stream waits meanwhile).
const FAILED_AFTER: Duration = Duration::from_secs(2);
/// Changes the follower task reads from the log at once (an apply chunk's worth: orders may be
/// large, and the page is held while it is formatted).
const READ_BATCH: usize = 64;

/// One change as a complete server-sent event, with what filters look at.
pub(super) struct RingEvent {
    pub revision: u64,
    pub customer_id: String,
    pub status: OrderStatus,
    pub bytes: Bytes,
}

impl RingEvent {
    pub fn of(change: &Change) -> RingEvent {
        RingEvent {
            revision: change.revision,
            customer_id: change.order.customer_id.clone(),
            status: change.order.status,
            bytes: format_event(change),
        }
    }
}

/// `change` as a server-sent event: `id: REV`, `event: KIND`, `data: JSON`, a blank line.
pub(super) fn format_event(change: &Change) -> Bytes {
    let data = ChangeJson::from(change);
    let json = serde_json::to_vec(&data).expect("a ChangeJson always serializes");
    let mut out = BytesMut::with_capacity(json.len() + 64);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(change.revision.to_string().as_bytes());
    out.extend_from_slice(b"\nevent: ");
    out.extend_from_slice(data.kind.as_bytes());
    // Compact JSON has no newline in it: one `data:` line.
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    out.freeze()
}

/// What `EventRing::take` found for a stream.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Taken {
    /// Events from the revision asked for on (`bytes` may be empty if a filter passed them
    /// all over); `next` is the revision after the last one looked at, `last_sent` the last
    /// one put in `bytes`.
    Events {
        bytes: Bytes,
        next: u64,
        last_sent: Option<u64>,
    },
    /// The ring no longer (or not yet) holds that revision: read the log.
    NotHeld,
}

#[derive(Default)]
struct Ring {
    /// Consecutive revisions, oldest first.
    events: VecDeque<Arc<RingEvent>>,
    bytes: usize,
}

/// The shared ring and how far it has read; see the module comment.
pub(super) struct EventRing {
    ring: RwLock<Ring>,
    /// Every revision up to this one can be read, from the ring or the log. Streams wait on
    /// it rather than on the store's revision, so that they find new changes in the ring.
    head: tokio::sync::watch::Sender<u64>,
    /// The head again, sent only when it has moved into the next `HEAD_STEP` revisions: a
    /// stream gathering changes (`batch_ms`) waits on this one, so that it is not woken by
    /// every change.
    head_in_steps: tokio::sync::watch::Sender<u64>,
    /// True while the follower task cannot read the log (or has died): no new events come.
    failed: tokio::sync::watch::Sender<bool>,
}

/// How far the head moves between sends of `head_in_steps`.
pub(super) const HEAD_STEP: u64 = 256;

impl EventRing {
    /// A ring, and its follower task, starting after revision `newest`; the task reads the
    /// log only while `subscribers` is above 0, and ends when the node stops.
    pub fn start(
        reader: OrderReader,
        newest: u64,
        subscribers: Arc<AtomicUsize>,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Arc<EventRing> {
        let ring = Arc::new(EventRing {
            ring: RwLock::new(Ring::default()),
            head: tokio::sync::watch::Sender::new(newest),
            head_in_steps: tokio::sync::watch::Sender::new(newest),
            failed: tokio::sync::watch::Sender::new(false),
        });
        let follower = Follower {
            ring: ring.clone(),
            reader,
            subscribers,
            stopping,
        };
        tokio::spawn(follower.run(newest + 1));
        ring
    }

    pub fn watch_failed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.failed.subscribe()
    }

    pub fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.head.subscribe()
    }

    pub fn watch_head_in_steps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.head_in_steps.subscribe()
    }

    /// Every revision up to `newest` can now be read.
    fn set_head(&self, newest: u64) {
        self.head.send_replace(newest);
        self.head_in_steps.send_if_modified(|sent| {
            let moved = newest / HEAD_STEP != *sent / HEAD_STEP;
            if moved {
                *sent = newest;
            }
            moved
        });
    }

    /// Events from revision `from` on that `wants` accepts, up to about `max_bytes` (always
    /// at least one event when one is wanted and held).
    pub fn take(&self, from: u64, max_bytes: usize, wants: impl Fn(&RingEvent) -> bool) -> Taken {
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        let Some(first) = ring.events.front().map(|e| e.revision) else {
            return Taken::NotHeld;
        };
        let last = first + ring.events.len() as u64 - 1;
        if from < first || from > last {
            return Taken::NotHeld;
        }
        let mut out = BytesMut::new();
        let (mut next, mut last_sent) = (from, None);
        for event in ring.events.range((from - first) as usize..) {
            if !out.is_empty() && out.len() + event.bytes.len() > max_bytes {
                break;
            }
            next = event.revision + 1;
            if wants(event) {
                out.extend_from_slice(&event.bytes);
                last_sent = Some(event.revision);
            }
        }
        Taken::Events {
            bytes: out.freeze(),
            next,
            last_sent,
        }
    }

    /// Appends events that follow the newest held (or starts afresh after a gap).
    fn push(&self, events: Vec<RingEvent>) {
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        for event in events {
            let follows = ring
                .events
                .back()
                .is_none_or(|last| last.revision + 1 == event.revision);
            if !follows {
                ring.events.clear();
                ring.bytes = 0;
            }
            ring.bytes += event.bytes.len();
            ring.events.push_back(Arc::new(event));
            while ring.events.len() > MAX_EVENTS
                || (ring.bytes > MAX_BYTES && ring.events.len() > 1)
            {
                let old = ring.events.pop_front().expect("not empty");
                ring.bytes -= old.bytes.len();
            }
        }
    }
}

#[cfg(test)]
impl EventRing {
    /// Appends events and moves the head to the last one, as the follower task does.
    pub(super) fn append(&self, events: Vec<RingEvent>) {
        let last = events.last().map(|e| e.revision);
        self.push(events);
        if let Some(last) = last {
            self.set_head(last);
        }
    }
}

/// The follower task: reads each newly applied change once into the ring.
struct Follower {
    ring: Arc<EventRing>,
    reader: OrderReader,
    subscribers: Arc<AtomicUsize>,
    stopping: tokio::sync::watch::Receiver<bool>,
}

/// Any end of the task but the node stopping (a panic, an abort) leaves the ring `failed`.
impl Drop for Follower {
    fn drop(&mut self) {
        if !*self.stopping.borrow() {
            tracing::error!("the change feed's follower task ended; streams on this node end");
            self.ring.failed.send_replace(true);
        }
    }
}

impl Follower {
    async fn run(mut self, mut next: u64) {
        let mut revisions = self.reader.watch_revision();
        // Since when reads have failed without a good one between.
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            let seen = next - 1;
            tokio::select! {
                changed = revisions.wait_for(|r| *r > seen) => if changed.is_err() { return },
                _ = self.stopping.wait_for(|s| *s) => return,
            }
            if self.subscribers.load(Ordering::SeqCst) == 0 {
                // Nobody to serve: only move the head (a stream that starts now reads the log
                // up to it, and the ring starts afresh after it).
                let newest = *revisions.borrow();
                next = newest + 1;
                self.ring.set_head(newest);
                failing_since = None;
                self.ring
                    .failed
                    .send_if_modified(|f| std::mem::replace(f, false));
                continue;
            }
            loop {
                let from = next;
                let r = self.reader.clone();
                let page = match tokio::task::spawn_blocking(move || {
                    r.changes_from(from, READ_BATCH)
                })
                .await
                {
                    Ok(Ok(page)) => page,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "the change feed could not read the change log");
                        let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= FAILED_AFTER {
                            self.ring.failed.send_replace(true);
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        break;
                    }
                    // The read panicked, or the runtime is shutting down: `Drop` tells which.
                    Err(_) => return,
                };
                failing_since = None;
                self.ring
                    .failed
                    .send_if_modified(|f| std::mem::replace(f, false));
                if page.changes.is_empty() {
                    if next <= page.newest {
                        // `next` is no longer held (a snapshot installed past it, or trimmed):
                        // start afresh at the newest; streams behind read the log themselves.
                        next = page.newest + 1;
                        self.ring.set_head(page.newest);
                    }
                    break;
                }
                let full = page.changes.len() == READ_BATCH;
                next = page.changes.last().map(|c| c.revision + 1).unwrap_or(next);
                self.ring
                    .push(page.changes.iter().map(RingEvent::of).collect());
                self.ring.set_head(next - 1);
                if !full {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(revision: u64, customer: &str, bytes: &str) -> RingEvent {
        RingEvent {
            revision,
            customer_id: customer.into(),
            status: OrderStatus::Pending,
            bytes: Bytes::from(bytes.to_string()),
        }
    }

    fn ring() -> EventRing {
        EventRing {
            ring: RwLock::new(Ring::default()),
            head: tokio::sync::watch::Sender::new(0),
            head_in_steps: tokio::sync::watch::Sender::new(0),
            failed: tokio::sync::watch::Sender::new(false),
        }
    }

    #[test]
    fn the_head_in_steps_is_sent_only_when_it_moves_into_another_step() {
        let r = ring();
        let mut steps = r.watch_head_in_steps();
        for newest in 1..HEAD_STEP {
            r.set_head(newest);
        }
        assert_eq!(*r.watch_head().borrow(), HEAD_STEP - 1);
        assert!(
            !steps.has_changed().unwrap(),
            "nothing sent within the first step"
        );
        r.set_head(HEAD_STEP + 3);
        assert!(steps.has_changed().unwrap());
        assert_eq!(*steps.borrow_and_update(), HEAD_STEP + 3);
        r.set_head(2 * HEAD_STEP - 1);
        assert!(!steps.has_changed().unwrap());
        // A jump (the ring starting afresh after a snapshot install) is a move too.
        r.set_head(10 * HEAD_STEP);
        assert_eq!(*steps.borrow_and_update(), 10 * HEAD_STEP);
    }

    fn events(taken: Taken) -> (String, u64, Option<u64>) {
        match taken {
            Taken::Events {
                bytes,
                next,
                last_sent,
            } => (String::from_utf8(bytes.to_vec()).unwrap(), next, last_sent),
            Taken::NotHeld => panic!("expected events"),
        }
    }

    #[test]
    fn take_gives_held_events_filtered_and_cut_by_size() {
        let r = ring();
        assert_eq!(r.take(1, 100, |_| true), Taken::NotHeld);
        r.push(vec![
            event(5, "a", "e5;"),
            event(6, "b", "e6;"),
            event(7, "a", "e7;"),
        ]);
        assert_eq!(r.take(4, 100, |_| true), Taken::NotHeld, "older than held");
        assert_eq!(r.take(8, 100, |_| true), Taken::NotHeld, "newer than held");
        assert_eq!(
            events(r.take(5, 100, |_| true)),
            ("e5;e6;e7;".into(), 8, Some(7))
        );
        assert_eq!(
            events(r.take(6, 100, |_| true)),
            ("e6;e7;".into(), 8, Some(7))
        );
        // A filter passes events over but still moves the position past them.
        let only_a = |e: &RingEvent| e.customer_id == "a";
        assert_eq!(events(r.take(6, 100, only_a)), ("e7;".into(), 8, Some(7)));
        let only_b = |e: &RingEvent| e.customer_id == "b";
        assert_eq!(events(r.take(7, 100, only_b)), ("".into(), 8, None));
        // A size cap stops between events, but one event always goes.
        assert_eq!(
            events(r.take(5, 7, |_| true)),
            ("e5;e6;".into(), 7, Some(6))
        );
        assert_eq!(events(r.take(5, 1, |_| true)), ("e5;".into(), 6, Some(5)));
    }

    #[tokio::test]
    async fn a_follower_that_ends_but_for_the_node_stopping_marks_the_ring_failed() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, sm) = crate::store::open(&crate::store::StoreConfig::new(dir.path())).unwrap();
        let start = |stopping| {
            let ring = Arc::new(ring());
            let follower = Follower {
                ring: ring.clone(),
                reader: sm.reader(),
                subscribers: Default::default(),
                stopping,
            };
            (ring, tokio::spawn(follower.run(1)))
        };
        // Stopped with the node: not failed.
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let (ring, task) = start(stopping);
        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the follower ends when the node stops")
            .unwrap();
        assert!(!*ring.watch_failed().borrow());
        // Ended otherwise (aborted here; a panic unwinds the same way): failed.
        let (_stop, stopping) = tokio::sync::watch::channel(false);
        let (ring, task) = start(stopping);
        let mut failed = ring.watch_failed();
        assert!(!*failed.borrow_and_update());
        task.abort();
        tokio::time::timeout(Duration::from_secs(10), failed.wait_for(|f| *f))
            .await
            .expect("an aborted follower leaves the ring failed")
            .unwrap();
    }

    #[test]
    fn the_ring_is_bounded_and_restarts_after_a_gap() {
        let r = ring();
        r.push(
            (1..=MAX_EVENTS as u64 + 10)
                .map(|n| event(n, "a", "x"))
                .collect(),
        );
        assert_eq!(
            r.take(10, 100, |_| true),
            Taken::NotHeld,
            "dropped from the front"
        );
        assert!(matches!(r.take(11, 100, |_| true), Taken::Events { .. }));
        let newest = MAX_EVENTS as u64 + 10;
        // A gap (a snapshot skipped revisions): the ring holds only what follows it.
        r.push(vec![event(newest + 5, "a", "y")]);
        assert_eq!(r.take(newest, 100, |_| true), Taken::NotHeld);
        assert_eq!(
            events(r.take(newest + 5, 100, |_| true)),
            ("y".into(), newest + 6, Some(newest + 5))
        );
        // Bytes are bounded too, keeping at least the newest event.
        r.push(vec![event(newest + 6, "a", &"z".repeat(MAX_BYTES + 1))]);
        assert_eq!(r.take(newest + 5, 100, |_| true), Taken::NotHeld);
        assert!(matches!(
            r.take(newest + 6, 100, |_| true),
            Taken::Events { .. }
        ));
    }
}
