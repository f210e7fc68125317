//! `ordo cluster ...`: a status table of every node, and membership changes.
//!
//! `status` asks every `--nodes` URL at once (a dead node costs one short timeout, not one
//! each), takes the membership from the answers (the leader's if it answered), and asks the
//! members the list missed at their membership address too. It exits 0 only when every member
//! answered and all agree on one leader; 8 when the cluster is degraded (a member down, no
//! leader, a disagreement); 6 when no node answered.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use clap::Subcommand;

use super::table::PlainTable;
use super::{print_json, report_error, ConnArgs};
use crate::client::{Client, ClientError, ClusterStatus};

/// `cluster status`'s exit code for a cluster that answers but is not healthy.
const DEGRADED: i32 = 8;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Every member's id, address, role, leader, term, last log index and applied index, or
    /// that it does not answer. Exits 0 when healthy, 8 when degraded, 6 when no node answers.
    Status,
    /// Add a node as a learner (it catches up, then can be made a voter with `members`).
    #[command(after_help = "Example:\n  \
        ordo cluster add-learner --id 4 --addr 127.0.0.1:21004\n  \
        ordo cluster members 1 2 3 4")]
    AddLearner {
        /// The new node's id (its `ordo serve --id`), not used by another node.
        #[arg(long, value_name = "ID")]
        id: u64,
        /// Where the other nodes reach the new node (its --advertise, or --listen).
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
    },
    /// Take a learner out of the membership (one that died, or was added at a wrong
    /// address); its id and address can then be used again.
    #[command(after_help = "Example:\n  ordo cluster remove-learner --id 4")]
    RemoveLearner {
        /// The learner's id.
        #[arg(long, value_name = "ID")]
        id: u64,
    },
    /// Set the voters: current members or learners that have caught up; the other voters
    /// leave (a removed node goes quiet and says so in its log), learners stay learners.
    #[command(after_help = "Examples:\n  \
        ordo cluster members 1 2 3 4     # make learner 4 a voter\n  \
        ordo cluster members 1 2 4       # remove node 3")]
    Members {
        /// The voters after the change.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<u64>,
    },
}

pub async fn run(conn: &ConnArgs, command: ClusterCommand) -> i32 {
    match command {
        ClusterCommand::Status => match conn.client() {
            Ok(client) => status(conn, client).await,
            Err(e) => report_error(conn, &e),
        },
        ClusterCommand::AddLearner { id, addr } => match client_at_leader(conn).await {
            Ok(client) => finish(conn, client.add_learner(id, &addr).await),
            Err(e) => report_error(conn, &e),
        },
        ClusterCommand::RemoveLearner { id } => match client_at_leader(conn).await {
            Ok(client) => finish(conn, client.remove_learner(id).await),
            Err(e) => report_error(conn, &e),
        },
        ClusterCommand::Members { ids } => match client_at_leader(conn).await {
            Ok(client) => finish(conn, client.change_members(&ids).await),
            Err(e) => report_error(conn, &e),
        },
    }
}

/// The client for a membership call, which waits up to its whole deadline on one node: every
/// node's status is asked first (2 s at most), so that the call goes to the leader they name,
/// not to a node that takes connections but does not answer (that one is skipped a while).
async fn client_at_leader(conn: &ConnArgs) -> Result<Arc<Client>, ClientError> {
    let client = Arc::new(conn.membership_client()?);
    poll_all(client.clone()).await;
    Ok(client)
}

fn finish(
    conn: &ConnArgs,
    result: Result<crate::client::ClusterStatus, crate::client::ClientError>,
) -> i32 {
    match result {
        Ok(s) => {
            if conn.json {
                print_json(&s);
            } else {
                match s.leader_id {
                    Some(leader) => println!("leader: node {leader}, term {}", s.term),
                    None => println!("leader: none known, term {}", s.term),
                }
                println!("voters:   {}", node_list(&s.members));
                println!("learners: {}", node_list(&s.learners));
                print_joint(&s);
            }
            0
        }
        Err(e) => report_error(conn, &e),
    }
}

