//! `Client::watch`: the change feed (`GET /api/orders/changes`) as a stream of changes that
//! survives a dying node.
//!
//! The stream remembers the last revision it delivered. When its node fails (the connection
//! drops, or nothing arrives, not even a heartbeat, for `idle_timeout`), or the node cuts it
//! off for lagging, it reconnects to another node and resumes right after that revision
//! (`Last-Event-ID`), skipping anything at or below it: no gap, no duplicate. It ends with an
//! error when no node can be reached for the client's deadline; when the nodes no longer
//! hold the changes after its position (`RevisionGone`: list again, then watch from the
//! listing's revision; a node that says so sends the watch to the others first, since each
//! node trims its own change log, and the watch ends once every node said so or the others
//! cannot be reached); or when its token was revoked or its role lost `orders:read` while it
//! watched (`Unauthorized`, from the node's `feed.unauthorized`).

use std::time::Duration;

use futures_util::Stream;
use tokio::time::Instant;

use super::{error_of, with_causes, Client, ClientError};
use crate::wire::{ChangeJson, ORDER_CREATED, ORDER_STATUS_CHANGED};

/// Which changes to watch, and how the node sends them.
#[derive(Debug, Clone, Default)]
pub struct WatchFilter {
    pub customer_id: Option<String>,
    /// Only changes that leave an order in this status.
    pub status: Option<String>,
    /// The feed's `batch_ms` (at most 1000): the node gathers changes for up to this long
    /// after each chunk it sends. Less CPU for node and client on a busy feed, each change
    /// up to this much later. `None`: each change as soon as it is applied.
    pub batch_ms: Option<u64>,
}

/// How long a stream may stay silent (no event, no heartbeat) before the client takes its
/// node for dead: three of the nodes' default 15 s heartbeats.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// One server-sent event, as far as the feed uses them.
#[derive(Debug, Default)]
struct SseEvent {
    /// `id:`: the revision the stream has reached (alone: a progress mark of a filtered
    /// stream, which passed changes it did not send).
    id: Option<u64>,
    event: String,
    data: String,
}

/// Connections in a row that ended without an event before the watch gives up: the nodes
/// keep accepting it and ending it (a failing store, say).
const MAX_FRUITLESS_CONNECTIONS: u32 = 20;
/// A connection that stayed open this long was served (heartbeats, on a quiet cluster), not
/// fruitless, however it ended: restarts of the nodes over weeks of a quiet feed must not add
/// up to giving up.
const FRUITFUL_AFTER: Duration = Duration::from_secs(30);

/// An open stream from one node, and the bytes of an event not yet complete.
struct Connection {
    response: reqwest::Response,
    pending: Vec<u8>,
    /// The node it is to (its index in the client's list).
    node: usize,
}

/// How far a watch has got: the revision to resume after, including changes a filter passed
/// over. Save it to resume there after a restart of your own.
#[derive(Debug, Clone, Default)]
pub struct WatchPosition(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl WatchPosition {
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn set(&self, revision: u64) {
        self.0
            .fetch_max(revision, std::sync::atomic::Ordering::SeqCst);
    }
}

struct WatchState<'c> {
    client: &'c Client,
    /// The last revision delivered, or passed over (or the starting point).
    last: u64,
    position: WatchPosition,
    filter: WatchFilter,
    idle_timeout: Duration,
    connection: Option<Connection>,
    /// Complete events read but not yet looked at.
    ready: std::collections::VecDeque<SseEvent>,
    /// Reconnects in a row without an event, for backoff.
    failures: u32,
    /// Connections in a row that ended without an event (or a long life, `FRUITFUL_AFTER`).
    fruitless: u32,
    /// When the last connection was opened.
    opened: Option<Instant>,
    /// Nodes that no longer hold the changes after `last` (410 or `feed.gone`), and the
    /// oldest revision each holds: once every node says so, the watch ends.
    gone: std::collections::BTreeMap<usize, u64>,
    finished: bool,
}

