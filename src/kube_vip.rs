//! A control plane behind a virtual IP (`k3s.vip`): kube-vip in ARP mode on the servers,
//! deployed from the first server's manifests directory (its RBAC and a DaemonSet, both
//! generated from the types below), with its image preloaded on every server. The VIP goes
//! into every server's `tls-san` and every other node joins it ([`crate::k3s::api_url`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{Result, bail};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Cluster, Role};
use crate::op::Op;
use crate::registry::ImageRef;

/// The kube-vip release whose image the DaemonSet runs unless `k3s.vip.image` names another.
pub const DEFAULT_IMAGE: &str = "ghcr.io/kube-vip/kube-vip:v1.0.0";
/// Files in k3s's manifests directory; the RBAC sorts first, so k3s applies it first.
pub const RBAC_FILE: &str = "pikube-kube-vip-rbac.yaml";
pub const DAEMONSET_FILE: &str = "pikube-kube-vip.yaml";
const NAMESPACE: &str = "kube-system";
const ACCOUNT: &str = "kube-vip";
const APP: &str = "kube-vip-ds";
const API_PORT: u16 = 6443;

/// `k3s.vip`: the virtual address of the API servers and the interface that carries it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    /// A free address in the servers' subnet.
    pub address: IpAddr,
    /// The servers' network interface kube-vip announces the address on (`eth0`, `end0`).
    pub interface: InterfaceName,
    /// kube-vip's image (default [`DEFAULT_IMAGE`]), e.g. from a registry of one's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRef>,
}

impl Vip {
    pub fn image(&self) -> ImageRef {
        self.image
            .clone()
            .unwrap_or_else(|| ImageRef::parse(DEFAULT_IMAGE).expect("the default image parses"))
    }
}

/// A Linux network interface name: 1 to 15 characters, no `/`, no white space.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct InterfaceName(String);

impl TryFrom<String> for InterfaceName {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<InterfaceName, String> {
        let ok = !s.is_empty()
            && s.len() <= 15
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
        if !ok {
            return Err(format!(
                "'{s}' is not a network interface name (1 to 15 letters, digits, '-', '_' or '.', like eth0 or end0): name the servers' wired interface as `ip link` shows it"
            ));
        }
        Ok(InterfaceName(s))
    }
}

impl From<InterfaceName> for String {
    fn from(v: InterfaceName) -> String {
        v.0
    }
}

impl InterfaceName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks `k3s.vip` against the nodes and the network, before anything is downloaded.
pub fn validate(c: &Cluster) -> Result<()> {
    let Some(vip) = &c.k3s.vip else {
        return Ok(());
    };
    let a = vip.address;
    if c.k3s.api.is_some() {
        bail!(
            "k3s.vip and k3s.api both say where nodes join: with k3s.vip every node but the first server joins https://{}:{API_PORT}; remove k3s.api",
            host(a)
        );
    }
    if a.is_loopback() || a.is_unspecified() || a.is_multicast() {
        bail!(
            "k3s.vip.address {a} cannot be announced on a LAN: pick a free address in the servers' subnet"
        );
    }
    for n in &c.nodes {
        if c.static_addr(n).is_some_and(|s| s.ip == a) {
            bail!(
                "k3s.vip.address {a} is node '{}''s ip: the virtual IP must be an address no node has; pick a free one in the servers' subnet",
                n.name
            );
        }
    }
    if c.network.gateway == Some(a) {
        bail!(
            "k3s.vip.address {a} is network.gateway's address: pick a free address in the servers' subnet"
        );
    }
    let mut subnets: Vec<(String, IpNet)> = c
        .nodes
        .iter()
        .filter(|n| n.role == Role::Server)
        .filter_map(|n| {
            let s = c.static_addr(n)?;
            let net = IpNet::new(s.ip, s.prefix).ok()?.trunc();
            Some((format!("server '{}' ({})", n.name, s.cidr()), net))
        })
        .collect();
    if subnets.is_empty()
        && let Some(gw) = c.network.gateway
    {
        let prefix = c
            .network
            .prefix
            .unwrap_or(if gw.is_ipv4() { 24 } else { 64 });
        if let Ok(net) = IpNet::new(gw, prefix) {
            subnets.push((format!("network.gateway {gw}/{prefix}"), net.trunc()));
        }
    }
    for (what, net) in &subnets {
        if !net.contains(&a) {
            bail!(
                "k3s.vip.address {a} is not in the servers' subnet: {what} is in {net}; kube-vip can only announce an address of that subnet, so pick a free one there (e.g. above your router's DHCP range)"
            );
        }
        if let IpNet::V4(v4) = net
            && v4.prefix_len() < 31
            && (IpAddr::V4(v4.network()) == a || IpAddr::V4(v4.broadcast()) == a)
        {
            bail!(
                "k3s.vip.address {a} is the network or broadcast address of {net}: pick a free host address there"
            );
        }
    }
    Ok(())
}

