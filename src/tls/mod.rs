//! TLS with rustls, from PEM files: a node's server side (its certificate, and peers'
//! certificates checked against the cluster CA), its side as a client of its peers (the same
//! certificate, presented to them), and the configuration clients use to check a node.
//!
//! One port carries both clients and peers, so a client certificate is optional at the
//! handshake; a connection that presented one signed by the cluster CA is a peer's, and only
//! such connections may use the node-to-node routes (`rpc::server`). The cluster CA signs node
//! certificates only; clients prove who they are otherwise. A certificate revocation list of
//! the cluster CA (`TlsFiles::crl`) takes a node certificate's key out of the cluster (a
//! decommissioned or compromised node): nodes refuse it on both sides of their connections.
//!
//! Certificates can be replaced while the node runs: `NodeTls::reload` reads the files again
//! and swaps the configurations. New connections use them; a connection opened before
//! serves its next request only if its peer certificate (if any) passes the new ones, and
//! then closes, so that its client reconnects under them (`api::server`): a revoked peer
//! holding a busy keep-alive connection would otherwise keep it for as long as it liked. A
//! reload that fails keeps the old ones and says why. `dev_certs` makes a CA and node certificates
//! for development and tests.

pub mod dev_certs;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::UnixTime;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no certificate revocation list (PEM `X509 CRL`)")]
    NoCrl { path: PathBuf },
    #[error("{path}: {why}")]
    BadCrl { path: PathBuf, why: String },
    #[error("{0}")]
    Config(#[from] rustls::Error),
    #[error("the CA certificates cannot check clients: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// What the listener knows of a request's connection (a request extension).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionSecurity {
    /// The connection is TLS.
    pub tls: bool,
    /// The other side presented a certificate that chains to the cluster CA: a peer.
    pub peer_certificate: bool,
}

/// The PEM files of a node's TLS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The node's certificate chain (leaf first).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The cluster CA: peers' certificates must chain to it.
    pub ca: PathBuf,
    /// Revocation lists the cluster CA issued (PEM): a node certificate listed there is
    /// refused, as a peer calling and as a peer called.
    pub crl: Option<PathBuf>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every PEM block of type `T` in the file at `path` (others are skipped).
