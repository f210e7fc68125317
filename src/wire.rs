//! The public JSON of the HTTP API: request and answer bodies, the error body and its codes,
//! and the leader header. Shared by the server (`api`), the Rust client, the CLI and the
//! tests, so a shape or an error code is spelled in one place. No I/O and no HTTP framework
//! types: a client can use it without the server. Each type also describes itself as a JSON
//! schema (`utoipa::ToSchema`), from which `api::openapi` builds the published spec; the
//! limits in those schemas are the domain's own constants.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::order::{LineItem, NewOrder, Order, OrderStatus, ValidationError};

/// Response header naming the current leader's HOST:PORT.
pub const LEADER_HEADER: &str = "x-ordo-leader";
/// Response header with the answering node's version (`0.1.0 (COMMIT)`).
pub const VERSION_HEADER: &str = "x-ordo-version";

/// Every `error.code` the API answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MalformedJson,
    BadRequest,
    InvalidId,
    InvalidQuery,
    InvalidIdempotencyKey,
    UnsupportedMediaType,
    BodyTooLarge,
    ValidationFailed,
    NotFound,
    MethodNotAllowed,
    Unauthorized,
    Forbidden,
    WrongCluster,
    UserExists,
    InvalidTransition,
    VersionConflict,
    IdempotencyKeyReused,
    NoLeader,
    NoQuorum,
    Unavailable,
    Timeout,
    Internal,
    StorageFailed,
    RevisionGone,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::MalformedJson,
        ErrorCode::BadRequest,
        ErrorCode::InvalidId,
        ErrorCode::InvalidQuery,
        ErrorCode::InvalidIdempotencyKey,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::BodyTooLarge,
        ErrorCode::ValidationFailed,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::WrongCluster,
        ErrorCode::UserExists,
        ErrorCode::InvalidTransition,
        ErrorCode::VersionConflict,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::NoLeader,
        ErrorCode::NoQuorum,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::Internal,
        ErrorCode::StorageFailed,
        ErrorCode::RevisionGone,
    ];

    /// The code as the API spells it (`"version_conflict"`).
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            MalformedJson => "malformed_json",
            BadRequest => "bad_request",
            InvalidId => "invalid_id",
            InvalidQuery => "invalid_query",
            InvalidIdempotencyKey => "invalid_idempotency_key",
            UnsupportedMediaType => "unsupported_media_type",
            BodyTooLarge => "body_too_large",
            ValidationFailed => "validation_failed",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            WrongCluster => "wrong_cluster",
            UserExists => "user_exists",
            InvalidTransition => "invalid_transition",
            VersionConflict => "version_conflict",
            IdempotencyKeyReused => "idempotency_key_reused",
            NoLeader => "no_leader",
            NoQuorum => "no_quorum",
            Unavailable => "unavailable",
            Timeout => "timeout",
            Internal => "internal",
            StorageFailed => "storage_failed",
            RevisionGone => "revision_gone",
        }
    }

    /// The code a body's `error.code` names, if it is one of ours.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<ErrorCode> for serde_json::Value {
    fn eq(&self, code: &ErrorCode) -> bool {
        self.as_str() == Some(code.as_str())
    }
}

/// The error body every failed request gets.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// One of `ErrorCode` (a client should treat an unknown code by the HTTP status: a newer
    /// server may add codes). A string here so that such codes still parse.
    #[schema(example = "version_conflict")]
    pub code: String,
    /// For a person: what went wrong and, where it helps, what to do.
    pub message: String,
    /// With `validation_failed`: the field that is wrong (`items[0].quantity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// With `revision_gone`: the oldest revision the node's change log still holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_revision: Option<u64>,
}

/// Integer fields of request bodies also take a JSON number written with a zero fraction
/// (`2.0`, `1e3`): JSON Schema counts those as integers and some JSON encoders write whole
/// numbers so. A fraction, a negative number or one out of range is refused as before.
mod whole_number {
    use serde::de::{self, Deserializer, Visitor};

    /// Largest integer an f64 holds exactly.
    const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

