//! `GET /api/orders/changes`: the change feed, as Server-Sent Events.
//!
//! Each event is one applied change from this node's change log (`store::changes`): `id:` its
//! revision, `event:` `order.created` or `order.status_changed`, `data:` a `wire::ChangeJson`.
//! Only committed, applied changes exist there, in revision order, the same on every node; a
//! follower's stream may trail the leader's but never differs from it. A subscriber starts
//! after `?since=` (or the `Last-Event-ID` it reconnects with), else after the newest change;
//! `customer_id` and `status` filter (by the order as the change left it).
//!
//! A filtered stream that passed changes over says how far it got with an event that has only
//! an `id:` (a progress mark, kept by EventSource as its Last-Event-ID), when it has caught up
//! and at heartbeat pace while it reads a long log.
//!
//! A stream that is caught up takes its events from the node's shared ring of serialized
//! events (`event_ring`), several to a chunk; one behind the ring reads the log a page at a
//! time (a page held per stream, sent in chunks of about `CHUNK_BYTES`). Either way it goes
//! only as fast as the client takes chunks (a slow client is held back by its own socket, not
//! by memory here). One that is more than `max_lag` revisions behind and took nothing for
//! longer than `lag_grace` (its socket stayed full: a consumer catching up takes events
//! without pause) gets a final `feed.lagged` event naming the revision to resume from, and is
//! disconnected; one whose position was trimmed meanwhile gets `feed.gone`; one this node can
//! no longer serve (its log unreadable) gets `feed.error`, to resume elsewhere. With `--auth`,
//! a stream looks its caller up again whenever its node's users or roles change, and ends
//! with `feed.unauthorized` once the token is revoked or its role no longer grants
//! `orders:read`. A node serves
//! at most `max_subscribers` streams (503 beyond). Comment lines keep idle streams alive.
//! Streams end when the node shuts down. With `batch_ms`, a caught-up stream woken by a new
//! change first waits until that long after its last chunk (or until `GATHER_AT_MOST` revisions
//! came), so that a busy feed goes out in fewer, larger chunks: fewer wake-ups and socket
//! writes on both sides. It waits on the ring's head in steps, not on every change.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::{Bytes, BytesMut};

use super::auth::{Access, AccessCheck, Caller};
use super::error::ApiError;
use super::event_ring::{format_event, EventRing, Taken};
use super::orders::{parse_query, query_value};
use super::AppState;
use crate::order::{Change, OrderStatus};
use crate::store::OrderReader;
use crate::wire::ChangeJson;

/// `ordo serve`'s defaults for the feed.
pub const DEFAULT_HEARTBEAT_MS: u64 = 15_000;
pub const DEFAULT_MAX_SUBSCRIBERS: usize = 1000;
pub const DEFAULT_MAX_LAG: u64 = 10_000;
pub const DEFAULT_LAG_GRACE_MS: u64 = 30_000;

/// The most `batch_ms` a subscriber may ask for.
pub const MAX_BATCH_MS: u64 = 1000;
/// A gathering stream stops waiting once this many revisions have come (at most one
/// `event_ring::HEAD_STEP` more): an eighth of the events the ring holds, so that it takes
/// them long before the ring lets them go. (A cap of 128, about one chunk, cut the gain of
/// 50 ms to that of 20 ms.)
const GATHER_AT_MOST: u64 = 1024;

/// Changes a stream behind the ring reads from the log at once.
const READ_BATCH: usize = 256;
/// And at most about this much memory of changes (the largest orders are tens of KB each):
/// what a stream behind the ring holds while its client takes them.
const READ_BATCH_BYTES: usize = 256 * 1024;
/// Pages read from the log at once, per process (a node), by the streams behind the ring. A
/// read waits while a snapshot is installed; a thousand streams each waiting on a blocking
/// thread would take tokio's whole blocking pool (512) from the node's other reads until the
/// install ends.
static LOG_READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(8);

/// The feed's settings and its subscribers, per node.
pub struct ChangeFeed {
    /// This node's Raft server state (its leader and membership), for streams to notice the
    /// node cut off from its cluster.
    cluster: ClusterView,
    pub heartbeat: Duration,
    pub max_subscribers: usize,
    pub max_lag: u64,
    pub lag_grace: Duration,
    /// Shared with the ring's follower task, which reads the log only while there are any.
    subscribers: Arc<AtomicUsize>,
    /// True once the node is stopping: streams end.
    stopping: tokio::sync::watch::Receiver<bool>,
    ring: Arc<EventRing>,
}

