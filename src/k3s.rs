//! The k3s payload of a node: release artifacts, `config.yaml`, `registries.yaml` and the
//! systemd unit, all written straight into the image so nothing is installed at first boot.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;

use crate::boards::{Arch, Board};
use crate::config::{Cluster, Node, Role};
use crate::op::{Action, Content, Op};
use crate::source::{Artifact, Checksum};
use crate::systemd::{UNIT_DIR, Unit};

/// Where k3s releases are published.
pub const RELEASES: &str = "https://github.com/k3s-io/k3s/releases/download";

/// Paths in the root filesystem.
pub const BIN: &str = "/usr/local/bin/k3s";
pub const CONFIG: &str = "/etc/rancher/k3s/config.yaml";
pub const REGISTRIES: &str = "/etc/rancher/k3s/registries.yaml";
pub const IMAGES_DIR: &str = "/var/lib/rancher/k3s/agent/images";
pub const MANIFESTS_DIR: &str = "/var/lib/rancher/k3s/server/manifests";
/// The earliest modification time of a file the build puts in [`MANIFESTS_DIR`]
/// (2000-01-01T00:00:00Z). k3s releases before v1.37.1 do not re-apply a manifest whose
/// mtime is pinned to the Unix epoch, which a reproducible build with `SOURCE_DATE_EPOCH=0`
/// would give it; any later time is honoured, and a fixed one keeps builds reproducible.
pub const MANIFEST_MIN_MTIME: i64 = 946_684_800;
/// Tools k3s provides under other names.
pub const LINKS: [&str; 3] = ["kubectl", "crictl", "ctr"];

/// Release asset names for an architecture: (binary, checksum list, airgap images).
pub fn asset_names(arch: Arch) -> (&'static str, &'static str, &'static str) {
    match arch {
        Arch::Arm64 => (
            "k3s-arm64",
            "sha256sum-arm64.txt",
            "k3s-airgap-images-arm64.tar.zst",
        ),
        Arch::Armhf => (
            "k3s-armhf",
            "sha256sum-arm.txt",
            "k3s-airgap-images-arm.tar.zst",
        ),
        Arch::Amd64 => (
            "k3s",
            "sha256sum-amd64.txt",
            "k3s-airgap-images-amd64.tar.zst",
        ),
    }
}

fn release_url(version: &str, asset: &str) -> String {
    format!("{RELEASES}/{}/{asset}", version.replace('+', "%2B"))
}

/// The binary and airgap-images downloads for `version` on `arch`, verified against the
/// release's checksum list. A published release never changes: once verified, its files
/// are used from the cache without asking for the list again.
pub fn artifacts(version: &str, arch: Arch) -> (Artifact, Artifact) {
    let (bin, sums, airgap) = asset_names(arch);
    let sums_url = release_url(version, sums);
    let art = |name: &str| Artifact {
        url: release_url(version, name),
        checksum: Checksum::SumsFile {
            url: sums_url.clone(),
            name: name.to_string(),
            pinned: true,
            // k3s publishes no signature over its checksum lists.
            signature: None,
        },
    };
    (art(bin), art(airgap))
}

/// The page of a release, where its files can be downloaded by hand.
pub fn release_page(version: &str) -> String {
    format!(
        "https://github.com/k3s-io/k3s/releases/tag/{}",
        version.replace('+', "%2B")
    )
}

/// The binary and (when `airgap`) airgap-images tarball of a release copied by hand into
/// `dir` (`k3s.release_dir`) under their published names, verified against the release's
/// checksum list beside them. Every missing file is named before anything is read.
pub fn local_artifacts(
    dir: &Path,
    version: &str,
    arch: Arch,
    airgap: bool,
) -> Result<(Artifact, Option<Artifact>)> {
    let (bin, sums, air) = asset_names(arch);
    let dir = std::path::absolute(dir)
        .with_context(|| format!("cannot resolve k3s.release_dir {}", dir.display()))?;
    if !dir.is_dir() {
        bail!(
            "k3s.release_dir {} is not a directory: create it and copy the k3s {version} \
             release's {bin}, {sums}{} into it (from {})",
            dir.display(),
            if airgap {
                format!(" and {air}")
            } else {
                String::new()
            },
            release_page(version)
        );
    }
    let mut wanted = vec![bin, sums];
    if airgap {
        wanted.push(air);
    }
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|n| !dir.join(n).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "k3s.release_dir {} lacks {} for {}: copy {} of the k3s {version} release there \
             under {} published name{} (from {}); the checksum list is needed to verify the \
             others",
            dir.display(),
            missing.join(", "),
            arch.as_str(),
            if missing.len() == 1 { "it" } else { "them" },
            if missing.len() == 1 { "its" } else { "their" },
            if missing.len() == 1 { "" } else { "s" },
            release_page(version)
        );
    }
    let url = |name: &str| -> Result<String> {
        url::Url::from_file_path(dir.join(name))
            .map(|u| u.to_string())
            .map_err(|()| anyhow::anyhow!("cannot name {} as a URL", dir.join(name).display()))
    };
    let sums_url = url(sums)?;
    // Files copied by hand may be replaced: the list beside them is read on every build.
    let art = |name: &str| -> Result<Artifact> {
        Ok(Artifact {
            url: url(name)?,
            checksum: Checksum::SumsFile {
                url: sums_url.clone(),
                name: name.to_string(),
                pinned: false,
                signature: None,
            },
        })
    };
    Ok((art(bin)?, if airgap { Some(art(air)?) } else { None }))
}

