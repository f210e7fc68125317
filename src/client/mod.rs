//! A Rust client for ordo's HTTP API that survives a dying node.
//!
//! Built from a list of node URLs, it spreads requests round-robin over the nodes that have
//! not failed recently (a failed node sits out a cool-down), sends writes first to the leader
//! it learnt from the `x-ordo-leader` header, and retries connection errors, answers cut off,
//! 503 and 504 with exponential backoff and full jitter until a per-call deadline. Every order
//! write carries an idempotency key (the caller's, or a fresh random one reused across the
//! call's retries), so a retry after a lost answer never creates a second order or applies a
//! change twice; such writes are also retried on 500 and 502 (their outcome is unknown).
//! User and role changes carry no key: those a second application would answer otherwise
//! (adding a user, revoking one, deleting a role) are not sent again once an attempt may have
//! been applied.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ordo::client::ClientError> {
//! use ordo::client::{Client, ClientConfig, NewOrderRequest, ReadMode};
//! let client = Client::new(ClientConfig::new(["http://127.0.0.1:21001", "http://127.0.0.1:21002"]));
//! let created = client.create_order(&NewOrderRequest::new("alice").item("book", 1, 1250), None).await?;
//! let read = client.get_order(created.order.id, ReadMode::AllowStale).await?;
//! println!("order {} is {} (stale: {})", read.value.id, read.value.status, read.stale);
//! # Ok(()) }
//! ```

#[cfg(test)]
mod fake_node;
mod watch;

pub use watch::{WatchFilter, WatchPosition, DEFAULT_IDLE_TIMEOUT};

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

pub use crate::wire::ClusterStatus;
use crate::wire::LEADER_HEADER;
pub use crate::wire::{CreateOrderBody as NewOrderRequest, LineItemJson as LineItem};
pub use crate::wire::{
    CreatedUserJson as CreatedUser, DeletedRoleJson, RevokedUserJson, RoleJson, RoleListJson,
    UserJson, UserListJson,
};
use crate::wire::{ErrorBody, ErrorCode};
pub use crate::wire::{OrderJson as Order, OrderListJson as OrderList};

/// How long an `AllowStale` read waits for a linearizable answer (at most a third of the
/// call's deadline) before it reads a node's local state.
pub const ALLOW_STALE_PATIENCE: Duration = Duration::from_secs(3);

/// The cluster `scripts/cluster.sh up` starts.
pub const DEFAULT_NODES: &str =
    "http://127.0.0.1:21001,http://127.0.0.1:21002,http://127.0.0.1:21003";

/// Where the client connects and how patient it is.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URLs of the nodes, e.g. `http://127.0.0.1:21001`, or `https://...` for nodes
    /// serving TLS.
    pub nodes: Vec<String>,
    /// The CA that signed the nodes' certificates (PEM), for `https://` nodes: the client
    /// trusts only it.
    pub ca_cert: Option<PathBuf>,
    /// That CA's certificate revocation lists (PEM): a node whose certificate they list, or
    /// do not cover, is refused.
    pub ca_crl: Option<PathBuf>,
    /// A user's token, sent as `Authorization: Bearer` (nodes started with `--auth`).
    pub token: Option<String>,
    /// Total time one call may take, retries included.
    pub deadline: Duration,
    /// Time one HTTP attempt may take.
    pub attempt_timeout: Duration,
    /// How long a node that failed is skipped (unless every node is cooling down).
    pub cool_down: Duration,
    /// First retry pause; doubles per retry up to `max_backoff`, with full jitter.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl ClientConfig {
    pub fn new<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> ClientConfig {
        ClientConfig {
            nodes: nodes
                .into_iter()
                .map(|n| n.into().trim_end_matches('/').to_string())
                .collect(),
            ca_cert: None,
            ca_crl: None,
            token: None,
            deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(5),
            cool_down: Duration::from_secs(2),
            base_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(800),
        }
    }
}