impl ChangeFeed {
    pub fn new(
        heartbeat: Duration,
        max_subscribers: usize,
        max_lag: u64,
        lag_grace: Duration,
        reader: OrderReader,
        stopping: tokio::sync::watch::Receiver<bool>,
        cluster: ClusterView,
    ) -> Arc<ChangeFeed> {
        // (A store that cannot say its revision fails every stream's first read too; the
        // ring then starts from its first read.)
        let newest = reader.changes_from(0, 0).map(|p| p.newest).unwrap_or(0);
        let subscribers = Arc::new(AtomicUsize::new(0));
        let ring = EventRing::start(reader, newest, subscribers.clone(), stopping.clone());
        Arc::new(ChangeFeed {
            cluster,
            ring,
            heartbeat,
            max_subscribers,
            max_lag: max_lag.max(1),
            lag_grace,
            subscribers,
            stopping,
        })
    }

    /// A subscriber slot, if one is free.
    fn subscribe(self: &Arc<Self>) -> Option<Slot> {
        let taken = self
            .subscribers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_subscribers).then_some(n + 1)
            })
            .ok()?;
        crate::telemetry::feed_subscribers(taken as f64 + 1.0);
        Some(Slot(self.clone()))
    }
}

/// How long a node may know no leader (or be out of the membership) before its caught-up
/// streams end with `feed.error`, so that their clients watch through another node: a
/// failover takes a second or two, a node cut off from the cluster stays so.
const CUT_OFF_GRACE: Duration = Duration::from_secs(5);
/// A leader that has heard from no quorum for this long counts as cut off: a second, or three
/// heartbeats if those are slower (a quorum acknowledges each heartbeat round).
fn quorum_lost_after(raft_heartbeat: Duration) -> Duration {
    (3 * raft_heartbeat).max(Duration::from_secs(1))
}

/// What a stream needs of this node's Raft state: who it is, and openraft's server metrics
/// (they change only with the vote, the role, the leader or the membership).
#[derive(Clone)]
pub struct ClusterView {
    id: crate::raft::NodeId,
    server: ServerMetrics,
    /// The full metrics, for a leader's last quorum acknowledgement (looked at once a second:
    /// they change with every write).
    metrics: tokio::sync::watch::Receiver<FullMetrics>,
    /// When a stream first saw the node cut off (each stream has its own copy).
    cut_off_since: Option<tokio::time::Instant>,
    /// `quorum_lost_after` of the node's Raft heartbeat.
    quorum_lost_after: Duration,
}

type FullMetrics = openraft::RaftMetrics<crate::raft::NodeId, openraft::BasicNode>;

type ServerMetrics = tokio::sync::watch::Receiver<
    openraft::metrics::RaftServerMetrics<crate::raft::NodeId, openraft::BasicNode>,
>;

impl ClusterView {
    /// Node `id`'s view, from its Raft's `server_metrics()` and `metrics()`, and its Raft
    /// heartbeat interval.
    pub fn new(
        id: crate::raft::NodeId,
        server: ServerMetrics,
        metrics: tokio::sync::watch::Receiver<FullMetrics>,
        raft_heartbeat: Duration,
    ) -> ClusterView {
        ClusterView {
            id,
            server,
            metrics,
            cut_off_since: None,
            quorum_lost_after: quorum_lost_after(raft_heartbeat),
        }
    }

    /// No leader known, out of the membership, or a leader that has heard from no quorum for
    /// a second or three heartbeats (openraft 0.9 keeps a leader cut off in a minority a
    /// leader).
    fn cut_off(&self) -> bool {
        let m = self.server.borrow();
        let membership = &m.membership_config;
        let removed = membership.log_id().is_some()
            && !membership
                .membership()
                .nodes()
                .any(|(id, _)| *id == self.id);
        let alone = m.state == openraft::ServerState::Leader
            && self
                .metrics
                .borrow()
                .millis_since_quorum_ack
                .is_some_and(|ms| ms > self.quorum_lost_after.as_millis() as u64);
        m.current_leader.is_none() || removed || alone
    }

