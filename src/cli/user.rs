//! `ordo user` and `ordo role`: create, list and revoke users, and custom roles, of a cluster
//! whose nodes run with `--auth` (the caller's own token, an admin's, comes from `--token` /
//! `ORDO_TOKEN`).

use clap::Subcommand;

use super::{report_error, ConnArgs};

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user and print its token (shown this once: store it now).
    Add {
        /// 1 to 64 of a-z, 0-9, '.', '_', '-'.
        name: String,
        /// admin (everything), writer (orders and reads), reader (reads), or a custom role.
        #[arg(long)]
        role: String,
    },
    /// List the users and their roles.
    List,
    /// Revoke a user: once this returns, no node accepts its token.
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Create (or replace) a custom role.
    Add {
        name: String,
        /// orders:read, orders:write, cluster:read, cluster:admin, users:admin (repeatable).
        #[arg(long = "permission", required = true)]
        permissions: Vec<String>,
    },
    /// List the roles and their permissions, built-in ones first.
    List,
    /// Delete a custom role (its users keep the name and lose every permission).
    Delete { name: String },
}

pub async fn run_role(conn: &ConnArgs, command: RoleCommand) -> i32 {
    let client = match conn.client() {
        Ok(client) => client,
        Err(e) => return report_error(conn, &e),
    };
    let done = |what: String| {
        if conn.json {
            println!("{}", serde_json::json!({ "ok": what }));
        } else {
            println!("{what}");
        }
        0
    };
    match command {
        RoleCommand::Add { name, permissions } => {
            match client.put_role(&name, &permissions).await {
                Ok(()) => done(format!("role {name} saved")),
                Err(e) => report_error(conn, &e),
            }
        }
        RoleCommand::List => match client.list_roles().await {
            Ok(roles) if conn.json => {
                println!("{}", serde_json::json!({ "roles": roles }));
                0
            }
            Ok(roles) => {
                println!("{:<24} PERMISSIONS", "ROLE");
                for r in roles {
                    println!("{:<24} {}", r.name, r.permissions.join(" "));
                }
                0
            }
            Err(e) => report_error(conn, &e),
        },
        RoleCommand::Delete { name } => match client.delete_role(&name).await {
            Ok(()) => done(format!("role {name} deleted")),
            Err(e) => report_error(conn, &e),
        },
    }
}

pub async fn run(conn: &ConnArgs, command: UserCommand) -> i32 {
    let client = match conn.client() {
        Ok(client) => client,
        Err(e) => return report_error(conn, &e),
    };
    match command {
        UserCommand::Add { name, role } => match client.add_user(&name, &role).await {
            Ok(created) if conn.json => {
                println!("{}", serde_json::json!(created));
                0
            }
            Ok(created) => {
                eprintln!(
                    "user {} ({}) created; its token (shown once):",
                    created.name, created.role
                );
                println!("{}", created.token);
                0
            }
            Err(e) => report_error(conn, &e),
        },
        UserCommand::List => match client.list_users().await {
            Ok(users) if conn.json => {
                println!("{}", serde_json::json!({ "users": users }));
                0
            }
            Ok(users) => {
                println!("{:<24} ROLE", "NAME");
                for u in users {
                    println!("{:<24} {}", u.name, u.role);
                }
                0
            }
            Err(e) => report_error(conn, &e),
        },
        UserCommand::Revoke { name } => match client.revoke_user(&name).await {
            Ok(()) => {
                if conn.json {
                    println!("{}", serde_json::json!({"name": name, "revoked": true}));
                } else {
                    println!("user {name} revoked");
                }
                0
            }
            Err(e) => report_error(conn, &e),
        },
    }
}