/// What went wrong, typed so a caller can react. Errors the server answered keep its
/// `error.code` as it spelled it (`code()` gives it back, also for a newer server's codes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// 404: the server's message says what was not found.
    #[error("{0}")]
    NotFound(String),
    /// 409: `invalid_transition`, `version_conflict`, `idempotency_key_reused` or
    /// `user_exists` (or a code of a newer server).
    #[error("conflict ({code}): {message}")]
    Conflict { code: String, message: String },
    /// 422: the field that is wrong and why (the server's message names the field).
    #[error("invalid input: {message}")]
    Validation { field: String, message: String },
    /// 401 or 403: no token, a token no user has, or a role without the permission.
    #[error("{message} ({code})")]
    Unauthorized {
        status: u16,
        code: String,
        message: String,
    },
    /// Another 4xx: the request itself is wrong.
    #[error("{message} ({code})")]
    BadRequest {
        status: u16,
        code: String,
        message: String,
    },
    /// No node could answer within the deadline (the last reason is kept). For a write, its
    /// outcome is unknown: `idempotency_key` is the key it carried, to retry it safely (a
    /// retry with the same key and body is applied at most once). `no_connection`: no
    /// attempt reached a node at all (nothing listens there, or the network is down).
    /// `unanswered`: for a write, some attempt reached a node and got no answer in time (or
    /// lost the connection before one, or was told its outcome is unknown), so the write may
    /// have been applied; for a read, the last attempt went unanswered.
    #[error(
        "unavailable after {attempts} attempts: {last}{}",
        retry_hint(idempotency_key)
    )]
    Unavailable {
        attempts: u32,
        last: String,
        idempotency_key: Option<String>,
        no_connection: bool,
        unanswered: bool,
        /// The `error.code` of the last answer, if a node answered (`timeout`: a write's
        /// outcome is unknown; `no_quorum`, `storage_failed`, ...).
        last_code: Option<String>,
    },
    #[error("server error {status} ({code}): {message}")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    /// The client could not be set up (a CA file that cannot be read).
    #[error("client configuration: {0}")]
    Config(String),
    /// A change feed asked from a revision the nodes no longer hold (410): list the orders
    /// again and watch from the listing's revision.
    #[error(
        "the changes after revision {since} are no longer held (the oldest is {oldest}): list \
         the orders again, then watch from the listing's revision"
    )]
    RevisionGone { since: u64, oldest: u64 },
}

fn retry_hint(key: &Option<String>) -> String {
    match key {
        Some(k) => format!(
            " (the write may or may not have been applied: retry it with idempotency key {k})"
        ),
        None => String::new(),
    }
}

/// An error with its causes ("error sending request: ... Connection refused"): reqwest's own
/// text stops at the first.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl ClientError {
    /// The idempotency key of a write whose outcome is unknown, to retry it with.
    pub fn idempotency_key(&self) -> Option<&str> {
        match self {
            ClientError::Unavailable {
                idempotency_key, ..
            } => idempotency_key.as_deref(),
            _ => None,
        }
    }

    /// The API's `error.code` for this error (`version_conflict`). Errors that happen in the
    /// client take the code the API uses for the same situation: `unavailable` when no node
    /// answered in time, `bad_request` for a client that cannot be set up.
    pub fn code(&self) -> &str {
        match self {
            ClientError::NotFound(_) => ErrorCode::NotFound.as_str(),
            ClientError::Validation { .. } => ErrorCode::ValidationFailed.as_str(),
            ClientError::Conflict { code, .. }
            | ClientError::Unauthorized { code, .. }
            | ClientError::BadRequest { code, .. }
            | ClientError::Server { code, .. } => code,
            ClientError::Unavailable {
                last_code: Some(code),
                ..
            } => code,
            ClientError::Unavailable { .. } => ErrorCode::Unavailable.as_str(),
            ClientError::Config(_) => ErrorCode::BadRequest.as_str(),
            ClientError::RevisionGone { .. } => ErrorCode::RevisionGone.as_str(),
        }
    }

    /// The error in the API's error shape (`{"error": {"code", "message", "field"?}}`).
    pub fn to_body(&self) -> ErrorBody {
        let message = match self {
            ClientError::NotFound(message)
            | ClientError::Validation { message, .. }
            | ClientError::Conflict { message, .. }
            | ClientError::Unauthorized { message, .. }
            | ClientError::BadRequest { message, .. }
            | ClientError::Server { message, .. } => message.clone(),
            ClientError::Unavailable { .. }
            | ClientError::Config(_)
            | ClientError::RevisionGone { .. } => self.to_string(),
        };
        let field = match self {
            ClientError::Validation { field, .. } if !field.is_empty() => Some(field.clone()),
            _ => None,
        };
        ErrorBody {
            error: crate::wire::ErrorDetail {
                code: self.code().to_string(),
                message,
                field,
                oldest_revision: match self {
                    ClientError::RevisionGone { oldest, .. } => Some(*oldest),
                    _ => None,
                },
            },
        }
    }

    /// A process exit code for the CLI: 3 not found, 4 conflict, 5 invalid input,
    /// 6 unavailable, 7 server error, 9 not authorized (401/403), 2 a bad setup.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::NotFound(_) => 3,
            ClientError::Conflict { .. } => 4,
            ClientError::Validation { .. } | ClientError::BadRequest { .. } => 5,
            ClientError::Unavailable { .. } => 6,
            ClientError::Server { .. } => 7,
            ClientError::Unauthorized { .. } => 9,
            ClientError::Config(_) => 2,
            ClientError::RevisionGone { .. } => 3,
        }
    }
}