/// Asks every node of `client` for its status, all at once.
async fn poll_all(client: Arc<Client>) -> Vec<(String, Result<ClusterStatus, ClientError>)> {
    let mut polls = tokio::task::JoinSet::new();
    for (i, url) in client.nodes().iter().enumerate() {
        let (client, url) = (client.clone(), url.clone());
        polls.spawn(async move { (i, url, client.node_status(i).await) });
    }
    let mut answers = Vec::new();
    while let Some(joined) = polls.join_next().await {
        if let Ok(answer) = joined {
            answers.push(answer);
        }
    }
    answers.sort_by_key(|(i, _, _)| *i);
    answers.into_iter().map(|(_, url, s)| (url, s)).collect()
}

/// One row of the table: a member (or a listed node) and what it answered.
struct Row {
    id: Option<u64>,
    url: String,
    status: Result<ClusterStatus, ClientError>,
}

async fn status(conn: &ConnArgs, client: Client) -> i32 {
    let scheme = if client.nodes().iter().any(|u| u.starts_with("https://")) {
        "https"
    } else {
        "http"
    };
    let mut answers = poll_all(Arc::new(client)).await;
    // The membership as the leader sees it, else as the node in the highest term does.
    let view = answers
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .max_by_key(|s| (s.state == "leader", s.term))
        .cloned();
    // Where clients reach each member: the address it told its peers for clients (with
    // --advertise or a peer port), else its membership address.
    let members: BTreeMap<u64, String> = view
        .iter()
        .flat_map(|v| {
            v.members
                .iter()
                .chain(&v.learners)
                .map(|(id, addr)| (id, v.client_addrs.get(id).unwrap_or(addr)))
        })
        .filter_map(|(id, addr)| Some((id.parse().ok()?, addr.clone())))
        .collect();
    let answered: BTreeSet<u64> = answers
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok().map(|s| s.node_id))
        .collect();
    // Members the list did not reach: ask them at their membership address.
    let missing: Vec<String> = members
        .iter()
        .filter(|(id, _)| !answered.contains(id))
        .map(|(_, addr)| format!("{scheme}://{addr}"))
        .filter(|url| !answers.iter().any(|(u, _)| u.trim_end_matches('/') == url))
        .collect();
    if !missing.is_empty() {
        if let Ok(extra) = conn.client_for(missing) {
            answers.extend(poll_all(Arc::new(extra)).await);
        }
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut shown = BTreeSet::new();
    for (id, addr) in &members {
        let found = answers
            .iter()
            .find(|(_, s)| s.as_ref().is_ok_and(|s| s.node_id == *id))
            .or_else(|| {
                answers
                    .iter()
                    .find(|(u, _)| u.ends_with(&format!("//{addr}")))
            });
        let (url, status) = match found {
            Some((url, s)) => (url.clone(), s.clone()),
            None => (
                format!("{scheme}://{addr}"),
                Err(ClientError::Unavailable {
                    attempts: 0,
                    last: "not asked: no client address known".into(),
                    idempotency_key: None,
                    no_connection: true,
                    unanswered: false,
                    last_code: None,
                }),
            ),
        };
        shown.insert(url.clone());
        rows.push(Row {
            id: Some(*id),
            url,
            status,
        });
    }
    // Listed nodes that are not members (removed, or not joined yet), or all of them when
    // no node answered.
    for (url, s) in &answers {
        if !shown.contains(url) {
            let id = s.as_ref().ok().map(|s| s.node_id);
            rows.push(Row {
                id,
                url: url.clone(),
                status: s.clone(),
            });
        }
    }
    // The verdict is the members': a removed node still running does not make it degraded.
    let leaders: BTreeSet<Option<u64>> = rows
        .iter()
        .filter(|r| r.id.is_some_and(|id| members.contains_key(&id)))
        .filter_map(|r| r.status.as_ref().ok().map(|s| s.leader_id))
        .collect();
    let all_members_answer = rows
        .iter()
        .filter(|r| r.id.is_some_and(|id| members.contains_key(&id)))
        .all(|r| r.status.is_ok());
    let healthy = !members.is_empty()
        && all_members_answer
        && leaders.len() == 1
        && leaders.iter().all(Option::is_some);
    // No node let us in: that is the error to report, not a cluster that looks down.
    if rows.iter().all(|r| r.status.is_err()) {
        let refused = rows.iter().find_map(|r| match &r.status {
            Err(e @ ClientError::Unauthorized { .. }) => Some(e),
            _ => None,
        });
        if let Some(e) = refused {
            return report_error(conn, e);
        }
    }
    print_rows(conn, &rows, healthy);
    if rows.iter().all(|r| r.status.is_err()) {
        6
    } else if healthy {
        0
    } else {
        DEGRADED
    }
}

