//! The plan: a pure, declarative list of file operations per partition, computed from the
//! cluster inventory, the board and the node's role. It is printed by `--dry-run` and recorded in
//! the output manifest; the `fs` stage applies it.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::boards::{Board, BootConfig, Firstboot, OsImage};
use crate::cloudinit;
use crate::config::{Cluster, Node, Role};
use crate::io::sha256_bytes;

/// Bytes to write, kept in memory (seed files, configs) or streamed from a verified file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Bytes(Vec<u8>),
    File {
        path: std::path::PathBuf,
        size: u64,
        sha256: String,
    },
}

impl Content {
    pub fn size(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::File { size, .. } => *size,
        }
    }

    pub fn sha256(&self) -> String {
        match self {
            Content::Bytes(b) => sha256_bytes(b),
            Content::File { sha256, .. } => sha256.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create or replace a regular file.
    Write(Content),
    /// Create a directory and its missing parents.
    Mkdir,
    /// Create a symbolic link pointing at `target`.
    Symlink { target: String },
    /// Remove a file or symlink if it exists.
    Remove,
    /// Append kernel arguments to the Raspberry Pi command line, each at most once. `path` is
    /// config.txt; the command line file is found through its `cmdline=` and `os_prefix=`.
    KernelArgs { args: Vec<String> },
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Write(_) => "file",
            Action::Mkdir => "dir",
            Action::Symlink { .. } => "symlink",
            Action::KernelArgs { .. } => "edit",
            Action::Remove => "remove",
        }
    }
}

/// One file operation on the partition with the given label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub partition: String,
    pub path: String,
    pub action: Action,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    /// Secret content: never printed, never hashed into the manifest.
    pub secret: bool,
}

impl Op {
    fn file(partition: &str, path: &str, bytes: Vec<u8>, mode: u16) -> Op {
        Op {
            partition: partition.into(),
            path: path.into(),
            action: Action::Write(Content::Bytes(bytes)),
            mode,
            uid: 0,
            gid: 0,
            secret: false,
        }
    }
}

/// Everything the build does to one node's image.
#[derive(Debug, Clone)]
pub struct Plan {
    pub node: String,
    pub board: String,
    pub role: Role,
    pub image: OsImage,
    pub instance_id: Option<String>,
    pub ops: Vec<Op>,
}

/// Serialisable view of an op for `--dry-run --json` and the manifest.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OpView {
    pub partition: String,
    pub path: String,
    pub kind: String,
    pub size: u64,
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub secret: bool,
}

/// Inputs of a plan beyond the inventory: digests of the base image and other build inputs.
pub struct PlanInputs<'a> {
    pub base_sha256: &'a str,
}

impl Plan {
    /// Computes the plan for `node`. Pure: reads no files and touches no image.
    pub fn for_node(
        cluster: &Cluster,
        node: &Node,
        board: &Board,
        image: &OsImage,
        inputs: &PlanInputs<'_>,
    ) -> Result<Plan> {
        let mut ops = Vec::new();
        let instance_id;
        match &image.firstboot {
            Firstboot::CloudInit { seed_partition } => {
                let seed = cloudinit::seed(cluster, node, &[inputs.base_sha256, &board.name])?;
                instance_id = Some(seed.instance_id.clone());
                ops.push(Op::file(
                    seed_partition,
                    "/meta-data",
                    seed.meta_data.into_bytes(),
                    0o644,
                ));
                ops.push(Op::file(
                    seed_partition,
                    "/user-data",
                    seed.user_data.into_bytes(),
                    0o644,
                ));
                ops.push(Op::file(
                    seed_partition,
                    "/network-config",
                    seed.network_config.into_bytes(),
                    0o644,
                ));
            }
        }
        let root = &image.root.partition;
        for name in crate::overlay::DEFAULT_BUILTINS {
            ops.extend(crate::overlay::builtin_ops(name, root)?);
        }
        for dir in cluster.overlays_for(node) {
            ops.extend(
                crate::overlay::dir_ops(&dir, root)
                    .with_context(|| format!("overlay of node '{}'", node.name))?,
            );
        }
        if !board.kernel_args.is_empty() {
            match &image.boot {
                BootConfig::RaspiFirmware {
                    partition,
                    config_txt,
                } => ops.push(Op {
                    partition: partition.clone(),
                    path: format!("/{}", config_txt.trim_start_matches('/')),
                    action: Action::KernelArgs {
                        args: board.kernel_args.clone(),
                    },
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    secret: false,
                }),
            }
        }
        Ok(Plan {
            node: node.name.clone(),
            board: board.name.clone(),
            role: node.role,
            image: image.clone(),
            instance_id,
            ops,
        })
    }

