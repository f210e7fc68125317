//! Users, roles and tokens end to end, on real `ordo serve --auth` processes: the bootstrap
//! token, every role against every route on the leader and on a follower, malformed
//! credentials, and revocation that holds on every node, across a leader kill.

mod common;

use std::path::Path;

use common::*;
use ordo::order::{Permission, Role};
use ordo::wire::ErrorCode;
use serde_json::{json, Value};
use tokio::time::Instant;

const BOOTSTRAP: &str = "bootstrap-token-for-the-tests-0001";

async fn start_auth_cluster(dir: &tempfile::TempDir) -> TestCluster {
    let file = dir.path().join("bootstrap-token");
    std::fs::write(&file, format!("{BOOTSTRAP}\n")).unwrap();
    let args = vec![
        "--auth".to_string(),
        "--bootstrap-token-file".to_string(),
        file.to_str().unwrap().to_string(),
    ];
    let mut cluster = TestCluster::new(Path::new(BIN), 3, None, args);
    // Until the first user exists, the bootstrap token is the only one.
    cluster.set_token(BOOTSTRAP);
    cluster.start_all().await;
    cluster
}

/// A started `--auth` cluster whose first admin ("root") was made with the bootstrap token
/// through the leader: its directory (kept while the test runs), the cluster, the leader and
/// the admin's token (also the cluster's own from now on).
async fn cluster_with_admin() -> (tempfile::TempDir, TestCluster, u64, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_auth_cluster(&dir).await;
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let admin = add_user(&cluster, leader, BOOTSTRAP, "root", "admin").await;
    cluster.set_token(&admin);
    (dir, cluster, leader, admin)
}

/// One request with `token` (or none): (status, body, WWW-Authenticate present).
async fn call(
    cluster: &TestCluster,
    node: u64,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value, bool) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = cluster.http.request(method, cluster.url(node, path));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let challenge = resp.headers().contains_key("www-authenticate");
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body, challenge)
}

