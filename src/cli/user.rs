//! `ordo user`: create, list and revoke users of a cluster whose nodes run with `--auth`
//! (the caller's own token, an admin's, comes from `--token` / `ORDO_TOKEN`).

use clap::Subcommand;

use super::{report_error, ConnArgs};

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user and print its token (shown this once: store it now).
    Add {
        /// 1 to 64 of a-z, 0-9, '.', '_', '-'.
        name: String,
        /// admin (everything), writer (orders and reads), reader (reads).
        #[arg(long, value_parser = ["admin", "writer", "reader"])]
        role: String,
    },
    /// List the users and their roles.
    List,
    /// Revoke a user: once this returns, no node accepts its token.
    Revoke { name: String },
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
