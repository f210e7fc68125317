//! Who may do what: users, their roles, the permissions a role grants, and the tokens users
//! prove themselves with. Pure data and rules, no I/O: users are replicated state (changed by
//! `OrderOp::Admin` commands through the Raft log, stored by `store`), and the API checks
//! requests against them (`api::auth`).
//!
//! A token is random (made by the node that creates the user, shown once) and only its
//! SHA-256 is stored and replicated; tokens are compared by hash in constant time.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::validate::ValidationError;

/// What a request may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Permission {
    OrdersRead,
    OrdersWrite,
    ClusterRead,
    ClusterAdmin,
    UsersAdmin,
}

impl Permission {
    pub const ALL: [Permission; 5] = [
        Permission::OrdersRead,
        Permission::OrdersWrite,
        Permission::ClusterRead,
        Permission::ClusterAdmin,
        Permission::UsersAdmin,
    ];

    pub fn parse(s: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::OrdersRead => "orders:read",
            Permission::OrdersWrite => "orders:write",
            Permission::ClusterRead => "cluster:read",
            Permission::ClusterAdmin => "cluster:admin",
            Permission::UsersAdmin => "users:admin",
        }
    }
}

/// The built-in roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Everything: membership, users, and what a writer may do.
    Admin,
    /// Create and change orders, read them and the cluster's status.
    Writer,
    /// Read orders and the cluster's status.
    Reader,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Writer, Role::Reader];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Writer => "writer",
            Role::Reader => "reader",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::Writer => matches!(permission, OrdersRead | OrdersWrite | ClusterRead),
            Role::Reader => matches!(permission, OrdersRead | ClusterRead),
        }
    }
}

/// A user as stored: never the token itself. `role` names a built-in `Role` or a
/// `CustomRole`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: String,
    pub token_hash: [u8; 32],
}

/// A role made of chosen permissions (the built-in names are taken).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomRole {
    pub name: String,
    pub permissions: Vec<Permission>,
}

impl CustomRole {
    pub fn allows(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }
}

/// A change to the users or roles, as the Raft log carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminOp {
    AddUser(User),
    RevokeUser {
        name: String,
    },
    /// Creates or replaces a custom role.
    PutRole(CustomRole),
    /// Deletes a custom role; its users keep the name and get no permission.
    DeleteRole {
        name: String,
    },
}

impl AdminOp {
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            AdminOp::AddUser(user) => {
                validate_user_name(&user.name)?;
                validate_role_name(&user.role).map_err(|e| ValidationError::new("role", e.message))
            }
            AdminOp::RevokeUser { name } => validate_user_name(name),
            AdminOp::PutRole(CustomRole { name, .. }) | AdminOp::DeleteRole { name } => {
                validate_role_name(name)?;
                if Role::parse(name).is_some() {
                    return Err(ValidationError::new("name", "is a built-in role"));
                }
                Ok(())
            }
        }
    }
}

/// Role names follow the rules of user names.
pub fn validate_role_name(name: &str) -> Result<(), ValidationError> {
    validate_user_name(name)
}

pub const MAX_USER_NAME: usize = 64;

/// 1 to 64 of `a-z`, `0-9`, `.`, `_`, `-`.
pub fn validate_user_name(name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_USER_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "name",
            format!("must be 1 to {MAX_USER_NAME} of a-z, 0-9, '.', '_', '-'"),
        ))
    }
}

/// What is stored of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equal hashes, compared in time independent of where they differ.
pub fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_grant_exactly_their_permissions() {
        use Permission::*;
        let all = [
            OrdersRead,
            OrdersWrite,
            ClusterRead,
            ClusterAdmin,
            UsersAdmin,
        ];
        let granted = |r: Role| all.iter().filter(|p| r.allows(**p)).count();
        assert_eq!(granted(Role::Admin), 5);
        assert_eq!(granted(Role::Writer), 3);
        assert!(!Role::Writer.allows(ClusterAdmin) && !Role::Writer.allows(UsersAdmin));
        assert_eq!(granted(Role::Reader), 2);
        assert!(!Role::Reader.allows(OrdersWrite));
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn names_and_hashes() {
        assert!(validate_user_name("svc.billing-2_a").is_ok());
        for bad in ["", "Alice", "a b", "ä", &"a".repeat(65)] {
            assert!(validate_user_name(bad).is_err(), "{bad:?}");
        }
        let h = token_hash("t");
        assert!(same_hash(&h, &token_hash("t")));
        assert!(!same_hash(&h, &token_hash("u")));
    }
}
