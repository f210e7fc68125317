//! TLS end to end, with real `ordo serve` processes on loopback and certificates the test
//! makes: clients and peers over HTTPS, node-to-node routes only for the cluster's own
//! certificates, strangers (plain HTTP, another CA, expired certificates) refused at the
//! handshake, and certificates replaced without a restart.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use ordo::tls::dev_certs::{DevCa, Validity};
use ordo::tls::{NodeTls, TlsFiles};
use ordo::wire::ErrorCode;
use serde_json::Value;
use tokio::time::Instant;

async fn start_tls_cluster(n: u64) -> TestCluster {
    let mut cluster = TestCluster::new(Path::new(BIN), n, None, Vec::new());
    cluster.enable_tls();
    cluster.start_all().await;
    cluster
}

/// An HTTPS client that trusts the cluster CA and presents `files`' certificate (as a peer
/// would), or none.
fn https_client(ca: &Path, presents: Option<&TlsFiles>) -> reqwest::Client {
    let tls = match presents {
        Some(files) => {
            let files = TlsFiles {
                ca: ca.to_path_buf(),
                ..files.clone()
            };
            (*NodeTls::load(files).unwrap().peer_client_config()).clone()
        }
        None => ordo::tls::client_config(ca, None).unwrap(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The certificate node `id` serves right now (DER).
async fn served_certificate(cluster: &TestCluster, id: u64) -> Vec<u8> {
    let config = ordo::tls::client_config(&cluster.certs_dir().join("ca.pem"), None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(&cluster.nodes[&id].addr)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn pem_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_peers_speak_tls_and_only_peers_reach_node_routes() {
    let cluster = start_tls_cluster(3).await;
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let follower = cluster.ids().into_iter().find(|n| *n != leader).unwrap();
    let other = cluster
        .ids()
        .into_iter()
        .find(|n| *n != leader && *n != follower)
        .unwrap();

    // A write through a follower is forwarded to the leader over mutual TLS; a linearizable
    // read on the third node asks the leader for a read index the same way.
    let (status, created) = create(&cluster, follower, "tls", None, "over tls")
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    let path = format!("/api/orders/{}", created["id"]);
    let (status, read) = get(&cluster, other, &path).await.unwrap();
    assert_eq!((status, &read["id"]), (200, &created["id"]), "{read}");

    // The client library, with the CA file.
    let ca = cluster.certs_dir().join("ca.pem");
    let mut config =
        ordo::client::ClientConfig::new(cluster.ids().into_iter().map(|id| cluster.url(id, "")));
    config.ca_cert = Some(ca.clone());
    let client = ordo::client::Client::try_new(config).unwrap();
    let order = ordo::client::NewOrderRequest::new("lib").item("book", 1, 999);
    let made = client.create_order(&order, None).await.unwrap();
    assert_eq!(made.order.customer_id, "lib");

    // A client (valid TLS, no certificate of its own) is refused every node-to-node route.
    for route in ordo::rpc::ROUTES {
        let (status, body) = send(cluster.http.post(cluster.url(follower, route)).body("x"))
            .await
            .unwrap();
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (403, Value::from(ErrorCode::Forbidden.as_str())),
            "{route}: {body}"
        );
    }
    // A peer (a certificate of the cluster CA) gets past that check to the decoder.
    let peer = https_client(
        &ca,
        Some(&TlsFiles {
            cert: cluster.certs_dir().join(format!("node{leader}.pem")),
            key: cluster.certs_dir().join(format!("node{leader}-key.pem")),
            ca: ca.clone(),
            crl: None,
        }),
    );
    let (status, body) = send(peer.post(cluster.url(follower, "/raft/vote")).body("x"))
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");

    // Strangers are refused at the handshake, and the node serves on.
    let addr = &cluster.nodes[&follower].addr;
    let plain = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(
        plain
            .get(format!("http://{addr}/health"))
            .send()
            .await
            .is_err(),
        "plain HTTP to a TLS port must fail"
    );
    let foreign = DevCa::generate("another CA", Validity::days(30)).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let foreign_files = foreign
        .issue_node(
            elsewhere.path(),
            "intruder",
            &["127.0.0.1"],
            Validity::days(30),
        )
        .unwrap();
    let expired_files = cluster
        .ca()
        .unwrap()
        .issue_node(
            elsewhere.path(),
            "expired",
            &["127.0.0.1"],
            Validity::expired(),
        )
        .unwrap();
    for (who, files) in [("another CA", &foreign_files), ("expired", &expired_files)] {
        let stranger = https_client(&ca, Some(files));
        for route in ["/health", "/raft/vote"] {
            let sent = stranger
                .post(cluster.url(follower, route))
                .body("x")
                .send()
                .await;
            assert!(sent.is_err(), "{who} certificate on {route}: {sent:?}");
        }
    }
    let (status, _) = get(&cluster, follower, "/health").await.unwrap();
    assert_eq!(status, 200);
}

/// A node whose certificate the cluster does not trust never receives the log, however long
/// it tries; given a good certificate (SIGHUP, no restart) it catches up. A certificate
/// rewritten in place is picked up without a signal, and an expired one is refused by
/// clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_node_stays_out_until_its_certificate_is_replaced_without_a_restart() {
    let mut cluster = TestCluster::new(Path::new(BIN), 3, None, Vec::new());
    cluster.enable_tls();
    let intruder_ca = DevCa::generate("another CA", Validity::days(30)).unwrap();
    cluster.issue_cert(&intruder_ca, 3, Validity::days(30));
    for id in cluster.ids() {
        cluster.spawn(id);
    }
    cluster.wait_for_leader(&[1, 2]).await;
    for i in 0..5 {
        create_until_acked(&cluster, &[1, 2], "t", &format!("t-{i}")).await;
    }
    let applied = |s: &Value| s["last_applied"].as_u64().unwrap_or(0);
    let target = applied(&cluster.status(1).await.unwrap());
    cluster.wait_applied(2, target).await;

    // Node 3 as seen by a client that trusts its certificate. The leader retries it every
    // 50 ms; a trusted node catches up in well under a second. Watch it for three.
    let intruder_view = {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("intruder-ca.pem");
        intruder_ca.save_cert(&ca).unwrap();
        (https_client(&ca, None), dir)
    };
    let node3 = format!("https://{}/cluster/status", cluster.nodes[&3].addr);
    let watch_until = Instant::now() + std::time::Duration::from_secs(3);
    while Instant::now() < watch_until {
        let (status, body) = send(intruder_view.0.get(&node3)).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            applied(&body),
            0,
            "the untrusted node received the log: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // A certificate of the cluster CA, then SIGHUP: node 3 joins without a restart.
    let ca = cluster.ca().unwrap();
    let files = cluster.issue_cert(ca, 3, Validity::days(30));
    cluster.hangup(3);
    cluster.wait_applied(3, target).await;
    assert_eq!(served_certificate(&cluster, 3).await, pem_der(&files.cert));

    // Rewritten in place, no signal: picked up when the node sees the file change.
    let before = served_certificate(&cluster, 1).await;
    let files = cluster.issue_cert(cluster.ca().unwrap(), 1, Validity::days(60));
    let deadline = Instant::now() + DEADLINE;
    while served_certificate(&cluster, 1).await == before {
        assert!(
            Instant::now() < deadline,
            "node 1 never served its new certificate"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(served_certificate(&cluster, 1).await, pem_der(&files.cert));

    // An expired certificate: clients refuse the node once it serves it (on new connections:
    // open ones keep the session they have, so this client keeps none).
    cluster.issue_cert(cluster.ca().unwrap(), 2, Validity::expired());
    cluster.hangup(2);
    let ca = cluster.certs_dir().join("ca.pem");
    let fresh = reqwest::Client::builder()
        .use_preconfigured_tls(ordo::tls::client_config(&ca, None).unwrap())
        .pool_max_idle_per_host(0)
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while fresh.get(cluster.url(2, "/health")).send().await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "a node serving an expired certificate was trusted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A certificate of the cluster CA that its revocation list (`--tls-crl`) names is refused at
/// the handshake: the key of a decommissioned node no longer reaches the node-to-node routes.
/// The list is read again on SIGHUP, so a node certificate is retired without a restart, and
/// the nodes' own certificates go on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_certificate_is_refused_once_the_list_names_it() {
    let mut cluster = TestCluster::new(Path::new(BIN), 3, None, Vec::new());
    cluster.enable_tls();
    let certs = cluster.certs_dir();
    let (ca_file, crl) = (certs.join("ca.pem"), certs.join("crl.pem"));
    let ca = cluster.ca().expect("TLS is on");
    let retired = ca
        .issue_node(&certs, "retired", &["127.0.0.1"], Validity::days(30))
        .unwrap();
    ca.revocation_list(&crl, &[]).unwrap();
    for id in cluster.ids() {
        let var = ("ORDO_TLS_CRL".to_string(), crl.display().to_string());
        cluster.set_env(id, vec![var]);
    }
    cluster.start_all().await;
    let leader = cluster.wait_for_leader(&cluster.ids()).await;

    // Not listed yet: a peer's certificate, past the peers-only check to the decoder.
    let vote =
        |client: reqwest::Client| send(client.post(cluster.url(leader, "/raft/vote")).body("x"));
    let (status, body) = vote(https_client(&ca_file, Some(&retired))).await.unwrap();
    assert!(
        (400..500).contains(&status) && status != 403,
        "{status} {body}"
    );
    // A client that keeps its connection open (keep-alive), as a peer would: used in every
    // round below, so the node never closes it as idle.
    let held = https_client(&ca_file, Some(&retired));
    let (status, body) = vote(held.clone()).await.unwrap();
    assert!(status == 400, "{status} {body}");

    // Listed, and the nodes told (SIGHUP): a new connection with it fails at the handshake.
    let ca = cluster.ca().expect("TLS is on");
    ca.revocation_list(&crl, &[&retired.cert]).unwrap();
    for id in cluster.ids() {
        cluster.hangup(id);
    }
    let deadline = Instant::now() + DEADLINE;
    let mut held_refused = None;
    loop {
        // A new client each time: a new connection, with the node's current configuration.
        let client = https_client(&ca_file, Some(&retired));
        match client
            .post(cluster.url(leader, "/raft/vote"))
            .body("x")
            .send()
            .await
        {
            Err(e) => {
                // The node's alert, not a timeout or a node that went away.
                let err = format!("{e:?}");
                assert!(err.contains("CertificateRevoked"), "{err}");
                break;
            }
            Ok(resp) => assert!(
                Instant::now() < deadline,
                "the revoked certificate still gets answers: {}",
                resp.status()
            ),
        }
        // Served as before until the reload (this round's new connection was taken), which
        // may come just now: then refused.
        let (status, body) = vote(held.clone()).await.unwrap();
        match status {
            400 => {}
            403 => {
                held_refused = Some(body);
                break;
            }
            _ => panic!("{status} {body}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The connection opened before the reload is refused too, and closed: the next request
    // needs a new one, whose handshake fails.
    let body = match held_refused {
        Some(body) => body,
        None => {
            let (status, body) = vote(held.clone()).await.unwrap();
            assert_eq!(status, 403, "{body}");
            body
        }
    };
    assert_eq!(
        body["error"]["code"].as_str(),
        Some(ErrorCode::Forbidden.as_str()),
        "{body}"
    );
    let err = held
        .post(cluster.url(leader, "/raft/vote"))
        .body("x")
        .send()
        .await
        .expect_err("a new connection with a revoked certificate");
    let err = format!("{err:?}");
    assert!(err.contains("CertificateRevoked"), "{err}");
    // The same node still takes a listed peer's certificate that is not revoked: it is the
    // handshake with the retired one that fails, not the node.
    let node1 = TlsFiles {
        cert: certs.join("node1.pem"),
        key: certs.join("node1-key.pem"),
        ca: ca_file.clone(),
        crl: None,
    };
    let (status, body) = vote(https_client(&ca_file, Some(&node1))).await.unwrap();
    assert!(
        (400..500).contains(&status) && status != 403,
        "{status} {body}"
    );
    // The nodes' own certificates are not listed: a write through a follower is forwarded to
    // the leader and replicated over mutual TLS.
    let follower = cluster.ids().into_iter().find(|n| *n != leader).unwrap();
    let (status, created) = create(&cluster, follower, "crl", None, "after the list")
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
}

/// A TLS handshake in memory between a client configuration and a node's server side: the
/// client's error, if any.
async fn handshake(
    client: rustls::ClientConfig,
    server: Arc<rustls::ServerConfig>,
) -> Result<(), String> {
    let (near, far) = tokio::io::duplex(64 << 10);
    let accepted = tokio_rustls::TlsAcceptor::from(server).accept(far);
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let connected = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, near);
    let (_, connected) = tokio::join!(accepted, connected);
    connected.map(|_| ()).map_err(|e| e.to_string())
}

/// `ordo dev-certs` as the docs and `scripts/cluster.sh up --secure` run it: a CA, node
/// certificates and an empty revocation list, then `--revoke` listing one node. (Its node
/// count was once `--nodes`, which every command also takes as its node URLs: the command
/// panicked whatever its flags.)
#[tokio::test]
async fn dev_certs_makes_certificates_and_a_revocation_list() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .arg("dev-certs")
            .args(args)
            .env_remove("ORDO_NODES")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "dev-certs {args:?}: {text}");
        text
    };
    let said = run(&["--out", out, "--node-count", "2", "--host", "127.0.0.1"]);
    assert!(said.contains("--tls-crl"), "{said}");
    let node = |n: u64| TlsFiles {
        cert: dir.path().join(format!("node{n}.pem")),
        key: dir.path().join(format!("node{n}-key.pem")),
        ca: dir.path().join("ca.pem"),
        crl: Some(dir.path().join("crl.pem")),
    };
    let ca = dir.path().join("ca.pem");
    let crl = dir.path().join("crl.pem");
    let server = |n| NodeTls::load(node(n)).unwrap().server_config();
    let client = || ordo::tls::client_config(&ca, Some(&crl)).unwrap();
    // The empty list is a list nodes and clients take, and it refuses no one.
    handshake(client(), server(1)).await.unwrap();
    handshake(client(), server(2)).await.unwrap();

    run(&["--out", out, "--revoke", "node2"]);
    handshake(client(), server(1)).await.unwrap();
    let err = handshake(client(), server(2)).await.unwrap_err();
    assert!(err.to_lowercase().contains("revoked"), "{err}");
}
