//! The user and role routes (`users:admin`): create a user (its token is shown once, here),
//! list the users, revoke one; create, list and delete custom roles. Changes go through the
//! Raft log like writes; each is written to the audit log (`ordo::audit`: who, what, result;
//! never a token).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use rand::RngCore;

use super::auth::Caller;
use super::error::ApiError;
use super::json::{JsonBody, PathSegment};
use super::AppState;
use crate::order::{
    token_hash, AdminOp, CustomRole, Effect, OrderOp, Permission, Rejection, Role, User,
    ValidationError,
};
use crate::rpc::WriteRequest;
use crate::wire::{
    CreateUserBody, CreatedUserJson, DeletedRoleJson, RevokedUserJson, RoleJson, RoleListJson,
    UserJson, UserListJson,
};

/// A new token: 256 random bits, as `ordo_` and 64 hex digits.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("ordo_{hex}")
}

/// The most of an audit line's subject shown.
const AUDIT_SUBJECT_MAX: usize = 256;

/// One line per admin action: who (`(auth off)` on a node without `--auth`), what, on
/// what, and how it ended.
pub fn audit(
    caller: Option<&Caller>,
    action: &str,
    subject: &str,
    result: &Result<impl Sized, ApiError>,
) {
    let outcome = match result {
        Ok(_) => "ok".to_string(),
        Err(e) => e.code().as_str().to_string(),
    };
    // A refused request may name anything (a list of 60,000 voters): one line stays short.
    let shown;
    let subject = if subject.len() > AUDIT_SUBJECT_MAX {
        let mut end = AUDIT_SUBJECT_MAX;
        while !subject.is_char_boundary(end) {
            end -= 1;
        }
        shown = format!("{}... ({} bytes)", &subject[..end], subject.len());
        shown.as_str()
    } else {
        subject
    };
    tracing::info!(
        target: "ordo::audit",
        who = caller.map_or("(auth off)", |c| c.name.as_str()),
        role = caller.map_or("-", |c| c.role.as_str()),
        action,
        subject,
        result = %outcome,
        "admin action"
    );
}

async fn change(state: &AppState, op: AdminOp) -> Result<Effect, ApiError> {
    let outcome = state
        .service
        .submit_write(WriteRequest {
            op: OrderOp::Admin(op),
            idempotency_key: None,
        })
        .await?;
    outcome.result.map_err(ApiError::Rejected)
}

/// The permissions of the role named `role` (built-in or custom), `None` if there is none.
async fn permissions_of(state: &AppState, role: &str) -> Result<Option<Vec<Permission>>, ApiError> {
    if let Some(builtin) = Role::parse(role) {
        let held = Permission::ALL.into_iter().filter(|p| builtin.allows(*p));
        return Ok(Some(held.collect()));
    }
    let reader = state.reader.clone();
    let role = role.to_string();
    let custom = tokio::task::spawn_blocking(move || reader.role(&role))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(custom.map(|c| c.permissions))
}

/// A caller grants only permissions its own role holds: `users:admin` alone would otherwise
/// make an admin of its holder (a user or role with every permission, made by itself).
/// Without `--auth` there is no caller and nothing to check.
async fn may_grant(
    state: &AppState,
    caller: Option<&Caller>,
    granted: &[Permission],
) -> Result<(), ApiError> {
    let Some(caller) = caller else {
        return Ok(());
    };
    let held = permissions_of(state, &caller.role)
        .await?
        .unwrap_or_default();
    match granted.iter().find(|p| !held.contains(p)) {
        None => Ok(()),
        Some(missing) => Err(ApiError::Forbidden(format!(
            "user {:?} (role {}) cannot grant {}, which its own role lacks",
            caller.name,
            caller.role,
            missing.as_str()
        ))),
    }
}

