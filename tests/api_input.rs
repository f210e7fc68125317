//! Bad input on every route gets a clear JSON error with the right 4xx status — never a 500,
//! a hang or a partial write.

mod common;

use common::*;
use ordo::wire::ErrorCode;
use serde_json::{json, Value};

struct Case {
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

fn case(method: &'static str, path: &str, body: &str, status: u16, code: &'static str) -> Case {
    Case {
        method,
        path: path.to_string(),
        content_type: Some("application/json"),
        body: body.as_bytes().to_vec(),
        headers: vec![],
        status,
        code,
        field: None,
    }
}

fn field(mut c: Case, f: &'static str) -> Case {
    c.field = Some(f);
    c
}

fn good_item() -> Value {
    json!({"sku": "a", "quantity": 1, "unit_price_cents": 100})
}

fn create_with(v: Value) -> String {
    v.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_rejects_bad_input_with_a_json_4xx() {
    let mut cluster = InProcessCluster::start(3).await;
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let follower = cluster.ids().into_iter().find(|n| *n != leader).unwrap();
    let order = create_until_acked(&cluster, &[leader], "ok", "seed").await;
    let id = order["id"].as_u64().unwrap();
    let o = format!("/api/orders/{id}");
    let item = good_item();

    let mut cases = vec![
        case(
            "POST",
            "/api/orders",
            "{\"customer_id\": \"a\",",
            400,
            ErrorCode::MalformedJson.as_str(),
        ),
        case(
            "POST",
            "/api/orders",
            "not json",
            400,
            ErrorCode::MalformedJson.as_str(),
        ),
        case(
            "POST",
            "/api/orders",
            "",
            400,
            ErrorCode::MalformedJson.as_str(),
        ),
        field(
            case(
                "POST",
                "/api/orders",
                "[]",
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "body",
        ),
        field(
            case(
                "POST",
                "/api/orders",
                &create_with(json!({"items": [item]})),
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "body",
        ),
        field(
            case(
                "POST",
                "/api/orders",
                &create_with(json!({"customer_id": 5, "items": [item]})),
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "customer_id",
        ),
        field(
            case(
                "POST",
                "/api/orders",
                &create_with(json!({"customer_id": "c", "items": [item], "extra": 1})),
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "extra",
        ),
        field(
            case(
                "POST",
                "/api/orders",
                &create_with(json!({"customer_id": "c", "items": []})),
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "items",
        ),
        field(
            case(
                "POST",
                "/api/orders",
                &create_with(json!({"customer_id": "", "items": [item]})),
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "customer_id",
        ),
        field(
            case(
                "POST",
                "/api/orders",
                &create_with(
                    json!({"customer_id": "c", "items": [{"sku": "a", "quantity": "2", "unit_price_cents": 1}]}),
                ),
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "items[0].quantity",
        ),
        field(
            case(
                "POST",
                "/api/orders",
                r#"{"customer_id":"c","items":[{"sku":"a","quantity":99999999999999999999,"unit_price_cents":1}]}"#,
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "items[0].quantity",
        ),
        field(
            case(
                "POST",
                "/api/orders",
                &create_with(
                    json!({"customer_id": "c", "items": [{"sku": "a", "quantity": 1, "unit_price_cents": -5}]}),
                ),
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "items[0].unit_price_cents",
        ),
        field(
            case(
                "POST",
                "/api/orders",
                &create_with(
                    json!({"customer_id": "c", "items": [{"sku": "a", "quantity": 1, "unit_price_cents": 1_000_000_001u64}]}),
                ),
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "items[0].unit_price_cents",
        ),
        field(
            case(
                "POST",
                "/api/orders",
                &create_with(
                    json!({"customer_id": "c", "items": [{"sku": "a", "quantity": 10001, "unit_price_cents": 1}]}),
                ),
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "items[0].quantity",
        ),
        field(
            case(
                "POST",
                "/api/orders",
                &create_with(
                    json!({"customer_id": "c", "items": [item], "note": "n".repeat(1001)}),
                ),
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "note",
        ),
        field(
            case(
                "POST",
                "/api/order/create",
                &create_with(json!({"customer_id": "c", "items": vec![item.clone(); 101]})),
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "items",
        ),
        case(
            "GET",
            "/api/orders/abc",
            "",
            400,
            ErrorCode::InvalidId.as_str(),
        ),
        // A path segment that is not UTF-8 once decoded: the JSON 400 too, not axum's text.
        case(
            "GET",
            "/api/orders/%FF",
            "",
            400,
            ErrorCode::BadRequest.as_str(),
        ),
        case(
            "PATCH",
            "/api/orders/%C3%28",
            r#"{"status":"paid"}"#,
            400,
            ErrorCode::BadRequest.as_str(),
        ),
        case(
            "DELETE",
            "/auth/users/%FF",
            "",
            400,
            ErrorCode::BadRequest.as_str(),
        ),
        case(
            "DELETE",
            "/auth/roles/%FF",
            "",
            400,
            ErrorCode::BadRequest.as_str(),
        ),
        // The change feed: a bad revision, status or parameter is refused before streaming.
        case(
            "GET",
            "/api/orders/changes?since=abc",
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        case(
            "GET",
            "/api/orders/changes?since=-1",
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        case(
            "GET",
            "/api/orders/changes?since=99999999999999999999999",
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        case(
            "GET",
            "/api/orders/changes?status=lost",
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        case(
            "GET",
            "/api/orders/changes?follow=1",
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        case(
            "GET",
            "/api/orders/changes?since=1&since=2",
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        case(
            "GET",
            "/api/orders/changes?batch_ms=1001",
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        case(
            "GET",
            "/api/orders/changes?batch_ms=",
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        case(
            "GET",
            "/api/orders/changes?batch_ms=%2B5",
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        {
            let mut c = case(
                "GET",
                "/api/orders/changes",
                "",
                400,
                ErrorCode::InvalidQuery.as_str(),
            );
            c.headers.push(("Last-Event-ID", "seven".into()));
            c
        },
        case(
            "GET",
            "/api/orders/0",
            "",
            400,
            ErrorCode::InvalidId.as_str(),
        ),
        case(
            "GET",
            "/api/orders/-1",
            "",
            400,
            ErrorCode::InvalidId.as_str(),
        ),
        case(
            "GET",
            "/api/orders/99999999999999999999999",
            "",
            400,
            ErrorCode::InvalidId.as_str(),
        ),
        case(
            "GET",
            "/api/orders/424242",
            "",
            404,
            ErrorCode::NotFound.as_str(),
        ),
        case(
            "GET",
            &format!("{o}?consistency=maybe"),
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        case(
            "GET",
            &format!("{o}?x=1"),
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        case(
            "GET",
            "/api/orders?page=0",
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        case(
            "GET",
            "/api/orders?page=abc",
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        case(
            "GET",
            &format!("/api/orders?status=paid&customer_id={}", "c".repeat(65)),
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        case(
            "GET",
            "/api/orders?after=-1",
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        case(
            "GET",
            "/api/orders?status=paid&after=9223372036854775808",
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        // A numbered page of a filtered listing skips at most 10,000 matches (a cursor goes
        // deeper): page 102 of 100 would skip 10,100.
        case(
            "GET",
            "/api/orders?status=paid&page=4294967295",
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        case(
            "GET",
            "/api/orders?customer_id=c&page=102&per_page=100",
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        case(
            "GET",
            "/api/orders?per_page=101",
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        case(
            "GET",
            "/api/orders?per_page=-3",
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        case(
            "GET",
            "/api/orders?status=lost",
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        case(
            "GET",
            "/api/orders?page=1&page=2",
            "",
            400,
            ErrorCode::InvalidQuery.as_str(),
        ),
        field(
            case(
                "PATCH",
                &o,
                r#"{"status":"teleported"}"#,
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "status",
        ),
        field(
            case(
                "PATCH",
                &o,
                r#"{"status":"paid","expected_version":"one"}"#,
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "expected_version",
        ),
        field(
            case(
                "PATCH",
                &o,
                r#"{"status":"paid","expected_version":0}"#,
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "expected_version",
        ),
        field(
            case(
                "PATCH",
                &o,
                r#"{"status":"paid","color":"red"}"#,
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "color",
        ),
        case(
            "PATCH",
            &o,
            r#"{"status":"paid""#,
            400,
            ErrorCode::MalformedJson.as_str(),
        ),
        case(
            "PATCH",
            &o,
            r#"{"status":"delivered"}"#,
            409,
            ErrorCode::InvalidTransition.as_str(),
        ),
        case(
            "PATCH",
            &o,
            r#"{"status":"paid","expected_version":7}"#,
            409,
            ErrorCode::VersionConflict.as_str(),
        ),
        case(
            "PATCH",
            "/api/orders/424242",
            r#"{"status":"paid"}"#,
            404,
            ErrorCode::NotFound.as_str(),
        ),
        case(
            "PATCH",
            "/api/orders/x",
            r#"{"status":"paid"}"#,
            400,
            ErrorCode::InvalidId.as_str(),
        ),
        case("DELETE", &o, "", 405, ErrorCode::MethodNotAllowed.as_str()),
        case(
            "GET",
            "/api/nothing-here",
            "",
            404,
            ErrorCode::NotFound.as_str(),
        ),
        field(
            case(
                "POST",
                "/cluster/learners",
                r#"{"id":9,"addr":"not an address"}"#,
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "addr",
        ),
        field(
            case(
                "POST",
                "/cluster/learners",
                r#"{"id":"nine","addr":"127.0.0.1:1"}"#,
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "id",
        ),
        field(
            case(
                "POST",
                "/cluster/members",
                r#"{"members":[]}"#,
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "members",
        ),
        // Lists and addresses too long to forward: a follower must refuse them as the leader
        // does (it used to answer 503 after the leader refused the forwarded call's size).
        field(
            case(
                "POST",
                "/cluster/members",
                &json!({ "members": (1..=60_000).collect::<Vec<u64>>() }).to_string(),
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "members",
        ),
        field(
            case(
                "POST",
                "/cluster/learners",
                &json!({ "id": 9, "addr": format!("{}:7000", "a".repeat(100_000)) }).to_string(),
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "addr",
        ),
        field(
            case(
                "POST",
                "/cluster/learners",
                r#"{"id":0,"addr":"127.0.0.1:1"}"#,
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "id",
        ),
        case(
            "POST",
            "/cluster/members",
            r#"{"members":"#,
            400,
            ErrorCode::MalformedJson.as_str(),
        ),
        case(
            "DELETE",
            "/cluster/learners/nine",
            "",
            400,
            ErrorCode::BadRequest.as_str(),
        ),
        // A voter, and a node not in the membership, are not learners to remove.
        field(
            case(
                "DELETE",
                "/cluster/learners/1",
                "",
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "id",
        ),
        field(
            case(
                "DELETE",
                "/cluster/learners/99",
                "",
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "id",
        ),
        field(
            case(
                "POST",
                "/auth/users",
                r#"{"name":"Bad Name","role":"reader"}"#,
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "name",
        ),
        field(
            case(
                "POST",
                "/auth/users",
                r#"{"name":"ok","role":"boss"}"#,
                422,
                ErrorCode::ValidationFailed.as_str(),
            ),
            "role",
        ),
        case(
            "POST",
            "/auth/users",
            r#"{"name":"ok","role":"reader","token":"mine"}"#,
            422,
            ErrorCode::ValidationFailed.as_str(),
        ),
        case(
            "POST",
            "/auth/users",
            r#"{"name":"#,
            400,
            ErrorCode::MalformedJson.as_str(),
        ),
        case(
            "DELETE",
            "/auth/users/nobody",
            "",
            404,
            ErrorCode::NotFound.as_str(),
        ),
        case(
            "DELETE",
            "/auth/users/Not%20A%20Name",
            "",
            422,
            ErrorCode::ValidationFailed.as_str(),
        ),
    ];
    let mut no_json = case(
        "POST",
        "/api/orders",
        &create_with(json!({"customer_id": "c", "items": [good_item()]})),
        415,
        ErrorCode::UnsupportedMediaType.as_str(),
    );
    no_json.content_type = Some("text/plain");
    cases.push(no_json);
    let mut no_type = case(
        "PATCH",
        &o,
        r#"{"status":"paid"}"#,
        415,
        ErrorCode::UnsupportedMediaType.as_str(),
    );
    no_type.content_type = None;
    cases.push(no_type);
    let huge = format!(
        r#"{{"customer_id":"c","items":[],"note":"{}"}}"#,
        "n".repeat(2 * 1024 * 1024)
    );
    cases.push(case(
        "POST",
        "/api/orders",
        &huge,
        413,
        ErrorCode::BodyTooLarge.as_str(),
    ));
    for bad_key in ["", "has space", &"k".repeat(129)] {
        let mut c = case(
            "POST",
            "/api/orders",
            &create_with(json!({"customer_id": "c", "items": [good_item()]})),
            400,
            ErrorCode::InvalidIdempotencyKey.as_str(),
        );
        c.headers.push(("Idempotency-Key", bad_key.to_string()));
        cases.push(c);
    }
    // Two keys (each good): which one would a retry have to repeat?
    let mut twice = case(
        "POST",
        "/api/orders",
        &create_with(json!({"customer_id": "c", "items": [good_item()]})),
        400,
        ErrorCode::InvalidIdempotencyKey.as_str(),
    );
    twice.headers.push(("Idempotency-Key", "first-key".into()));
    twice.headers.push(("Idempotency-Key", "second-key".into()));
    cases.push(twice);

    // Node-to-node routes take `codec` bodies; a truncated one is refused before Raft sees it.
    for path in [
        "/raft/append",
        "/raft/vote",
        "/raft/snapshot",
        "/raft/write",
        "/raft/write-batch",
        "/raft/read-index",
        "/raft/membership",
    ] {
        for body in ["", "{}"] {
            let mut c = case("POST", path, body, 400, ErrorCode::BadRequest.as_str());
            c.content_type = None;
            cases.push(c);
        }
        // A length prefix claiming 2^62 bytes: this used to abort the node.
        let mut c = case("POST", path, "", 400, ErrorCode::BadRequest.as_str());
        c.body = HOSTILE_LENGTH_PREFIX.to_vec();
        c.content_type = None;
        cases.push(c);
    }
    // Past a route's own body limit: the JSON 413, however the bytes look.
    let mut c = case(
        "POST",
        "/raft/vote",
        "",
        413,
        ErrorCode::BodyTooLarge.as_str(),
    );
    c.body = vec![1u8; 65 * 1024];
    c.content_type = None;
    cases.push(c);

    // What the node serves at /openapi.json is the committed docs/openapi.json, and every
    // status these cases get on a documented operation is one the spec lists for it.
    let served = cluster
        .http
        .get(cluster.url(leader, "/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let served = served.text().await.unwrap();
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap();
    assert!(
        served == committed,
        "/openapi.json differs from docs/openapi.json"
    );
    let spec: Value = serde_json::from_str(&served).unwrap();
    let mut checked = 0;
    for c in &cases {
        if let Some(statuses) = documented_statuses(&spec, c.method, &c.path) {
            assert!(
                statuses.contains(&c.status.to_string()),
                "{} {} answers {}, which the spec does not list ({statuses:?})",
                c.method,
                c.path,
                c.status
            );
            checked += 1;
        }
    }
    assert!(
        checked > 40,
        "only {checked} cases matched a documented operation"
    );

    for node in [leader, follower] {
        for c in &cases {
            let method = reqwest::Method::from_bytes(c.method.as_bytes()).unwrap();
            let mut req = cluster
                .http
                .request(method, cluster.url(node, &c.path))
                .body(c.body.clone());
            if let Some(ct) = c.content_type {
                req = req.header("Content-Type", ct);
            }
            for (k, v) in &c.headers {
                req = req.header(*k, v);
            }
            let resp = req.send().await.unwrap_or_else(|e| {
                panic!(
                    "{} {} (expecting {}, body {} bytes): {e:?}",
                    c.method,
                    c.path,
                    c.status,
                    c.body.len()
                )
            });
            let status = resp.status().as_u16();
            let ctype = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string());
            // The unread rest of a too-large body makes the connection unusable: the server
            // must say it closes it, or keep-alive clients fail their next request on it.
            let closes = resp
                .headers()
                .get("connection")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            assert_eq!(
                closes,
                status == 413,
                "{} {}: Connection header",
                c.method,
                c.path
            );
            let text = resp.text().await.unwrap();
            let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| {
                panic!("{} {} on node {node}: not JSON: {text}", c.method, c.path)
            });
            assert_eq!(
                ctype.as_deref(),
                Some("application/json"),
                "{} {}",
                c.method,
                c.path
            );
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (c.status, Some(c.code)),
                "{} {} on node {node}: {text}",
                c.method,
                c.path
            );
            assert!(!body["error"]["message"].as_str().unwrap().is_empty());
            if let Some(f) = c.field {
                assert_eq!(
                    body["error"]["field"].as_str(),
                    Some(f),
                    "{} {}: {text}",
                    c.method,
                    c.path
                );
            }
        }
    }

    for node in [leader, follower] {
        leader_calls_are_validated_again(&cluster, node).await;
    }

    // Nothing above was written: still exactly the seed order, unchanged, at revision 1, as
    // the create answered.
    assert_eq!(order["revision"], 1);
    let all = all_orders(&cluster, leader, false).await;
    assert_eq!(all, vec![order.clone()]);

    random_bytes_to_node_routes_never_take_a_node_down(&mut cluster).await;
}

/// The statuses the spec lists for the operation serving `method path` (its query string
/// ignored), or `None` for a path it does not describe (node-to-node routes, unknown ones).
fn documented_statuses(spec: &Value, method: &str, path: &str) -> Option<Vec<String>> {
    let path = path.split('?').next().unwrap();
    let parts: Vec<&str> = path.split('/').collect();
    let (_, item) = spec["paths"].as_object()?.iter().find(|(template, _)| {
        let t: Vec<&str> = template.split('/').collect();
        t.len() == parts.len()
            && t.iter()
                .zip(&parts)
                .all(|(t, p)| t == p || (t.starts_with('{') && !p.is_empty()))
    })?;
    let op = item.get(method.to_ascii_lowercase())?;
    Some(op["responses"].as_object()?.keys().cloned().collect())
}

/// Well-formed leader calls that break the rules a client's request is held to: each node
/// checks them itself (a peer's bytes are as untrusted as a client's) and answers `Invalid`
/// naming the field, whether it leads or not.
async fn leader_calls_are_validated_again(cluster: &InProcessCluster, node: u64) {
    use ordo::order::{CommandOutcome, LineItem, NewOrder, OrderOp, OrderStatus};
    use ordo::rpc::{LeaderAnswer, MembershipChange, RpcError, WriteRequest};

    async fn call<Req: serde::Serialize, T: serde::de::DeserializeOwned>(
        cluster: &InProcessCluster,
        node: u64,
        path: &str,
        req: &Req,
    ) -> LeaderAnswer<T> {
        let resp = cluster
            .http
            .post(cluster.url(node, path))
            .body(ordo::codec::encode(req).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path} on node {node}");
        ordo::codec::decode(&resp.bytes().await.unwrap()).unwrap()
    }
    let item = LineItem {
        sku: "s".into(),
        quantity: 1,
        unit_price_cents: 1,
    };
    let order = |items: Vec<LineItem>| {
        OrderOp::Create(NewOrder {
            customer_id: "c".into(),
            items,
            note: None,
        })
    };
    let writes = [
        (order(vec![]), None, "items"),
        (order(vec![item.clone(); 101]), None, "items"),
        (
            OrderOp::SetStatus {
                id: 1,
                status: OrderStatus::Paid,
                expected_version: Some(0),
            },
            None,
            "expected_version",
        ),
        (
            OrderOp::SetStatus {
                id: 0,
                status: OrderStatus::Paid,
                expected_version: None,
            },
            None,
            "id",
        ),
        (
            order(vec![item]),
            Some("has space".to_string()),
            "Idempotency-Key",
        ),
    ];
    let writes: Vec<(WriteRequest, &str)> = writes
        .into_iter()
        .map(|(op, idempotency_key, field)| {
            let req = WriteRequest {
                op,
                idempotency_key,
            };
            (req, field)
        })
        .collect();
    for (req, field) in &writes {
        match call::<_, CommandOutcome>(cluster, node, "/raft/write", req).await {
            LeaderAnswer::Failed(RpcError::Invalid(v)) => assert_eq!(v.field, *field, "{req:?}"),
            other => panic!("node {node}: {req:?} answered {other:?}"),
        }
    }
    // The same in one forwarded batch: each refused in its place, nothing proposed.
    let batch: Vec<&WriteRequest> = writes.iter().map(|(req, _)| req).collect();
    match call::<_, Vec<LeaderAnswer<CommandOutcome>>>(cluster, node, "/raft/write-batch", &batch)
        .await
    {
        LeaderAnswer::Done(answers) => {
            assert_eq!(answers.len(), writes.len(), "{answers:?}");
            for ((req, field), answer) in writes.iter().zip(answers) {
                match answer {
                    LeaderAnswer::Failed(RpcError::Invalid(v)) => {
                        assert_eq!(v.field, *field, "{req:?}")
                    }
                    other => panic!("node {node}: {req:?} in a batch answered {other:?}"),
                }
            }
        }
        other => panic!("node {node}: the batch answered {other:?}"),
    }
    // More writes than a batch may hold: refused whole, before any is looked at.
    let too_many = vec![&writes[0].0; ordo::rpc::MAX_FORWARD_BATCH + 1];
    let resp = cluster
        .http
        .post(cluster.url(node, "/raft/write-batch"))
        .body(ordo::codec::encode(&too_many).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "{:?}", resp.text().await);
    let changes = [
        (MembershipChange::SetVoters(Default::default()), "members"),
        (
            MembershipChange::AddLearner {
                id: 9,
                addr: "not an address".into(),
            },
            "addr",
        ),
    ];
    for (change, field) in changes {
        match call::<_, Option<ordo::raft::LogId>>(cluster, node, "/raft/membership", &change).await
        {
            LeaderAnswer::Failed(RpcError::Invalid(v)) => assert_eq!(v.field, field),
            other => panic!("node {node}: {change:?} answered {other:?}"),
        }
    }
}

/// `[FORMAT_VERSION, u8 0, varint u64 = 2^62]`: a string or vector that claims 2^62 bytes.
const HOSTILE_LENGTH_PREFIX: [u8; 11] = [1, 0x00, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0x40];

/// Short random bodies (with a valid format byte, so they reach the decoder) to every
/// node-to-node route of every node: each is answered (200 if the bytes happen to decode, else
/// the JSON 400), and every node still serves afterwards. What a body that decodes does to the
/// cluster is not asserted here: peers are not authenticated yet.
async fn random_bytes_to_node_routes_never_take_a_node_down(cluster: &mut InProcessCluster) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x04d0);
    let routes = [
        "/raft/append",
        "/raft/vote",
        "/raft/snapshot",
        "/raft/write",
        "/raft/write-batch",
        "/raft/read-index",
        "/raft/membership",
    ];
    for node in cluster.ids() {
        for path in routes {
            for _ in 0..60 {
                let len = rng.gen_range(1..48);
                let mut body: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                body[0] = 1;
                // Bias towards the bytes that start big varints.
                for b in body.iter_mut().skip(1) {
                    if rng.gen_bool(0.2) {
                        *b = [0xfb, 0xfc, 0xfd][rng.gen_range(0..3)];
                    }
                }
                let resp = cluster
                    .http
                    .post(cluster.url(node, path))
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("node {node} {path} {body:?}: no answer: {e}"));
                let status = resp.status().as_u16();
                assert!(
                    status == 200 || status == 400,
                    "node {node} {path} {body:?}: HTTP {status}"
                );
            }
        }
    }
    for node in cluster.ids() {
        assert!(cluster.is_serving(node), "node {node} stopped");
        let (status, _) = get(cluster, node, "/health").await.unwrap();
        assert_eq!(status, 200, "node {node} after random bodies");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_create_and_status_change_over_http() {
    let cluster = start_cluster(3).await;
    let leader = cluster.wait_for_leader(&cluster.ids()).await;
    let follower = cluster.ids().into_iter().find(|n| *n != leader).unwrap();
    let (s1, first) = create(&cluster, follower, "idem", Some("key-1"), "x")
        .await
        .unwrap();
    assert_eq!(s1, 201);
    let (s2, again) = create(&cluster, leader, "idem", Some("key-1"), "x")
        .await
        .unwrap();
    assert!(s2 == 200 || s2 == 201);
    assert_eq!(again["id"], first["id"]);
    // The answers carry the create's revision, the follower's forwarded one and the replay's.
    assert_eq!(
        (&first["revision"], &again["revision"]),
        (&json!(1), &json!(1))
    );
    let (s3, reused) = create(&cluster, leader, "other", Some("key-1"), "x")
        .await
        .unwrap();
    assert_eq!(
        (s3, reused["error"]["code"].as_str()),
        (409, Some(ErrorCode::IdempotencyKeyReused.as_str()))
    );

    let path = format!("/api/orders/{}", first["id"]);
    for _ in 0..2 {
        let (s, body) = send(
            cluster
                .http
                .patch(cluster.url(follower, &path))
                .header("Idempotency-Key", "pay-1")
                .json(&json!({"status": "paid"})),
        )
        .await
        .unwrap();
        assert_eq!(
            (s, &body["version"], &body["revision"]),
            (200, &json!(2), &json!(2)),
            "{body}"
        );
    }
    let all = all_orders(&cluster, follower, false).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["status"], "paid");
    assert_eq!(
        (&all[0]["version"], &all[0]["revision"]),
        (&json!(2), &json!(2))
    );
}
