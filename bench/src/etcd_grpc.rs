//! etcd through its native gRPC API (`--target etcd-grpc`, built with the `etcd-grpc`
//! feature): the path etcd's own clients take, where the JSON gateway (`--target etcd`) is a
//! side door. One connection per member, each request sent to member `n % members` as the
//! HTTP targets do, with the same keys and ~200-byte values as the gateway load.

#[cfg(feature = "etcd-grpc")]
mod grpc {
    use std::time::Duration;

    use etcd_client::{Client, ConnectOptions, GetOptions, KvClient};

    pub struct EtcdGrpc {
        members: Vec<KvClient>,
    }

    impl EtcdGrpc {
        /// Connects to every member (URLs like `http://127.0.0.1:2379`).
        pub async fn connect(nodes: &[String]) -> anyhow::Result<Self> {
            let mut members = Vec::new();
            // The HTTP targets' request timeout, so a stalled member ends a run the same way.
            let options = ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(Duration::from_secs(10));
            for url in nodes {
                let client = Client::connect([url.as_str()], Some(options.clone())).await?;
                members.push(client.kv_client());
            }
            Ok(EtcdGrpc { members })
        }

        fn member(&self, n: u64) -> KvClient {
            // A clone shares the member's connection (an HTTP/2 channel).
            self.members[(n % self.members.len() as u64) as usize].clone()
        }

        pub async fn put(&self, n: u64, key: String, value: String) -> Result<(), String> {
            self.member(n)
                .put(key, value, None)
                .await
                .map(|_| ())
                .map_err(kind)
        }

        pub async fn get(&self, n: u64, key: String, serializable: bool) -> Result<(), String> {
            let options = serializable.then(|| GetOptions::new().with_serializable());
            self.member(n)
                .get(key, options)
                .await
                .map(|_| ())
                .map_err(kind)
        }
    }

    /// Error kinds comparable with the HTTP targets' (`timeout`, `connect`, `io`), or the
    /// gRPC status otherwise.
    fn kind(e: etcd_client::Error) -> String {
        use etcd_client::Error;
        match e {
            // gRPC's status codes, by number (etcd-client does not re-export tonic's `Code`):
            // CANCELLED 1 and DEADLINE_EXCEEDED 4 are timeouts, UNAVAILABLE 14 a dead member.
            Error::GRpcStatus(s) => match s.code() as i32 {
                1 | 4 => "timeout".into(),
                14 => "connect".into(),
                _ => format!("grpc_{:?}", s.code()).to_lowercase(),
            },
            Error::TransportError(_) => "connect".into(),
            _ => "io".into(),
        }
    }
}

#[cfg(not(feature = "etcd-grpc"))]
mod grpc {
    /// Without the feature: refuses to connect, saying how to build it.
    pub struct EtcdGrpc;

    impl EtcdGrpc {
        pub async fn connect(_nodes: &[String]) -> anyhow::Result<Self> {
            anyhow::bail!(
                "this ordo-bench was built without etcd's gRPC client: \
                 cargo build --release -p ordo-bench --features etcd-grpc (needs protoc)"
            )
        }

        pub async fn put(&self, _n: u64, _key: String, _value: String) -> Result<(), String> {
            unreachable!("never connected")
        }

        pub async fn get(&self, _n: u64, _key: String, _serializable: bool) -> Result<(), String> {
            unreachable!("never connected")
        }
    }
}

pub use grpc::EtcdGrpc;