impl Client {
    /// Changes after revision `since` (in revision order, each once), for as long as the
    /// stream is polled; see the module comment.
    pub fn watch(
        &self,
        since: u64,
        filter: WatchFilter,
        idle_timeout: Duration,
    ) -> impl Stream<Item = Result<ChangeJson, ClientError>> + '_ {
        self.watch_with_position(since, filter, idle_timeout).0
    }

    /// `watch`, and a handle on how far it has got (`WatchPosition`).
    pub fn watch_with_position(
        &self,
        since: u64,
        filter: WatchFilter,
        idle_timeout: Duration,
    ) -> (
        impl Stream<Item = Result<ChangeJson, ClientError>> + '_,
        WatchPosition,
    ) {
        let position = WatchPosition::default();
        position.set(since);
        let state = WatchState {
            client: self,
            last: since,
            position: position.clone(),
            filter,
            idle_timeout,
            connection: None,
            ready: Default::default(),
            failures: 0,
            fruitless: 0,
            opened: None,
            gone: Default::default(),
            finished: false,
        };
        let stream = futures_util::stream::unfold(state, |mut state| async move {
            if state.finished {
                return None;
            }
            let item = state.next_change().await;
            if item.is_err() {
                state.finished = true;
            }
            Some((item, state))
        });
        (stream, position)
    }
}