    struct Whole(&'static str);

    impl Visitor<'_> for Whole {
        type Value = u64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(self.0)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
            if v.fract() == 0.0 && (0.0..=MAX_EXACT).contains(&v) {
                Ok(v as u64)
            } else {
                Err(E::invalid_value(de::Unexpected::Float(v), &self))
            }
        }
    }

    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(Whole("a non-negative integer"))
    }

    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let v = d.deserialize_any(Whole("an integer from 0 to 4294967295"))?;
        u32::try_from(v).map_err(|_| {
            de::Error::invalid_value(
                de::Unexpected::Unsigned(v),
                &"an integer from 0 to 4294967295",
            )
        })
    }

    pub fn option_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(serde::Deserialize)]
        struct W(#[serde(deserialize_with = "u64")] u64);
        Ok(<Option<W> as serde::Deserialize>::deserialize(d)?.map(|w| w.0))
    }

    pub fn vec_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        #[derive(serde::Deserialize)]
        struct W(#[serde(deserialize_with = "u64")] u64);
        Ok(<Vec<W> as serde::Deserialize>::deserialize(d)?
            .into_iter()
            .map(|w| w.0)
            .collect())
    }
}

/// `POST /api/orders` body. A body that breaks a limit is refused whole (422
/// `validation_failed`, naming the field).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrderBody {
    /// 1 to 64 characters, no control characters (Unicode category Cc, as the pattern says).
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$",
        example = "alice"
    )]
    pub customer_id: String,
    /// 1 to 100 lines.
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<LineItemJson>,
    /// At most 1000 characters.
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub note: Option<String>,
}

/// One line of an order: money is integer cents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineItemJson {
    /// 1 to 64 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$",
        example = "book"
    )]
    pub sku: String,
    #[schema(minimum = 1, maximum = 10000, example = 2)]
    #[serde(deserialize_with = "whole_number::u32")]
    pub quantity: u32,
    #[schema(minimum = 0, maximum = 1000000000, example = 1250)]
    #[serde(deserialize_with = "whole_number::u64")]
    pub unit_price_cents: u64,
}

impl From<CreateOrderBody> for NewOrder {
    fn from(b: CreateOrderBody) -> NewOrder {
        NewOrder {
            customer_id: b.customer_id,
            items: b
                .items
                .into_iter()
                .map(|i| LineItem {
                    sku: i.sku,
                    quantity: i.quantity,
                    unit_price_cents: i.unit_price_cents,
                })
                .collect(),
            note: b.note,
        }
    }
}

/// `PATCH /api/orders/{id}` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStatusBody {
    /// The new status. Allowed moves: pending → paid or cancelled, paid → shipped or
    /// cancelled, shipped → delivered (else 409 `invalid_transition`).
    #[schema(
        example = "paid",
        pattern = "^(pending|paid|shipped|delivered|cancelled)$"
    )]
    pub status: String,
    /// Apply only if the order is at this version (else 409 `version_conflict`).
    #[serde(default, deserialize_with = "whole_number::option_u64")]
    #[schema(minimum = 1)]
    pub expected_version: Option<u64>,
}

impl SetStatusBody {
    pub fn parsed_status(&self) -> Result<OrderStatus, ValidationError> {
        OrderStatus::parse(&self.status).ok_or_else(|| {
            ValidationError::new(
                "status",
                format!(
                    "unknown status {:?}: one of pending, paid, shipped, delivered, cancelled",
                    self.status
                ),
            )
        })
    }
}

/// An order as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct OrderJson {
    #[schema(minimum = 1)]
    pub id: u64,
    pub customer_id: String,
    pub items: Vec<LineItemJson>,
    /// The sum of quantity × unit price over the items.
    pub total_cents: u64,
    #[schema(pattern = "^(pending|paid|shipped|delivered|cancelled)$")]
    pub status: String,
    /// 1 when created, one more with each status change.
    #[schema(minimum = 1)]
    pub version: u64,
    /// RFC 3339, UTC, milliseconds; stamped by the leader.
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The revision of the order's last change (see the change feed), on reads and in change
    /// events; in a write's answer, the revision of that write's change (a replay: of the
    /// first request's change; absent for a key used before store layout 6). 0: last changed
    /// before the node kept revisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

