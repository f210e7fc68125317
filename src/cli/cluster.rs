//! `ordo cluster ...`: a status table of every node, and membership changes.

use clap::Subcommand;

use super::{report_error, ConnArgs};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Every node's id, address, role, term, last applied index, or that it is unreachable.
    Status,
    /// Add a node as a learner (it catches up, then can be made a voter with `members`).
    AddLearner {
        #[arg(long)]
        id: u64,
        /// The new node's HOST:PORT, as it serves.
        #[arg(long)]
        addr: String,
    },
    /// Set the voters, e.g. `ordo cluster members 2 3 4` (joint consensus).
    Members {
        #[arg(required = true)]
        ids: Vec<u64>,
    },
}

pub async fn run(conn: &ConnArgs, command: ClusterCommand) -> i32 {
    let client = match conn.client() {
        Ok(client) => client,
        Err(e) => return super::report_error(conn, &e),
    };
    match command {
        ClusterCommand::Status => {
            let mut rows = Vec::new();
            for (i, url) in client.nodes().iter().enumerate() {
                rows.push((url.clone(), client.node_status(i).await));
            }
            if conn.json {
                let nodes: Vec<_> = rows
                    .iter()
                    .map(|(url, s)| match s {
                        Ok(s) => serde_json::json!({"url": url, "reachable": true, "status": s}),
                        Err(e) => serde_json::json!({"url": url, "reachable": false, "error": e.to_string()}),
                    })
                    .collect();
                println!("{}", serde_json::json!({ "nodes": nodes }));
            } else {
                println!(
                    "{:<6} {:<28} {:<11} {:<7} {:<6} {:<9} {:<9}",
                    "ID", "URL", "ROLE", "LEADER", "TERM", "LAST_LOG", "APPLIED"
                );
                let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
                for (url, s) in &rows {
                    match s {
                        Ok(s) => println!(
                            "{:<6} {:<28} {:<11} {:<7} {:<6} {:<9} {:<9}",
                            s.node_id,
                            url,
                            s.state,
                            opt(s.leader_id),
                            s.term,
                            opt(s.last_log_index),
                            opt(s.last_applied)
                        ),
                        Err(_) => println!("{:<6} {:<28} {:<11}", "?", url, "unreachable"),
                    }
                }
            }
            // Exit 6 when no node answered at all.
            if rows.iter().all(|(_, s)| s.is_err()) {
                6
            } else {
                0
            }
        }
        ClusterCommand::AddLearner { id, addr } => {
            finish(conn, client.add_learner(id, &addr).await)
        }
        ClusterCommand::Members { ids } => finish(conn, client.change_members(&ids).await),
    }
}

fn finish(
    conn: &ConnArgs,
    result: Result<crate::client::ClusterStatus, crate::client::ClientError>,
) -> i32 {
    match result {
        Ok(s) => {
            if conn.json {
                println!("{}", serde_json::json!(s));
            } else {
                match s.leader_id {
                    Some(leader) => println!("leader: node {leader}, term {}", s.term),
                    None => println!("leader: none known, term {}", s.term),
                }
                println!("voters:   {}", node_list(&s.members));
                println!("learners: {}", node_list(&s.learners));
            }
            0
        }
        Err(e) => report_error(conn, &e),
    }
}

fn node_list(nodes: &std::collections::BTreeMap<String, String>) -> String {
    nodes
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(", ")
}