fn print_rows(conn: &ConnArgs, rows: &[Row], healthy: bool) {
    if conn.json {
        let nodes: Vec<_> = rows
            .iter()
            .map(|r| match &r.status {
                Ok(s) => {
                    serde_json::json!({"id": r.id, "url": r.url, "reachable": true, "status": s})
                }
                Err(e) => {
                    serde_json::json!({"id": r.id, "url": r.url, "reachable": false, "error": e.to_body().error})
                }
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "healthy": healthy, "nodes": nodes })
        );
        return;
    }
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let mut table = PlainTable::new(
        &["ID", "URL", "ROLE", "LEADER", "TERM", "LAST_LOG", "APPLIED"],
        &[],
    );
    for r in rows {
        table.row(match &r.status {
            Ok(s) => vec![
                s.node_id.to_string(),
                r.url.clone(),
                s.state.clone(),
                opt(s.leader_id),
                s.term.to_string(),
                opt(s.last_log_index),
                opt(s.last_applied),
            ],
            Err(e) => vec![
                opt(r.id),
                r.url.clone(),
                match e {
                    ClientError::Unauthorized { .. } => "unauthorized",
                    _ => "unreachable",
                }
                .into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
        });
    }
    table.print();
    let leader = rows
        .iter()
        .filter_map(|r| r.status.as_ref().ok())
        .find(|s| s.state == "leader");
    if let Some(s) = leader {
        print_joint(s);
    }
    print_cluster_ids(rows);
    println!("{}", if healthy { "healthy" } else { "DEGRADED" });
}

/// The cluster id the nodes report (what `ordo serve --cluster-id` takes), or each node's
/// when they differ: a node of another cluster (one wiped and started with `new`, say) is
/// listed here but refused by the others.
fn print_cluster_ids(rows: &[Row]) {
    let ids: BTreeMap<u64, &str> = rows
        .iter()
        .filter_map(|r| r.status.as_ref().ok())
        .filter_map(|s| Some((s.node_id, s.cluster_id.as_deref()?)))
        .collect();
    let distinct: BTreeSet<&str> = ids.values().copied().collect();
    match distinct.len() {
        0 => {}
        1 => println!("cluster {}", ids.values().next().unwrap_or(&"")),
        _ => {
            let each: Vec<String> = ids
                .iter()
                .map(|(n, id)| format!("node {n}: {id}"))
                .collect();
            println!("the nodes name different clusters ({})", each.join(", "));
        }
    }
}

/// A change of the voters half done, as a node reports it (`joint_voters`), and what
/// finishes it if it stays so.
fn print_joint(s: &ClusterStatus) {
    let Some(sets) = &s.joint_voters else {
        return;
    };
    let ids = |set: &Vec<u64>| set.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
    let shown: Vec<String> = sets.iter().map(|set| format!("[{}]", ids(set))).collect();
    println!(
        "membership change half done (joint voters {}); if it stays so, finish it: \
         ordo cluster members {}",
        shown.join(" and "),
        sets.last().map(ids).unwrap_or_default()
    );
}

fn node_list(nodes: &std::collections::BTreeMap<String, String>) -> String {
    nodes
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(", ")
}
