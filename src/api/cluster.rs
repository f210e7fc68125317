//! Cluster routes: health, this node's status, a state digest for comparing replicas, and
//! membership changes (add a learner, set the voters), which the service runs on the leader.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::auth::Caller;
use super::error::ApiError;
use super::json::{JsonBody, PathSegment};
use super::users::audit;
use super::AppState;
use crate::rpc::MembershipChange;
use crate::wire::{
    AddLearnerBody, ClusterStatus, DigestJson, LiveJson, MembersBody, ReadinessJson, VersionJson,
};

/// `/livez` (and `/health`, its alias): the process serves HTTP.
#[utoipa::path(get, path = "/livez", tag = "probes", operation_id = "livez",
    responses((status = 200, description = "The process serves HTTP", body = LiveJson)))]
pub async fn live() -> Json<LiveJson> {
    Json(LiveJson {
        status: "ok".into(),
    })
}

/// `/health`: the old name of `/livez`.
#[utoipa::path(get, path = "/health", tag = "probes", operation_id = "health",
    responses((status = 200, description = "The process serves HTTP (as /livez)", body = LiveJson)))]
pub async fn health() -> Json<LiveJson> {
    live().await
}

/// `/metrics`: the node's metrics in Prometheus' text format (`telemetry`).
#[utoipa::path(get, path = "/metrics", tag = "cluster", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4",
               content_type = "text/plain", body = String)))]
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
#[utoipa::path(get, path = "/cluster/backup", tag = "cluster", operation_id = "backup",
    responses((status = 200, description = "An ORDOBKP1 backup file (check it with `ordo backup verify`)",
               content_type = "application/octet-stream", body = Vec<u8>,
               headers(("x-ordo-backup-index" = u64, description = "The Raft index the backup covers")))))]
pub async fn backup(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    // Each stream holds a blocking thread (tokio's pool, which log flushes and snapshots use
    // too) for as long as its client keeps reading, however slowly: a few at a time.
    let Ok(slot) = state.backups.clone().try_acquire_owned() else {
        return Err(ApiError::Unavailable(format!(
            "{MAX_BACKUP_STREAMS} backups are streaming from this node already; retry later \
             or ask another node"
        )));
    };
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
    let (finished, outcome) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let written = crate::store::backup::write(&header, std::io::BufReader::new(file), writer);
        match &written {
            Ok(()) => tracing::info!(
                index = header.index,
                bytes = header.snapshot_bytes,
                ms = started.elapsed().as_millis() as u64,
                "backup sent"
            ),
            Err(e) => tracing::warn!(error = %e, "backup cut short"),
        }
        // The slot is free before the body ends: a client that reads the end and asks again
        // at once finds it free.
        drop(slot);
        let _ = finished.send(written.map_err(|e| e.to_string()));
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
        axum::body::Body::from_stream(backup_body(reader, outcome)),
    )
        .into_response())
}

/// How many backups one node streams at a time (`GET /cluster/backup` answers 503 past it).
pub const MAX_BACKUP_STREAMS: usize = 2;

/// A backup's response body: the pipe's bytes, then an error if the writer failed, so that
/// a backup cut short ends the response abnormally (the connection is dropped: no final
/// chunk) instead of looking complete to `curl -f` and the like.
fn backup_body(
    pipe: tokio::io::DuplexStream,
    outcome: tokio::sync::oneshot::Receiver<Result<(), String>>,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    use futures_util::StreamExt;
    let end = futures_util::stream::once(async move {
        match outcome.await {
            Ok(Ok(())) => None,
            Ok(Err(why)) => Some(Err(std::io::Error::other(format!(
                "backup cut short: {why}"
            )))),
            Err(_) => Some(Err(std::io::Error::other("backup writer stopped"))),
        }
    })
    .filter_map(std::future::ready);
    tokio_util::io::ReaderStream::new(pipe).chain(end)
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
#[utoipa::path(get, path = "/version", tag = "probes", operation_id = "version",
    responses((status = 200, description = "This build", body = VersionJson)))]
pub async fn version() -> Json<VersionJson> {
    Json(VersionJson {
        version: env!("CARGO_PKG_VERSION").into(),
        commit: crate::GIT_COMMIT.into(),
    })
}

/// `/readyz`: 200 when the node should get traffic, else 503; the body says which check
/// failed (see `Service::readiness`).
#[utoipa::path(get, path = "/readyz", tag = "probes", operation_id = "readyz",
    responses((status = 200, description = "Ready for traffic", body = ReadinessJson),
              (status = 503, description = "Not ready: the failed checks say why", body = ReadinessJson)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let readiness = state.service.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

/// This node's view of the cluster, from its local state (answers without a quorum).
#[utoipa::path(get, path = "/cluster/status", tag = "cluster", operation_id = "cluster_status",
    responses((status = 200, description = "This node's view", body = ClusterStatus)))]
