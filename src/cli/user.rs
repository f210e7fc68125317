//! `ordo user` and `ordo role`: create, list and revoke users, and custom roles, of a cluster
//! whose nodes run with `--auth` (the caller's own token, an admin's, comes from `--token` /
//! `ORDO_TOKEN`).

use clap::Subcommand;

use super::table::PlainTable;
use super::{print_json, report_error, ConnArgs};
use crate::client::{ClientError, RoleListJson, UserListJson};

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user and print its token (shown this once: store it now).
    #[command(after_help = "Example:\n  \
        ordo user add billing --role writer > billing.token")]
    Add {
        /// The user's name: 1 to 64 of a-z, 0-9, '.', '_', '-'.
        #[arg(value_name = "NAME")]
        name: String,
        /// admin (everything), writer (orders and reads), reader (reads), or a custom role.
        #[arg(long, value_name = "ROLE")]
        role: String,
    },
    /// List the users and their roles.
    List,
    /// Revoke a user: once this returns, no node accepts its token (an open change-feed stream
    /// ends as soon as its node has applied the revocation).
    Revoke {
        /// The user's name.
        #[arg(value_name = "NAME")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Create (or replace) a custom role.
    #[command(after_help = "Example:\n  \
        ordo role add warehouse --permission orders:read --permission cluster:read")]
    Add {
        /// The role's name: 1 to 64 of a-z, 0-9, '.', '_', '-' (not admin, writer, reader).
        #[arg(value_name = "NAME")]
        name: String,
        /// A permission the role grants, repeat the flag for more: orders:read, orders:write,
        /// cluster:read, cluster:admin, users:admin (the nodes check them: a newer node may
        /// know more).
        #[arg(long = "permission", required = true, value_name = "PERMISSION")]
        permissions: Vec<String>,
    },
    /// List the roles and their permissions, built-in ones first.
    List,
    /// Delete a custom role (its users keep the name and lose every permission).
    Delete {
        /// The role's name.
        #[arg(value_name = "NAME")]
        name: String,
    },
}

pub async fn run_role(conn: &ConnArgs, command: RoleCommand) -> i32 {
    let client = match conn.client() {
        Ok(client) => client,
        Err(e) => return report_error(conn, &e),
    };
    let result = match command {
        RoleCommand::Add { name, permissions } => {
            client.put_role(&name, &permissions).await.map(|role| {
                if conn.json {
                    print_json(&role);
                } else {
                    println!("role {} saved", role.name);
                }
            })
        }
        RoleCommand::List => client.list_roles().await.map(|roles| {
            if conn.json {
                print_json(&RoleListJson { roles });
            } else {
                let mut table = PlainTable::new(&["ROLE", "PERMISSIONS"], &[]);
                for r in roles {
                    table.row(vec![r.name, r.permissions.join(" ")]);
                }
                table.print();
            }
        }),
        RoleCommand::Delete { name } => client.delete_role(&name).await.map(|deleted| {
            if conn.json {
                print_json(&deleted);
            } else {
                println!("role {} deleted", deleted.name);
            }
        }),
    };
    exit_code(conn, result)
}

pub async fn run(conn: &ConnArgs, command: UserCommand) -> i32 {
    let client = match conn.client() {
        Ok(client) => client,
        Err(e) => return report_error(conn, &e),
    };
    let result = match command {
        UserCommand::Add { name, role } => client.add_user(&name, &role).await.map(|created| {
            if conn.json {
                print_json(&created);
            } else {
                eprintln!(
                    "user {} ({}) created; its token (shown once):",
                    created.name, created.role
                );
                println!("{}", created.token);
            }
        }),
        UserCommand::List => client.list_users().await.map(|users| {
            if conn.json {
                print_json(&UserListJson { users });
            } else {
                let mut table = PlainTable::new(&["NAME", "ROLE"], &[]);
                for u in users {
                    table.row(vec![u.name, u.role]);
                }
                table.print();
            }
        }),
        UserCommand::Revoke { name } => client.revoke_user(&name).await.map(|revoked| {
            if conn.json {
                print_json(&revoked);
            } else {
                println!("user {} revoked", revoked.name);
            }
        }),
    };
    exit_code(conn, result)
}

fn exit_code(conn: &ConnArgs, result: Result<(), ClientError>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => report_error(conn, &e),
    }
}