impl WatchState<'_> {
    async fn next_change(&mut self) -> Result<ChangeJson, ClientError> {
        loop {
            while let Some(event) = self.ready.pop_front() {
                if event.event.is_empty() {
                    // A progress mark: resume after it from now on.
                    self.fruitless = 0;
                    self.last = self.last.max(event.id.unwrap_or(0));
                    self.position.set(self.last);
                    self.gone.clear();
                    continue;
                }
                match event.event.as_str() {
                    ORDER_CREATED | ORDER_STATUS_CHANGED => {
                        let change: ChangeJson =
                            serde_json::from_str(&event.data).map_err(|e| ClientError::Server {
                                status: 200,
                                code: "internal".into(),
                                message: format!("undecodable change event: {e}"),
                            })?;
                        self.fruitless = 0;
                        if change.revision > self.last {
                            self.last = change.revision;
                            self.position.set(self.last);
                            self.failures = 0;
                            self.gone.clear();
                            return Ok(change);
                        }
                    }
                    // `feed.gone`: this node trimmed past `last`; another may still hold it.
                    "feed.gone" => {
                        let oldest = serde_json::from_str::<serde_json::Value>(&event.data)
                            .ok()
                            .and_then(|v| v["oldest_revision"].as_u64())
                            .unwrap_or(0);
                        if let Some(conn) = self.connection.take() {
                            if let Some(gone) = self.gone_from(conn.node, oldest) {
                                return Err(gone);
                            }
                        }
                    }
                    // `feed.unauthorized`: the token was revoked (or its role lost
                    // orders:read) while the stream was open; every node would answer 401 (or
                    // 403).
                    "feed.unauthorized" => {
                        let data = serde_json::from_str::<serde_json::Value>(&event.data)
                            .unwrap_or_default();
                        let code = data["code"].as_str().unwrap_or("unauthorized");
                        return Err(ClientError::Unauthorized {
                            status: if code == "forbidden" { 403 } else { 401 },
                            code: code.into(),
                            message: data["message"]
                                .as_str()
                                .unwrap_or("the change feed ended the stream: unauthorized")
                                .to_string(),
                        });
                    }
                    // `feed.error`: the node cannot feed us; resume from `last` on another
                    // (a connection that ends this way brought nothing: it counts as fruitless).
                    "feed.error" => {
                        if let Some(conn) = self.connection.take() {
                            self.client.mark_failed(conn.node);
                        }
                    }
                    // `feed.lagged`: the node let go of us; resume from `last`.
                    _ => self.connection = None,
                }
            }
            if self.connection.is_none() {
                if self.opened.is_some_and(|t| t.elapsed() >= FRUITFUL_AFTER) {
                    self.fruitless = 0;
                }
                if self.fruitless >= MAX_FRUITLESS_CONNECTIONS {
                    return Err(ClientError::Unavailable {
                        attempts: self.fruitless,
                        last: "the nodes keep ending the change feed without an event".into(),
                        idempotency_key: None,
                        no_connection: false,
                        unanswered: false,
                        last_code: None,
                    });
                }
                self.fruitless += 1;
                self.connect().await?;
                self.opened = Some(Instant::now());
            }
            self.read_events().await;
        }
    }

    /// Opens a stream from the next node that takes one, within the client's deadline.
    async fn connect(&mut self) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.client.config.deadline;
        let mut last_error = String::from("no attempt was made");
        let mut attempts = 0;
        while Instant::now() < deadline && attempts < 1000 {
            attempts += 1;
            if self.failures > 0 {
                tokio::time::sleep(self.client.backoff(self.failures)).await;
            }
            self.failures += 1;
            let node = self.client.pick(false);
            let mut query: Vec<(&str, String)> = vec![("since", self.last.to_string())];
            if let Some(c) = &self.filter.customer_id {
                query.push(("customer_id", c.clone()));
            }
            if let Some(s) = &self.filter.status {
                query.push(("status", s.clone()));
            }
            if let Some(ms) = self.filter.batch_ms {
                query.push(("batch_ms", ms.to_string()));
            }
            let url = format!(
                "{}/api/orders/changes?{}",
                self.client.config.nodes[node],
                serde_urlencoded::to_string(&query).unwrap_or_default()
            );
            let mut req = self
                .client
                .http
                .get(url)
                .header("Last-Event-ID", self.last.to_string())
                .header(reqwest::header::ACCEPT, "text/event-stream");
            if let Some(token) = &self.client.config.token {
                req = req.bearer_auth(token);
            }
            // Only the answer's head is timed here; the body is timed by `idle_timeout`.
            let answer = tokio::time::timeout(self.client.config.attempt_timeout, req.send()).await;
            match answer {
                Ok(Ok(resp)) if resp.status().is_success() => {
                    self.connection = Some(Connection {
                        response: resp,
                        pending: Vec::new(),
                        node,
                    });
                    return Ok(());
                }
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    let body: serde_json::Value = resp.json().await.unwrap_or_default();
                    if status == reqwest::StatusCode::GONE {
                        let oldest = body["error"]["oldest_revision"].as_u64().unwrap_or(0);
                        if let Some(gone) = self.gone_from(node, oldest) {
                            return Err(gone);
                        }
                        last_error = format!(
                            "{}: no longer holds the changes after revision {}",
                            self.client.config.nodes[node], self.last
                        );
                        continue;
                    }
                    match self.client.retry_reason(node, status, &body, None) {
                        Some(reason) => last_error = reason,
                        None => return Err(error_of(status, body)),
                    }
                    self.client.mark_failed(node);
                }
                Ok(Err(e)) => {
                    last_error = format!("{}: {}", self.client.config.nodes[node], with_causes(&e));
                    self.client.mark_failed(node);
                }
                Err(_) => {
                    last_error = format!("{}: no answer in time", self.client.config.nodes[node]);
                    self.client.mark_failed(node);
                }
            }
        }
        // Some nodes no longer hold the position and the others could not be reached: the
        // consumer lists again rather than waits on nodes that may never return.
        if !self.gone.is_empty() {
            return Err(ClientError::RevisionGone {
                since: self.last,
                oldest: self.gone.values().copied().min().unwrap_or(0),
            });
        }
        Err(ClientError::Unavailable {
            attempts,
            last: last_error,
            idempotency_key: None,
            no_connection: false,
            unanswered: false,
            last_code: None,
        })
    }

    /// Node `node` no longer holds the changes after `last` (it holds `oldest` on): the watch's
    /// end once every node has said so, else the node is passed over for a while.
    fn gone_from(&mut self, node: usize, oldest: u64) -> Option<ClientError> {
        self.gone.insert(node, oldest);
        if self.gone.len() < self.client.config.nodes.len() {
            self.client.mark_failed(node);
            return None;
        }
        Some(ClientError::RevisionGone {
            since: self.last,
            oldest: self.gone.values().copied().min().unwrap_or(0),
        })
    }

    /// Reads from the open stream until at least one event is complete; drops the connection
    /// when it ends, fails or stays silent past `idle_timeout`.
    async fn read_events(&mut self) {
        let Some(conn) = self.connection.as_mut() else {
            return;
        };
        loop {
            match tokio::time::timeout(self.idle_timeout, conn.response.chunk()).await {
                Ok(Ok(Some(bytes))) => {
                    conn.pending.extend_from_slice(&bytes);
                    let found = take_events(&mut conn.pending);
                    if !found.is_empty() || conn.pending.len() > 16 << 20 {
                        self.ready.extend(found);
                        if conn.pending.len() > 16 << 20 {
                            self.connection = None; // not an event stream
                        }
                        return;
                    }
                }
                // Ended, failed or silent: the node is gone for us.
                _ => {
                    self.connection = None;
                    return;
                }
            }
        }
    }
}

