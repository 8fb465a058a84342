//! The plan: a pure, declarative list of file operations per partition for one node,
//! assembled from what each feature contributes (first boot, host keys, k3s, GitOps,
//! container images, overlays, boot configuration). It is printed by `--dry-run` and
//! recorded in the output manifest; the `fs` stage applies it.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::boards::{Board, OsImage};
use crate::config::{Cluster, Node, Role};
pub use crate::op::{Action, Content, Op, Scope};

/// Everything a node's plan needs that comes from outside the inventory: downloads,
/// secrets and generated keys, resolved before planning.
#[derive(Debug, Clone, Default)]
pub struct Payload {
    /// The k3s binary for the board's architecture.
    pub k3s_binary: Option<Content>,
    /// The airgap images tarball: file name and content.
    pub k3s_airgap: Option<(String, Content)>,
    /// The cluster's join token.
    pub token: Option<String>,
    /// The node's SSH host key.
    pub host_key: Option<crate::host_keys::HostKey>,
    /// Argo CD's install manifest, already namespaced (first server only).
    pub argocd_install: Option<Content>,
    /// Flux's install manifest, narrowed to the controllers asked for (first server only).
    pub flux_components: Option<Content>,
    /// Repository Secret for a private GitOps repository (first server only).
    pub repo_secret: Option<Vec<u8>>,
    /// Container images of the node's role, as one OCI archive.
    pub role_images: Option<Content>,
    /// Container images of this node only (its own list, Argo CD's on the first server).
    pub node_images: Option<Content>,
    /// The Wi-Fi network the node joins, with its passphrase.
    pub wifi: Option<crate::netconfig::WifiJoin>,
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
    /// The node's `known_hosts` line (its names and host public key), when it gets a key.
    pub known_host: Option<String>,
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
    pub shared: bool,
}

/// Inputs of a plan beyond the inventory: the base image's identity and the payload.
pub struct PlanInputs<'a> {
    pub base_sha256: &'a str,
    pub payload: &'a Payload,
    /// When the image is built (seconds since the epoch), recorded in it.
    pub built: i64,
}

impl Plan {
    /// Ops shared by every node of the role (applied to the prepared base).
    pub fn shared_ops(&self) -> Vec<&Op> {
        self.ops.iter().filter(|o| o.is_role_wide()).collect()
    }

    /// Ops of this node only (applied to its copy of the prepared base).
    pub fn node_ops(&self) -> Vec<&Op> {
        self.ops.iter().filter(|o| !o.is_role_wide()).collect()
    }