/// Name of the systemd unit for a role.
pub fn unit_name(role: Role) -> &'static str {
    match role {
        Role::Server => "k3s.service",
        Role::Agent => "k3s-agent.service",
    }
}

/// URL other nodes join: `k3s.api`, else the first server's address (its static IP, or its
/// name when it uses DHCP, which then must resolve on the network).
pub fn api_url(cluster: &Cluster) -> Result<String> {
    if let Some(api) = &cluster.k3s.api {
        return Ok(api.clone());
    }
    if let Some(vip) = &cluster.k3s.vip {
        return Ok(crate::kube_vip::api_url(vip));
    }
    let first = cluster
        .first_server()
        .context("no server in the inventory: add a node with `role: server`, or set k3s.api")?;
    let host = match cluster.static_addr(first) {
        Some(a) if a.ip.is_ipv6() => format!("[{}]", a.ip),
        Some(a) => a.ip.to_string(),
        None => cluster
            .fqdn(&first.name)
            .unwrap_or_else(|| first.name.to_string()),
    };
    Ok(format!("https://{host}:6443"))
}

/// Keys of config.yaml that the build sets itself and pass-through maps may not override.
const MANAGED: [&str; 5] = ["token", "token-file", "server", "cluster-init", "node-name"];
/// List keys where pass-through values are added to the build's own.
const LISTS: [&str; 4] = ["node-label", "tls-san", "disable", "kube-apiserver-arg"];

#[derive(Serialize)]
struct ConfigFile<'a> {
    #[serde(rename = "cluster-init", skip_serializing_if = "std::ops::Not::not")]
    cluster_init: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<String>,
    token: &'a str,
    #[serde(rename = "node-name")]
    node_name: &'a str,
    #[serde(rename = "node-ip", skip_serializing_if = "Option::is_none")]
    node_ip: Option<String>,
    #[serde(rename = "node-label")]
    node_label: Vec<String>,
    #[serde(rename = "tls-san", skip_serializing_if = "Vec::is_empty")]
    tls_san: Vec<String>,
    #[serde(
        rename = "write-kubeconfig-mode",
        skip_serializing_if = "Option::is_none"
    )]
    write_kubeconfig_mode: Option<&'a str>,
}

/// Whether `node` initialises the cluster: the first server, unless k3s.api names an
/// existing one.
pub fn initialises_cluster(cluster: &Cluster, node: &Node) -> bool {
    let first = cluster.first_server().map(|n| n.name.as_str());
    node.role == Role::Server && first == Some(node.name.as_str()) && cluster.k3s.api.is_none()
}