/// What is allowed but unwise about the control plane.
pub fn warnings(c: &Cluster) -> Vec<String> {
    let servers = c.nodes.iter().filter(|n| n.role == Role::Server).count();
    let mut out = Vec::new();
    if servers >= 2 && servers % 2 == 0 {
        out.push(format!(
            "the inventory has {servers} servers: etcd needs a majority of them, so {servers} servers survive no more failures than {}; use an odd number (3 or 5)",
            servers - 1
        ));
    }
    out
}

/// `https://<VIP>:6443`, what the other nodes join.
pub fn api_url(vip: &Vip) -> String {
    format!("https://{}:{API_PORT}", host(vip.address))
}

fn host(a: IpAddr) -> String {
    match a {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'static str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<&'static str, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'static str, String>,
}

impl Meta {
    fn named(name: &str, namespace: Option<&'static str>) -> Meta {
        Meta {
            name: name.to_string(),
            namespace,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Object<S: Serialize> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Meta,
    #[serde(flatten)]
    body: S,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    api_groups: Vec<&'static str>,
    resources: Vec<&'static str>,
    verbs: Vec<&'static str>,
}

#[derive(Serialize)]
struct Rules {
    rules: Vec<Rule>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Binding {
    role_ref: RoleRef,
    subjects: Vec<Subject>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RoleRef {
    api_group: &'static str,
    kind: &'static str,
    name: &'static str,
}

#[derive(Serialize)]
struct Subject {
    kind: &'static str,
    name: &'static str,
    namespace: &'static str,
}

#[derive(Serialize)]
struct Spec<T: Serialize> {
    spec: T,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DaemonSetSpec {
    selector: Selector,
    template: PodTemplate,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Selector {
    match_labels: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct PodTemplate {
    metadata: TemplateMeta,
    spec: PodSpec,
}

#[derive(Serialize)]
struct TemplateMeta {
    labels: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    affinity: Affinity,
    containers: Vec<Container>,
    host_network: bool,
    service_account_name: &'static str,
    tolerations: Vec<Toleration>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Affinity {
    node_affinity: NodeAffinity,
}

#[derive(Serialize)]
struct NodeAffinity {
    #[serde(rename = "requiredDuringSchedulingIgnoredDuringExecution")]
    required: NodeSelector,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeSelector {
    node_selector_terms: Vec<Term>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Term {
    match_expressions: Vec<Requirement>,
}

#[derive(Serialize)]
struct Requirement {
    key: &'static str,
    operator: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    name: &'static str,
    image: String,
    image_pull_policy: &'static str,
    args: Vec<&'static str>,
    env: Vec<EnvVar>,
    security_context: SecurityContext,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvVar {
    name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_from: Option<EnvSource>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvSource {
    field_ref: FieldRef,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FieldRef {
    field_path: &'static str,
}

#[derive(Serialize)]
struct SecurityContext {
    capabilities: Capabilities,
}

#[derive(Serialize)]
struct Capabilities {
    add: Vec<&'static str>,
    drop: Vec<&'static str>,
}

#[derive(Serialize)]
struct Toleration {
    effect: &'static str,
    operator: &'static str,
}

fn yaml_docs(docs: &[Value], what: &str) -> Result<String> {
    serde_saphyr::to_string_multiple(docs)
        .map_err(|e| anyhow::anyhow!("cannot serialise {what}: {e}"))
}

/// kube-vip's ServiceAccount, ClusterRole and ClusterRoleBinding: what it reads and writes
/// to hold its leader-election lease and the nodes' and services' state.
pub fn rbac_yaml() -> Result<String> {
    let mut role_meta = Meta::named("system:kube-vip-role", None);
    role_meta.annotations.insert(
        "rbac.authorization.kubernetes.io/autoupdate",
        "true".to_string(),
    );
    let rule = |groups: &[&'static str], resources: &[&'static str], verbs: &[&'static str]| Rule {
        api_groups: groups.to_vec(),
        resources: resources.to_vec(),
        verbs: verbs.to_vec(),
    };
    let docs = [
        serde_json::to_value(Object {
            api_version: "v1",
            kind: "ServiceAccount",
            metadata: Meta::named(ACCOUNT, Some(NAMESPACE)),
            body: Empty {},
        })?,
        serde_json::to_value(Object {
            api_version: "rbac.authorization.k8s.io/v1",
            kind: "ClusterRole",
            metadata: role_meta,
            body: Rules {
                rules: vec![
                    rule(&[""], &["services/status"], &["update"]),
                    rule(
                        &[""],
                        &["services", "endpoints"],
                        &["list", "get", "watch", "update"],
                    ),
                    rule(
                        &[""],
                        &["nodes"],
                        &["list", "get", "watch", "update", "patch"],
                    ),
                    rule(
                        &["coordination.k8s.io"],
                        &["leases"],
                        &["list", "get", "watch", "update", "create"],
                    ),
                    rule(
                        &["discovery.k8s.io"],
                        &["endpointslices"],
                        &["list", "get", "watch", "update"],
                    ),
                ],
            },
        })?,
        serde_json::to_value(Object {
            api_version: "rbac.authorization.k8s.io/v1",
            kind: "ClusterRoleBinding",
            metadata: Meta::named("system:kube-vip-binding", None),
            body: Binding {
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io",
                    kind: "ClusterRole",
                    name: "system:kube-vip-role",
                },
                subjects: vec![Subject {
                    kind: "ServiceAccount",
                    name: ACCOUNT,
                    namespace: NAMESPACE,
                }],
            },
        })?,
    ];
    yaml_docs(&docs, "kube-vip's RBAC manifest")
}

/// The DaemonSet that runs kube-vip on every control-plane node: ARP mode, control plane
/// only, Kubernetes leader election, the address and interface of `vip`. The image is
/// preloaded, so it is never pulled (`IfNotPresent`). kube-vip reaches the API server on
/// the node itself (127.0.0.1:6443, in k3s's certificate), not through the `kubernetes`
/// service: that works before kube-proxy or a CNI of one's own is up, and without kube-proxy.
pub fn daemonset_yaml(vip: &Vip) -> Result<String> {
    let image = vip.image();
    let version = image.tag.clone().unwrap_or_else(|| "pinned".to_string());
    let labels = || {
        BTreeMap::from([
            ("app.kubernetes.io/name", APP.to_string()),
            ("app.kubernetes.io/version", version.clone()),
        ])
    };
    let mut meta = Meta::named(APP, Some(NAMESPACE));
    meta.labels = labels();
    let env = |name: &'static str, value: &str| EnvVar {
        name,
        value: Some(value.to_string()),
        value_from: None,
    };
    let subnet = if vip.address.is_ipv4() { "32" } else { "128" };
    let ds = Object {
        api_version: "apps/v1",
        kind: "DaemonSet",
        metadata: meta,
        body: Spec {
            spec: DaemonSetSpec {
                selector: Selector {
                    match_labels: BTreeMap::from([("app.kubernetes.io/name", APP.to_string())]),
                },
                template: PodTemplate {
                    metadata: TemplateMeta { labels: labels() },
                    spec: PodSpec {
                        affinity: Affinity {
                            node_affinity: NodeAffinity {
                                required: NodeSelector {
                                    node_selector_terms: vec![Term {
                                        match_expressions: vec![Requirement {
                                            key: "node-role.kubernetes.io/control-plane",
                                            operator: "Exists",
                                        }],
                                    }],
                                },
                            },
                        },
                        containers: vec![Container {
                            name: "kube-vip",
                            image: image.full_name(),
                            image_pull_policy: "IfNotPresent",
                            args: vec!["manager"],
                            env: vec![
                                env("vip_arp", "true"),
                                env("port", &API_PORT.to_string()),
                                env("vip_interface", vip.interface.as_str()),
                                env("vip_subnet", subnet),
                                env("cp_enable", "true"),
                                env("cp_namespace", NAMESPACE),
                                env("vip_leaderelection", "true"),
                                env("vip_leasename", "plndr-cp-lock"),
                                env("vip_leaseduration", "5"),
                                env("vip_renewdeadline", "3"),
                                env("vip_retryperiod", "1"),
                                env("address", &vip.address.to_string()),
                                EnvVar {
                                    name: "vip_nodename",
                                    value: None,
                                    value_from: Some(EnvSource {
                                        field_ref: FieldRef {
                                            field_path: "spec.nodeName",
                                        },
                                    }),
                                },
                                env("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
                                env("KUBERNETES_SERVICE_PORT", &API_PORT.to_string()),
                            ],
                            security_context: SecurityContext {
                                capabilities: Capabilities {
                                    add: vec!["NET_ADMIN", "NET_RAW"],
                                    drop: vec!["ALL"],
                                },
                            },
                        }],
                        host_network: true,
                        service_account_name: ACCOUNT,
                        tolerations: vec![
                            Toleration {
                                effect: "NoSchedule",
                                operator: "Exists",
                            },
                            Toleration {
                                effect: "NoExecute",
                                operator: "Exists",
                            },
                        ],
                    },
                },
            },
        },
    };
    yaml_docs(
        &[serde_json::to_value(ds)?],
        "kube-vip's DaemonSet manifest",
    )
}

/// The first server's kube-vip manifests in k3s's manifests directory.
pub fn ops(vip: &Vip, root: &str) -> Result<Vec<Op>> {
    let dir = crate::k3s::MANIFESTS_DIR;
    Ok(vec![
        Op::file(
            root,
            &format!("{dir}/{RBAC_FILE}"),
            rbac_yaml()?.into_bytes(),
            0o600,
        ),
        Op::file(
            root,
            &format!("{dir}/{DAEMONSET_FILE}"),
            daemonset_yaml(vip)?.into_bytes(),
            0o600,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "cluster: lab\nadmin: {ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c me]}\nnetwork: {gateway: 192.168.1.1, prefix: 24}\nk3s:\n  vip: {address: VIP, interface: eth0}\nnodes:\n  - {name: cp1, board: rpi4, role: server, ip: 192.168.1.11}\n  - {name: cp2, board: rpi4, role: server, ip: 192.168.1.12}\n  - {name: cp3, board: rpi4, role: server, ip: 192.168.1.13}\n  - {name: w1, board: rpi4, role: agent, ip: 192.168.1.21}\n";

    fn parse(vip: &str) -> Result<Cluster> {
        Cluster::parse(&BASE.replace("VIP", vip))
    }

    #[test]
    fn the_vip_is_checked_against_the_subnet_and_the_nodes() {
        parse("192.168.1.5").unwrap();
        for (vip, want) in [
            ("10.0.0.5", "not in the servers' subnet"),
            ("192.168.2.5", "192.168.1.0/24"),
            ("192.168.1.12", "node 'cp2'"),
            ("192.168.1.21", "node 'w1'"),
            ("192.168.1.1", "network.gateway"),
            ("192.168.1.255", "broadcast"),
            ("127.0.0.1", "cannot be announced"),
        ] {
            let e = format!("{:#}", parse(vip).unwrap_err());
            assert!(
                e.contains("k3s.vip.address") && e.contains(want),
                "{vip}: {e}"
            );
        }
        let e = format!(
            "{:#}",
            Cluster::parse(
                &BASE
                    .replace("VIP", "192.168.1.5")
                    .replace("k3s:\n", "k3s:\n  api: https://192.168.1.11:6443\n")
            )
            .unwrap_err()
        );
        assert!(e.contains("k3s.api"), "{e}");
        let e = format!(
            "{:#}",
            Cluster::parse(&BASE.replace("VIP", "192.168.1.5").replace("eth0", "a b")).unwrap_err()
        );
        assert!(e.contains("interface"), "{e}");
    }

    #[test]
    fn an_even_number_of_servers_is_warned_about() {
        let c = parse("192.168.1.5").unwrap();
        assert!(warnings(&c).is_empty());
        let four = BASE
            .replace("VIP", "192.168.1.5")
            .replace("role: agent", "role: server");
        let w = warnings(&Cluster::parse(&four).unwrap());
        assert!(
            w.len() == 1 && w[0].contains("4 servers") && w[0].contains("odd"),
            "{w:?}"
        );
    }

    #[test]
    fn manifests_are_arp_control_plane_with_leader_election() {
        let c = parse("192.168.1.5").unwrap();
        let vip = c.k3s.vip.as_ref().unwrap();
        assert_eq!(api_url(vip), "https://192.168.1.5:6443");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&rbac_yaml().unwrap()).unwrap();
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
        );
        assert_eq!(docs[2]["subjects"][0]["name"], "kube-vip");
        let ds: Value = serde_saphyr::from_str(&daemonset_yaml(vip).unwrap()).unwrap();
        assert_eq!(ds["kind"], "DaemonSet");
        assert_eq!(ds["metadata"]["namespace"], "kube-system");
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["hostNetwork"], true);
        assert_eq!(pod["serviceAccountName"], "kube-vip");
        assert_eq!(
            pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
                [0]["matchExpressions"][0]["key"],
            "node-role.kubernetes.io/control-plane"
        );
        let c0 = &pod["containers"][0];
        assert_eq!(c0["image"], "ghcr.io/kube-vip/kube-vip:v1.0.0");
        assert_eq!(c0["imagePullPolicy"], "IfNotPresent");
        let env: BTreeMap<String, Value> = c0["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let v = e.get("value").cloned().unwrap_or(Value::Null);
                (e["name"].as_str().unwrap().to_string(), v)
            })
            .collect();
        for (k, v) in [
            ("vip_arp", "true"),
            ("cp_enable", "true"),
            ("vip_leaderelection", "true"),
            ("address", "192.168.1.5"),
            ("vip_interface", "eth0"),
            ("port", "6443"),
        ] {
            assert_eq!(env[k], v, "{k}");
        }
        assert!(env.contains_key("vip_nodename"));
        assert_eq!(
            ds["spec"]["selector"]["matchLabels"],
            ds["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
                .as_str()
                .map(|n| serde_json::json!({"app.kubernetes.io/name": n}))
                .unwrap()
        );
    }
}
