//! Typed k3s server settings of the inventory: the packaged components to leave out, the
//! flannel backend, network policy and kube-proxy switches, OIDC for the API server and the
//! embedded registry mirror. They become keys of a server's `config.yaml`
//! ([`server_flags`]); anything else still goes through `k3s.server_config`.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::K3s;

/// A component k3s deploys itself and `--disable` leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    Coredns,
    Servicelb,
    Traefik,
    LocalStorage,
    MetricsServer,
    Runtimes,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Coredns => "coredns",
            Component::Servicelb => "servicelb",
            Component::Traefik => "traefik",
            Component::LocalStorage => "local-storage",
            Component::MetricsServer => "metrics-server",
            Component::Runtimes => "runtimes",
        }
    }
}

/// k3s's `--flannel-backend`; `none` for a CNI of one's own (Cilium, Calico).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlannelBackend {
    Vxlan,
    HostGw,
    WireguardNative,
    None,
}

impl FlannelBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            FlannelBackend::Vxlan => "vxlan",
            FlannelBackend::HostGw => "host-gw",
            FlannelBackend::WireguardNative => "wireguard-native",
            FlannelBackend::None => "none",
        }
    }
}

/// OpenID Connect sign-in for the API server (`--oidc-*` flags of kube-apiserver).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Oidc {
    /// The issuer, an `https://` URL (`--oidc-issuer-url`).
    pub issuer_url: String,
    /// The client ID tokens must be issued for (`--oidc-client-id`).
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_claim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_claim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_prefix: Option<String>,
}

impl Oidc {
    /// The `kube-apiserver-arg` entries (`oidc-issuer-url=...`).
    pub fn apiserver_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("oidc-issuer-url={}", self.issuer_url),
            format!("oidc-client-id={}", self.client_id),
        ];
        for (flag, v) in [
            ("oidc-username-claim", &self.username_claim),
            ("oidc-username-prefix", &self.username_prefix),
            ("oidc-groups-claim", &self.groups_claim),
            ("oidc-groups-prefix", &self.groups_prefix),
        ] {
            if let Some(v) = v {
                args.push(format!("{flag}={v}"));
            }
        }
        args
    }

    fn check(&self) -> Result<()> {
        let u = url::Url::parse(&self.issuer_url).ok();
        if u.as_ref()
            .is_none_or(|u| u.scheme() != "https" || u.host_str().is_none())
        {
            bail!(
                "k3s.oidc.issuer_url '{}' must be an https:// URL (the API server accepts no other): give the issuer's URL, e.g. https://auth.example.com/realms/lab",
                self.issuer_url
            );
        }
        let fields = [
            ("client_id", Some(&self.client_id)),
            ("username_claim", self.username_claim.as_ref()),
            ("username_prefix", self.username_prefix.as_ref()),
            ("groups_claim", self.groups_claim.as_ref()),
            ("groups_prefix", self.groups_prefix.as_ref()),
        ];
        for (key, v) in fields {
            if let Some(v) = v
                && (v.is_empty() || v.chars().any(|c| c.is_whitespace() || c == ','))
            {
                bail!(
                    "k3s.oidc.{key} {v:?} must be one word without spaces or commas: k3s passes it to the API server as one flag value"
                );
            }
        }
        Ok(())
    }
}

/// Checks the typed server settings (values serde cannot check alone).
pub fn validate(k: &K3s) -> Result<()> {
    if let Some(o) = &k.oidc {
        o.check()?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in &k.disable {
        if !seen.insert(c) {
            bail!("k3s.disable lists '{}' twice: list it once", c.as_str());
        }
    }
    Ok(())
}

/// The config.yaml keys of a server that the typed settings set.
pub fn server_flags(k: &K3s) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    if !k.disable.is_empty() {
        let list = k.disable.iter().map(|c| Value::from(c.as_str())).collect();
        m.insert("disable".to_string(), Value::Array(list));
    }
    if let Some(b) = k.flannel_backend {
        m.insert("flannel-backend".into(), Value::from(b.as_str()));
    }
    if k.disable_network_policy {
        m.insert("disable-network-policy".into(), Value::Bool(true));
    }
    if k.disable_kube_proxy {
        m.insert("disable-kube-proxy".into(), Value::Bool(true));
    }
    if let Some(o) = &k.oidc {
        let args = o.apiserver_args().into_iter().map(Value::from).collect();
        m.insert("kube-apiserver-arg".into(), Value::Array(args));
    }
    if k.embedded_registry {
        m.insert("embedded-registry".into(), Value::Bool(true));
    }
    m
}