    /// Computes the plan for `node`. Pure: reads no files and touches no image.
    pub fn for_node(
        cluster: &Cluster,
        node: &Node,
        board: &Board,
        image: &OsImage,
        inputs: &PlanInputs<'_>,
    ) -> Result<Plan> {
        let payload = inputs.payload;
        let root = &image.root.partition;
        let host_key = payload.host_key.as_ref();
        let links = crate::netconfig::Links {
            ethernet: board.ethernet,
            wifi: payload.wifi.as_ref(),
        };
        let first = crate::firstboot::ops(
            &image.firstboot,
            cluster,
            node,
            root,
            &image.boot,
            &[inputs.base_sha256, &board.name],
            host_key,
            links,
        )?;
        let mut ops = first.ops;
        let known_host = match host_key {
            Some(key) => {
                ops.extend(crate::host_keys::host_key_ops(root, key));
                Some(crate::host_keys::known_host_line(cluster, node, key)?)
            }
            None => None,
        };
        ops.push(
            crate::nodeinfo::NodeInfo::new(cluster, node, board, image, inputs.built)?.op(root)?,
        );
        if cluster.k3s.install {
            let k3s = crate::k3s::Payload {
                binary: payload
                    .k3s_binary
                    .clone()
                    .context("the k3s binary was not resolved")?,
                airgap: payload.k3s_airgap.clone(),
                token: payload
                    .token
                    .as_deref()
                    .context("the k3s join token was not resolved")?,
            };
            ops.extend(crate::k3s::ops(cluster, node, board, root, k3s)?);
        }
        let is_first_server = node.role == Role::Server
            && cluster.first_server().map(|n| n.name.as_str()) == Some(node.name.as_str());
        if let (Some(vip), true) = (&cluster.k3s.vip, is_first_server) {
            ops.extend(crate::kube_vip::ops(vip, root)?);
        }
        match (&cluster.gitops, is_first_server) {
            (Some(g), true) if g.engine == crate::config::GitopsEngine::Flux => {
                let components = payload
                    .flux_components
                    .clone()
                    .context("the Flux install manifest was not resolved")?;
                ops.extend(crate::flux::ops(
                    g,
                    root,
                    components,
                    payload.repo_secret.clone(),
                )?);
            }
            (Some(g), true) => {
                let install = payload
                    .argocd_install
                    .clone()
                    .context("the Argo CD install manifest was not resolved")?;
                ops.extend(crate::gitops::ops(
                    &cluster.cluster,
                    g,
                    root,
                    install,
                    payload.repo_secret.clone(),
                )?);
            }
            _ => {}
        }
        ops.extend(crate::images::preload_ops(
            root,
            payload.role_images.clone(),
            payload.node_images.clone(),
        ));
        for name in crate::overlay::DEFAULT_BUILTINS {
            ops.extend(crate::overlay::builtin_ops(name, root)?);
        }
        for (dir, scope) in cluster.overlays_for(node)? {
            ops.extend(
                crate::overlay::dir_ops(&dir, root, scope)
                    .with_context(|| format!("overlay of node '{}'", node.name))?,
            );
        }
        if !board.kernel_args.is_empty() {
            ops.extend(crate::boot::kernel_args(&image.boot, &board.kernel_args));
        }
        // Whatever lands in k3s's manifests directory (GitOps, overlays) gets an mtime that
        // k3s's deploy controller honours, whatever SOURCE_DATE_EPOCH says.
        let manifests = format!("{}/", crate::k3s::MANIFESTS_DIR);
        let ops = ops
            .into_iter()
            .map(
                |op| match op.partition == *root && op.path.starts_with(&manifests) {
                    true => op.not_older_than(crate::k3s::MANIFEST_MIN_MTIME),
                    false => op,
                },
            )
            .collect();
        Ok(Plan {
            node: node.name.to_string(),
            board: board.name.clone(),
            role: node.role,
            image: image.clone(),
            instance_id: first.instance_id,
            ops,
            known_host,
        })
    }

