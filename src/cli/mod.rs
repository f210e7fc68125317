//! The `ordo` command line: `serve` runs a node; `order` and `cluster` talk to a running
//! cluster through `client`; `dev-certs` makes development TLS certificates. This module only
//! parses and dispatches; each subcommand's file does its work.
//!
//! The connection options (`--nodes`, `--json`, `--token`, ...) are global: they may come
//! before or after the subcommand. With `--json`, a command prints exactly what the HTTP API
//! answers (the `wire` types), and an error as the API's error body with the API's codes.
//!
//! Exit codes: 0 success, 1 other error, 2 usage, 3 not found, 4 conflict, 5 invalid input,
//! 6 unavailable (no node answered within the deadline), 7 server error, 8 `cluster status`
//! found the cluster degraded, 9 not authorized (401/403).

mod backup;
mod cluster;
mod defrag;
mod dev_certs;
mod order;
mod serve;
mod table;
mod user;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::{Client, ClientConfig, ClientError, DEFAULT_NODES};

/// How long a command may take, retries included, without `--timeout-ms`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The same for a membership change: above the leader's own minute of waiting for it.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(75);

#[derive(Debug, Parser)]
#[command(
    name = "ordo",
    version = crate::VERSION,
    about = "A replicated order store (Raft + sled + HTTP JSON)",
    after_help = "Examples:\n  \
        scripts/cluster.sh up                     # a local three-node cluster\n  \
        ordo order create --customer alice --item book:2:1250\n  \
        ordo --json order get 1\n  \
        ordo cluster status\n\n\
        Client options (--nodes, --json, --token, ...) go before or after the subcommand.\n\
        Exit codes: 0 ok, 2 usage, 3 not found, 4 conflict, 5 invalid input, 6 unavailable,\n\
        7 server error, 8 cluster degraded, 9 not authorized."
)]
pub struct Cli {
    /// How log lines look: `text` (coloured only on a terminal) or `json` (one object per
    /// line).
    #[arg(long, env = "ORDO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true, ignore_case = true)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub conn: ConnArgs,
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
    Serve(Box<serve::ServeArgs>),
    /// Create, read, list and move orders.
    Order {
        #[command(subcommand)]
        command: order::OrderCommand,
    },
    /// Inspect and change the cluster.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Create, list and revoke users (nodes started with --auth).
    User {
        #[command(subcommand)]
        command: user::UserCommand,
    },
    /// Create, list and delete custom roles (nodes started with --auth).
    Role {
        #[command(subcommand)]
        command: user::RoleCommand,
    },
    /// Take a backup of a running cluster (`--out FILE`), or check one (`verify FILE`).
    Backup {
        #[command(flatten)]
        args: backup::BackupArgs,
    },
    /// Make the data directory of a new cluster's first node from a backup.
    Restore(backup::RestoreArgs),
    /// Rewrite a stopped node's store into fresh files holding only its live data (sled keeps
    /// superseded versions in its files): less disk, and a quicker next start. Needs free disk
    /// for the copy (about the live data: 250-350 MB per million orders) and about 20-40 s per
    /// million orders on a small machine.
    Defrag(defrag::DefragArgs),
    /// Print a shell completion script: `source <(ordo completion bash)`, or save it where the
    /// shell loads completions from.
    Completion {
        /// The shell to complete for.
        #[arg(value_enum, value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Make a development CA and node certificates (for TLS on one machine).
    DevCerts(dev_certs::DevCertsArgs),
    /// Print the OpenAPI 3.1 spec of the HTTP API (what nodes serve at /openapi.json).
    Openapi,
}

/// How client commands reach the cluster and print (global: before or after the
/// subcommand; `ordo serve` ignores them).
#[derive(Debug, Args)]
#[command(next_help_heading = "Client options")]
pub struct ConnArgs {
    /// Node URLs, comma-separated [default: http://127.0.0.1 at ports ORDO_BASE_PORT+1 to +3,
    /// as scripts/cluster.sh starts them: 21001-21003]
    #[arg(long, env = "ORDO_NODES", value_name = "URL,...", global = true)]
    pub nodes: Option<String>,
    /// Print what the HTTP API answers, as JSON (errors: the API's error body).
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up (exit 6) after this many milliseconds, retries included [default: 10000;
    /// 75000 for `cluster add-learner`, `members` and `remove-learner`, which wait for the
    /// change to commit and for a new learner to catch up].
    #[arg(long, value_name = "MS", global = true)]
    pub timeout_ms: Option<u64>,
    /// The CA certificate (PEM) that signed the nodes' certificates, for https:// nodes.
    #[arg(long, env = "ORDO_CA_CERT", value_name = "FILE", global = true)]
    pub ca_cert: Option<std::path::PathBuf>,
    /// That CA's certificate revocation lists (PEM): a node whose certificate they list is
    /// refused (as nodes refuse it with --tls-crl).
    #[arg(long, env = "ORDO_CA_CRL", value_name = "FILE", global = true)]
    pub ca_crl: Option<std::path::PathBuf>,
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
    /// The node URLs: --nodes / ORDO_NODES, else the local cluster of scripts/cluster.sh
    /// (which follows ORDO_BASE_PORT too).
    fn node_urls(&self) -> Vec<String> {
        let listed = match (&self.nodes, std::env::var("ORDO_BASE_PORT")) {
            (Some(nodes), _) => nodes.clone(),
            (None, Ok(base)) => match base.trim().parse::<u16>() {
                Ok(base) => (1..=3)
                    .map(|n| format!("http://127.0.0.1:{}", u32::from(base) + n))
                    .collect::<Vec<_>>()
                    .join(","),
                Err(_) => DEFAULT_NODES.to_string(),
            },
            (None, Err(_)) => DEFAULT_NODES.to_string(),
        };
        listed
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    fn client(&self) -> Result<Client, ClientError> {
        self.client_for(self.node_urls())
    }

    /// A client for these node URLs, with this command's TLS, token and timeouts.
    fn client_for(&self, nodes: Vec<String>) -> Result<Client, ClientError> {
        let mut config = self.config_for(nodes, DEFAULT_TIMEOUT);
        config.attempt_timeout = config.attempt_timeout.min(config.deadline);
        Client::try_new(config)
    }

    /// A client for membership changes: the leader waits up to a minute for one to commit
    /// (and for a new learner to catch up, which takes a while for a large store), so one
    /// attempt gets the whole deadline rather than being cut and sent again elsewhere.
    fn membership_client(&self) -> Result<Client, ClientError> {
        let mut config = self.config_for(self.node_urls(), MEMBERSHIP_TIMEOUT);
        config.attempt_timeout = config.deadline;
        Client::try_new(config)
    }

    fn config_for(&self, nodes: Vec<String>, default_timeout: Duration) -> ClientConfig {
        let mut config = ClientConfig::new(nodes);
        config.deadline = self
            .timeout_ms
            .map_or(default_timeout, Duration::from_millis);
        config.ca_cert = self.ca_cert.clone();
        config.ca_crl = self.ca_crl.clone();
        config.token = self.token.clone();
        config
    }
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    let client_runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let conn = &cli.conn;
    match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Order { command } => Ok(client_runtime()?.block_on(order::run(conn, command))),
        Command::Cluster { command } => Ok(client_runtime()?.block_on(cluster::run(conn, command))),
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
        Command::Backup { args } => Ok(client_runtime()?.block_on(backup::run(conn, args))),
        Command::Restore(args) => backup::restore(conn, args),
        Command::Defrag(args) => defrag::run(conn, args),
        Command::User { command } => Ok(client_runtime()?.block_on(user::run(conn, command))),
        Command::Role { command } => Ok(client_runtime()?.block_on(user::run_role(conn, command))),
    }
}

/// Prints a value as the API answers it (one line of JSON).
fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string(value).expect("wire types serialize")
    );
}