/// The inventory key that sets a config.yaml key, to name it in a conflict.
pub fn key_of(flag: &str) -> &'static str {
    match flag {
        "disable" => "k3s.disable",
        "flannel-backend" => "k3s.flannel_backend",
        "disable-network-policy" => "k3s.disable_network_policy",
        "disable-kube-proxy" => "k3s.disable_kube_proxy",
        "kube-apiserver-arg" => "k3s.oidc",
        "embedded-registry" => "k3s.embedded_registry",
        _ => "k3s",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k3s(yaml: &str) -> K3s {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn typed_settings_become_server_flags() {
        let k = k3s(
            "disable: [traefik, servicelb, local-storage]\nflannel_backend: none\ndisable_network_policy: true\ndisable_kube_proxy: true\nembedded_registry: true\noidc: {issuer_url: \"https://auth.example.com/realms/lab\", client_id: kubernetes, groups_claim: groups}\n",
        );
        validate(&k).unwrap();
        let f = server_flags(&k);
        assert_eq!(
            f["disable"],
            serde_json::json!(["traefik", "servicelb", "local-storage"])
        );
        assert_eq!(f["flannel-backend"], "none");
        assert_eq!(f["disable-network-policy"], true);
        assert_eq!(f["disable-kube-proxy"], true);
        assert_eq!(f["embedded-registry"], true);
        assert_eq!(
            f["kube-apiserver-arg"],
            serde_json::json!([
                "oidc-issuer-url=https://auth.example.com/realms/lab",
                "oidc-client-id=kubernetes",
                "oidc-groups-claim=groups"
            ])
        );
        assert!(server_flags(&K3s::default()).is_empty());
    }

    #[test]
    fn bad_values_are_named() {
        let e = serde_saphyr::from_str::<K3s>("disable: [traefk]\n").unwrap_err();
        assert!(e.to_string().contains("traefk"), "{e}");
        let e = serde_saphyr::from_str::<K3s>("flannel_backend: wireguard\n").unwrap_err();
        assert!(e.to_string().contains("wireguard"), "{e}");
        let k = k3s("oidc: {issuer_url: \"http://auth\", client_id: k}\n");
        let e = validate(&k).unwrap_err().to_string();
        assert!(e.contains("k3s.oidc.issuer_url"), "{e}");
        let k = k3s("oidc: {issuer_url: \"https://auth\", client_id: \"a,b\"}\n");
        let e = validate(&k).unwrap_err().to_string();
        assert!(e.contains("k3s.oidc.client_id"), "{e}");
        let k = k3s("disable: [traefik, traefik]\n");
        assert!(validate(&k).unwrap_err().to_string().contains("twice"));
    }
}

#[cfg(test)]
mod config_tests {
    use crate::boards::Catalog;
    use crate::config::Cluster;
    use serde_json::Value;

    const INVENTORY: &str = r#"
cluster: lab
admin: { ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c me] }
network: { gateway: 10.0.0.1, prefix: 24 }
k3s:
  vip: { address: 10.0.0.5, interface: end0 }
  embedded_registry: true
  disable: [traefik, servicelb]
  flannel_backend: none
  disable_kube_proxy: true
  server_config: { disable: [local-storage], etcd-expose-metrics: true }
nodes:
  - { name: cp1, board: rpi4, role: server, ip: 10.0.0.11 }
  - { name: cp2, board: rpi4, role: server, ip: 10.0.0.12 }
  - { name: w1, board: rpi4, role: agent }
"#;

    fn yaml(c: &Cluster, name: &str) -> Value {
        let cat = Catalog::load().unwrap();
        let node = c.node(name).unwrap();
        let board = cat.board(&node.board).unwrap();
        let text = crate::k3s::config_yaml(c, node, board, "tok").unwrap();
        serde_saphyr::from_str(&text).unwrap()
    }

    #[test]
    fn servers_carry_the_vip_and_the_typed_flags_and_everyone_joins_the_vip() {
        let c = Cluster::parse(INVENTORY).unwrap();
        let cp1 = yaml(&c, "cp1");
        assert_eq!(cp1["cluster-init"], true);
        assert!(cp1.get("server").is_none());
        for name in ["cp1", "cp2"] {
            let y = yaml(&c, name);
            let sans = y["tls-san"].as_array().unwrap();
            assert!(sans.iter().any(|s| s == "10.0.0.5"), "{name}: {sans:?}");
            assert_eq!(
                y["disable"],
                serde_json::json!(["traefik", "servicelb", "local-storage"])
            );
            assert_eq!(y["flannel-backend"], "none");
            assert_eq!(y["disable-kube-proxy"], true);
            assert_eq!(y["embedded-registry"], true);
            assert_eq!(y["etcd-expose-metrics"], true, "pass-through kept");
        }
        for name in ["cp2", "w1"] {
            assert_eq!(yaml(&c, name)["server"], "https://10.0.0.5:6443", "{name}");
        }
        let w1 = yaml(&c, "w1");
        assert!(w1.get("embedded-registry").is_none() && w1.get("disable").is_none());
        let reg: Value =
            serde_saphyr::from_str(&crate::k3s::registries_yaml(&c).unwrap().unwrap()).unwrap();
        assert!(reg["mirrors"].get("*").is_some(), "{reg:?}");
    }

    #[test]
    fn a_flag_set_twice_is_refused() {
        let text = INVENTORY.replace(
            "etcd-expose-metrics: true",
            "etcd-expose-metrics: true, flannel-backend: vxlan",
        );
        let c = Cluster::parse(&text).unwrap();
        let cat = Catalog::load().unwrap();
        let e =
            crate::k3s::config_yaml(&c, c.node("cp1").unwrap(), cat.board("rpi4").unwrap(), "t")
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("k3s.flannel_backend") && e.contains("flannel-backend"),
            "{e}"
        );
    }
}