impl OrderJson {
    /// The order with the revision of its last change (a write's answer: of the write's
    /// change, when it knows it).
    pub fn with_revision(order: &Order, revision: impl Into<Option<u64>>) -> OrderJson {
        OrderJson {
            revision: revision.into(),
            ..OrderJson::from(order)
        }
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl From<&Order> for OrderJson {
    fn from(o: &Order) -> OrderJson {
        OrderJson {
            id: o.id,
            customer_id: o.customer_id.clone(),
            items: o
                .items
                .iter()
                .map(|i| LineItemJson {
                    sku: i.sku.clone(),
                    quantity: i.quantity,
                    unit_price_cents: i.unit_price_cents,
                })
                .collect(),
            total_cents: o.total_cents,
            status: o.status.as_str().to_string(),
            version: o.version,
            created_at: rfc3339(o.created_at_ms),
            updated_at: rfc3339(o.updated_at_ms),
            note: o.note.clone(),
            revision: None,
        }
    }
}

/// `GET /api/orders` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrderListJson {
    /// This page's orders, by id.
    pub orders: Vec<OrderJson>,
    /// The page number asked for (counted from the cursor, `after`, when there is one).
    pub page: u64,
    pub per_page: u64,
    /// How many orders match the filter in all.
    pub total: u64,
    /// The revision the page reflects: every change up to it is in it. To follow the orders
    /// from here without a gap, watch the change feed from this revision.
    #[serde(default)]
    pub revision: Option<u64>,
    /// Pass as `after` for the next page; absent on the last page. Cursor pages cost the
    /// same at any depth, where a numbered page skips every match before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}

/// What a change-feed event (`GET /api/orders/changes`) carries in its `data:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChangeJson {
    /// The change's revision (also the event's `id:`).
    pub revision: u64,
    /// `order.created` or `order.status_changed` (also the event's `event:`).
    #[schema(pattern = "^order\\.(created|status_changed)$")]
    pub kind: String,
    /// The order as the change left it.
    pub order: OrderJson,
    /// The status before a status change; absent for a create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<String>,
}

/// The event name of a create in the change feed.
pub const ORDER_CREATED: &str = "order.created";
/// The event name of a status change in the change feed.
pub const ORDER_STATUS_CHANGED: &str = "order.status_changed";

impl From<&crate::order::Change> for ChangeJson {
    fn from(c: &crate::order::Change) -> ChangeJson {
        ChangeJson {
            revision: c.revision,
            kind: match c.previous_status {
                None => ORDER_CREATED,
                Some(_) => ORDER_STATUS_CHANGED,
            }
            .to_string(),
            order: OrderJson::with_revision(&c.order, c.revision),
            previous_status: c.previous_status.map(|s| s.as_str().to_string()),
        }
    }
}

/// `GET /cluster/status` answer: this node's view, from its local state (no quorum needed).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    pub node_id: u64,
    /// The id of the cluster this node belongs to (32 hex digits): what `ordo serve
    /// --cluster-id` takes for a node that joins it. Absent while the node knows none (a new
    /// node not yet contacted, a cluster formed before ids), and from older nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    #[schema(pattern = "^(leader|follower|candidate|learner|shutdown)$")]
    pub state: String,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    /// The term of the last entry in the node's log: with `last_log_index`, how up to date
    /// the log is (the higher term wins, then the higher index). Absent from older nodes.
    #[serde(default)]
    pub last_log_term: Option<u64>,
    pub last_applied: Option<u64>,
    /// Voters: node id → address.
    pub members: BTreeMap<String, String>,
    /// Learners (replicated to, not voting): node id → address.
    pub learners: BTreeMap<String, String>,
    /// Where clients reach the members, where this node knows it and it differs from the
    /// membership address (`--advertise` with a peer port). Absent from older nodes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub client_addrs: BTreeMap<String, String>,
    /// While a change of the voters is half done (a joint configuration), its voter sets, the
    /// old then the new: a majority of each must agree to every commit. A change whose leader
    /// failed half-way stays so until `POST /cluster/members` is sent again (with the new
    /// set). Absent otherwise, and from older nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joint_voters: Option<Vec<Vec<u64>>>,
    /// The state machine's clock (ms since the epoch) as this node has applied it: the time
    /// idempotency records expire by. The leader keeps it within about a minute of its stamps
    /// while writes are few. Absent before the first write, and from older nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_clock_ms: Option<i64>,
}

/// `POST /cluster/learners` body: a node to replicate to (it catches up before the answer).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddLearnerBody {
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "whole_number::u64")]
    pub id: u64,
    /// HOST:PORT where the other nodes reach it.
    #[schema(example = "127.0.0.1:21004")]
    pub addr: String,
}

/// `POST /cluster/members` body: the voters after the change (learners or current members).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MembersBody {
    #[schema(min_items = 1)]
    #[serde(deserialize_with = "whole_number::vec_u64")]
    pub members: Vec<u64>,
}

