//! The sending side of Raft RPCs: HTTP POSTs with `codec` bodies to a peer's `/raft/*` routes.
//!
//! One pooled HTTP/1.1 client serves all peers (keep-alive connections are reused across
//! heartbeats). A refused or failed connection is reported as `Unreachable`, which makes
//! openraft back off from a dead peer instead of hammering it, for `unreachable_retry` between
//! attempts: openraft's default of 500 ms is longer than a restarted peer waits before it
//! campaigns itself, so the peer would depose a healthy leader with a stale log.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{NodeId, TypeConfig};
use crate::codec;

/// The route of each Raft RPC on the receiving node.
pub const APPEND_PATH: &str = "/raft/append";
pub const VOTE_PATH: &str = "/raft/vote";
pub const SNAPSHOT_PATH: &str = "/raft/snapshot";

/// Builds one `PeerClient` per target; cheap, the HTTP connection pool is shared.
#[derive(Clone)]
pub struct PeerNetwork {
    http: reqwest::Client,
    unreachable_retry: Duration,
}

impl PeerNetwork {
    /// `unreachable_retry`: the pause before trying an unreachable peer again; keep it well
    /// under the election timeout, so a peer that comes back hears from the leader before it
    /// would start an election of its own.
    pub fn new(unreachable_retry: Duration) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .expect("an HTTP client with plain settings builds");
        PeerNetwork {
            http,
            unreachable_retry,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            http: self.http.clone(),
            target,
            base: format!("http://{}", node.addr),
            unreachable_retry: self.unreachable_retry,
        }
    }
}

/// Sends Raft RPCs to one peer.
pub struct PeerClient {
    http: reqwest::Client,
    target: NodeId,
    base: String,
    unreachable_retry: Duration,
}

/// Why a call to a peer failed before an answer of the peer's own came back.
enum CallError {
    Unreachable(Unreachable),
    Network(NetworkError),
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        ttl: Duration,
    ) -> Result<Result<Resp, E>, CallError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: DeserializeOwned,
    {
        let body = codec::encode(req).map_err(|e| CallError::Network(NetworkError::new(&e)))?;
        let resp = self
            .http
            .post(format!("{}{}", self.base, path))
            .timeout(ttl)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    CallError::Unreachable(Unreachable::new(&e))
                } else {
                    CallError::Network(NetworkError::new(&e))
                }
            })?;
        if !resp.status().is_success() {
            let msg = format!("peer {} answered HTTP {}", self.target, resp.status());
            return Err(CallError::Network(NetworkError::new(
                &std::io::Error::other(msg),
            )));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| CallError::Network(NetworkError::new(&e)))?;
        codec::decode::<Result<Resp, E>>(&bytes)
            .map_err(|e| CallError::Network(NetworkError::new(&e)))
    }

    async fn rpc<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        match self
            .call::<Req, Resp, RaftError<NodeId, E>>(path, req, option.hard_ttl())
            .await
        {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(CallError::Unreachable(e)) => Err(RPCError::Unreachable(e)),
            Err(CallError::Network(e)) => Err(RPCError::Network(e)),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc(APPEND_PATH, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc(SNAPSHOT_PATH, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc(VOTE_PATH, &rpc, &option).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.unreachable_retry))
    }
}
