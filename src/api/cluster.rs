//! Cluster routes: health, this node's status, a state digest for comparing replicas, and
//! membership changes (add a learner, set the voters), which the service runs on the leader.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::auth::Caller;
use super::error::ApiError;
use super::json::JsonBody;
use super::users::audit;
use super::AppState;
use crate::rpc::MembershipChange;
use crate::wire::{AddLearnerBody, ClusterStatus, MembersBody};

/// `/livez` (and `/health`, its alias): the process serves HTTP.
pub async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// `/metrics`: the node's metrics in Prometheus' text format (`telemetry`).
pub async fn metrics() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::handle().render(),
    )
        .into_response()
}

/// `GET /cluster/backup`: a backup file (`store::backup`) of a snapshot that covers every
/// write committed before the request, streamed. `x-ordo-backup-index` names its index.
pub async fn backup(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let chosen = state.service.backup_snapshot(&state.snapshots).await;
    let result = chosen.map_err(ApiError::from).and_then(|(meta, file)| {
        let bytes = file
            .metadata()
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .len();
        let header = crate::store::backup::header_for(
            &meta,
            state.service.cluster_id(),
            state.service.id(),
            chrono::Utc::now().timestamp_millis(),
            bytes,
        )?;
        Ok((header, file))
    });
    let subject = match &result {
        Ok((h, _)) => format!("index {}", h.index),
        Err(_) => String::new(),
    };
    audit(caller.as_deref(), "backup", &subject, &result);
    let (header, file) = result?;
    let index = header.index;
    // A blocking writer on one end of a pipe, the response body on the other.
    let (writer, reader) = tokio::io::duplex(1 << 16);
    let writer = StallBoundedWriter {
        pipe: writer,
        runtime: tokio::runtime::Handle::current(),
    };
    tokio::task::spawn_blocking(move || {
        match crate::store::backup::write(&header, std::io::BufReader::new(file), writer) {
            Ok(()) => tracing::info!(
                index = header.index,
                bytes = header.snapshot_bytes,
                ms = started.elapsed().as_millis() as u64,
                "backup sent"
            ),
            // The body ends early: the client's check of the file fails, as it should.
            Err(e) => tracing::warn!(error = %e, "backup cut short"),
        }
    });
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_string(),
            ),
            (
                axum::http::HeaderName::from_static("x-ordo-backup-index"),
                index.to_string(),
            ),
        ],
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(reader)),
    )
        .into_response())
}

/// How long a backup's client may stop reading before the node gives the backup up (and
/// with it the snapshot file it holds open, and a blocking thread).
const BACKUP_STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// The blocking end of a backup's pipe: each write waits for the client to take the bytes,
/// at most `BACKUP_STALL`.
struct StallBoundedWriter {
    pipe: tokio::io::DuplexStream,
    runtime: tokio::runtime::Handle,
}

impl std::io::Write for StallBoundedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use tokio::io::AsyncWriteExt;
        let write = tokio::time::timeout(BACKUP_STALL, self.pipe.write(buf));
        match self.runtime.block_on(write) {
            Ok(written) => written,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing for {BACKUP_STALL:?}"),
            )),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `/version`: this build's version and git commit.
pub async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "commit": crate::GIT_COMMIT,
    }))
}

/// `/readyz`: 200 when the node should get traffic, else 503; the body says which check
/// failed (see `Service::readiness`).
pub async fn ready(State(state): State<AppState>) -> Response {
    let readiness = state.service.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

pub async fn status(State(state): State<AppState>) -> Json<ClusterStatus> {
    Json(state.service.status().await)
}

/// A digest of this node's state machine and how far it has applied: equal digests at equal
/// applied indexes mean the replicas agree.
pub async fn digest(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let applied = state.service.applied_index();
    let reader = state.reader.clone();
    let digest = tokio::task::spawn_blocking(move || reader.state_digest())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(serde_json::json!({
        "node_id": state.service.id(),
        "last_applied": applied,
        "digest": digest,
    })))
}

pub async fn add_learner(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    JsonBody(body): JsonBody<AddLearnerBody>,
) -> Result<Json<ClusterStatus>, ApiError> {
    let subject = format!("{}={}", body.id, body.addr);
    let change = MembershipChange::AddLearner {
        id: body.id,
        addr: body.addr,
    };
    let result = state
        .service
        .change_membership(change)
        .await
        .map_err(ApiError::from);
    audit(caller.as_deref(), "cluster.add_learner", &subject, &result);
    Ok(Json(result?))
}

pub async fn change_members(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    JsonBody(body): JsonBody<MembersBody>,
) -> Result<Json<ClusterStatus>, ApiError> {
    let subject = format!("{:?}", body.members);
    let change = MembershipChange::SetVoters(body.members.into_iter().collect());
    let result = state
        .service
        .change_membership(change)
        .await
        .map_err(ApiError::from);
    audit(caller.as_deref(), "cluster.set_voters", &subject, &result);
    Ok(Json(result?))
}
