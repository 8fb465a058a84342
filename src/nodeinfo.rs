//! `/etc/pikube/node.json`: who a node is, written into its image so that `inspect` can tell
//! cards apart without booting them. Nothing secret goes in it.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::boards::{Board, OsImage};
use crate::config::{Cluster, Node, Role};
use crate::op::Op;

/// Where the file is in the root filesystem.
pub const PATH: &str = "/etc/pikube/node.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub cluster: String,
    pub node: String,
    pub role: String,
    pub board: String,
    /// The catalog's OS image and its description.
    pub os_image: String,
    pub os_description: String,
    /// The static address with its prefix; absent for DHCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub admin_user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k3s: Option<K3sInfo>,
    /// When the image was built, in seconds since the epoch (`SOURCE_DATE_EPOCH` when set).
    pub built: i64,
    /// The tool and version that built it.
    pub built_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct K3sInfo {
    pub version: String,
    /// Whether this node initialises the cluster.
    pub cluster_init: bool,
    /// The API the node joins, when it joins one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

impl NodeInfo {
    pub fn new(
        cluster: &Cluster,
        node: &Node,
        board: &Board,
        image: &OsImage,
        built: i64,
    ) -> Result<NodeInfo> {
        let k3s = match cluster.k3s.install {
            false => None,
            true => {
                let cluster_init = crate::k3s::initialises_cluster(cluster, node);
                Some(K3sInfo {
                    version: cluster.k3s.version.clone(),
                    cluster_init,
                    server: match cluster_init {
                        true => None,
                        false => Some(crate::k3s::api_url(cluster)?),
                    },
                })
            }
        };
        Ok(NodeInfo {
            cluster: cluster.cluster.clone(),
            node: node.name.to_string(),
            role: match node.role {
                Role::Server => "server".into(),
                Role::Agent => "agent".into(),
            },
            board: board.name.clone(),
            os_image: image.name.clone(),
            os_description: image.description.clone(),
            address: cluster.static_addr(node).map(|a| a.cidr()),
            admin_user: cluster.admin.user.clone(),
            k3s,
            built,
            built_by: format!("pikube-image {}", env!("CARGO_PKG_VERSION")),
        })
    }

    /// The node's own op writing the file onto the root partition `root`.
    pub fn op(&self, root: &str) -> Result<Op> {
        let mut json = serde_json::to_string_pretty(self)?;
        json.push('\n');
        Ok(Op::file(root, PATH, json.into_bytes(), 0o644))
    }

    /// What `inspect` prints of it, one `key: value` per line.
    pub fn render(&self) -> String {
        let mut s = format!(
            "node {} ({}) of cluster {}, board {}\n",
            self.node, self.role, self.cluster, self.board
        );
        s.push_str(&format!(
            "os: {} ({})\n",
            self.os_image, self.os_description
        ));
        s.push_str(&format!(
            "address: {}\n",
            self.address.as_deref().unwrap_or("DHCP")
        ));
        s.push_str(&format!("admin user: {}\n", self.admin_user));
        match &self.k3s {
            None => s.push_str("k3s: not installed\n"),
            Some(k) => s.push_str(&format!(
                "k3s: {}, {}\n",
                k.version,
                match (&k.server, k.cluster_init) {
                    (_, true) => "initialises the cluster".to_string(),
                    (Some(url), false) => format!("joins {url}"),
                    (None, false) => "joins an existing server".to_string(),
                }
            )),
        }
        let (y, m, d) = crate::fs::fat::civil_from_days(self.built.div_euclid(86_400));
        let t = self.built.rem_euclid(86_400);
        s.push_str(&format!(
            "built: {y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC by {}\n",
            t / 3600,
            t / 60 % 60,
            t % 60,
            self.built_by
        ));
        s
    }
}