/// How a read may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Linearizable (the default of the server).
    Linearizable,
    /// The answering node's local state, possibly behind.
    Stale,
    /// Linearizable if one comes within `ALLOW_STALE_PATIENCE` (or a third of the deadline),
    /// else a stale read, marked so.
    AllowStale,
}

/// A read result and whether it may be stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read<T> {
    pub value: T,
    pub stale: bool,
}

/// A create's result: `replayed` when the idempotency key matched an earlier create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub order: Order,
    pub replayed: bool,
    /// The idempotency key the write carried (to retry it later by hand).
    pub idempotency_key: String,
}

impl NewOrderRequest {
    pub fn new(customer_id: impl Into<String>) -> NewOrderRequest {
        NewOrderRequest {
            customer_id: customer_id.into(),
            items: Vec::new(),
            note: None,
        }
    }
    pub fn item(
        mut self,
        sku: impl Into<String>,
        quantity: u32,
        unit_price_cents: u64,
    ) -> NewOrderRequest {
        self.items.push(LineItem {
            sku: sku.into(),
            quantity,
            unit_price_cents,
        });
        self
    }
    pub fn note(mut self, note: impl Into<String>) -> NewOrderRequest {
        self.note = Some(note.into());
        self
    }
}

/// Filters and paging of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub status: Option<String>,
    pub customer_id: Option<String>,
    pub page: Option<u64>,
    /// Only orders with a higher id (a cursor: the last page's `next_after`); `page` then
    /// counts from there.
    pub after: Option<u64>,
    pub per_page: Option<u64>,
}

/// A fresh idempotency key: 128 random bits in hex.
pub fn new_idempotency_key() -> String {
    format!("{:032x}", rand::thread_rng().gen::<u128>())
}

struct Answer {
    status: StatusCode,
    body: Value,
}

/// The client; cheap to share (`Arc`) between tasks.
pub struct Client {
    config: ClientConfig,
    http: reqwest::Client,
    next: AtomicUsize,
    /// Per node: when it may be tried again after a failure.
    cooling_until: Mutex<Vec<Option<Instant>>>,
    leader: Mutex<Option<usize>>,
}

impl Client {
    /// A client for `config`. Panics if the CA file cannot be read: use `try_new` when the
    /// path comes from a user.
    pub fn new(config: ClientConfig) -> Client {
        Client::try_new(config).expect("a readable CA certificate")
    }

    pub fn try_new(config: ClientConfig) -> Result<Client, ClientError> {
        if config.nodes.is_empty() {
            return Err(ClientError::Config(
                "a client needs at least one node URL".into(),
            ));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            // Below a node's idle close (its 10 s read timeout): a connection reused just as
            // the node closes it fails a call that cannot be sent again (adding a user).
            .pool_idle_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        match (&config.ca_cert, &config.ca_crl) {
            (Some(ca), crl) => {
                let flags = if crl.is_some() {
                    "--ca-cert, --ca-crl"
                } else {
                    "--ca-cert"
                };
                let tls = crate::tls::client_config(ca, crl.as_deref())
                    .map_err(|e| ClientError::Config(format!("{flags}: {e}")))?;
                builder = builder.use_preconfigured_tls(tls);
            }
            (None, Some(_)) => {
                return Err(ClientError::Config(
                    "--ca-crl needs --ca-cert (the CA whose lists they are)".into(),
                ))
            }
            (None, None) => {}
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Config(with_causes(&e)))?;
        let n = config.nodes.len();
        Ok(Client {
            config,
            http,
            next: AtomicUsize::new(0),
            cooling_until: Mutex::new(vec![None; n]),
            leader: Mutex::new(None),
        })
    }

    pub fn nodes(&self) -> &[String] {
        &self.config.nodes
    }

    /// The node to try next: the known leader for writes, else the next healthy node in turn.
    fn pick(&self, prefer_leader: bool) -> usize {
        let now = Instant::now();
        let cooling = self.cooling_until.lock().unwrap();
        let healthy = |i: usize| cooling[i].is_none_or(|t| t <= now);
        if prefer_leader {
            if let Some(l) = *self.leader.lock().unwrap() {
                if healthy(l) {
                    return l;
                }
            }
        }
        let n = self.config.nodes.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| healthy(i))
            .unwrap_or(start % n)
    }

    fn mark_failed(&self, node: usize) {
        self.cooling_until.lock().unwrap()[node] = Some(Instant::now() + self.config.cool_down);
        let mut leader = self.leader.lock().unwrap();
        if *leader == Some(node) {
            *leader = None;
        }
    }