fn read_pem<T: PemObject>(path: &Path) -> Result<Vec<T>, TlsError> {
    let read_err = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    T::pem_file_iter(path)
        .map_err(read_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = read_pem(path)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crls: Vec<CertificateRevocationListDer<'static>> = read_pem(path)?;
    if crls.is_empty() {
        return Err(TlsError::NoCrl {
            path: path.to_path_buf(),
        });
    }
    // Parsed here as rustls will, so that a list it cannot use is blamed on this file. And one
    // list per issuer: rustls checks a certificate against the first list whose issuer name
    // matches, so a second one (a newer list appended, or a new CA of the same name) would be
    // ignored, or would fail its signature check and refuse every node of that CA.
    let mut issuers = std::collections::HashSet::new();
    for crl in &crls {
        let bad = |why: String| TlsError::BadCrl {
            path: path.to_path_buf(),
            why,
        };
        let parsed = webpki::BorrowedCertRevocationList::from_der(crl.as_ref())
            .map_err(|e| bad(format!("a revocation list rustls cannot use: {e}")))?;
        if !issuers.insert(webpki::CertRevocationList::from(parsed).issuer().to_vec()) {
            return Err(bad(
                "two revocation lists of one issuer name: keep one list per CA (replace it \
                 with the newer one), and give a new CA a name of its own"
                    .into(),
            ));
        }
    }
    Ok(crls)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The certificates of the CA file, as roots to check the other side against.
pub fn read_roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// What a client needs to talk to nodes whose certificates chain to `ca`, and, with `crl`,
/// are not listed in that CA's revocation lists (a node's key that leaked could otherwise
/// pose as the node to clients and collect their tokens). As on nodes, a node certificate
/// the lists do not cover is refused.
pub fn client_config(ca: &Path, crl: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let crls = crl.map(read_crls).transpose()?.unwrap_or_default();
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_webpki_verifier(node_verifier(Arc::new(read_roots(ca)?), crls)?)
        .with_no_client_auth())
}

/// How whoever connects to a node (a peer, a client) checks its certificate: it chains to
/// `roots`, and the lists do not name it. Only the node's own certificate is looked up in the
/// lists (the CA is the root), and one they do not cover is refused: fail closed. (No lists:
/// no revocation check.)
fn node_verifier(
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    Ok(
        WebPkiServerVerifier::builder_with_provider(roots, provider())
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .build()?,
    )
}

/// Both sides of a node's TLS, built from one reading of its files.
struct Loaded {
    server: Arc<ServerConfig>,
    /// The server's check of a presented certificate, to check an open connection's again.
    client_verifier: Arc<dyn ClientCertVerifier>,
    peer_client: Arc<ClientConfig>,
    /// The files' modification times when they were read.
    stamps: Vec<Option<SystemTime>>,
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [
        Some(&files.cert),
        Some(&files.key),
        Some(&files.ca),
        files.crl.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .collect()
}

fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let stamps = stamps(files);
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let roots = Arc::new(read_roots(&files.ca)?);
    let crls = match &files.crl {
        Some(path) => read_crls(path)?,
        None => Vec::new(),
    };
    // Clients connect without a certificate; peers present theirs (see the module comment).
    // Only a node's own certificate is looked up in the lists (the CA is the root), and one
    // the lists do not cover (another issuer's lists given) is refused: fail closed.
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .allow_unauthenticated()
        .with_crls(crls.clone())
        .only_check_end_entity_revocation()
        .build()?;
    let peer_verifier = node_verifier(roots, crls)?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(certs.clone(), key.clone_key())?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let peer_client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_webpki_verifier(peer_verifier)
        .with_client_auth_cert(certs, key)?;
    Ok(Loaded {
        server: Arc::new(server),
        client_verifier: verifier,
        peer_client: Arc::new(peer_client),
        stamps,
    })
}

/// A node's TLS: the current configurations, replaced by `reload`.
pub struct NodeTls {
    files: TlsFiles,
    current: RwLock<Loaded>,
    /// Counts successful loads: a client built for an older one is rebuilt.
    generation: AtomicU64,
    /// The files' modification times at the last load or reload attempt.
    tried: std::sync::Mutex<Vec<Option<SystemTime>>>,
}

impl NodeTls {
    pub fn load(files: TlsFiles) -> Result<Arc<NodeTls>, TlsError> {
        let loaded = load(&files)?;
        Ok(Arc::new(NodeTls {
            tried: std::sync::Mutex::new(loaded.stamps.clone()),
            files,
            current: RwLock::new(loaded),
            generation: AtomicU64::new(1),
        }))
    }

    /// For accepting connections (clients' and peers').
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .server
            .clone()
    }

    /// For connecting to peers, presenting this node's certificate.
    pub fn peer_client_config(&self) -> Arc<ClientConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .peer_client
            .clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the certificate chain a peer presented at an earlier handshake (leaf first)
    /// passes the current files: the CA, and the revocation lists.
    pub fn still_trusts(&self, chain: &[CertificateDer<'static>]) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        let verifier = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .client_verifier
            .clone();
        verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .is_ok()
    }

    /// True if a file changed since the last load or reload attempt.
    pub fn files_changed(&self) -> bool {
        stamps(&self.files) != *self.tried.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the files again and uses them from now on. On failure the configurations in use
    /// stay, and the error says which file is wrong.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.tried.lock().unwrap_or_else(|p| p.into_inner()) = stamps(&self.files);
        let loaded = load(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::dev_certs::{DevCa, Validity};
    use super::*;

    #[test]
    fn a_reload_swaps_the_certificates_and_a_bad_file_keeps_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::create(dir.path()).unwrap();
        let files = ca
            .issue_node(dir.path(), "node1", &["127.0.0.1"], Validity::days(30))
            .unwrap();
        let tls = NodeTls::load(files.clone()).unwrap();
        assert_eq!(tls.generation(), 1);
        assert!(!tls.files_changed());

        // A new certificate for the same node: picked up by a reload. (Its time is set ahead,
        // so the change shows however coarse the file system's clock is.)
        let renewed = ca
            .issue_node(dir.path(), "node1", &["127.0.0.1"], Validity::days(60))
            .unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(10);
        std::fs::File::options()
            .write(true)
            .open(&renewed.cert)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(tls.files_changed());
        tls.reload().unwrap();
        assert_eq!(tls.generation(), 2);

        // A broken key file: the reload fails, naming it, and the old configuration stays.
        std::fs::write(&files.key, "not a key").unwrap();
        let err = tls.reload().unwrap_err().to_string();
        assert!(err.contains("node1-key.pem"), "{err}");
        assert_eq!(tls.generation(), 2);
        assert!(
            !tls.files_changed(),
            "a failed attempt is not retried until a file changes"
        );
    }

    /// A TLS handshake between a node calling (`client`) and a node called (`server`), in
    /// memory: the caller's error, if any.
    async fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Result<(), String> {
        let (near, far) = tokio::io::duplex(64 << 10);
        let accepted = tokio_rustls::TlsAcceptor::from(server).accept(far);
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let connected = tokio_rustls::TlsConnector::from(client).connect(name, near);
        let (_, connected) = tokio::join!(accepted, connected);
        connected.map(|_| ()).map_err(|e| e.to_string())
    }

    /// A node whose revocation list names a peer's certificate refuses that peer as a server
    /// it calls (the other direction, a listed caller, is tests/tls.rs'), and so does a client
    /// given the list; a list that does not name it, or none, lets the peer through. An empty
    /// or unreadable list file is an error.
    #[tokio::test]
    async fn a_listed_peer_certificate_is_refused_when_called() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::create(dir.path()).unwrap();
        let issue = |name| {
            ca.issue_node(dir.path(), name, &["127.0.0.1"], Validity::days(30))
                .unwrap()
        };
        let (caller, called, other) = (issue("node1"), issue("node2"), issue("node3"));
        let called = NodeTls::load(called.clone()).unwrap().server_config();
        let with_list = |name: &str, revoked: &[&Path]| {
            let crl = dir.path().join(name);
            ca.revocation_list(&crl, revoked).unwrap();
            let files = TlsFiles {
                crl: Some(crl),
                ..caller.clone()
            };
            NodeTls::load(files).unwrap().peer_client_config()
        };

        let no_list = NodeTls::load(caller.clone()).unwrap().peer_client_config();
        handshake(no_list, called.clone()).await.unwrap();
        let others_listed = with_list("others.pem", &[&other.cert]);
        handshake(others_listed, called.clone()).await.unwrap();
        let listed = with_list("listed.pem", &[&dir.path().join("node2.pem")]);
        let err = handshake(listed, called.clone()).await.unwrap_err();
        assert!(err.to_lowercase().contains("revoked"), "{err}");
        // Clients given the lists (`--ca-crl`) refuse it the same way.
        let client = |crl: Option<&str>| {
            let crl = crl.map(|name| dir.path().join(name));
            Arc::new(client_config(&caller.ca, crl.as_deref()).unwrap())
        };
        handshake(client(None), called.clone()).await.unwrap();
        handshake(client(Some("others.pem")), called.clone())
            .await
            .unwrap();
        let err = handshake(client(Some("listed.pem")), called)
            .await
            .unwrap_err();
        assert!(err.to_lowercase().contains("revoked"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let files = TlsFiles {
            crl: Some(empty),
            ..caller.clone()
        };
        let err = NodeTls::load(files).err().expect("no list in the file");
        assert!(err.to_string().contains("empty.pem"), "{err}");
        // Two lists of one CA in one file: only the first would count, so it is refused.
        let twice = dir.path().join("twice.pem");
        let lists = [
            &dir.path().join("others.pem"),
            &dir.path().join("listed.pem"),
        ]
        .map(|p| std::fs::read_to_string(p).unwrap());
        std::fs::write(&twice, lists.concat()).unwrap();
        let files = TlsFiles {
            crl: Some(twice),
            ..caller.clone()
        };
        let err = NodeTls::load(files).err().expect("two lists of one CA");
        assert!(
            err.to_string().contains("twice.pem") && err.to_string().contains("one issuer"),
            "{err}"
        );
    }
}