    /// Returns once this node has been cut off from its cluster for `grace` on end (never if
    /// the Raft core has stopped: the node is stopping then). Since when is kept across calls:
    /// a stream's wait for it is cut short by every heartbeat.
    async fn cut_off_for(&mut self, grace: Duration) {
        loop {
            let now = tokio::time::Instant::now();
            // When to look again, besides on a change of the server metrics.
            let next_look = if self.cut_off() {
                let since = *self.cut_off_since.get_or_insert(now);
                if now >= since + grace {
                    return;
                }
                Some(since + grace)
            } else {
                self.cut_off_since = None;
                // A leader's quorum acknowledgements are not in the server metrics: look.
                let leading = self.server.borrow().state == openraft::ServerState::Leader;
                leading.then_some(now + self.quorum_lost_after)
            };
            let look = async {
                match next_look {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = look => {}
                changed = self.server.changed() => {
                    if changed.is_err() {
                        return std::future::pending().await;
                    }
                }
            }
        }
    }
}

/// A taken subscriber slot, given back when the stream is dropped.
struct Slot(Arc<ChangeFeed>);

impl Drop for Slot {
    fn drop(&mut self) {
        let left = self.0.subscribers.fetch_sub(1, Ordering::SeqCst) - 1;
        crate::telemetry::feed_subscribers(left as f64);
    }
}

/// Which changes a subscriber wants.
struct Filter {
    customer_id: Option<String>,
    status: Option<OrderStatus>,
}

impl Filter {
    fn wants(&self, customer_id: &str, status: OrderStatus) -> bool {
        self.customer_id.as_ref().is_none_or(|c| c == customer_id)
            && self.status.is_none_or(|s| s == status)
    }
}

/// A revision as digits, around blanks (a header's value may carry them).
fn parse_digits(raw: &str) -> Option<u64> {
    super::json::decimal_u64(raw.trim())
}

/// Parses a revision given by the client (`since`, `Last-Event-ID`).
fn parse_revision(name: &str, raw: &str) -> Result<u64, ApiError> {
    parse_digits(raw).ok_or_else(|| {
        ApiError::InvalidQuery(format!(
            "{name} must be a revision (a non-negative integer), got {raw:?}"
        ))
    })
}

#[utoipa::path(
    get, path = "/api/orders/changes", tag = "orders", operation_id = "watch_orders",
    params(super::openapi::ChangesQuery, super::openapi::LastEventIdHeader),
    responses(
        (status = 200, description = "An endless text/event-stream: events `order.created` and \
            `order.status_changed` (`id:` the revision, `data:` a ChangeJson); a final \
            `feed.lagged` or `feed.error` (`data: {\"resume_from\": REV}`: resume after REV, \
            on another node for `feed.error`), `feed.unauthorized` (with `--auth`: the token \
            was revoked or its role lost orders:read; `data` adds a `code`, unauthorized or \
            forbidden, and a `message`) or `feed.gone` \
            (`data: {\"oldest_revision\": REV}`) before the node ends a stream; events with \
            only an `id:` (how far a filtered stream got); comment lines as heartbeats",
         content_type = "text/event-stream", body = ChangeJson),
        (status = 410, description = "`since` is older than the node's change log: re-list \
            (GET /api/orders gives the revision to watch from) and watch from there \
            (code: revision_gone; `oldest_revision` names the oldest change held)",
         body = crate::wire::ErrorBody),
    )
)]
pub async fn changes(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = parse_query(query, &["since", "customer_id", "status", "batch_ms"])?;
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => Some(parse_revision(
            "Last-Event-ID",
            v.to_str()
                .map_err(|_| ApiError::InvalidQuery("Last-Event-ID is not ASCII".into()))?,
        )?),
        None => None,
    };
    let since = match query_value(&pairs, "since") {
        Some(raw) => Some(parse_revision("since", raw)?),
        None => None,
    };
    let status = match query_value(&pairs, "status") {
        None | Some("") => None,
        Some(s) => Some(
            OrderStatus::parse(s)
                .ok_or_else(|| ApiError::InvalidQuery(format!("unknown status {s:?}")))?,
        ),
    };
    let gather = match query_value(&pairs, "batch_ms") {
        None => Duration::ZERO,
        Some(raw) => match parse_digits(raw) {
            Some(ms) if ms <= MAX_BATCH_MS => Duration::from_millis(ms),
            _ => {
                return Err(ApiError::InvalidQuery(format!(
                    "batch_ms must be 0 to {MAX_BATCH_MS} (milliseconds), got {raw:?}"
                )))
            }
        },
    };
    let filter = Filter {
        customer_id: query_value(&pairs, "customer_id")
            .filter(|c| !c.is_empty())
            .map(String::from),
        status,
    };
    let slot = state
        .feed
        .subscribe()
        .ok_or_else(|| ApiError::Unavailable("this node serves its most change-feed subscribers; retry, or watch through another node".into()))?;
    let reader = state.reader.clone();
    // A node that cannot read its change log answers 503, as a stream it cannot feed ends
    // with `feed.error`: the client watches through another node (a 500 would end its watch).
    let unreadable = |e: String| {
        ApiError::Unavailable(format!(
            "this node cannot read its change log ({e}); watch through another node"
        ))
    };
    let bounds = {
        let reader = reader.clone();
        tokio::task::spawn_blocking(move || reader.changes_from(0, 0))
            .await
            .map_err(|e| unreadable(e.to_string()))?
            .map_err(|e| unreadable(e.to_string()))?
    };
    // A reconnecting EventSource repeats its first URL: its Last-Event-ID is the newer word.
    let after = last_event_id.or(since).unwrap_or(bounds.newest);
    if after == u64::MAX {
        return Err(ApiError::InvalidQuery(
            "no revision comes after 18446744073709551615".into(),
        ));
    }
    if after + 1 < bounds.oldest && after < bounds.newest {
        return Err(ApiError::RevisionGone {
            since: after,
            oldest: bounds.oldest,
        });
    }
    let mut feed = Feed::new(slot, reader, after, filter, gather);
    feed.access = caller.map(|Extension(caller)| caller.access);
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let chunk = feed.next_chunk().await?;
        Some((Ok::<Bytes, Infallible>(chunk), feed))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// One subscriber's position in the change log.