/// Prints a client error for a person (or, with --json, the API's error body on stdout) and
/// returns its exit code. A person also gets what to do about it.
fn report_error(conn: &ConnArgs, e: &ClientError) -> i32 {
    if conn.json {
        print_json(&e.to_body());
    } else {
        eprintln!("error: {e}");
        if let Some(hint) = hint(conn, e) {
            eprintln!("hint: {hint}");
        }
    }
    e.exit_code()
}

/// What a person can do about an error, where there is something to say.
fn hint(conn: &ConnArgs, e: &ClientError) -> Option<String> {
    match e {
        // (rustls' words for a certificate it refused, as reqwest passes them on.)
        ClientError::Unavailable {
            no_connection: true,
            last,
            ..
        } if last.contains("invalid peer certificate") => Some(
            "a node's certificate was refused: revoked (--ca-crl), expired, or not signed by \
             the CA given in --ca-cert / ORDO_CA_CERT"
                .into(),
        ),
        ClientError::Unavailable {
            no_connection: true,
            ..
        } => Some(format!(
            "no node accepted a connection at {}; is the cluster running there? Point the \
             CLI at it with --nodes or ORDO_NODES (scripts/cluster.sh up prints the value to \
             export)",
            conn.node_urls().join(",")
        )),
        ClientError::Unavailable {
            unanswered: true, ..
        } => Some(
            "a node took the request but gave no answer in time, or said its outcome is \
             unknown (stalled, overloaded, or a leader change?), so a write may have been \
             applied: see `ordo cluster status`, check before trying again, or allow more \
             time with --timeout-ms"
                .into(),
        ),
        ClientError::Unavailable { .. } => Some(
            "the nodes answer but cannot serve this now (no leader or no quorum?): see \
             `ordo cluster status`; reads can use --stale or --allow-stale"
                .into(),
        ),
        ClientError::Unauthorized { status: 401, .. } => Some(if conn.token.is_some() {
            "no user has this token (revoked?): check ORDO_TOKEN or --token".into()
        } else {
            "these nodes run with --auth: give a user's token in ORDO_TOKEN or with --token".into()
        }),
        ClientError::Unauthorized { .. } => Some(
            "this user's role lacks the permission: an admin can change it (`ordo user`, \
             `ordo role`)"
                .into(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// A refused certificate is not "is the cluster running there?".
    #[test]
    fn a_refused_certificate_gets_its_own_hint() {
        let cli = Cli::try_parse_from(["ordo", "order", "list"]).unwrap();
        let unavailable = |last: &str| ClientError::Unavailable {
            attempts: 3,
            last: last.into(),
            idempotency_key: None,
            no_connection: true,
            unanswered: false,
            last_code: None,
        };
        let refused = unavailable(
            "https://127.0.0.1:1: error sending request: client error (Connect): invalid peer \
             certificate: Revoked",
        );
        let said = hint(&cli.conn, &refused).unwrap();
        assert!(said.contains("certificate was refused"), "{said}");
        let down = unavailable("http://127.0.0.1:1: connection refused");
        let said = hint(&cli.conn, &down).unwrap();
        assert!(said.contains("is the cluster running there"), "{said}");
    }

    /// Every argument of every command says what it is for, and names its value in its
    /// usage (`--item <SKU:QTY:PRICE_CENTS>`, not `--item <ITEMS>`).
    #[test]
    fn every_argument_has_help_and_a_value_name() {
        fn walk(cmd: &clap::Command, path: String, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() {
                    missing.push(format!("{path} {id}: no help"));
                }
                // clap names a value after its field (`<ITEMS>`) unless told otherwise; a list
                // of possible values is a name of its own.
                // The derive names a value after its field: fine for `<ID>` or `<TOKEN>`, not
                // for `<HEARTBEAT_MS>` (say `<MS>`) or `<ITEMS>` (say `<SKU:QTY:PRICE_CENTS>`).
                let takes_value = arg.get_action().takes_values();
                let field_named = arg
                    .get_value_names()
                    .is_none_or(|names| names.iter().any(|n| *n == id.to_uppercase()));
                let repeated = matches!(arg.get_action(), clap::ArgAction::Append);
                let self_describing = !(id.contains('_') || (repeated && id.ends_with('s')));
                if takes_value
                    && field_named
                    && !self_describing
                    && arg.get_possible_values().is_empty()
                {
                    missing.push(format!("{path} {id}: no value name"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, format!("{path} {}", sub.get_name()), missing);
            }
        }
        let cmd = Cli::command();
        let mut missing = Vec::new();
        walk(&cmd, "ordo".into(), &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
    }

    /// No command has an argument of the same id as a global one (`--nodes`, `--json`, ...):
    /// clap would hand the command's value to the global field, and the command panicked at
    /// every run (`ordo dev-certs --nodes N` did).
    #[test]
    fn no_command_reuses_a_global_argument() {
        fn walk(cmd: &clap::Command, globals: &[String], path: String, clashes: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if globals.iter().any(|g| g == arg.get_id().as_str()) {
                    clashes.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, globals, format!("{path} {}", sub.get_name()), clashes);
            }
        }
        let cmd = Cli::command();
        let globals: Vec<String> = cmd
            .get_arguments()
            .filter(|a| a.is_global_set())
            .map(|a| a.get_id().to_string())
            .collect();
        assert!(globals.iter().any(|g| g == "nodes"), "{globals:?}");
        let mut clashes = Vec::new();
        for sub in cmd.get_subcommands() {
            walk(
                sub,
                &globals,
                format!("ordo {}", sub.get_name()),
                &mut clashes,
            );
        }
        assert!(clashes.is_empty(), "{clashes:?}");
    }

    #[test]
    fn connection_options_go_before_or_after_the_subcommand() {
        for argv in [
            &["ordo", "--json", "order", "get", "1"][..],
            &["ordo", "order", "--json", "get", "1"],
            &["ordo", "order", "get", "1", "--json"],
            &[
                "ordo",
                "--nodes",
                "http://a:1",
                "--json",
                "cluster",
                "status",
            ],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            assert!(cli.conn.json, "{argv:?}");
        }
    }
}
