//! `ordo dev-certs`: a development CA and node certificates, for a TLS cluster on one machine
//! (`scripts/cluster.sh up --secure`) or a first try of TLS. Not a PKI: production clusters
//! should use certificates from their own CA (see docs/security.md).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::tls::dev_certs::{DevCa, Validity};

#[derive(Debug, Args)]
pub struct DevCertsArgs {
    /// Directory for ca.pem, ca-key.pem and nodeN.pem / nodeN-key.pem. An existing CA there
    /// is reused, so more nodes can be added later; node files are replaced.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Issue certificates for nodes 1..=N.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub nodes: u64,
    /// A host name or IP address the nodes are reached at (repeatable).
    #[arg(long = "host", value_name = "HOST", default_values_t = ["127.0.0.1".to_string(), "localhost".to_string()])]
    pub hosts: Vec<String>,
    /// How long the node certificates are valid.
    #[arg(long, default_value_t = 365, value_name = "DAYS")]
    pub days: u64,
}

pub fn run(args: DevCertsArgs) -> anyhow::Result<i32> {
    let ca = DevCa::create(&args.out)
        .with_context(|| format!("making the CA in {}", args.out.display()))?;
    let hosts: Vec<&str> = args.hosts.iter().map(String::as_str).collect();
    for id in 1..=args.nodes {
        let files = ca
            .issue_node(
                &args.out,
                &format!("node{id}"),
                &hosts,
                Validity::days(args.days),
            )
            .with_context(|| format!("issuing node {id}'s certificate"))?;
        println!(
            "node {id}: --tls-cert {} --tls-key {} --tls-ca {}",
            files.cert.display(),
            files.key.display(),
            files.ca.display()
        );
    }
    println!(
        "clients: --ca-cert {} (or ORDO_CA_CERT)",
        args.out.join("ca.pem").display()
    );
    Ok(0)
}