/// Takes the complete events (each ended by a blank line) off the front of `buf`. Comment
/// lines (heartbeats) and fields other than `id`, `event` and `data` are skipped; an
/// incomplete event stays in `buf`.
fn take_events(buf: &mut Vec<u8>) -> Vec<SseEvent> {
    let mut events = Vec::new();
    let mut event = SseEvent::default();
    let mut any = false;
    let mut start = 0; // where the next line begins
    let mut consumed = 0; // bytes of the complete events
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        start += nl + 1;
        if line.is_empty() {
            if any {
                events.push(std::mem::take(&mut event));
            }
            any = false;
            consumed = start;
            continue;
        }
        if line.starts_with(b":") {
            continue;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = line.split_once(':').unwrap_or((&line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => {
                event.id = value.trim().parse().ok();
                any = true;
            }
            "event" => {
                event.event = value.to_string();
                any = true;
            }
            "data" => {
                if any && !event.data.is_empty() {
                    event.data.push('\n');
                }
                event.data.push_str(value);
                any = true;
            }
            _ => {}
        }
    }
    buf.drain(..consumed);
    events
}

#[cfg(test)]
mod tests {
    use super::super::fake_node::{answer, fake_node};
    use super::super::ClientConfig;
    use super::*;
    use futures_util::StreamExt;

    /// A fake node that answers every request with `status` and `body`: its URL.
    async fn node_answering(status: &str, content_type: &str, body: String) -> String {
        fake_node(vec![answer(status, content_type, &body)]).await.0
    }

    /// The first item of a watch from `since` (within a generous deadline).
    async fn first_from(client: &Client, since: u64) -> Option<Result<ChangeJson, ClientError>> {
        let changes = client.watch(since, WatchFilter::default(), Duration::from_secs(30));
        futures_util::pin_mut!(changes);
        tokio::time::timeout(Duration::from_secs(60), changes.next())
            .await
            .expect("the watch's first item in time")
    }

    fn quick_client(nodes: Vec<String>) -> Client {
        let mut config = ClientConfig::new(nodes);
        config.base_backoff = Duration::from_millis(1);
        config.max_backoff = Duration::from_millis(5);
        config.cool_down = Duration::from_millis(1);
        Client::new(config)
    }

    /// A node whose every stream ends at once with `feed.error` (its ring failed) does not
    /// keep a watch reconnecting for ever: the `feed.error` event itself used to count as
    /// progress.
    #[tokio::test]
    async fn a_watch_gives_up_on_nodes_that_only_end_their_streams() {
        let body = "event: feed.error\ndata: {\"resume_from\":0}\n\n".to_string();
        let node = node_answering("200 OK", "text/event-stream", body).await;
        let client = quick_client(vec![node]);
        let (changes, _) =
            client.watch_with_position(0, WatchFilter::default(), Duration::from_secs(30));
        futures_util::pin_mut!(changes);
        let first = tokio::time::timeout(Duration::from_secs(60), changes.next())
            .await
            .expect("the watch gave up in time");
        assert!(
            matches!(first, Some(Err(ClientError::Unavailable { .. }))),
            "{first:?}"
        );
    }

    /// Each node trims its own change log: one that no longer holds the watch's position (a
    /// 410 when asked, `feed.gone` on a stream) sends it to the others, and the watch ends
    /// with `RevisionGone` only once every node has said so, or the others cannot be reached.
    #[tokio::test]
    async fn a_watch_ends_as_gone_once_no_node_goes_on_from_its_position() {
        let trimmed = || {
            let body =
                r#"{"error":{"code":"revision_gone","message":"trimmed","oldest_revision":9}}"#;
            node_answering("410 Gone", "application/json", body.to_string())
        };
        let change = r#"{"revision":6,"kind":"order.created","order":{"id":1,"customer_id":"c","items":[{"sku":"s","quantity":1,"unit_price_cents":1}],"total_cents":1,"status":"pending","version":1,"created_at":"2026-11-28T14:00:00.000Z","updated_at":"2026-11-28T14:00:00.000Z","note":"","revision":6}}"#;
        let holds = node_answering(
            "200 OK",
            "text/event-stream",
            format!("id: 6\nevent: order.created\ndata: {change}\n\n"),
        )
        .await;
        let ended = node_answering(
            "200 OK",
            "text/event-stream",
            "event: feed.gone\ndata: {\"oldest_revision\":7}\n\n".to_string(),
        )
        .await;

        // The first node asked (the first in the list) trimmed; the second holds the change.
        let client = quick_client(vec![trimmed().await, holds]);
        let first = first_from(&client, 5).await;
        assert!(
            matches!(&first, Some(Ok(c)) if c.revision == 6),
            "{first:?}"
        );

        // One trimmed, the other unreachable until the deadline: gone too, not unavailable
        // (a consumer retrying "unavailable" would wait for ever).
        let nothing_there = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let mut client = quick_client(vec![trimmed().await, nothing_there]);
        client.config.deadline = Duration::from_secs(2);
        let first = first_from(&client, 5).await;
        assert!(
            matches!(first, Some(Err(ClientError::RevisionGone { since: 5, .. }))),
            "{first:?}"
        );

        // Every node trimmed (one says so when asked, one on its stream): gone, naming the
        // oldest revision any node holds.
        let client = quick_client(vec![trimmed().await, ended]);
        let first = first_from(&client, 5).await;
        assert!(
            matches!(
                first,
                Some(Err(ClientError::RevisionGone {
                    since: 5,
                    oldest: 7
                }))
            ),
            "{first:?}"
        );
    }

    #[test]
    fn events_are_cut_at_blank_lines_and_heartbeats_skipped() {
        let mut buf = b": heartbeat\n\nid: 3\nevent: order.created\ndata: {\"a\":1}\n\nid: 4\nevent: order.st"
            .to_vec();
        let events = take_events(&mut buf);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, "order.created");
        assert_eq!(events[0].data, "{\"a\":1}");
        assert_eq!(
            buf,
            b"id: 4\nevent: order.st".to_vec(),
            "the partial event stays"
        );
        buf.extend_from_slice(b"atus_changed\r\ndata: x\r\n\r\n");
        let events = take_events(&mut buf);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, "order.status_changed");
        assert_eq!(events[0].data, "x");
        assert!(buf.is_empty());
        // A progress mark of a filtered stream: an id alone.
        buf.extend_from_slice(b"id: 17\n\n");
        let events = take_events(&mut buf);
        assert_eq!((events[0].id, events[0].event.as_str()), (Some(17), ""));
    }
}