    pub fn views(&self) -> Vec<OpView> {
        self.ops
            .iter()
            .map(|op| {
                let (size, sha256, detail) = match &op.action {
                    Action::Write(c) => (c.size(), (!op.secret).then(|| c.sha256()), None),
                    Action::Mkdir | Action::Remove => (0, None, None),
                    Action::Symlink { target } => {
                        (target.len() as u64, None, Some(format!("-> {target}")))
                    }
                    Action::KernelArgs { args } => (
                        0,
                        None,
                        Some(format!(
                            "append to the kernel command line: {}",
                            args.join(" ")
                        )),
                    ),
                };
                OpView {
                    partition: op.partition.clone(),
                    path: op.path.clone(),
                    kind: op.action.kind().into(),
                    size,
                    mode: format!("{:04o}", op.mode),
                    uid: op.uid,
                    gid: op.gid,
                    sha256,
                    detail,
                    secret: op.secret,
                }
            })
            .collect()
    }
}

/// Human-readable table of operations, as `--dry-run` prints it.
pub fn render_table(views: &[OpView]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  {:<14} {:<7} {:>10} {:>5} {:>9}  PATH",
        "PARTITION", "KIND", "SIZE", "MODE", "OWNER"
    );
    for v in views {
        let _ = write!(
            s,
            "  {:<14} {:<7} {:>10} {:>5} {:>9}  {}",
            v.partition,
            v.kind,
            v.size,
            v.mode,
            format!("{}:{}", v.uid, v.gid),
            v.path
        );
        if let Some(d) = &v.detail {
            let _ = write!(s, "  ({d})");
        }
        if v.secret {
            let _ = write!(s, "  [secret]");
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boards::Catalog;

    fn plan_for(name: &str) -> Plan {
        let cluster = Cluster::parse(
            "cluster: lab\nadmin: {user: ops, ssh_authorized_keys: [ssh-ed25519 AAAA me]}\nnodes:\n  - {name: cp1, board: rpi4, role: server, ip: 10.0.0.10}\n  - {name: w1, board: rpi3, role: agent}\n",
        )
        .unwrap();
        let cat = Catalog::load().unwrap();
        let node = cluster.node(name).unwrap();
        let board = cat.board(&node.board).unwrap();
        let image = cat.image_for(board, node.os.as_deref()).unwrap();
        Plan::for_node(
            &cluster,
            node,
            board,
            image,
            &PlanInputs {
                base_sha256: "00ff",
            },
        )
        .unwrap()
    }

    #[test]
    fn ubuntu_plan_writes_the_seed_and_edits_the_cmdline() {
        let p = plan_for("cp1");
        let paths: Vec<_> = p
            .ops
            .iter()
            .map(|o| (o.partition.as_str(), o.path.as_str()))
            .collect();
        assert_eq!(
            paths[..3],
            [
                ("system-boot", "/meta-data"),
                ("system-boot", "/user-data"),
                ("system-boot", "/network-config"),
            ]
        );
        assert!(paths.contains(&("writable", "/etc/modules-load.d/pikube-k3s.conf")));
        assert_eq!(paths.last(), Some(&("system-boot", "/config.txt")));
        let last = p.ops.last().unwrap();
        assert!(matches!(&last.action, Action::KernelArgs { args } if args.len() == 2));
        let text = render_table(&p.views());
        assert!(text.contains("/user-data") && text.contains("cgroup_enable=memory"));
    }

    #[test]
    fn views_hash_content_but_not_secrets() {
        let mut p = plan_for("w1");
        let v = p.views();
        assert_eq!(v[0].sha256.as_deref().map(str::len), Some(64));
        p.ops[0].secret = true;
        assert!(p.views()[0].sha256.is_none());
        assert!(render_table(&p.views()).contains("[secret]"));
    }
}