/// Make a user with a role; the answer holds its token, shown only this once.
#[utoipa::path(post, path = "/auth/users", tag = "users", operation_id = "create_user",
    request_body = CreateUserBody,
    responses((status = 201, description = "The user and its token", body = CreatedUserJson)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    JsonBody(body): JsonBody<CreateUserBody>,
) -> Result<Response, ApiError> {
    // An unknown role is refused here (as the write would be): checked only if it existed,
    // a role made with more permissions just before the write applied would slip through.
    let Some(granted) = permissions_of(&state, &body.role).await? else {
        return Err(ApiError::Validation(ValidationError::new(
            "role",
            format!(
                "no role {:?}: admin, writer, reader or a custom role",
                body.role
            ),
        )));
    };
    may_grant(&state, caller.as_deref(), &granted).await?;
    let token = new_token();
    let user = User {
        name: body.name.clone(),
        role: body.role.clone(),
        token_hash: token_hash(&token),
    };
    let result = change(&state, AdminOp::AddUser(user))
        .await
        .map_err(|e| match e {
            ApiError::Rejected(Rejection::NoSuchRole(role)) => {
                ApiError::Validation(ValidationError::new(
                    "role",
                    format!("no role {role:?}: admin, writer, reader or a custom role"),
                ))
            }
            e => e,
        });
    audit(caller.as_deref(), "user.add", &body.name, &result);
    result?;
    let created = CreatedUserJson {
        name: body.name,
        role: body.role,
        token,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Every user and its role (never tokens).
#[utoipa::path(get, path = "/auth/users", tag = "users", operation_id = "list_users",
    responses((status = 200, description = "The users", body = UserListJson)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<UserListJson>, ApiError> {
    let reader = state.reader.clone();
    let users = tokio::task::spawn_blocking(move || reader.users())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(UserListJson {
        users: users
            .into_iter()
            .map(|u| UserJson {
                name: u.name,
                role: u.role,
            })
            .collect(),
    }))
}

/// Make a custom role from permissions.
#[utoipa::path(post, path = "/auth/roles", tag = "users", operation_id = "create_role",
    request_body = RoleJson,
    responses((status = 201, description = "The role", body = RoleJson)))]
pub async fn create_role(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    JsonBody(body): JsonBody<RoleJson>,
) -> Result<Response, ApiError> {
    let mut permissions = Vec::new();
    for (i, p) in body.permissions.iter().enumerate() {
        let parsed = Permission::parse(p).ok_or_else(|| {
            ApiError::Validation(ValidationError::new(
                format!("permissions[{i}]"),
                format!(
                    "unknown permission {p:?}; one of {}",
                    Permission::ALL.map(Permission::as_str).join(", ")
                ),
            ))
        })?;
        if !permissions.contains(&parsed) {
            permissions.push(parsed);
        }
    }
    may_grant(&state, caller.as_deref(), &permissions).await?;
    let role = CustomRole {
        name: body.name.clone(),
        permissions,
    };
    let result = change(&state, AdminOp::PutRole(role)).await;
    audit(caller.as_deref(), "role.put", &body.name, &result);
    result?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The built-in roles, then the custom ones.
#[utoipa::path(get, path = "/auth/roles", tag = "users", operation_id = "list_roles",
    responses((status = 200, description = "The roles", body = RoleListJson)))]
pub async fn list_roles(State(state): State<AppState>) -> Result<Json<RoleListJson>, ApiError> {
    let reader = state.reader.clone();
    let custom = tokio::task::spawn_blocking(move || reader.roles())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let builtin = Role::ALL.into_iter().map(|r| RoleJson {
        name: r.as_str().to_string(),
        permissions: Permission::ALL
            .into_iter()
            .filter(|p| r.allows(*p))
            .map(|p| p.as_str().to_string())
            .collect(),
    });
    let custom = custom.into_iter().map(|r| RoleJson {
        name: r.name,
        permissions: r
            .permissions
            .iter()
            .map(|p| p.as_str().to_string())
            .collect(),
    });
    Ok(Json(RoleListJson {
        roles: builtin.chain(custom).collect(),
    }))
}

/// Delete a custom role: its users keep the role's name and lose every permission.
#[utoipa::path(delete, path = "/auth/roles/{name}", tag = "users", operation_id = "delete_role",
    params(("name" = String, Path, description = "The role", pattern = "^[a-z0-9._-]{1,64}$")),
    responses((status = 200, description = "Deleted", body = DeletedRoleJson)))]
pub async fn delete_role(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    PathSegment(name): PathSegment,
) -> Result<Json<DeletedRoleJson>, ApiError> {
    let result = change(&state, AdminOp::DeleteRole { name: name.clone() }).await;
    audit(caller.as_deref(), "role.delete", &name, &result);
    result?;
    Ok(Json(DeletedRoleJson {
        name,
        deleted: true,
    }))
}

/// Revoke a user: its token stops working on every node.
#[utoipa::path(delete, path = "/auth/users/{name}", tag = "users", operation_id = "revoke_user",
    params(("name" = String, Path, description = "The user", pattern = "^[a-z0-9._-]{1,64}$")),
    responses((status = 200, description = "Revoked", body = RevokedUserJson)))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    PathSegment(name): PathSegment,
) -> Result<Json<RevokedUserJson>, ApiError> {
    let result = change(&state, AdminOp::RevokeUser { name: name.clone() }).await;
    audit(caller.as_deref(), "user.revoke", &name, &result);
    result?;
    Ok(Json(RevokedUserJson {
        name,
        revoked: true,
    }))
}