    pub fn views(&self) -> Vec<OpView> {
        self.ops
            .iter()
            .map(|op| {
                let (size, sha256, detail) = match &op.action {
                    Action::Write(Content::Download { url }) => {
                        (0, None, Some(format!("downloaded from {url}")))
                    }
                    Action::Write(c) => (c.size(), (!op.secret).then(|| c.sha256()), None),
                    Action::Mkdir | Action::Remove => (0, None, None),
                    Action::Symlink { target } => {
                        (target.len() as u64, None, Some(format!("-> {target}")))
                    }
                    Action::Edit(edit) => (0, None, Some(edit.describe())),
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
                    shared: op.is_role_wide(),
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
        if v.shared {
            let _ = write!(s, "  [shared]");
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boards::Catalog;

    const INVENTORY: &str = "cluster: lab\nadmin: {user: ops, ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c me]}\nnodes:\n  - {name: cp1, board: rpi4, role: server, ip: 10.0.0.10}\n  - {name: w1, board: rpi3, role: agent}\n";

    fn plan_with(text: &str, name: &str, payload: &Payload) -> Result<Plan> {
        let cluster = Cluster::parse(text).unwrap();
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
                payload,
                built: 1_700_000_000,
            },
        )
    }

    fn plan_for(name: &str) -> Plan {
        let text = INVENTORY.replace("nodes:", "k3s: {install: false}\nnodes:");
        plan_with(&text, name, &Payload::default()).unwrap()
    }

    fn payload() -> Payload {
        Payload {
            k3s_binary: Some(Content::Bytes(b"ELF".to_vec())),
            k3s_airgap: Some((
                "k3s-airgap-images-arm64.tar.zst".into(),
                Content::Bytes(b"zst".to_vec()),
            )),
            token: Some("tok".into()),
            wifi: None,
            host_key: Some(crate::host_keys::HostKey {
                private_openssh: "PRIVATE".into(),
                public_openssh: "ssh-ed25519 AAAA".into(),
            }),
            argocd_install: Some(Content::Bytes(b"kind: Namespace".to_vec())),
            flux_components: None,
            repo_secret: None,
            role_images: Some(Content::Bytes(b"role".to_vec())),
            node_images: Some(Content::Bytes(b"node".to_vec())),
        }
    }

    fn find<'p>(p: &'p Plan, path: &str) -> &'p Op {
        // The last op on a path is the one that decides what the image holds.
        p.ops
            .iter()
            .rev()
            .find(|o| o.path == path)
            .unwrap_or_else(|| panic!("{path} not in plan"))
    }

    #[test]
    fn every_node_records_who_it_is() {
        let text = INVENTORY.replace("nodes:", "domain: home.arpa\nnodes:");
        for (name, role, server) in [
            ("cp1", "server", None),
            ("w1", "agent", Some("https://10.0.0.10:6443")),
        ] {
            let p = plan_with(&text, name, &payload()).unwrap();
            let op = find(&p, crate::nodeinfo::PATH);
            assert!(!op.is_role_wide() && !op.secret && op.mode == 0o644);
            let info: crate::nodeinfo::NodeInfo = serde_json::from_str(&text_of(op)).unwrap();
            assert_eq!((info.node.as_str(), info.role.as_str()), (name, role));
            assert_eq!(info.k3s.as_ref().unwrap().server.as_deref(), server);
            assert_eq!(info.built, 1_700_000_000);
            let shown = info.render();
            assert!(shown.contains("built: 2023-11-14 22:13:20 UTC"), "{shown}");
        }
    }

    fn text_of(op: &Op) -> String {
        match &op.action {
            Action::Write(Content::Bytes(b)) => String::from_utf8(b.clone()).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn k3s_payload_per_role() {
        let text = INVENTORY.replace(
            "nodes:",
            "gitops: {repo: \"https://git.example.com/lab.git\"}\nnodes:",
        );
        let server = plan_with(&text, "cp1", &payload()).unwrap();
        let bin = find(&server, "/usr/local/bin/k3s");
        assert_eq!((bin.mode, bin.partition.as_str()), (0o755, "writable"));
        for l in ["kubectl", "crictl", "ctr"] {
            let op = find(&server, &format!("/usr/local/bin/{l}"));
            assert_eq!(
                op.action,
                Action::Symlink {
                    target: "k3s".into()
                }
            );
        }
        let cfg = find(&server, "/etc/rancher/k3s/config.yaml");
        assert!(cfg.secret && cfg.mode == 0o600);
        assert!(matches!(&cfg.action, Action::Write(Content::Bytes(b))
            if String::from_utf8_lossy(b).contains("cluster-init: true")));
        find(&server, "/etc/systemd/system/k3s.service");
        assert_eq!(
            find(&server, "/etc/systemd/system/k3s.service.env").mode,
            0o600
        );
        let wants = find(
            &server,
            "/etc/systemd/system/multi-user.target.wants/k3s.service",
        );
        assert_eq!(
            wants.action,
            Action::Symlink {
                target: "/etc/systemd/system/k3s.service".into()
            }
        );
        find(
            &server,
            "/var/lib/rancher/k3s/agent/images/k3s-airgap-images-arm64.tar.zst",
        );
        find(
            &server,
            "/var/lib/rancher/k3s/server/manifests/pikube-argocd-install.yaml",
        );
        find(
            &server,
            "/var/lib/rancher/k3s/server/manifests/pikube-argocd-root-app.yaml",
        );
        let key = find(&server, "/etc/ssh/ssh_host_ed25519_key");
        assert!(key.secret && key.mode == 0o600);
        assert!(
            server
                .ops
                .iter()
                .any(|o| o.path == "/etc/ssh/ssh_host_rsa_key" && o.action == Action::Remove)
        );

        let agent = plan_with(&text, "w1", &payload()).unwrap();
        find(&agent, "/etc/systemd/system/k3s-agent.service");
        assert!(
            !agent
                .ops
                .iter()
                .any(|o| o.path.contains("/server/manifests/")),
            "GitOps only on the first server"
        );
        assert!(
            !agent
                .ops
                .iter()
                .any(|o| o.path == "/etc/systemd/system/k3s.service")
        );
        // The role payload is shared by every node; identity and config are the node's own.
        assert!(find(&agent, "/usr/local/bin/k3s").is_role_wide());
        assert!(find(&agent, "/etc/systemd/system/k3s-agent.service").is_role_wide());
        assert!(!find(&agent, "/etc/rancher/k3s/config.yaml").is_role_wide());
        assert!(!find(&agent, "/etc/ssh/ssh_host_ed25519_key").is_role_wide());
        assert!(!find(&agent, "/user-data").is_role_wide());
        assert!(
            find(&agent, "/config.txt").is_role_wide(),
            "board kernel arguments"
        );
        assert!(
            find(
                &agent,
                "/var/lib/rancher/k3s/agent/images/pikube-role-images.tar.zst"
            )
            .is_role_wide()
        );
        assert!(
            !find(
                &agent,
                "/var/lib/rancher/k3s/agent/images/pikube-node-images.tar.zst"
            )
            .is_role_wide()
        );
        assert!(
            !find(
                &server,
                "/var/lib/rancher/k3s/server/manifests/pikube-argocd-install.yaml"
            )
            .is_role_wide()
        );
        // Secrets never show their digest.
        assert!(
            agent
                .views()
                .iter()
                .filter(|v| v.secret)
                .all(|v| v.sha256.is_none())
        );
    }

    #[test]
    fn missing_payload_is_an_error_not_a_silent_skip() {
        let e = plan_with(INVENTORY, "cp1", &Payload::default()).unwrap_err();
        assert!(e.to_string().contains("k3s binary"), "{e}");
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
        assert!(
            matches!(&last.action, Action::Edit(e) if e.describe().starts_with("append to the kernel command line: "))
        );
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

    fn armbian(network: &str) -> (Board, OsImage) {
        let board: Board = serde_saphyr::from_str(
            "name: opiz3\ndescription: t\nsoc: H618\narch: arm64\ndefault_image: armbian\nimages: [armbian]\nkernel_args: [cgroup_enable=memory]\n",
        )
        .unwrap();
        let image: OsImage = serde_saphyr::from_str(&format!(
            "name: armbian\ndescription: t\nos: armbian\nversion: '25'\narch: arm64\nurl: https://dl.example/a.img.xz\nchecksum: {{sums_url: https://dl.example/a.img.xz.sha}}\nboot: {{kind: armbian-env, partition: armbi_root}}\nroot: {{partition: armbi_root}}\nfirstboot: {{kind: direct, network: {network}, interface: end0}}\n"
        ))
        .unwrap();
        (board, image)
    }

    fn direct_plan(network: &str, node: &str) -> Plan {
        let cluster =
            Cluster::parse(&INVENTORY.replace("nodes:", "domain: home.arpa\nnodes:")).unwrap();
        let (board, image) = armbian(network);
        Plan::for_node(
            &cluster,
            cluster.node(node).unwrap(),
            &board,
            &image,
            &PlanInputs {
                base_sha256: "00ff",
                payload: &payload(),
                built: 1_700_000_000,
            },
        )
        .unwrap()
    }

    fn text(op: &Op) -> String {
        match &op.action {
            Action::Write(Content::Bytes(b)) => String::from_utf8(b.clone()).unwrap(),
            other => panic!("{} is {other:?}", op.path),
        }
    }

    #[test]
    fn direct_identity_goes_into_the_root_filesystem() {
        let p = direct_plan("netplan", "cp1");
        assert_eq!(p.instance_id, None);
        assert!(
            p.ops.iter().all(|o| o.partition == "armbi_root"),
            "no seed partition"
        );
        assert_eq!(text(find(&p, "/etc/hostname")), "cp1\n");
        assert!(text(find(&p, "/etc/hosts")).contains("127.0.1.1\tcp1.home.arpa cp1\n"));
        let np = find(&p, "/etc/netplan/20-pikube.yaml");
        assert_eq!(np.mode, 0o600);
        assert!(text(np).contains("end0:"), "the image's interface name");
        assert_eq!(
            find(&p, "/etc/netplan/10-dhcp-all-interfaces.yaml").action,
            Action::Remove
        );
        assert_eq!(
            find(&p, "/etc/localtime").action,
            Action::Symlink {
                target: "/usr/share/zoneinfo/Etc/UTC".into()
            }
        );
        assert!(
            !p.ops.iter().any(|o| o.path == "/etc/default/locale"),
            "the image's own locale stays"
        );
        assert_eq!(text(find(&p, "/etc/pikube/admin-user")), "ops\n");
        assert_eq!(find(&p, "/etc/pikube").mode, 0o700);
        assert_eq!(find(&p, "/etc/sudoers.d/90-pikube").mode, 0o440);
        let copy = find(&p, "/etc/pikube/ssh_host_ed25519_key");
        assert!(copy.secret && copy.mode == 0o600);
        assert_eq!(text(copy), "PRIVATE");
        assert_eq!(
            find(
                &p,
                "/etc/systemd/system/multi-user.target.wants/pikube-firstboot.service"
            )
            .action,
            Action::Symlink {
                target: "/etc/systemd/system/pikube-firstboot.service".into()
            }
        );
        assert_eq!(find(&p, "/usr/local/sbin/pikube-firstboot").mode, 0o755);
        assert_eq!(find(&p, "/root/.not_logged_in_yet").action, Action::Remove);
        // The generic identity and payload ops still apply.
        find(&p, "/etc/ssh/ssh_host_ed25519_key");
        find(&p, "/usr/local/bin/k3s");
        let env = find(&p, "/boot/armbianEnv.txt");
        assert_eq!(
            env.action,
            Action::Edit(std::sync::Arc::new(crate::boot::armbian_env::AppendWords {
                key: "extraargs".into(),
                words: vec!["cgroup_enable=memory".into()]
            }))
        );
        assert!(render_table(&p.views()).contains("append to extraargs=: cgroup_enable=memory"));
        assert!(
            !p.ops
                .iter()
                .any(|o| o.path.starts_with("/etc/systemd/network/"))
        );
        // Node-specific identity stays out of the prepared base; cluster-wide files go in.
        for own in [
            "/etc/hostname",
            "/etc/hosts",
            "/etc/netplan/20-pikube.yaml",
            "/etc/pikube/ssh_host_ed25519_key",
            "/etc/pikube/ssh_host_ed25519_key.pub",
        ] {
            assert!(!find(&p, own).is_role_wide(), "{own} is the node's own");
        }
        for shared in [
            "/etc/pikube",
            "/etc/sudoers.d/90-pikube",
            "/etc/pikube/authorized_keys",
            "/etc/localtime",
            "/usr/local/sbin/pikube-firstboot",
            "/root/.not_logged_in_yet",
            "/boot/armbianEnv.txt",
        ] {
            assert!(find(&p, shared).is_role_wide(), "{shared} is shared");
        }
        assert!(p.ops.iter().filter(|o| o.secret).all(|o| !o.is_role_wide()));
    }

    #[test]
    fn direct_identity_with_networkd_and_bad_values() {
        let p = direct_plan("networkd", "w1");
        let n = find(&p, "/etc/systemd/network/20-pikube.network");
        assert!(text(n).contains("Name=end0\n") && text(n).contains("DHCP=ipv4\n"));
        assert!(!p.ops.iter().any(|o| o.path.starts_with("/etc/netplan/")));

        for (field, bad, want) in [
            ("timezone", "../../etc/shadow", "timezone"),
            ("locale", "\"en_US\\nLC_ALL=x\"", "locale"),
        ] {
            // Refused when the inventory is read, before any plan.
            let e =
                Cluster::parse(&INVENTORY.replace("nodes:", &format!("{field}: {bad}\nnodes:")))
                    .unwrap_err();
            assert!(format!("{e:#}").contains(want), "{e:#}");
        }
    }
}