/// `POST /auth/users` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserBody {
    /// 1 to 64 of a-z, 0-9, `.`, `_`, `-`.
    #[schema(pattern = "^[a-z0-9._-]{1,64}$", example = "billing")]
    pub name: String,
    /// `admin`, `writer`, `reader` or a custom role's name (an unknown role is 422).
    #[schema(pattern = "^[a-z0-9._-]{1,64}$", example = "writer")]
    pub role: String,
}

/// A user as the API shows it (never a token or its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserJson {
    pub name: String,
    pub role: String,
}

/// `POST /auth/users` answer: the only time the token is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedUserJson {
    pub name: String,
    pub role: String,
    /// Send it as `Authorization: Bearer TOKEN`; only its hash is stored.
    pub token: String,
}

/// A role: `POST /auth/roles` body, and an entry of `GET /auth/roles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleJson {
    /// Named as users are (1 to 64 of a-z, 0-9, `.`, `_`, `-`).
    #[schema(pattern = "^[a-z0-9._-]{1,64}$", example = "warehouse")]
    pub name: String,
    /// What the role's users may do (strings here, so that a newer server's permissions
    /// still parse; the schema lists today's).
    #[schema(schema_with = permission_names, example = json!(["orders:read"]))]
    pub permissions: Vec<String>,
}

fn permission_names() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let names = crate::order::Permission::ALL.map(|p| p.as_str());
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(names)),
        )
        .build()
}

/// `GET /auth/roles` answer: the built-in roles, then the custom ones.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoleListJson {
    pub roles: Vec<RoleJson>,
}

/// `GET /readyz` answer (200 when `ready`, else 503): each check and why it failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReadinessJson {
    pub ready: bool,
    pub checks: BTreeMap<String, CheckJson>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckJson {
    pub ok: bool,
    pub detail: String,
}

/// `GET /auth/users` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserListJson {
    pub users: Vec<UserJson>,
}

/// `GET /livez` (and `/health`) answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LiveJson {
    #[schema(example = "ok")]
    pub status: String,
}

/// `GET /version` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VersionJson {
    #[schema(example = "0.1.0")]
    pub version: String,
    /// The git commit the binary was built from (`unknown` outside a git checkout).
    pub commit: String,
}

/// `GET /cluster/digest` answer: equal digests at equal `last_applied` mean two replicas
/// hold the same state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DigestJson {
    pub node_id: u64,
    pub last_applied: Option<u64>,
    /// SHA-256 over the state machine's contents, hex.
    pub digest: String,
}

/// `DELETE /auth/users/{name}` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RevokedUserJson {
    pub name: String,
    pub revoked: bool,
}

/// `DELETE /auth/roles/{name}` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeletedRoleJson {
    pub name: String,
    pub deleted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_fields_take_whole_numbers_in_any_spelling_and_nothing_else() {
        let item = |q: &str| {
            serde_json::from_str::<LineItemJson>(&format!(
                r#"{{"sku":"a","quantity":{q},"unit_price_cents":5}}"#
            ))
            .map(|i| i.quantity)
        };
        assert_eq!(item("2").unwrap(), 2);
        assert_eq!(item("2.0").unwrap(), 2);
        assert_eq!(item("2e1").unwrap(), 20);
        for bad in [
            "2.5",
            "-1",
            "-1.0",
            "4294967296",
            "1e300",
            "\"2\"",
            "null",
            "true",
        ] {
            assert!(item(bad).is_err(), "{bad} was taken");
        }
        let body: SetStatusBody =
            serde_json::from_str(r#"{"status":"paid","expected_version":3.0}"#).unwrap();
        assert_eq!(body.expected_version, Some(3));
        let body: SetStatusBody = serde_json::from_str(r#"{"status":"paid"}"#).unwrap();
        assert_eq!(body.expected_version, None);
        let members: MembersBody = serde_json::from_str(r#"{"members":[1,2.0]}"#).unwrap();
        assert_eq!(members.members, vec![1, 2]);
        assert!(serde_json::from_str::<MembersBody>(r#"{"members":[1.5]}"#).is_err());
    }

    #[test]
    fn error_codes_round_trip_as_the_api_spells_them() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json.as_str(), Some(code.as_str()));
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert!(json == code);
        }
    }
}