async fn add_user(cluster: &TestCluster, node: u64, admin: &str, name: &str, role: &str) -> String {
    let (status, body, _) = call(
        cluster,
        node,
        "POST",
        "/auth/users",
        Some(admin),
        Some(json!({"name": name, "role": role})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_string()
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_reaches_exactly_its_routes_on_the_leader_and_a_follower() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start_auth_cluster(&dir).await;
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let follower = cluster.ids().into_iter().find(|n| *n != leader).unwrap();

    // No token: 401 with a challenge, on every route but /health.
    let (status, body, challenge) =
        call(&cluster, follower, "GET", "/api/orders", None, None).await;
    assert_eq!(
        (status, code(&body), challenge),
        (401, "unauthorized", true)
    );
    let (status, _, _) = call(&cluster, follower, "GET", "/health", None, None).await;
    assert_eq!(status, 200);

    // The bootstrap token makes the first admin, through a follower, and then stops working.
    let admin = add_user(&cluster, follower, BOOTSTRAP, "root", "admin").await;
    cluster.set_token(&admin);
    let (status, body, _) = call(
        &cluster,
        leader,
        "GET",
        "/auth/users",
        Some(BOOTSTRAP),
        None,
    )
    .await;
    assert_eq!((status, code(&body)), (401, "unauthorized"), "{body}");
    let writer = add_user(&cluster, leader, &admin, "w", "writer").await;
    let reader = add_user(&cluster, follower, &admin, "r", "reader").await;
    let (status, body, _) = call(&cluster, leader, "GET", "/auth/users", Some(&admin), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["users"].as_array().unwrap().len(), 3, "{body}");
    assert!(
        !body.to_string().contains(&writer),
        "a token is listed: {body}"
    );
    let (status, _, _) = call(
        &cluster,
        leader,
        "POST",
        "/api/orders",
        Some(&writer),
        Some(order_body("seed", "")),
    )
    .await;
    assert_eq!(status, 201);

    let routes: Vec<(&str, &str, Option<Value>, Permission)> = vec![
        ("GET", "/api/orders", None, Permission::OrdersRead),
        ("GET", "/api/orders/1", None, Permission::OrdersRead),
        (
            "GET",
            "/api/orders/1?consistency=stale",
            None,
            Permission::OrdersRead,
        ),
        (
            "POST",
            "/api/orders",
            Some(order_body("m", "")),
            Permission::OrdersWrite,
        ),
        (
            "PATCH",
            "/api/orders/1",
            Some(json!({"status": "paid"})),
            Permission::OrdersWrite,
        ),
        ("GET", "/cluster/status", None, Permission::ClusterRead),
        ("GET", "/cluster/digest", None, Permission::ClusterRead),
        // Refused by validation after the check: proves the check let it through.
        (
            "POST",
            "/cluster/learners",
            Some(json!({"id": 9, "addr": "no address"})),
            Permission::ClusterAdmin,
        ),
        (
            "POST",
            "/cluster/members",
            Some(json!({"members": []})),
            Permission::ClusterAdmin,
        ),
        ("GET", "/auth/users", None, Permission::UsersAdmin),
        ("DELETE", "/auth/users/nobody", None, Permission::UsersAdmin),
    ];
    let roles = [
        (Role::Admin, &admin),
        (Role::Writer, &writer),
        (Role::Reader, &reader),
    ];
    for node in [leader, follower] {
        for (role, token) in roles {
            for (method, path, body, permission) in &routes {
                let (status, answer, _) =
                    call(&cluster, node, method, path, Some(token), body.clone()).await;
                let what = format!("{} {method} {path} on node {node}: {answer}", role.as_str());
                if role.allows(*permission) {
                    assert!(
                        status < 500 && status != 401 && status != 403,
                        "allowed, got {status}: {what}"
                    );
                } else {
                    assert_eq!((status, code(&answer)), (403, "forbidden"), "{what}");
                }
            }
        }
    }

    // Malformed credentials are 401s, never 500s.
    let url = cluster.url(follower, "/api/orders");
    let huge = format!("Bearer {}", "a".repeat(20_000));
    let bad: Vec<Vec<(&str, reqwest::header::HeaderValue)>> = vec![
        vec![("authorization", "".parse().unwrap())],
        vec![("authorization", "Bearer".parse().unwrap())],
        vec![("authorization", "Bearer ".parse().unwrap())],
        vec![("authorization", format!("Basic {admin}").parse().unwrap())],
        vec![("authorization", huge.parse().unwrap())],
        vec![(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(b"Bearer t\xffoken").unwrap(),
        )],
        vec![(
            "authorization",
            "Bearer ordo_not-a-real-token".parse().unwrap(),
        )],
        // Twice, even with good tokens: ambiguous.
        vec![
            ("authorization", format!("Bearer {admin}").parse().unwrap()),
            ("authorization", format!("Bearer {writer}").parse().unwrap()),
        ],
    ];
    for headers in bad {
        let mut req = cluster.http.get(&url);
        for (name, value) in &headers {
            req = req.header(*name, value.clone());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let challenge = resp.headers().contains_key("www-authenticate");
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (status, code(&body), challenge),
            (401, ErrorCode::Unauthorized.as_str(), true),
            "{headers:?}: {body}"
        );
    }
}

/// A stale read needs no quorum with `--auth` either, however the query spells it (percent-
/// encoded as clients may send it) and by HEAD as by GET, which a reader may use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_by_any_spelling_answer_without_a_quorum() {
    let (_dir, mut cluster, leader, admin) = cluster_with_admin().await;
    let reader = add_user(&cluster, leader, &admin, "r", "reader").await;
    let (status, body, _) = call(
        &cluster,
        leader,
        "POST",
        "/api/orders",
        Some(&admin),
        Some(order_body("s", "")),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let survivor = cluster.ids().into_iter().find(|n| *n != leader).unwrap();
    // The survivor has applied the order before the others go.
    cluster.wait_caught_up(survivor, leader).await;
    for n in cluster.ids() {
        if n != survivor {
            cluster.kill(n);
        }
    }
    // Each stale spelling answers; a linearizable read still needs the quorum it lacks.
    for (method, path, expected) in [
        ("GET", "/api/orders/1?consistency=stale", 200),
        ("GET", "/api/orders/1?consistency=%73tale", 200),
        ("HEAD", "/api/orders/1?consistency=stale", 200),
        ("GET", "/api/orders?consistency=stal%65", 200),
        ("GET", "/api/orders/1", 503),
    ] {
        let (status, body, _) = call(&cluster, survivor, method, path, Some(&reader), None).await;
        assert_eq!(status, expected, "{method} {path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_by_every_node_even_across_a_leader_kill() {
    let (_dir, mut cluster, leader, admin) = cluster_with_admin().await;
    let follower = cluster.ids().into_iter().find(|n| *n != leader).unwrap();
    let writer = add_user(&cluster, leader, &admin, "w", "writer").await;
    let (status, body, _) = call(
        &cluster,
        follower,
        "POST",
        "/api/orders",
        Some(&writer),
        Some(order_body("before", "")),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // Revoked through a follower; once that is acknowledged, the leader dies at once.
    let (status, body, _) = call(
        &cluster,
        follower,
        "DELETE",
        "/auth/users/w",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    cluster.kill(leader);

    // No node may serve the token again: every answer is an error, and each node settles on
    // 401 once it has a leader to check with. (Stale reads are checked against the node's
    // local copy, as stale as the data; they are left out here.)
    let survivors: Vec<u64> = cluster.ids().into_iter().filter(|n| *n != leader).collect();
    let attempts: Vec<(&str, &str, Option<Value>)> = vec![
        ("GET", "/api/orders", None),
        ("GET", "/api/orders/1", None),
        ("POST", "/api/orders", Some(order_body("after", ""))),
        ("GET", "/cluster/status", None),
    ];
    for node in survivors.iter().copied() {
        for (method, path, body) in &attempts {
            let deadline = Instant::now() + DEADLINE;
            loop {
                let (status, answer, _) =
                    call(&cluster, node, method, path, Some(&writer), body.clone()).await;
                assert!(
                    !(200..300).contains(&status),
                    "node {node} served a revoked token: {method} {path} -> {status} {answer}"
                );
                if status == 401 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {node}: {method} {path} -> {status}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    // The killed node, back, refuses it too; the admin still works.
    cluster.spawn(leader);
    cluster.wait_for_leader(&cluster.ids()).await;
    let (status, _, _) = call(&cluster, leader, "GET", "/api/orders", Some(&writer), None).await;
    assert_eq!(status, 401);
    let (status, body, _) = call(&cluster, leader, "GET", "/api/orders", Some(&admin), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["total"], 1,
        "the write after the revocation was not applied: {body}"
    );

    // The admin revokes itself: no user is left, and the bootstrap token stays dead.
    let (status, body, _) = call(
        &cluster,
        leader,
        "DELETE",
        "/auth/users/root",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for node in cluster.ids() {
        let (status, _, _) =
            call(&cluster, node, "GET", "/auth/users", Some(BOOTSTRAP), None).await;
        assert_eq!(status, 401, "the bootstrap token came back on node {node}");
    }
}

/// A change-feed stream outlives its first check: once its token is revoked it ends with
/// `feed.unauthorized` (code `unauthorized`), and the client's watch with `Unauthorized`
/// (not reconnecting); once its role loses `orders:read`, with code `forbidden`. A change to
/// other users leaves it streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_change_feed_ends_once_its_token_is_revoked_or_its_role_narrowed() {
    let (_dir, cluster, leader, admin) = cluster_with_admin().await;
    let follower = cluster.ids().into_iter().find(|n| *n != leader).unwrap();
    let reader = add_user(&cluster, leader, &admin, "r", "reader").await;
    // (Their own HTTP client: the cluster's has a total timeout, which would cut a stream.)
    let http = reqwest::Client::new();
    let open_stream = |token: String| {
        let request = http
            .get(cluster.url(follower, "/api/orders/changes?since=0"))
            .bearer_auth(token);
        async move {
            let stream = request.send().await.unwrap();
            assert_eq!(stream.status(), 200);
            stream
        }
    };

    // A raw stream and the client's watch through a follower with the reader's token; then
    // another user, of a custom role, and a stream of theirs.
    let mut by_reader = open_stream(reader.clone()).await;
    let mut config = ordo::client::ClientConfig::new([cluster.url(follower, "")]);
    config.token = Some(reader.clone());
    let client = ordo::client::Client::new(config);
    let watch = client.watch(
        0,
        ordo::client::WatchFilter::default(),
        std::time::Duration::from_secs(60),
    );
    futures_util::pin_mut!(watch);
    // The custom role "feed", made or replaced with these permissions.
    let put_role = |permissions: &[&str]| {
        let body = json!({"name": "feed", "permissions": permissions});
        async {
            let roles = "/auth/roles";
            let (status, body, _) =
                call(&cluster, leader, "POST", roles, Some(&admin), Some(body)).await;
            assert!((200..300).contains(&status), "{status} {body}");
        }
    };
    put_role(&["orders:read"]).await;
    let custom = add_user(&cluster, leader, &admin, "f", "feed").await;
    let mut by_custom = open_stream(custom).await;

    // Every stream gets the next change: the users changed under the reader's stream, but
    // not its own access.
    let (status, body, _) = call(
        &cluster,
        leader,
        "POST",
        "/api/orders",
        Some(&admin),
        Some(order_body("seen", "")),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (mut reader_text, mut custom_text) = (String::new(), String::new());
    for (stream, text) in [
        (&mut by_reader, &mut reader_text),
        (&mut by_custom, &mut custom_text),
    ] {
        let created = |t: &str| t.contains("event: order.created");
        read_until(stream, text, created, "the order's event").await;
    }
    let first = tokio::time::timeout(DEADLINE, futures_util::StreamExt::next(&mut watch))
        .await
        .expect("the watch's first change in time");
    assert!(matches!(first, Some(Ok(_))), "{first:?}");

    // The custom role loses orders:read: its user's stream ends, as forbidden.
    put_role(&["cluster:read"]).await;
    let ended = |t: &str| t.contains("event: feed.unauthorized");
    read_until(&mut by_custom, &mut custom_text, ended, "feed.unauthorized").await;
    assert!(
        custom_text.contains("\"code\":\"forbidden\""),
        "{custom_text}"
    );

    // The reader is revoked: its stream ends, and so does the watch, with 401.
    let (status, body, _) = call(
        &cluster,
        leader,
        "DELETE",
        "/auth/users/r",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    read_until(&mut by_reader, &mut reader_text, ended, "feed.unauthorized").await;
    assert!(
        reader_text.contains("\"code\":\"unauthorized\""),
        "{reader_text}"
    );
    for stream in [&mut by_reader, &mut by_custom] {
        let end = tokio::time::timeout(DEADLINE, stream.chunk())
            .await
            .expect("the stream ends in time")
            .unwrap();
        assert!(end.is_none(), "the stream went on: {end:?}");
    }
    let ended = tokio::time::timeout(DEADLINE, futures_util::StreamExt::next(&mut watch))
        .await
        .expect("the watch ends in time");
    assert!(
        matches!(
            ended,
            Some(Err(ordo::client::ClientError::Unauthorized {
                status: 401,
                ..
            }))
        ),
        "{ended:?}"
    );
}

/// Custom roles from chosen permissions, through the CLI as an operator would: a user with
/// the role gets exactly those routes; deleting the role takes them away; the built-in names
/// cannot be redefined and an unknown permission or role is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_roles_grant_exactly_their_permissions() {
    let (_dir, cluster, leader, admin) = cluster_with_admin().await;
    let nodes = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.url(id, ""))
        .collect::<Vec<_>>()
        .join(",");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(args)
            .env("ORDO_NODES", &nodes)
            .env("ORDO_TOKEN", &admin)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A token no user has: exit 9 with a hint about the token, also from `cluster status`
    // (which must not call a cluster that refuses it "unreachable").
    for args in [&["order", "list"][..], &["cluster", "status"]] {
        let args = [args, &["--token", "ordo_0000"]].concat();
        let (rc, out, err) = cli(&args);
        assert_eq!(rc, 9, "{args:?}: {out}{err}");
        assert!(err.contains("hint:") && err.contains("token"), "{err}");
    }
    let (rc, _, err) = cli(&[
        "role",
        "add",
        "auditor",
        "--permission",
        "orders:read",
        "--permission",
        "cluster:read",
    ]);
    assert_eq!(rc, 0, "{err}");
    let (rc, out, err) = cli(&["user", "add", "eve", "--role", "auditor"]);
    assert_eq!(rc, 0, "{err}");
    let eve = out.trim().to_string();
    let (rc, out, _) = cli(&["role", "list"]);
    assert!(
        rc == 0 && out.contains("auditor") && out.contains("orders:read cluster:read"),
        "{out}"
    );

    let follower = cluster.ids().into_iter().find(|n| *n != leader).unwrap();
    for node in [leader, follower] {
        let (status, _, _) = call(&cluster, node, "GET", "/api/orders", Some(&eve), None).await;
        assert_eq!(status, 200);
        let (status, _, _) = call(&cluster, node, "GET", "/cluster/status", Some(&eve), None).await;
        assert_eq!(status, 200);
        let (status, body, _) = call(
            &cluster,
            node,
            "POST",
            "/api/orders",
            Some(&eve),
            Some(order_body("eve", "")),
        )
        .await;
        assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    }

    // Refused: a built-in name, an unknown permission, a user of an unknown role.
    let (rc, _, err) = cli(&["role", "add", "writer", "--permission", "users:admin"]);
    assert_eq!(rc, 5, "{err}");
    let (rc, _, err) = cli(&["role", "add", "x", "--permission", "orders:delete"]);
    assert_eq!(rc, 5, "refused by the nodes, not the CLI: {err}");
    let (rc, _, err) = cli(&["user", "add", "mallory", "--role", "superuser"]);
    assert_eq!(rc, 5, "{err}");

    // users:admin grants only what its holder's role holds: not an admin, not a role with
    // more than its own; a user of its own role, yes.
    let (rc, _, err) = cli(&["role", "add", "helpdesk", "--permission", "users:admin"]);
    assert_eq!(rc, 0, "{err}");
    let helpdesk = add_user(&cluster, leader, &admin, "hd", "helpdesk").await;
    for (path, body) in [
        ("/auth/users", json!({"name": "x", "role": "admin"})),
        ("/auth/users", json!({"name": "x", "role": "auditor"})),
        (
            "/auth/roles",
            json!({"name": "h2", "permissions": ["orders:write"]}),
        ),
    ] {
        let (status, reply, _) = call(
            &cluster,
            follower,
            "POST",
            path,
            Some(&helpdesk),
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (status, code(&reply)),
            (403, "forbidden"),
            "{path} {body}: {reply}"
        );
    }
    add_user(&cluster, follower, &helpdesk, "hd2", "helpdesk").await;

    // A write without credentials is refused before its body is read: a body announced and
    // never sent gets its 401 at once (it waited for the body's deadline, then 400).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(&cluster.nodes[&follower].addr)
            .await
            .unwrap();
        conn.write_all(
            b"POST /api/orders HTTP/1.1\r\nhost: ordo\r\ncontent-type: application/json\r\n\
              content-length: 1048576\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = [0u8; 12];
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            conn.read_exact(&mut head),
        )
        .await
        .expect("an answer")
        .unwrap();
        assert_eq!(&head, b"HTTP/1.1 401", "{}", String::from_utf8_lossy(&head));
    }

    // Deleted: its users keep the name and lose every permission, on every node at once.
    let (rc, _, err) = cli(&["role", "delete", "auditor"]);
    assert_eq!(rc, 0, "{err}");
    for node in [leader, follower] {
        let (status, body, _) = call(&cluster, node, "GET", "/api/orders", Some(&eve), None).await;
        assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    }
}