/// `/etc/rancher/k3s/config.yaml` for `node`. The first server initialises the cluster
/// (`cluster-init`); every other node joins the API URL with the token.
pub fn config_yaml(cluster: &Cluster, node: &Node, board: &Board, token: &str) -> Result<String> {
    let is_first = initialises_cluster(cluster, node);
    let addr = cluster.static_addr(node);
    let mut labels = vec![
        format!("pikube.io/board={}", board.name),
        format!("pikube.io/role={}", node.role),
    ];
    labels.extend(node.labels.iter().map(|(k, v)| format!("{k}={v}")));
    let mut tls_san = Vec::new();
    if node.role == Role::Server {
        tls_san.push(node.name.to_string());
        if let Some(f) = cluster.fqdn(&node.name) {
            tls_san.push(f);
        }
        if let Some(a) = addr {
            tls_san.push(a.ip.to_string());
        }
        if let Ok(api) = api_url(cluster) {
            if let Some(h) = url::Url::parse(&api)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
            {
                tls_san.push(h.trim_matches(['[', ']']).to_string());
            }
        }
        tls_san.extend(cluster.k3s.tls_san.iter().cloned());
        let mut seen = std::collections::BTreeSet::new();
        tls_san.retain(|s| seen.insert(s.clone()));
    }
    let file = ConfigFile {
        cluster_init: is_first,
        server: if is_first {
            None
        } else {
            Some(api_url(cluster)?)
        },
        token,
        node_name: &node.name,
        node_ip: addr.map(|a| a.ip.to_string()),
        node_label: labels,
        tls_san,
        write_kubeconfig_mode: (node.role == Role::Server).then_some("0600"),
    };
    let mut map: BTreeMap<String, Value> = match serde_json::to_value(&file)? {
        Value::Object(m) => m.into_iter().collect(),
        _ => unreachable!("a struct serialises to an object"),
    };
    let extra = match node.role {
        Role::Server => &cluster.k3s.server_config,
        Role::Agent => &cluster.k3s.agent_config,
    };
    if node.role == Role::Server {
        for (k, v) in crate::k3s_flags::server_flags(&cluster.k3s) {
            if extra.contains_key(&k) && !LISTS.contains(&k.as_str()) {
                bail!(
                    "k3s.server_config sets '{k}', which {} sets too: keep one of them",
                    crate::k3s_flags::key_of(&k)
                );
            }
            map.insert(k, v);
        }
    }
    for (k, v) in extra {
        if MANAGED.contains(&k.as_str()) {
            bail!(
                "k3s.{}_config sets '{k}', which pikube-image manages itself: remove it (the token comes from k3s.token_file, the server from k3s.api)",
                node.role
            );
        }
        if LISTS.contains(&k.as_str()) {
            let entry = map
                .entry(k.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            match (entry, v) {
                (Value::Array(a), Value::Array(b)) => a.extend(b.iter().cloned()),
                (Value::Array(a), other) => a.push(other.clone()),
                _ => unreachable!("list keys are arrays"),
            }
        } else {
            map.insert(k.clone(), v.clone());
        }
    }
    serde_saphyr::to_string(&map).map_err(|e| anyhow::anyhow!("cannot serialise config.yaml: {e}"))
}

/// `registries.yaml`, when the cluster configures registries or the embedded registry
/// mirror (which serves only registries listed under `mirrors`: it adds `"*"`, all of them).
pub fn registries_yaml(cluster: &Cluster) -> Result<Option<String>> {
    let mut registries = match (&cluster.k3s.registries, cluster.k3s.embedded_registry) {
        (None, false) => return Ok(None),
        (r, _) => r.clone().unwrap_or_default(),
    };
    if cluster.k3s.embedded_registry {
        registries.mirrors.entry("*".to_string()).or_default();
    }
    Ok(Some(serde_saphyr::to_string(&registries).map_err(|e| {
        anyhow::anyhow!("cannot serialise registries.yaml: {e}")
    })?))
}

/// The k3s service unit for a role, started at boot with its config file.
pub fn unit(role: Role) -> Unit {
    let name = unit_name(role);
    let (desc, kind, cmd) = match role {
        Role::Server => ("k3s server (Kubernetes control plane)", "notify", "server"),
        Role::Agent => ("k3s agent (Kubernetes node)", "exec", "agent"),
    };
    Unit {
        sections: vec![
            (
                "Unit",
                vec![
                    ("Description", desc.to_string()),
                    ("Documentation", "https://docs.k3s.io".to_string()),
                    ("Wants", "network-online.target".to_string()),
                    // Not after cloud-final.service: that one orders itself after
                    // multi-user.target, which wants this unit, and systemd would break the
                    // cycle by dropping k3s. cloud-init's network stage (hostname, addresses)
                    // runs before network-online.target.
                    ("After", "network-online.target".to_string()),
                ],
            ),
            (
                "Service",
                vec![
                    ("Type", kind.to_string()),
                    ("EnvironmentFile", format!("-{UNIT_DIR}/{name}.env")),
                    ("KillMode", "process".to_string()),
                    ("Delegate", "yes".to_string()),
                    ("LimitNOFILE", "1048576".to_string()),
                    ("LimitNPROC", "infinity".to_string()),
                    ("LimitCORE", "infinity".to_string()),
                    ("TasksMax", "infinity".to_string()),
                    ("TimeoutStartSec", "0".to_string()),
                    ("Restart", "always".to_string()),
                    ("RestartSec", "5s".to_string()),
                    ("ExecStartPre", "-/sbin/modprobe br_netfilter".to_string()),
                    ("ExecStartPre", "-/sbin/modprobe overlay".to_string()),
                    ("ExecStart", format!("{BIN} {cmd}")),
                ],
            ),
            (
                "Install",
                vec![("WantedBy", "multi-user.target".to_string())],
            ),
        ],
    }
}

/// The environment file next to the unit. k3s reads its settings from config.yaml; the file
/// exists so an operator has one place for proxies and the like.
pub fn env_file() -> String {
    "# Environment for the k3s unit (e.g. HTTP_PROXY=..., NO_PROXY=...).\n# Settings belong in /etc/rancher/k3s/config.yaml.\n".to_string()
}

/// What a node needs to run k3s: the binary and its tool links, config, registries, the
/// unit with its env file and enablement link, and the airgap images. Everything but
/// config.yaml (node name, address) is the same for every node of the role.
pub struct Payload<'a> {
    pub binary: Content,
    /// The airgap images tarball: file name and content.
    pub airgap: Option<(String, Content)>,
    pub token: &'a str,
}