pub async fn status(State(state): State<AppState>) -> Json<ClusterStatus> {
    let mut status = state.service.status().await;
    status.state_clock_ms = state.reader.clock_ms().ok().flatten();
    Json(status)
}

/// A digest of this node's state machine and the applied index it is of: equal digests at
/// equal applied indexes mean the replicas agree. 503 if writes kept being applied through
/// every try (the scan of a large store takes a while): compare while writes pause.
#[utoipa::path(get, path = "/cluster/digest", tag = "cluster", operation_id = "cluster_digest",
    responses((status = 200, description = "This node's state digest", body = DigestJson)))]
pub async fn digest(State(state): State<AppState>) -> Result<Json<DigestJson>, ApiError> {
    let reader = state.reader.clone();
    let taken = tokio::task::spawn_blocking(move || reader.applied_digest(DIGEST_TRIES))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let Some((last_applied, digest)) = taken else {
        return Err(ApiError::Unavailable(format!(
            "writes were applied during each of {DIGEST_TRIES} scans of the store, so no \
             digest is of one applied index; compare digests while writes pause"
        )));
    };
    Ok(Json(DigestJson {
        node_id: state.service.id(),
        last_applied,
        digest,
    }))
}

/// Scans of the store one digest may take before it gives up (see `digest`).
const DIGEST_TRIES: usize = 5;

/// Add a node as a learner; answers once it has caught up with the leader's log.
#[utoipa::path(post, path = "/cluster/learners", tag = "cluster", operation_id = "add_learner",
    request_body = AddLearnerBody,
    responses((status = 200, description = "The cluster after the change", body = ClusterStatus)))]
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

/// Take a learner out of the membership: one that died, or was added at a wrong address. Its
/// id and address can then be used again. (A voter leaves through `/cluster/members` first.)
#[utoipa::path(delete, path = "/cluster/learners/{id}", tag = "cluster",
    operation_id = "remove_learner", params(super::openapi::NodeIdPath),
    responses((status = 200, description = "The cluster after the change", body = ClusterStatus)))]
pub async fn remove_learner(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    PathSegment(raw_id): PathSegment,
) -> Result<Json<ClusterStatus>, ApiError> {
    let id = super::json::decimal_u64(&raw_id).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "invalid node id {raw_id:?}: node ids are non-negative integers"
        ))
    })?;
    let result = state
        .service
        .change_membership(MembershipChange::RemoveLearner { id })
        .await
        .map_err(ApiError::from);
    audit(
        caller.as_deref(),
        "cluster.remove_learner",
        &id.to_string(),
        &result,
    );
    Ok(Json(result?))
}

/// Set the voters (each a current member, or a learner that has caught up); the other voters
/// leave, learners stay learners.
#[utoipa::path(post, path = "/cluster/members", tag = "cluster", operation_id = "change_members",
    request_body = MembersBody,
    responses((status = 200, description = "The cluster after the change", body = ClusterStatus)))]
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

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;

    use super::backup_body;

    /// What a client reads from a backup body whose writer wrote `bytes` and ended so.
    async fn read_body(outcome: Option<Result<(), String>>) -> (Vec<u8>, bool) {
        let (mut writer, pipe) = tokio::io::duplex(1024);
        let (finished, done) = tokio::sync::oneshot::channel();
        writer.write_all(b"ORDOBKP1 part").await.unwrap();
        drop(writer);
        match outcome {
            Some(o) => finished.send(o).unwrap(),
            None => drop(finished),
        }
        let mut body = std::pin::pin!(backup_body(pipe, done));
        let (mut bytes, mut failed) = (Vec::new(), false);
        while let Some(item) = body.next().await {
            match item {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(_) => failed = true,
            }
        }
        (bytes, failed)
    }

    /// A backup cut short ends its body with an error (the response is aborted) after the
    /// bytes it had; a whole one ends cleanly.
    #[tokio::test]
    async fn a_backup_body_ends_in_an_error_when_its_writer_failed() {
        let whole = read_body(Some(Ok(()))).await;
        assert_eq!(whole, (b"ORDOBKP1 part".to_vec(), false));
        let cut = read_body(Some(Err("the client read nothing".into()))).await;
        assert_eq!(cut, (b"ORDOBKP1 part".to_vec(), true));
        let lost = read_body(None).await;
        assert_eq!(lost, (b"ORDOBKP1 part".to_vec(), true));
    }
}
