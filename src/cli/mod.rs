//! The `ordo` command line: `serve` runs a node; `order` and `cluster` talk to a running
//! cluster through `client`; `dev-certs` makes development TLS certificates. This module only
//! parses and dispatches; each subcommand's file does its work.
//!
//! Exit codes: 0 success, 1 other error, 2 usage, 3 not found, 4 conflict, 5 invalid input,
//! 6 unavailable (no node answered within the deadline), 7 server error, 8 `cluster status`
//! found the cluster degraded.

mod backup;
mod cluster;
mod dev_certs;
mod order;
mod serve;
mod user;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::{Client, ClientConfig, ClientError, DEFAULT_NODES};

#[derive(Debug, Parser)]
#[command(
    name = "ordo",
    version = crate::VERSION,
    about = "A replicated order store (Raft + sled + HTTP JSON)"
)]
pub struct Cli {
    /// How log lines look: `text` (coloured only on a terminal) or `json` (one object per
    /// line).
    #[arg(long, env = "ORDO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true, ignore_case = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    Serve(serve::ServeArgs),
    /// Create, read, list and move orders.
    Order {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        command: order::OrderCommand,
    },
    /// Inspect and change the cluster.
    Cluster {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Create, list and revoke users (nodes started with --auth).
    User {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        command: user::UserCommand,
    },
    /// Create, list and delete custom roles (nodes started with --auth).
    Role {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(subcommand)]
        command: user::RoleCommand,
    },
    /// Take a backup of a running cluster (`--out FILE`), or check one (`verify FILE`).
    Backup {
        #[command(flatten)]
        conn: ConnArgs,
        #[command(flatten)]
        args: backup::BackupArgs,
    },
    /// Make the data directory of a new cluster's first node from a backup.
    Restore(backup::RestoreArgs),
    /// Print a shell completion script: `source <(ordo completion bash)`, or save it where the
    /// shell loads completions from.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Make a development CA and node certificates (for TLS on one machine).
    DevCerts(dev_certs::DevCertsArgs),
    /// Print the OpenAPI 3.1 spec of the HTTP API (what nodes serve at /openapi.json).
    Openapi,
}

/// How client commands reach the cluster and print.
#[derive(Debug, Args)]
pub struct ConnArgs {
    /// Node URLs, comma-separated.
    #[arg(long, env = "ORDO_NODES", default_value = DEFAULT_NODES, global = true)]
    pub nodes: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up (exit 6) after this long, retries included.
    #[arg(long, default_value_t = 10_000, global = true)]
    pub timeout_ms: u64,
    /// The CA certificate (PEM) that signed the nodes' certificates, for https:// nodes.
    #[arg(long, env = "ORDO_CA_CERT", value_name = "FILE", global = true)]
    pub ca_cert: Option<std::path::PathBuf>,
    /// A user's token, for nodes started with --auth (better in ORDO_TOKEN than on the
    /// command line, where other local users can see it).
    #[arg(
        long,
        env = "ORDO_TOKEN",
        value_name = "TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
}

impl ConnArgs {
    fn client(&self) -> Result<Client, ClientError> {
        self.client_for(
            self.nodes
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        )
    }

    /// A client for these node URLs, with this command's TLS, token and timeouts.
    fn client_for(&self, nodes: Vec<String>) -> Result<Client, ClientError> {
        let mut config = ClientConfig::new(nodes);
        config.deadline = Duration::from_millis(self.timeout_ms);
        config.attempt_timeout = config.attempt_timeout.min(config.deadline);
        config.ca_cert = self.ca_cert.clone();
        config.token = self.token.clone();
        Client::try_new(config)
    }
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    let client_runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Order { conn, command } => {
            Ok(client_runtime()?.block_on(order::run(&conn, command)))
        }
        Command::Cluster { conn, command } => {
            Ok(client_runtime()?.block_on(cluster::run(&conn, command)))
        }
        Command::DevCerts(args) => dev_certs::run(args),
        Command::Openapi => {
            print!("{}", crate::api::openapi::spec_json());
            Ok(0)
        }
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "ordo", &mut std::io::stdout());
            Ok(0)
        }
        Command::Backup { conn, args } => Ok(client_runtime()?.block_on(backup::run(&conn, args))),
        Command::Restore(args) => backup::restore(args),
        Command::User { conn, command } => {
            Ok(client_runtime()?.block_on(user::run(&conn, command)))
        }
        Command::Role { conn, command } => {
            Ok(client_runtime()?.block_on(user::run_role(&conn, command)))
        }
    }
}

/// Prints a client error for a person (or as JSON) and returns its exit code.
fn report_error(conn: &ConnArgs, e: &crate::client::ClientError) -> i32 {
    if conn.json {
        let mut v = serde_json::json!({"error": {"kind": e.kind(), "message": e.to_string()}});
        if let Some(key) = e.idempotency_key() {
            v["error"]["idempotency_key"] = key.into();
        }
        println!("{v}");
    } else {
        eprintln!("error: {e}");
    }
    e.exit_code()
}