    fn learn_leader(&self, resp: &reqwest::Response) {
        let Some(addr) = resp
            .headers()
            .get(LEADER_HEADER)
            .and_then(|v| v.to_str().ok())
        else {
            return;
        };
        let found = self.config.nodes.iter().position(|u| {
            u.trim_start_matches("https://")
                .trim_start_matches("http://")
                == addr
        });
        if found.is_some() {
            *self.leader.lock().unwrap() = found;
        }
    }

    fn backoff(&self, retry: u32) -> Duration {
        let cap = self
            .config
            .base_backoff
            .saturating_mul(1 << retry.min(16))
            .min(self.config.max_backoff);
        cap.mul_f64(rand::thread_rng().gen::<f64>())
    }

    /// Sends one logical request, retrying as the module comment says, until `deadline`.
    /// A write's `unanswered` (in `Unavailable`) says whether any attempt may have been
    /// applied.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
        deadline: Instant,
        fixed_node: Option<usize>,
        resend: Resend,
    ) -> Result<Answer, ClientError> {
        let is_write = method != Method::GET;
        let mut last = String::from("no attempt was made");
        let mut last_code = None;
        let mut attempts = 0u32;
        // `unanswered` stays set once any attempt may have been applied: a later "no leader"
        // does not undo an earlier attempt that reached one.
        let (mut connected, mut unanswered) = (false, false);
        while attempts < 1000 {
            let node = fixed_node.unwrap_or_else(|| self.pick(is_write));
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            attempts += 1;
            let mut req = self
                .http
                .request(
                    method.clone(),
                    format!("{}{}", self.config.nodes[node], path),
                )
                .timeout(remaining.min(self.config.attempt_timeout));
            if let Some(body) = body {
                req = req.json(body);
            }
            if let Some(key) = idempotency_key {
                req = req.header("Idempotency-Key", key);
            }
            if let Some(token) = &self.config.token {
                req = req.bearer_auth(token);
            }
            let failed = match self.attempt(req, node, idempotency_key).await {
                Ok(answer) => return Ok(answer),
                Err(failed) => failed,
            };
            connected |= failed.reached;
            last = failed.reason;
            last_code = failed.code;
            let (no_answer, unknown) = (failed.no_answer, failed.unknown);
            // For a read, whether the last attempt went unanswered; for a write, whether any
            // attempt may have been applied.
            let maybe_applied = no_answer || unknown;
            unanswered = if is_write {
                unanswered || maybe_applied
            } else {
                no_answer
            };
            if is_write && maybe_applied && resend == Resend::OnlyIfNotSent {
                break;
            }
            let pause = self.backoff(attempts - 1);
            if Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        Err(ClientError::Unavailable {
            attempts,
            last,
            idempotency_key: idempotency_key.map(String::from),
            no_connection: !connected,
            unanswered,
            last_code,
        })
    }

    /// Sends one attempt to `node`: the answer to keep, or why to try again.
    async fn attempt(
        &self,
        req: reqwest::RequestBuilder,
        node: usize,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, FailedAttempt> {
        let at = &self.config.nodes[node];
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) => {
                self.mark_failed(node);
                // Past the connect, the node had the request (a write may have been applied).
                let reached = !e.is_connect();
                return Err(FailedAttempt {
                    reason: format!("{at}: {}", with_causes(&e)),
                    code: None,
                    reached,
                    no_answer: reached,
                    unknown: false,
                });
            }
        };
        self.learn_leader(&resp);
        let status = resp.status();
        // The body is part of the answer: one cut off (the attempt's time ran out, the
        // connection dropped) is no answer, though a 201 was on its way.
        let bytes = match resp.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => {
                self.mark_failed(node);
                return Err(FailedAttempt {
                    reason: format!(
                        "{at}: the answer ({}) was cut off: {}",
                        status.as_u16(),
                        with_causes(&e)
                    ),
                    code: None,
                    reached: true,
                    no_answer: true,
                    unknown: false,
                });
            }
        };
        // Not JSON (a proxy's page, say): judged by its status alone.
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let Some(reason) = self.retry_reason(node, status, &body, idempotency_key) else {
            return Ok(Answer { status, body });
        };
        // A node that failed (500, 502) may fail the same way again: the next attempt goes
        // to another.
        if is_unknown_outcome(status) {
            self.mark_failed(node);
        }
        Err(FailedAttempt {
            reason,
            code: body["error"]["code"].as_str().map(String::from),
            reached: true,
            no_answer: false,
            // 504, 500, 502: the node says the outcome is unknown (503: nothing was done).
            unknown: status != StatusCode::SERVICE_UNAVAILABLE,
        })
    }

    /// Why to try again elsewhere, for an answer that says the node cannot serve now (503,
    /// 504), or, for a write with an idempotency key, that its outcome is unknown (500, 502:
    /// the same key replays the outcome if it was applied); `None` for an answer to keep.
    fn retry_reason(
        &self,
        node: usize,
        status: StatusCode,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Option<String> {
        let retry = status == StatusCode::SERVICE_UNAVAILABLE
            || status == StatusCode::GATEWAY_TIMEOUT
            || (is_unknown_outcome(status) && idempotency_key.is_some());
        retry.then(|| {
            format!(
                "{}: {} {}",
                self.config.nodes[node],
                status.as_u16(),
                error_message(body)
            )
        })
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> Result<(StatusCode, T), ClientError> {
        self.call_json_resending(method, path, body, key, Resend::Safe)
            .await
    }

    async fn call_json_resending<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
        resend: Resend,
    ) -> Result<(StatusCode, T), ClientError> {
        let deadline = Instant::now() + self.config.deadline;
        let answer = self
            .call(method, path, body, key, deadline, None, resend)
            .await?;
        decode(answer)
    }

    /// Streams a backup (`GET /cluster/backup`) from the first node that can give one into
    /// `out` (created or truncated), within `deadline`. Returns the backup's index, as the node
    /// said it. The caller checks the file (`store::backup::verify`).
    pub async fn backup_to(
        &self,
        out: &std::path::Path,
        within: Duration,
    ) -> Result<u64, ClientError> {
        use tokio::io::AsyncWriteExt;
        let deadline = Instant::now() + within;
        let mut last = String::from("no attempt was made");
        let mut attempts = 0u32;
        let (mut connected, mut unanswered) = (false, false);
        while attempts < 2 * self.config.nodes.len() as u32 + 2 {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            attempts += 1;
            let node = self.pick(false);
            let url = format!("{}/cluster/backup", self.config.nodes[node]);
            let mut req = self.http.get(url).timeout(remaining);
            if let Some(token) = &self.config.token {
                req = req.bearer_auth(token);
            }
            let failed = |e: &dyn std::error::Error| {
                format!("{}: {}", self.config.nodes[node], with_causes(e))
            };
            let mut resp = match req.send().await {
                Ok(resp) => resp,
                Err(e) => {
                    unanswered = !e.is_connect();
                    connected |= unanswered;
                    last = failed(&e);
                    self.mark_failed(node);
                    continue;
                }
            };
            (connected, unanswered) = (true, false);
            let status = resp.status();
            if !status.is_success() {
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                match self.retry_reason(node, status, &body, None) {
                    Some(reason) => {
                        last = reason;
                        self.mark_failed(node);
                        continue;
                    }
                    None => return Err(error_of(status, body)),
                }
            }
            let index = resp
                .headers()
                .get("x-ordo-backup-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            // Owner-only: a backup holds every order and every user's token hash. (A file left
            // by an earlier run keeps its mode through `open`: it is set again.)
            let opened = async {
                use std::os::unix::fs::PermissionsExt;
                let file = tokio::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(out)
                    .await?;
                file.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .await?;
                Ok::<_, std::io::Error>(file)
            };
            let mut file = opened
                .await
                .map_err(|e| ClientError::Config(format!("{}: {e}", out.display())))?;
            // Err((whether the node cut the file off, why)); else the local file failed.
            let copied: Result<(), (bool, String)> = async {
                while let Some(chunk) = resp.chunk().await.map_err(|e| (true, failed(&e)))? {
                    file.write_all(&chunk)
                        .await
                        .map_err(|e| (false, failed(&e)))?;
                }
                file.sync_all().await.map_err(|e| (false, failed(&e)))
            }
            .await;
            match copied {
                Ok(()) => return Ok(index),
                Err((cut_off, e)) => {
                    unanswered = cut_off;
                    last = e;
                    self.mark_failed(node);
                }
            }
        }
        Err(ClientError::Unavailable {
            attempts,
            last,
            idempotency_key: None,
            no_connection: !connected,
            unanswered,
            last_code: None,
        })
    }

    /// Creates an order. With `idempotency_key` None a fresh key is made and reused on retries.
    pub async fn create_order(
        &self,
        order: &NewOrderRequest,
        idempotency_key: Option<String>,
    ) -> Result<Created, ClientError> {
        let key = idempotency_key.unwrap_or_else(new_idempotency_key);
        let body = to_value(order);
        let (status, order) = self
            .call_json::<Order>(Method::POST, "/api/orders", Some(&body), Some(&key))
            .await?;
        Ok(Created {
            order,
            replayed: status == StatusCode::OK,
            idempotency_key: key,
        })
    }

    /// Moves an order to `status`, optionally only from `expected_version`.
    pub async fn set_status(
        &self,
        id: u64,
        status: &str,
        expected_version: Option<u64>,
        idempotency_key: Option<String>,
    ) -> Result<Order, ClientError> {
        let key = idempotency_key.unwrap_or_else(new_idempotency_key);
        let body = serde_json::json!({"status": status, "expected_version": expected_version});
        let path = format!("/api/orders/{id}");
        Ok(self
            .call_json::<Order>(Method::PATCH, &path, Some(&body), Some(&key))
            .await?
            .1)
    }

    pub async fn get_order(&self, id: u64, mode: ReadMode) -> Result<Read<Order>, ClientError> {
        self.read(&format!("/api/orders/{id}"), &[], mode).await
    }

    pub async fn list_orders(
        &self,
        query: &ListQuery,
        mode: ReadMode,
    ) -> Result<Read<OrderList>, ClientError> {
        let mut params: Vec<(&str, String)> = Vec::new();
        if let Some(s) = &query.status {
            params.push(("status", s.clone()));
        }
        if let Some(c) = &query.customer_id {
            params.push(("customer_id", c.clone()));
        }
        if let Some(p) = query.page {
            params.push(("page", p.to_string()));
        }
        if let Some(a) = query.after {
            params.push(("after", a.to_string()));
        }
        if let Some(p) = query.per_page {
            params.push(("per_page", p.to_string()));
        }
        self.read("/api/orders", &params, mode).await
    }

    async fn read<T: DeserializeOwned>(
        &self,
        path: &str,
        params: &[(&str, String)],
        mode: ReadMode,
    ) -> Result<Read<T>, ClientError> {
        let url = |stale: bool| {
            let mut p: Vec<(&str, String)> = params.to_vec();
            if stale {
                p.push(("consistency", "stale".into()));
            }
            let q = serde_urlencoded::to_string(&p).unwrap_or_default();
            if q.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{q}")
            }
        };
        let start = Instant::now();
        let deadline = start + self.config.deadline;
        match mode {
            ReadMode::Linearizable | ReadMode::Stale => {
                let stale = mode == ReadMode::Stale;
                let answer = self
                    .call(
                        Method::GET,
                        &url(stale),
                        None,
                        None,
                        deadline,
                        None,
                        Resend::Safe,
                    )
                    .await?;
                Ok(Read {
                    value: decode(answer)?.1,
                    stale,
                })
            }
            ReadMode::AllowStale => {
                // A linearizable answer comes within milliseconds when there is a quorum: wait
                // for one at most a third of the deadline (3 s at most), then read stale.
                let patience = ALLOW_STALE_PATIENCE.min(self.config.deadline / 3);
                match self
                    .call(
                        Method::GET,
                        &url(false),
                        None,
                        None,
                        start + patience,
                        None,
                        Resend::Safe,
                    )
                    .await
                {
                    Ok(answer) => Ok(Read {
                        value: decode(answer)?.1,
                        stale: false,
                    }),
                    Err(ClientError::Unavailable { .. }) => {
                        let answer = self
                            .call(
                                Method::GET,
                                &url(true),
                                None,
                                None,
                                deadline,
                                None,
                                Resend::Safe,
                            )
                            .await?;
                        Ok(Read {
                            value: decode(answer)?.1,
                            stale: true,
                        })
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// The status of one node, by its index in the node list (no retries beyond the deadline).
    pub async fn node_status(&self, node: usize) -> Result<ClusterStatus, ClientError> {
        let deadline = Instant::now() + self.config.attempt_timeout.min(Duration::from_secs(2));
        let answer = self
            .call(
                Method::GET,
                "/cluster/status",
                None,
                None,
                deadline,
                Some(node),
                Resend::Safe,
            )
            .await?;
        Ok(decode(answer)?.1)
    }

    pub async fn add_learner(&self, id: u64, addr: &str) -> Result<ClusterStatus, ClientError> {
        let body = serde_json::json!({"id": id, "addr": addr});
        Ok(self
            .call_json(Method::POST, "/cluster/learners", Some(&body), None)
            .await?
            .1)
    }

    /// Takes a learner out of the membership (not sent again once an attempt may have been
    /// applied: a second removal is a 422).
    pub async fn remove_learner(&self, id: u64) -> Result<ClusterStatus, ClientError> {
        let path = format!("/cluster/learners/{id}");
        let removed =
            self.call_json_resending(Method::DELETE, &path, None, None, Resend::OnlyIfNotSent);
        Ok(removed.await?.1)
    }

    pub async fn change_members(&self, members: &[u64]) -> Result<ClusterStatus, ClientError> {
        let body = serde_json::json!({"members": members});
        Ok(self
            .call_json(Method::POST, "/cluster/members", Some(&body), None)
            .await?
            .1)
    }

    /// Creates a user with `role` (`admin`, `writer`, `reader`); the answer holds its token,
    /// shown this once.
    pub async fn add_user(&self, name: &str, role: &str) -> Result<CreatedUser, ClientError> {
        let body = serde_json::json!({"name": name, "role": role});
        Ok(self
            .call_json_resending(
                Method::POST,
                "/auth/users",
                Some(&body),
                None,
                Resend::OnlyIfNotSent,
            )
            .await?
            .1)
    }

    pub async fn list_users(&self) -> Result<Vec<UserJson>, ClientError> {
        Ok(self
            .call_json::<UserListJson>(Method::GET, "/auth/users", None, None)
            .await?
            .1
            .users)
    }

    /// Creates (or replaces) a custom role with these permissions.
    pub async fn put_role(
        &self,
        name: &str,
        permissions: &[String],
    ) -> Result<RoleJson, ClientError> {
        let body = serde_json::json!({"name": name, "permissions": permissions});
        Ok(self
            .call_json(Method::POST, "/auth/roles", Some(&body), None)
            .await?
            .1)
    }

    /// The built-in roles, then the custom ones.
    pub async fn list_roles(&self) -> Result<Vec<RoleJson>, ClientError> {
        Ok(self
            .call_json::<RoleListJson>(Method::GET, "/auth/roles", None, None)
            .await?
            .1
            .roles)
    }

    pub async fn delete_role(&self, name: &str) -> Result<DeletedRoleJson, ClientError> {
        let path = format!("/auth/roles/{}", path_segment(name));
        let deleted =
            self.call_json_resending(Method::DELETE, &path, None, None, Resend::OnlyIfNotSent);
        Ok(deleted.await?.1)
    }

    /// Revokes a user and its token: once this returns, no node accepts the token for a new
    /// request; an open change-feed stream ends as soon as its node has applied the revocation.
    pub async fn revoke_user(&self, name: &str) -> Result<RevokedUserJson, ClientError> {
        let path = format!("/auth/users/{}", path_segment(name));
        let revoked =
            self.call_json_resending(Method::DELETE, &path, None, None, Resend::OnlyIfNotSent);
        Ok(revoked.await?.1)
    }
}

/// An attempt that gave no answer to keep.
struct FailedAttempt {
    /// Why, with the node's URL.
    reason: String,
    /// The answer's `error.code`, if one came.
    code: Option<String>,
    /// It got past the connect: the node had the request.
    reached: bool,
    /// It reached the node but no whole answer came back.
    no_answer: bool,
    /// The node answered that the outcome is unknown (500, 502, 504).
    unknown: bool,
}

/// A failure whose outcome the node does not know (500, 502): the write may have been applied.
fn is_unknown_outcome(status: StatusCode) -> bool {
    status == StatusCode::INTERNAL_SERVER_ERROR || status == StatusCode::BAD_GATEWAY
}

/// Whether a write may be sent again after an attempt whose outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// A read, a write with an idempotency key (a resend replays its outcome), or a change
    /// that applied twice leaves the same state and answer (membership, a role's permissions).
    Safe,
    /// A change whose second application answers otherwise: a user added twice is `409` (and
    /// the token the first made, shown once, is lost); a revoke or a delete twice is `404`.
    /// Not sent again once an attempt may have been applied: the caller gets `Unavailable`
    /// with `unanswered` and checks (`list_users`, `list_roles`) before trying again.
    OnlyIfNotSent,
}

/// A name as one URL path segment (`a/b` must not become two segments).
fn path_segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("request types serialize to JSON")
}

fn error_message(body: &Value) -> String {
    body["error"]["message"].as_str().unwrap_or("").to_string()
}

/// Turns an HTTP answer into the typed value or the typed error.
fn decode<T: DeserializeOwned>(answer: Answer) -> Result<(StatusCode, T), ClientError> {
    let status = answer.status;
    if status.is_success() {
        let value = serde_json::from_value(answer.body).map_err(|e| ClientError::Server {
            status: status.as_u16(),
            code: ErrorCode::Internal.as_str().into(),
            message: format!("unexpected answer: {e}"),
        })?;
        return Ok((status, value));
    }
    Err(error_of(status, answer.body))
}

/// The typed error of an answer that is not a success.
fn error_of(status: StatusCode, body: Value) -> ClientError {
    let err: Option<ErrorBody> = serde_json::from_value(body).ok();
    let (code, message, field) = match err {
        Some(e) => (e.error.code, e.error.message, e.error.field),
        // Not ordo's error shape (a proxy's page, say): the API's code for such a status.
        None => (
            match status.as_u16() {
                401 => ErrorCode::Unauthorized,
                403 => ErrorCode::Forbidden,
                404 => ErrorCode::NotFound,
                400..=499 => ErrorCode::BadRequest,
                _ => ErrorCode::Internal,
            }
            .as_str()
            .to_string(),
            format!("HTTP {status}"),
            None,
        ),
    };
    let status = status.as_u16();
    match status {
        404 => ClientError::NotFound(message),
        409 => ClientError::Conflict { code, message },
        422 => ClientError::Validation {
            field: field.unwrap_or_default(),
            message,
        },
        401 | 403 => ClientError::Unauthorized {
            status,
            code,
            message,
        },
        400..=499 => ClientError::BadRequest {
            status,
            code,
            message,
        },
        _ => ClientError::Server {
            status,
            code,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::fake_node::{answer, fake_node, Requests};
    use super::*;

    const ORDER: &str = r#"{"id":1,"customer_id":"c","items":[{"sku":"s","quantity":1,"unit_price_cents":1}],"total_cents":1,"status":"pending","version":1,"created_at":"2026-11-28T14:00:00.000Z","updated_at":"2026-11-28T14:00:00.000Z","note":"","revision":1}"#;

    /// A 201 whose body is cut off after a few bytes (the connection closes).
    fn cut_off_created() -> String {
        "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\
         connection: close\r\n\r\n{\"id\":"
            .to_string()
    }

    fn client_of(nodes: &[&str]) -> Client {
        let mut config = ClientConfig::new(nodes.iter().map(|n| n.to_string()));
        config.base_backoff = Duration::from_millis(1);
        config.max_backoff = Duration::from_millis(5);
        config.cool_down = Duration::from_millis(1);
        Client::new(config)
    }

    /// The `Idempotency-Key` header of each request a fake node read.
    fn keys_sent(requests: &Requests) -> Vec<String> {
        requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                r.lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("idempotency-key")
                            .then(|| value.trim().to_string())
                    })
                    .unwrap_or_default()
            })
            .collect()
    }

    /// A write's answer is its whole body: a 201 cut off on the way is no answer, and the
    /// write is sent again with the same key (which replays it where it was applied). It used
    /// to come back as a server error without the key, inviting a retry that creates twice.
    #[tokio::test]
    async fn a_created_answer_cut_off_is_retried_with_the_same_key() {
        let (cuts, cut_requests) = fake_node(vec![cut_off_created()]).await;
        let whole = answer("201 Created", "application/json", ORDER);
        let (answers, answered_requests) = fake_node(vec![whole]).await;
        let client = client_of(&[&cuts, &answers]);
        let order = NewOrderRequest::new("c").item("s", 1, 1);
        let created = client.create_order(&order, None).await.unwrap();
        assert_eq!(created.order.id, 1);
        let sent = [keys_sent(&cut_requests), keys_sent(&answered_requests)].concat();
        assert!(sent.len() >= 2, "{sent:?}");
        assert!(
            sent.iter().all(|k| *k == created.idempotency_key),
            "{sent:?}"
        );
    }

    /// A keyed write told its outcome is unknown (500, 502) is sent again with its key; a
    /// user, which a second request would make again (409, its token lost), is not sent again
    /// once an attempt may have been applied: the error says so.
    #[tokio::test]
    async fn unknown_outcomes_are_resent_only_where_a_resend_is_safe() {
        let failed = answer(
            "500 Internal Server Error",
            "application/json",
            r#"{"error":{"code":"internal","message":"applied, then failed"}}"#,
        );
        let whole = answer("201 Created", "application/json", ORDER);
        let (node, requests) = fake_node(vec![failed, whole]).await;
        let client = client_of(&[&node]);
        let order = NewOrderRequest::new("c").item("s", 1, 1);
        client.create_order(&order, None).await.unwrap();
        assert_eq!(requests.lock().unwrap().len(), 2);

        let user = r#"{"name":"u","role":"reader","token":"t"}"#;
        let whole = answer("201 Created", "application/json", user);
        let (cuts, cut_requests) = fake_node(vec![cut_off_created()]).await;
        let (answers, answered_requests) = fake_node(vec![whole]).await;
        let client = client_of(&[&cuts, &answers]);
        let err = client.add_user("u", "reader").await.unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Unavailable {
                    unanswered: true,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(cut_requests.lock().unwrap().len(), 1);
        assert!(answered_requests.lock().unwrap().is_empty(), "sent twice");
    }
}
