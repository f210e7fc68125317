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
    /// Issue certificates for nodes 1..=N. (Not `--nodes`: that is every command's list of
    /// node URLs.)
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub node_count: u64,
    /// A host name or IP address the nodes are reached at (repeatable).
    #[arg(long = "host", value_name = "HOST", default_values_t = ["127.0.0.1".to_string(), "localhost".to_string()])]
    pub hosts: Vec<String>,
    /// How long the node certificates are valid.
    #[arg(long, default_value_t = 365, value_name = "DAYS")]
    pub days: u64,
    /// Revoke these certificates (NAME.pem in DIR, e.g. node3; repeatable) instead of
    /// issuing: crl.pem then lists exactly them (name every one to keep revoked). Nodes
    /// started with --tls-crl DIR/crl.pem read it again within 5 s.
    #[arg(long = "revoke", value_name = "NAME")]
    pub revoke: Vec<String>,
}

pub fn run(args: DevCertsArgs) -> anyhow::Result<i32> {
    let ca = DevCa::create(&args.out)
        .with_context(|| format!("making the CA in {}", args.out.display()))?;
    let crl = args.out.join("crl.pem");
    if !args.revoke.is_empty() {
        let files: Vec<PathBuf> = args
            .revoke
            .iter()
            .map(|name| args.out.join(format!("{name}.pem")))
            .collect();
        let listed: Vec<&std::path::Path> = files.iter().map(PathBuf::as_path).collect();
        ca.revocation_list(&crl, &listed)
            .with_context(|| format!("writing {}", crl.display()))?;
        println!("{} lists {}", crl.display(), args.revoke.join(", "));
        return Ok(0);
    }
    // A list from the start (listing nothing), so that retiring a certificate later is a
    // reload, not a restart with a new flag. One already there stays as it is.
    if !crl.exists() {
        ca.revocation_list(&crl, &[])
            .with_context(|| format!("writing {}", crl.display()))?;
    }
    let hosts: Vec<&str> = args.hosts.iter().map(String::as_str).collect();
    for id in 1..=args.node_count {
        let files = ca
            .issue_node(
                &args.out,
                &format!("node{id}"),
                &hosts,
                Validity::days(args.days),
            )
            .with_context(|| format!("issuing node {id}'s certificate"))?;
        println!(
            "node {id}: --tls-cert {} --tls-key {} --tls-ca {} --tls-crl {}",
            files.cert.display(),
            files.key.display(),
            files.ca.display(),
            crl.display()
        );
    }
    println!(
        "clients: --ca-cert {} --ca-crl {} (or ORDO_CA_CERT, ORDO_CA_CRL)",
        args.out.join("ca.pem").display(),
        crl.display()
    );
    Ok(0)
}