struct Feed {
    reader: OrderReader,
    ring: Arc<EventRing>,
    /// The revision to send next.
    next: u64,
    /// The last revision the client was told of (an event, or a progress mark).
    sent: u64,
    filter: Filter,
    /// Changes read from the log but not yet sent, from `next` on (a stream behind the ring).
    page: VecDeque<Change>,
    /// The ring's head: how far changes can be read.
    head: tokio::sync::watch::Receiver<u64>,
    /// The ring's follower cannot read the log: no new event will come from this node.
    failed: tokio::sync::watch::Receiver<bool>,
    cluster: ClusterView,
    stopping: tokio::sync::watch::Receiver<bool>,
    heartbeat: Duration,
    max_lag: u64,
    lag_grace: Duration,
    /// `batch_ms`: how long after its last chunk a caught-up stream gathers new changes.
    gather: Duration,
    /// The ring's head in steps, what a gathering stream waits on.
    head_in_steps: tokio::sync::watch::Receiver<u64>,
    /// When the client last took a chunk (the stream was last polled for one).
    last_taken: tokio::time::Instant,
    /// With `--auth`, the caller, looked up again whenever the users change.
    access: Option<AccessCheck>,
    /// A final event was sent.
    done: bool,
    _slot: Slot,
}

/// About this many bytes of events go out in one chunk (one socket write); a larger event
/// goes alone.
const CHUNK_BYTES: usize = 64 << 10;

impl Feed {
    /// A stream in `slot` of its node's feed, from the change after `after` on.
    fn new(slot: Slot, reader: OrderReader, after: u64, filter: Filter, gather: Duration) -> Feed {
        let feed = &slot.0;
        Feed {
            reader,
            ring: feed.ring.clone(),
            next: after + 1,
            sent: after,
            filter,
            page: VecDeque::new(),
            head: feed.ring.watch_head(),
            failed: feed.ring.watch_failed(),
            cluster: feed.cluster.clone(),
            stopping: feed.stopping.clone(),
            heartbeat: feed.heartbeat,
            max_lag: feed.max_lag,
            lag_grace: feed.lag_grace,
            gather,
            head_in_steps: feed.ring.watch_head_in_steps(),
            last_taken: tokio::time::Instant::now(),
            access: None,
            done: false,
            _slot: slot,
        }
    }