/// The k3s ops of `node` on the root partition `root`.
pub fn ops(
    cluster: &Cluster,
    node: &Node,
    board: &Board,
    root: &str,
    p: Payload,
) -> Result<Vec<Op>> {
    let mut ops = vec![Op::write(root, BIN, p.binary, 0o755).role_wide()];
    for link in LINKS {
        ops.push(Op::symlink(root, &format!("/usr/local/bin/{link}"), "k3s").role_wide());
    }
    ops.push(Op::new(root, "/etc/rancher/k3s", Action::Mkdir, 0o755).role_wide());
    ops.push(
        Op::file(
            root,
            CONFIG,
            config_yaml(cluster, node, board, p.token)?.into_bytes(),
            0o600,
        )
        .secret(),
    );
    if let Some(reg) = registries_yaml(cluster)? {
        ops.push(
            Op::file(root, REGISTRIES, reg.into_bytes(), 0o600)
                .secret()
                .role_wide(),
        );
    }
    let name = unit_name(node.role);
    let unit_path = format!("{UNIT_DIR}/{name}");
    ops.push(
        Op::file(
            root,
            &unit_path,
            unit(node.role).render()?.into_bytes(),
            0o644,
        )
        .role_wide(),
    );
    ops.push(
        Op::file(
            root,
            &format!("{unit_path}.env"),
            env_file().into_bytes(),
            0o600,
        )
        .role_wide(),
    );
    ops.push(crate::systemd::enable(root, name, &unit_path).role_wide());
    if let Some((file, content)) = p.airgap {
        ops.push(Op::write(root, &format!("{IMAGES_DIR}/{file}"), content, 0o644).role_wide());
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boards::Catalog;

    fn cluster(extra: &str) -> Cluster {
        Cluster::parse(&format!(
            r#"
cluster: lab
domain: home.arpa
admin: {{ user: ops, ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c me] }}
network: {{ gateway: 10.0.0.1 }}
k3s:
  version: v1.31.4+k3s1
  server_config: {{ disable: [traefik], tls-san: [lab.example.com] }}
  agent_config: {{ kubelet-arg: [max-pods=50] }}
{extra}nodes:
  - {{ name: cp1, board: rpi4, role: server, ip: 10.0.0.10 }}
  - {{ name: cp2, board: rpi4, role: server, ip: 10.0.0.11 }}
  - {{ name: cp3, board: rpi5, role: server }}
  - {{ name: w1, board: rpi4, role: agent, labels: {{ zone: a }} }}
"#
        ))
        .unwrap()
    }

    fn yaml(c: &Cluster, name: &str) -> Value {
        let cat = Catalog::load().unwrap();
        let node = c.node(name).unwrap();
        let board = cat.board(&node.board).unwrap();
        let text = config_yaml(c, node, board, "s3cret").unwrap();
        serde_saphyr::from_str(&text).unwrap()
    }

    #[test]
    fn release_urls_encode_the_plus() {
        let (bin, air) = artifacts("v1.31.4+k3s1", Arch::Arm64);
        assert_eq!(
            bin.url,
            "https://github.com/k3s-io/k3s/releases/download/v1.31.4%2Bk3s1/k3s-arm64"
        );
        assert!(air.url.ends_with("/k3s-airgap-images-arm64.tar.zst"));
        assert!(
            matches!(&bin.checksum, Checksum::SumsFile { url, name, pinned: true, .. }
            if url.ends_with("/sha256sum-arm64.txt") && name == "k3s-arm64")
        );
        assert_eq!(asset_names(Arch::Armhf).1, "sha256sum-arm.txt");
        assert_eq!(asset_names(Arch::Amd64).0, "k3s");
    }

    #[test]
    fn only_the_first_server_initialises_the_cluster() {
        let c = cluster("");
        let cp1 = yaml(&c, "cp1");
        assert_eq!(cp1["cluster-init"], true);
        assert!(cp1.get("server").is_none());
        assert_eq!(cp1["token"], "s3cret");
        assert_eq!(cp1["node-ip"], "10.0.0.10");
        assert_eq!(cp1["write-kubeconfig-mode"], "0600");
        assert_eq!(cp1["disable"], serde_json::json!(["traefik"]));
        let sans = cp1["tls-san"].as_array().unwrap();
        for want in ["cp1", "cp1.home.arpa", "10.0.0.10", "lab.example.com"] {
            assert!(sans.iter().any(|s| s == want), "{want} in {sans:?}");
        }
        for other in ["cp2", "cp3", "w1"] {
            let y = yaml(&c, other);
            assert!(y.get("cluster-init").is_none(), "{other}");
            assert_eq!(y["server"], "https://10.0.0.10:6443", "{other}");
            assert_eq!(y["token"], "s3cret");
        }
        let w1 = yaml(&c, "w1");
        assert!(w1.get("node-ip").is_none(), "DHCP node has no node-ip");
        assert!(w1.get("tls-san").is_none() && w1.get("disable").is_none());
        assert_eq!(w1["kubelet-arg"], serde_json::json!(["max-pods=50"]));
        let labels = w1["node-label"].as_array().unwrap();
        assert!(labels.iter().any(|l| l == "pikube.io/role=agent"));
        assert!(labels.iter().any(|l| l == "zone=a"));
    }

    #[test]
    fn api_override_and_managed_keys() {
        let c = cluster("").clone();
        let mut c2 = c.clone();
        c2.k3s.api = Some("https://vip.home.arpa:6443".into());
        let cp1 = yaml(&c2, "cp1");
        assert_eq!(
            cp1["server"], "https://vip.home.arpa:6443",
            "joins an existing cluster"
        );
        assert!(cp1.get("cluster-init").is_none());
        let mut c3 = c.clone();
        c3.k3s
            .server_config
            .insert("token".into(), Value::from("x"));
        let cat = Catalog::load().unwrap();
        let b = cat.board("rpi4").unwrap();
        let e = config_yaml(&c3, c3.node("cp1").unwrap(), b, "t").unwrap_err();
        assert!(e.to_string().contains("'token'"), "{e}");
    }

    #[test]
    fn dhcp_first_server_is_joined_by_name() {
        let c = Cluster::parse(
            "cluster: lab\nadmin: {user: ops, ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c me]}\nnodes:\n  - {name: cp1, board: rpi4, role: server}\n  - {name: w1, board: rpi4, role: agent}\n",
        )
        .unwrap();
        assert_eq!(api_url(&c).unwrap(), "https://cp1:6443");
    }

    #[test]
    fn unit_renders_per_role() {
        let s = unit(Role::Server).render().unwrap();
        assert!(s.starts_with("[Unit]\n") && s.contains("ExecStart=/usr/local/bin/k3s server\n"));
        assert!(s.contains("Type=notify") && s.contains("WantedBy=multi-user.target"));
        assert!(s.contains("EnvironmentFile=-/etc/systemd/system/k3s.service.env"));
        assert!(
            !s.contains("cloud-final"),
            "cloud-final.service runs after multi-user.target: ordering after it is a cycle"
        );
        let a = unit(Role::Agent).render().unwrap();
        assert!(a.contains("ExecStart=/usr/local/bin/k3s agent\n"));
        assert!(a.contains("k3s-agent.service.env"));
        let bad = Unit {
            sections: vec![("Unit", vec![("Description", "a\nExecStart=evil".into())])],
        };
        assert!(bad.render().is_err());
    }

    #[test]
    fn registries_yaml_is_typed() {
        let c = cluster(
            "  registries:\n    mirrors: { docker.io: { endpoint: [\"http://10.0.0.5:5000\"] } }\n",
        );
        let text = registries_yaml(&c).unwrap().unwrap();
        let v: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(
            v["mirrors"]["docker.io"]["endpoint"][0],
            "http://10.0.0.5:5000"
        );
        assert!(registries_yaml(&cluster("")).unwrap().is_none());
    }
}
