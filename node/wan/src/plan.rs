//! The description of a local multi-region cluster (`DIR/cluster.json`), as `meridian demo init`
//! writes it and `meridian demo` and the geo-tests harness read it.
//!
//! Regions talk to each other only through *links*: one user-space UDP relay per (source region,
//! destination node) pair ([`LinkPlan`]), which delays (and, in tests, drops or blocks) the packets
//! to emulate a WAN. Every node's configuration names, in `peer.dial_via`, the link address of each
//! node of the other regions, so cross-region peer traffic goes through the links and in-region
//! traffic does not. Whoever starts the nodes must start the links first (`meridian demo` runs them
//! in its own process; the geo-tests run them in the test process so they can partition regions).
//!
//! [`NodePlan`] is also the node entry of the single-region plan `meridian region init` writes
//! (`DIR/region.json`, `meridian_node::local_region::RegionPlan`). Both formats live here, in a crate
//! without RocksDB, so that the geo-tests read them without linking the server.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The cluster's admin client certificate, beside the CA certificate (`DIR/certs/`): a client
/// certificate named `admin`, which every node's `auth.admins` lists. Tools and tests that run the
/// cluster use it; operators use it to make their own users and tokens (`meridian auth`).
pub const ADMIN_CERT_FILE: &str = "admin.crt";
/// The admin client certificate's key (see [`ADMIN_CERT_FILE`]).
pub const ADMIN_KEY_FILE: &str = "admin.key";
/// The admin principal's name.
pub const ADMIN_NAME: &str = "admin";

/// The admin client certificate and key of the cluster whose CA certificate is `ca_cert`.
pub fn admin_credentials(ca_cert: &Path) -> (PathBuf, PathBuf) {
    (ca_cert.with_file_name(ADMIN_CERT_FILE), ca_cert.with_file_name(ADMIN_KEY_FILE))
}

/// HTTPS to the nodes of the cluster whose CA certificate is `ca_cert`, as its admin.
pub fn admin_http(ca_cert: &Path) -> anyhow::Result<crate::probe::NodeHttp> {
    let (cert, key) = admin_credentials(ca_cert);
    crate::probe::NodeHttp::tls(ca_cert, Some((&cert, &key)))
}

/// The plan's file name inside the cluster directory.
pub const GEO_PLAN_FILE: &str = "cluster.json";

/// A local multi-region cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeoPlan {
    /// The nodes' `cluster_id`.
    pub cluster_id: String,
    /// The cluster CA certificate (absolute): the one trust anchor for clients and nodes.
    pub ca_cert: PathBuf,
    /// `peer.rf` of every node: replicas of each partition *per region*.
    pub rf: usize,
    /// The regions, in the order given on the command line.
    pub regions: Vec<RegionInPlan>,
    /// One relay per (source region, destination node in another region).
    pub links: Vec<LinkPlan>,
}

/// One node of a local cluster: of a [`RegionInPlan`], and of the single-region plan
/// `meridian region init` writes (`DIR/region.json`, `meridian_node::local_region::RegionPlan`).
/// Paths are absolute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    /// `node_name` (`n1`, `n2`, …).
    pub name: String,
    /// `zone`.
    pub zone: String,
    /// The node's TOML configuration (`meridian serve --config PATH`).
    pub config: PathBuf,
    /// The node's `data_dir`.
    pub data_dir: PathBuf,
    /// Where `meridian region start` appends the node's output.
    pub log: PathBuf,
    /// QUIC client protocol (`listen.client`): `--endpoint` for the CLI.
    pub client_addr: SocketAddr,
    /// HTTP API (`listen.http`).
    pub http_addr: SocketAddr,
    /// Peer transport (`peer.listen`).
    pub peer_addr: SocketAddr,
}

/// One region of a [`GeoPlan`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionInPlan {
    /// The region's name (`us-east`, …).
    pub name: String,
    /// Its nodes; node names are unique across the cluster (`us-east-n1`, …).
    pub nodes: Vec<NodePlan>,
}

/// One emulated WAN path: packets that nodes of `from_region` send to `listen` are forwarded to
/// `upstream` (the peer address of node `to_node`, in region `to_region`) after `one_way_ms`, and the
/// answers come back with the same delay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkPlan {
    /// The region whose nodes dial through this link.
    pub from_region: String,
    /// The region of the node behind it.
    pub to_region: String,
    /// The node behind it.
    pub to_node: String,
    /// Where the relay listens (the address in the `from_region` nodes' `peer.dial_via`).
    pub listen: SocketAddr,
    /// The node's real peer address.
    pub upstream: SocketAddr,
    /// Emulated one-way delay, each direction.
    pub one_way_ms: u64,
}

impl GeoPlan {
    /// Reads `dir/cluster.json`.
    pub fn load(dir: &Path) -> anyhow::Result<GeoPlan> {
        let path = dir.join(GEO_PLAN_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (create it with `meridian demo init`)", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Every node, region by region.
    pub fn nodes(&self) -> impl Iterator<Item = (&RegionInPlan, &NodePlan)> {
        self.regions.iter().flat_map(|r| r.nodes.iter().map(move |n| (r, n)))
    }

    /// The region called `name`.
    pub fn region(&self, name: &str) -> Option<&RegionInPlan> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// The links between two regions, both directions.
    pub fn links_between<'a>(&'a self, a: &'a str, b: &'a str) -> impl Iterator<Item = &'a LinkPlan> + 'a {
        self.links
            .iter()
            .filter(move |l| (l.from_region == a && l.to_region == b) || (l.from_region == b && l.to_region == a))
    }
}
