//! Network configuration "version 2" (the netplan schema, which cloud-init's `network-config`
//! also uses), built from typed structs so every value is serialised, never pasted into text.
//! The cloud-init seed and netplan files of images without cloud-init share it.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::config::{Cluster, Node};

/// Default name of the wired interface.
pub const DEFAULT_INTERFACE: &str = "eth0";

/// The top-level `network:` mapping's content.
#[derive(Debug, Serialize)]
pub struct NetworkConfig {
    pub version: u8,
    /// netplan backend (`networkd`); cloud-init's network-config leaves it out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renderer: Option<&'static str>,
    pub ethernets: BTreeMap<String, Ethernet>,
}

/// A netplan file: the configuration under a `network:` key.
#[derive(Debug, Serialize)]
pub struct NetplanFile {
    pub network: NetworkConfig,
}

#[derive(Debug, Serialize, Default)]
pub struct Ethernet {
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub matching: Option<Match>,
    #[serde(rename = "set-name", skip_serializing_if = "Option::is_none")]
    pub set_name: Option<String>,
    pub dhcp4: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp6: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Nameservers>,
    pub optional: bool,
}

#[derive(Debug, Serialize)]
pub struct Match {
    pub macaddress: String,
}

#[derive(Debug, Serialize)]
pub struct Route {
    pub to: String,
    pub via: String,
}

#[derive(Debug, Serialize)]
pub struct Nameservers {
    pub addresses: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
}

/// Checks an interface name the way the kernel does (at most 15 bytes, no '/', no
/// whitespace), restricted to the characters udev and netplan names use.
pub fn check_interface(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!(
            "network.interface '{name}' is not an interface name (1 to 15 letters, digits, '-', '_' or '.', like eth0 or end0)"
        );
    }
    Ok(())
}

/// The wired interface of `node`: `network.interface`, else the image's default, else eth0.
pub fn interface(cluster: &Cluster, image_default: Option<&str>) -> Result<String> {
    let name = cluster
        .network
        .interface
        .as_deref()
        .or(image_default)
        .unwrap_or(DEFAULT_INTERFACE)
        .to_string();
    check_interface(&name)?;
    Ok(name)
}

/// The wired interface's settings: static address, gateway and DNS when the node has an
/// `ip`, else DHCP; matched by MAC (and renamed to `iface`) when the node has a `mac`.
pub fn ethernet(cluster: &Cluster, node: &Node, iface: &str) -> Result<Ethernet> {
    let mut eth = Ethernet {
        optional: true,
        ..Default::default()
    };
    if let Some(mac) = &node.mac {
        eth.matching = Some(Match {
            macaddress: mac.as_str().to_ascii_lowercase(),
        });
        eth.set_name = Some(iface.to_string());
    }
    match cluster.static_addr(node) {
        None => eth.dhcp4 = true,
        Some(addr) => {
            eth.dhcp4 = false;
            eth.dhcp6 = addr.ip.is_ipv6().then_some(false);
            eth.addresses = vec![addr.cidr()];
            if let Some(gw) = cluster.network.gateway {
                // `0.0.0.0/0` rather than `default`: cloud-init before 23.x rejects the latter.
                eth.routes = vec![Route {
                    to: if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" }.into(),
                    via: gw.to_string(),
                }];
            }
            if !cluster.network.dns.is_empty() {
                eth.nameservers = Some(Nameservers {
                    addresses: cluster.network.dns.iter().map(|d| d.to_string()).collect(),
                    search: cluster.domain.iter().cloned().collect(),
                });
            }
        }
    }
    Ok(eth)
}

/// The version 2 configuration of `node` with its one wired interface.
pub fn config(
    cluster: &Cluster,
    node: &Node,
    iface: &str,
    renderer: Option<&'static str>,
) -> Result<NetworkConfig> {
    Ok(NetworkConfig {
        version: 2,
        renderer,
        ethernets: BTreeMap::from([(iface.to_string(), ethernet(cluster, node, iface)?)]),
    })
}
