//! A private network for fault tests: one Linux network namespace per node, each joined by a
//! veth link to a bridge in the test's own namespace, with addresses (`10.213.K.N/24`) that
//! exist only on that bridge. A partition is a blackhole route per direction inside a node's
//! namespace (`ip route add blackhole ADDR/32`); healing deletes it. Needs root and iproute2;
//! `Topology::create` says why when it cannot, so callers can skip partition cases.
//!
//! Everything is named after a short tag (this process's id and a counter), and `Drop`
//! deletes the namespaces and the bridge, so concurrent runs do not meet and nothing is left.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT_TOPOLOGY: AtomicU32 = AtomicU32::new(0);

/// The namespaces and bridge of one run.
pub struct Topology {
    tag: String,
    subnet: u8,
    nodes: Vec<u64>,
    bridge: String,
    /// (from, to) pairs currently blackholed.
    blocked: BTreeSet<(u64, u64)>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Topology {
    /// Creates a namespace per node id on a fresh bridge.
    pub fn create(nodes: &[u64]) -> Result<Topology, String> {
        let n = NEXT_TOPOLOGY.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{:x}", (pid % 0xfffff) * 8 + (n % 8));
        let subnet = (20 + (pid as u64 * 8 + n as u64) % 230) as u8;
        let bridge = format!("obr{tag}");
        let mut topo = Topology {
            tag,
            subnet,
            nodes: nodes.to_vec(),
            bridge: bridge.clone(),
            blocked: BTreeSet::new(),
        };
        // Drop cleans up whatever part was made if a later step fails.
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("10.213.{subnet}.254/24"),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for &id in nodes {
            topo.add_node(id)?;
        }
        Ok(topo)
    }

    fn ns(&self, id: u64) -> String {
        format!("ordo-{}-n{id}", self.tag)
    }

    fn add_node(&mut self, id: u64) -> Result<(), String> {
        let ns = self.ns(id);
        let host_end = format!("ov{}h{id}", self.tag);
        let node_end = format!("ov{}n{id}", self.tag);
        ip(&["netns", "add", &ns])?;
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", &node_end,
        ])?;
        ip(&["link", "set", &host_end, "master", &self.bridge])?;
        ip(&["link", "set", &host_end, "up"])?;
        ip(&["link", "set", &node_end, "netns", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", self.addr(id)),
            "dev",
            &node_end,
        ])?;
        ip(&["-n", &ns, "link", "set", &node_end, "up"])?;
        Ok(())
    }

    /// The node's IP address inside its namespace.
    pub fn addr(&self, id: u64) -> String {
        format!("10.213.{}.{id}", self.subnet)
    }

    /// The command prefix that runs a program inside node `id`'s namespace.
    pub fn exec_prefix(&self, id: u64) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(id)]
    }

    /// Drops every packet from `from` to `to` (one direction).
    fn block(&mut self, from: u64, to: u64) -> Result<(), String> {
        if self.blocked.insert((from, to)) {
            ip(&[
                "-n",
                &self.ns(from),
                "route",
                "add",
                "blackhole",
                &format!("{}/32", self.addr(to)),
            ])?;
        }
        Ok(())
    }

    /// Cuts the network into groups: nodes in different groups cannot talk, either way.
    pub fn partition(&mut self, groups: &[Vec<u64>]) -> Result<(), String> {
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i != j {
                    for &x in a {
                        for &y in b {
                            self.block(x, y)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Cuts the link between `a` and `b` only, both ways (the rest stays connected).
    pub fn cut_link(&mut self, a: u64, b: u64) -> Result<(), String> {
        self.block(a, b)?;
        self.block(b, a)
    }

    /// Removes every blackhole route.
    pub fn heal(&mut self) -> Result<(), String> {
        let blocked = std::mem::take(&mut self.blocked);
        let mut first_err = Ok(());
        for (from, to) in blocked {
            let r = ip(&[
                "-n",
                &self.ns(from),
                "route",
                "del",
                "blackhole",
                &format!("{}/32", self.addr(to)),
            ]);
            if first_err.is_ok() {
                first_err = r;
            }
        }
        first_err
    }

    pub fn is_partitioned(&self) -> bool {
        !self.blocked.is_empty()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for &id in &self.nodes {
            let _ = ip(&["netns", "del", &self.ns(id)]); // takes its veth pair with it
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