    /// The next bytes to send (one or more whole events, or a heartbeat), or `None` to end
    /// the stream.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        // How long the client took to ask for more after the last chunk was handed out.
        let waited = self.last_taken.elapsed();
        let chunk = self.find_chunk(waited).await;
        self.last_taken = tokio::time::Instant::now();
        chunk
    }

    async fn find_chunk(&mut self, waited: Duration) -> Option<Bytes> {
        // A client that took nothing for a while, now far behind the newest change: cut it
        // off with where to resume (it may reconnect and read on).
        let newest = *self.head.borrow();
        if waited > self.lag_grace && newest.saturating_sub(self.next) > self.max_lag {
            return Some(self.last_words(
                "feed.lagged",
                serde_json::json!({ "resume_from": self.next - 1 }),
            ));
        }
        loop {
            if *self.stopping.borrow() {
                return None;
            }
            if let Some(last_words) = self.access_lost().await {
                return Some(last_words);
            }
            if self.next <= *self.head.borrow() {
                let taken = self.ring.take(self.next, CHUNK_BYTES, |e| {
                    self.filter.wants(&e.customer_id, e.status)
                });
                let (bytes, next, last_sent) = match taken {
                    Taken::Events {
                        bytes,
                        next,
                        last_sent,
                    } => {
                        self.page.clear(); // back on the ring: a page read earlier is stale
                        (bytes, next, last_sent)
                    }
                    Taken::NotHeld => match self.read_log().await {
                        Ok(read) => read,
                        Err(last_words) => return Some(last_words),
                    },
                };
                self.next = next;
                if let Some(sent) = last_sent {
                    self.sent = sent;
                }
                if !bytes.is_empty() {
                    return Some(bytes);
                }
                // A filtered stream reading a long log may pass over changes for a while:
                // say how far it got at heartbeat pace, so that its client neither takes the
                // node for dead nor resumes from the start.
                if self.last_taken.elapsed() >= self.heartbeat && self.sent < self.next - 1 {
                    self.sent = self.next - 1;
                    return Some(Bytes::from(format!("id: {}\n\n", self.sent)));
                }
                continue;
            }
            if *self.failed.borrow() {
                // Caught up with a ring that no longer follows the log: send the client on.
                return Some(self.last_words(
                    "feed.error",
                    serde_json::json!({ "resume_from": self.next - 1 }),
                ));
            }
            // Caught up. A filtered stream may have passed changes it did not send: tell the
            // client how far it got (an event with only an `id:`, which EventSource keeps as
            // its Last-Event-ID without dispatching), so that it resumes from here.
            if self.sent < self.next - 1 {
                self.sent = self.next - 1;
                return Some(Bytes::from(format!("id: {}\n\n", self.sent)));
            }
            // Wait for a newer revision, the node stopping, the node cut off from its cluster
            // (no change will come: send the client to another node), or the time for a
            // heartbeat.
            let seen = self.next - 1;
            let mut cut_off = false;
            let access = &mut self.access;
            tokio::select! {
                changed = self.head.wait_for(|r| *r > seen) => {
                    changed.ok()?;
                }
                _ = self.stopping.wait_for(|s| *s) => return None,
                _ = self.failed.wait_for(|f| *f) => continue,
                _ = self.cluster.cut_off_for(CUT_OFF_GRACE) => cut_off = true,
                // The users changed: the caller is looked up again at the loop's top.
                _ = async {
                    match access {
                        Some(access) => access.users_changed().await,
                        None => std::future::pending().await,
                    }
                } => continue,
                // (From the last chunk, not from here: a wait cut short by a change above
                // must not put the heartbeat off.)
                _ = tokio::time::sleep_until(self.last_taken + self.heartbeat) => {
                    return Some(Bytes::from_static(b":\n\n"))
                }
            }
            if cut_off {
                return Some(self.last_words(
                    "feed.error",
                    serde_json::json!({ "resume_from": self.next - 1 }),
                ));
            }
            // Only here, caught up and woken by a change: a stream with changes waiting sends
            // at once, so gathering never slows one that is catching up.
            if !self.gather.is_zero() {
                let full = seen.saturating_add(GATHER_AT_MOST);
                tokio::select! {
                    _ = tokio::time::sleep_until(self.last_taken + self.gather) => {}
                    _ = self.head_in_steps.wait_for(|r| *r >= full) => {}
                    _ = self.stopping.wait_for(|s| *s) => return None,
                    _ = self.failed.wait_for(|f| *f) => {}
                }
            }
        }
    }

    /// Changes from `next` on read from the log itself (the stream is behind the ring):
    /// (events it wants, the revision after the last read, the last one sent); or the
    /// stream's last words.
    async fn read_log(&mut self) -> Result<(Bytes, u64, Option<u64>), Bytes> {
        let next = self.next;
        if self.page.front().is_none_or(|c| c.revision != next) {
            self.page.clear();
            let changes = self.read_page().await?;
            self.page.extend(changes);
        }
        let mut out = BytesMut::new();
        let mut last_sent = None;
        let mut after = next;
        while let Some(change) = self.page.front() {
            if out.len() >= CHUNK_BYTES {
                break;
            }
            after = change.revision + 1;
            if self
                .filter
                .wants(&change.order.customer_id, change.order.status)
            {
                out.extend_from_slice(&format_event(change));
                last_sent = Some(change.revision);
            }
            self.page.pop_front();
        }
        Ok((out.freeze(), after, last_sent))
    }

    /// Up to `READ_BATCH` changes (`READ_BATCH_BYTES`) from `next` on, from the log (at least
    /// one); or the stream's last words.
    async fn read_page(&mut self) -> Result<Vec<Change>, Bytes> {
        let reader = self.reader.clone();
        let next = self.next;
        // The turn is held by the blocking read itself: a stream dropped while its read waits
        // must not hand the turn on while the read still holds a thread.
        let turn = LOG_READS.acquire().await;
        let read = move || {
            let _turn = turn;
            reader.changes_within(next, READ_BATCH, READ_BATCH_BYTES)
        };
        let page = match tokio::task::spawn_blocking(read).await {
            Ok(Ok(page)) => page,
            // The store failed (or is shutting down): say so, so that a client does not come
            // straight back to this node for more of the same.
            _ => {
                return Err(self.last_words(
                    "feed.error",
                    serde_json::json!({ "resume_from": self.next - 1 }),
                ))
            }
        };
        if page.changes.is_empty() {
            if self.next <= page.newest {
                // Its next change is no longer held: trimmed while this subscriber was behind.
                return Err(self.last_words(
                    "feed.gone",
                    serde_json::json!({ "oldest_revision": page.oldest }),
                ));
            }
            // The log is behind the ring's head, which is only ever a revision the store has
            // published once written: should that ever be, send the client elsewhere rather
            // than ask again at once.
            return Err(self.last_words(
                "feed.error",
                serde_json::json!({ "resume_from": self.next - 1 }),
            ));
        }
        Ok(page.changes)
    }

    /// With `--auth`, if the users changed since the last look: the stream's last words if
    /// its token no longer grants `orders:read` on this node (`feed.unauthorized`, whose
    /// `code` says what a new stream would get: `unauthorized` 401 or `forbidden` 403), or if
    /// the users cannot be read (`feed.error`).
    async fn access_lost(&mut self) -> Option<Bytes> {
        let found = self.access.as_mut()?.look_again().await;
        let (code, message) = match found {
            Ok(Access::Allowed) => return None,
            Ok(Access::UnknownToken) => (
                "unauthorized",
                "the token is no longer a user's (revoked, or the bootstrap token once a user exists)",
            ),
            Ok(Access::Forbidden) => ("forbidden", "the user's role no longer grants orders:read"),
            Err(_) => {
                return Some(self.last_words(
                    "feed.error",
                    serde_json::json!({ "resume_from": self.next - 1 }),
                ))
            }
        };
        Some(self.last_words(
            "feed.unauthorized",
            serde_json::json!({ "resume_from": self.next - 1, "code": code, "message": message }),
        ))
    }

    fn last_words(&mut self, name: &str, data: serde_json::Value) -> Bytes {
        self.done = true;
        Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;

    use futures_util::FutureExt;

    use super::super::event_ring::RingEvent;
    use super::*;

    /// A node's feed over an empty store, whose ring the test fills itself, and what it needs
    /// kept (the store, and the sender whose drop would stop the node).
    struct Node {
        feed: Arc<ChangeFeed>,
        reader: OrderReader,
        _kept: (
            tempfile::TempDir,
            crate::store::LogStore,
            crate::store::StateMachineStore,
            tokio::sync::watch::Sender<bool>,
        ),
    }

    fn node() -> Node {
        // A follower of node 1 (the senders go: nothing changes them).
        let server = tokio::sync::watch::channel(openraft::metrics::RaftServerMetrics {
            current_leader: Some(1),
            ..Default::default()
        });
        node_with(
            server.1,
            tokio::sync::watch::channel(metrics_of(2)).1,
            Duration::from_millis(75),
        )
    }

    fn metrics_of(id: u64) -> FullMetrics {
        openraft::RaftMetrics::new_initial(id)
    }

    fn node_with(
        server: ServerMetrics,
        metrics: tokio::sync::watch::Receiver<FullMetrics>,
        raft_heartbeat: Duration,
    ) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let (log, sm) = crate::store::open(&crate::store::StoreConfig::new(dir.path())).unwrap();
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let feed = ChangeFeed::new(
            Duration::from_secs(15),
            10,
            DEFAULT_MAX_LAG,
            Duration::from_millis(DEFAULT_LAG_GRACE_MS),
            sm.reader(),
            stopping,
            ClusterView::new(2, server, metrics, raft_heartbeat),
        );
        Node {
            feed,
            reader: sm.reader(),
            _kept: (dir, log, sm, stop),
        }
    }

    /// Changes `from..=to` (each event's bytes: `eREV;`).
    fn events(from: u64, to: u64) -> Vec<RingEvent> {
        (from..=to)
            .map(|revision| RingEvent {
                revision,
                customer_id: "c".into(),
                status: OrderStatus::Pending,
                bytes: Bytes::from(format!("e{revision};")),
            })
            .collect()
    }

    /// Applies one user or role change to the node's state machine, at log index `index`.
    async fn apply_admin(node: &mut Node, index: u64, op: crate::order::AdminOp) {
        use openraft::storage::RaftStateMachine;
        let command = crate::order::OrderCommand {
            op: crate::order::OrderOp::Admin(op),
            idempotency_key: None,
            stamped_at_ms: 0,
        };
        let entry = crate::raft::Entry {
            log_id: crate::raft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(crate::order::CommandBatch::one(command)),
        };
        node._kept.2.apply([entry]).await.unwrap();
    }

    fn reader_user(name: &str, token_hash: [u8; 32]) -> crate::order::AdminOp {
        crate::order::AdminOp::AddUser(crate::order::User {
            name: name.into(),
            role: "reader".into(),
            token_hash,
        })
    }

    /// A stream caught up at revision 1, gathering changes for `gather`.
    fn caught_up_stream(node: &Node, gather: Duration) -> Feed {
        node.feed.ring.append(events(1, 1));
        let filter = Filter {
            customer_id: None,
            status: None,
        };
        let slot = node.feed.subscribe().expect("a free slot");
        Feed::new(slot, node.reader.clone(), 1, filter, gather)
    }

    /// Polls `chunk` once: its bytes, if ready.
    fn ready(chunk: Pin<&mut impl Future<Output = Option<Bytes>>>) -> Option<String> {
        let bytes = chunk.now_or_never()?.expect("the stream goes on");
        Some(String::from_utf8(bytes.to_vec()).unwrap())
    }

    /// A leader that has heard from no quorum for long (cut off in a minority: openraft 0.9
    /// keeps it a leader) ends its caught-up streams with `feed.error`; one that hears from a
    /// quorum sends heartbeats. "Long" is a second, or three Raft heartbeats if slower.
    #[tokio::test(start_paused = true)]
    async fn a_leader_without_a_quorum_sends_its_watchers_on() {
        let (fast, slow) = (Duration::from_millis(75), Duration::from_secs(1));
        for (acked_ms_ago, raft_heartbeat, ends) in [
            (60_000, fast, true),
            (10, fast, false),
            (2_000, fast, true),
            (2_000, slow, false),
            (4_000, slow, true),
        ] {
            let server = tokio::sync::watch::channel(openraft::metrics::RaftServerMetrics {
                id: 2,
                state: openraft::ServerState::Leader,
                current_leader: Some(2),
                ..Default::default()
            });
            let mut metrics = metrics_of(2);
            metrics.state = openraft::ServerState::Leader;
            metrics.millis_since_quorum_ack = Some(acked_ms_ago);
            let metrics = tokio::sync::watch::channel(metrics);
            let node = node_with(server.1, metrics.1, raft_heartbeat);
            let mut stream = caught_up_stream(&node, Duration::ZERO);
            let chunk = tokio::time::timeout(Duration::from_secs(60), stream.next_chunk())
                .await
                .expect("a chunk within a heartbeat")
                .expect("the stream goes on");
            let chunk = String::from_utf8(chunk.to_vec()).unwrap();
            assert_eq!(
                chunk.contains("event: feed.error"),
                ends,
                "acknowledged {acked_ms_ago} ms ago, heartbeat {raft_heartbeat:?}: {chunk:?}"
            );
        }
    }

    /// With `--auth`, each change to the users wakes an idle stream to look its caller up
    /// again; that does not put its heartbeat off, which counts from the last chunk.
    #[tokio::test(start_paused = true)]
    async fn changes_to_other_users_leave_an_idle_streams_heartbeat_on_time() {
        let mut node = node();
        let token = [7u8; 32];
        apply_admin(&mut node, 1, reader_user("r", token)).await;
        let mut stream = caught_up_stream(&node, Duration::ZERO);
        let access = AccessCheck::for_tests(
            node.reader.clone(),
            token,
            crate::order::Permission::OrdersRead,
        );
        stream.access = Some(access);
        let chunk = stream.next_chunk();
        tokio::pin!(chunk);
        // Heartbeats every 15 s; another user is added at 5 s and at 10 s.
        for (index, name) in [(2, "a"), (3, "b")] {
            tokio::select! {
                early = &mut chunk => panic!("a chunk before the heartbeat: {early:?}"),
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            apply_admin(&mut node, index, reader_user(name, [index as u8; 32])).await;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(6), &mut chunk)
            .await
            .expect("the heartbeat 15 s after the last chunk, not 15 s after the last change")
            .expect("the stream goes on: its caller is still a reader");
        assert_eq!(&chunk[..], b":\n\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_gathering_stream_sends_its_windows_changes_in_one_chunk() {
        let node = node();
        let mut stream = caught_up_stream(&node, Duration::from_millis(50));
        let chunk = stream.next_chunk();
        tokio::pin!(chunk);
        assert_eq!(ready(chunk.as_mut()), None, "nothing to send yet");
        node.feed.ring.append(events(2, 2));
        assert_eq!(ready(chunk.as_mut()), None, "the first change waits");
        tokio::time::advance(Duration::from_millis(20)).await;
        node.feed.ring.append(events(3, 3));
        tokio::time::advance(Duration::from_millis(20)).await;
        node.feed.ring.append(events(4, 4));
        assert_eq!(ready(chunk.as_mut()), None, "40 ms into the window");
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(ready(chunk.as_mut()).as_deref(), Some("e2;e3;e4;"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_does_not_gather_sends_each_change_at_once() {
        let node = node();
        let mut stream = caught_up_stream(&node, Duration::ZERO);
        let chunk = stream.next_chunk();
        tokio::pin!(chunk);
        assert_eq!(ready(chunk.as_mut()), None);
        node.feed.ring.append(events(2, 2));
        assert_eq!(ready(chunk.as_mut()).as_deref(), Some("e2;"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_gathering_stream_stops_waiting_once_enough_changes_came() {
        let node = node();
        let mut stream = caught_up_stream(&node, Duration::from_millis(MAX_BATCH_MS));
        let chunk = stream.next_chunk();
        tokio::pin!(chunk);
        assert_eq!(ready(chunk.as_mut()), None);
        // Within the step the head was last sent in: the stream goes on waiting.
        node.feed.ring.append(events(2, 200));
        assert_eq!(ready(chunk.as_mut()), None);
        // Past `GATHER_AT_MOST` revisions (in the next step): it sends them all, with no time
        // gone by.
        let last = 1 + GATHER_AT_MOST + 10;
        node.feed.ring.append(events(201, last));
        let sent = ready(chunk.as_mut()).expect("sent without waiting out the window");
        let expected: String = (2..=last).map(|r| format!("e{r};")).collect();
        assert_eq!(sent, expected);
    }
}
