//! Network configuration "version 2" (the netplan schema, which cloud-init's `network-config`
//! also uses), built from typed structs so every value is serialised, never pasted into text.
//! The cloud-init seed and netplan files of images without cloud-init share it.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::config::{Cluster, Country, Node, Ssid};

/// Default name of the wired interface.
pub const DEFAULT_INTERFACE: &str = "eth0";
/// Name of the wireless interface (the Raspberry Pi's on-board radio).
pub const WIFI_INTERFACE: &str = "wlan0";

/// The top-level `network:` mapping's content.
#[derive(Debug, Serialize)]
pub struct NetworkConfig {
    pub version: u8,
    /// netplan backend (`networkd`); cloud-init's network-config leaves it out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renderer: Option<&'static str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ethernets: BTreeMap<String, Ethernet>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub wifis: BTreeMap<String, WifiLink>,
}

/// A wireless interface: addressing as for a wired one, plus the network it joins.
#[derive(Debug, Serialize)]
pub struct WifiLink {
    #[serde(flatten)]
    pub link: Ethernet,
    /// cfg80211's regulatory domain (netplan sets it with `iw reg set` and in
    /// wpa_supplicant's `country=`).
    #[serde(rename = "regulatory-domain")]
    pub regulatory_domain: String,
    #[serde(rename = "access-points")]
    pub access_points: BTreeMap<String, AccessPoint>,
}

#[derive(Debug, Serialize)]
pub struct AccessPoint {
    /// The WPA passphrase, or the 64-hex-digit pre-shared key.
    pub password: String,
}

/// A WPA passphrase (8 to 63 printable ASCII characters) or pre-shared key (64 hex
/// digits), read from the file the inventory names. Never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Passphrase(String);

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

impl Passphrase {
    /// Reads the passphrase in `path` (given as `key` in cluster.yaml), refusing a file
    /// others can read and anything WPA would not take, without showing it.
    pub fn read(path: &std::path::Path, key: &str) -> Result<Passphrase> {
        use anyhow::Context;
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).with_context(|| {
            format!(
                "Wi-Fi passphrase file {} (`{key}` in cluster.yaml) cannot be read: write the passphrase there on one line, with mode 0600",
                path.display()
            )
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            bail!(
                "Wi-Fi passphrase file {} (`{key}`) is readable by others: run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let p = text.strip_suffix('\n').unwrap_or(&text);
        let p = p.strip_suffix('\r').unwrap_or(p);
        let psk = p.len() == 64 && p.chars().all(|c| c.is_ascii_hexdigit());
        let passphrase = (8..=63).contains(&p.len()) && p.chars().all(|c| (' '..='~').contains(&c));
        if !(psk || passphrase) {
            bail!(
                "Wi-Fi passphrase file {} (`{key}`) must hold one line: a WPA passphrase of 8 to 63 printable ASCII characters, or a 64-hex-digit key",
                path.display()
            );
        }
        Ok(Passphrase(p.to_string()))
    }

    /// A stand-in of the same kind, for what must not depend on the secret (the
    /// cloud-init instance-id is derived from the network config).
    pub fn redacted() -> Passphrase {
        Passphrase("(secret)".into())
    }
}

/// The Wi-Fi network a node joins, with its passphrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WifiJoin {
    pub ssid: Ssid,
    pub passphrase: Passphrase,
    pub country: Country,
}

/// The links a node's network config describes: the board's wired port, when it has
/// one, and Wi-Fi when the inventory gives the node a network to join.
#[derive(Debug, Clone, Copy)]
pub struct Links<'a> {
    pub ethernet: bool,
    pub wifi: Option<&'a WifiJoin>,
}

impl Links<'_> {
    /// A wired port only, as every board has unless its catalog entry says otherwise.
    pub const WIRED: Links<'static> = Links {
        ethernet: true,
        wifi: None,
    };
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
    /// The link may carry the root file system (a node booted from the network with its root
    /// over NBD): systemd-networkd keeps the addresses the initramfs configured instead of
    /// dropping them when it takes the link over (`KeepConfiguration=yes`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub critical: bool,
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

/// Refuses a node that would have no network: a board without a wired port (catalog
/// `ethernet: false`) needs Wi-Fi settings. `inventory` names the file in the message.
pub fn check_links(
    cluster: &Cluster,
    node: &Node,
    board: &crate::boards::Board,
    inventory: &std::path::Path,
) -> Result<()> {
    if !board.ethernet && cluster.wifi_for(node).is_none() {
        bail!(
            "node '{}' in {}: board '{}' has no wired Ethernet, so the node needs Wi-Fi settings: add `wifi: {{ssid: ..., passphrase_file: ..., country: ...}}` to the node, or `network.wifi` for every node",
            node.name,
            inventory.display(),
            board.name
        );
    }
    Ok(())
}

/// The version 2 configuration of `node`: its wired interface `iface` when the board has
/// one, with the node's address; Wi-Fi when the node joins a network, with the node's
/// address on a board without a wired port and DHCP next to a wired one.
pub fn config(
    cluster: &Cluster,
    node: &Node,
    iface: &str,
    renderer: Option<&'static str>,
    links: Links<'_>,
) -> Result<NetworkConfig> {
    let mut ethernets = BTreeMap::new();
    let mut wifis = BTreeMap::new();
    if links.ethernet {
        ethernets.insert(iface.to_string(), ethernet(cluster, node, iface)?);
    }
    if let Some(w) = links.wifi {
        let link = match links.ethernet {
            true => Ethernet {
                dhcp4: true,
                optional: true,
                ..Default::default()
            },
            false => ethernet(cluster, node, WIFI_INTERFACE)?,
        };
        wifis.insert(
            WIFI_INTERFACE.to_string(),
            WifiLink {
                link,
                regulatory_domain: w.country.to_string(),
                access_points: BTreeMap::from([(
                    w.ssid.to_string(),
                    AccessPoint {
                        password: w.passphrase.0.clone(),
                    },
                )]),
            },
        );
    }
    if ethernets.is_empty() && wifis.is_empty() {
        bail!(
            "node '{}' has neither a wired port nor Wi-Fi settings: add `wifi` to the node or `network.wifi`",
            node.name
        );
    }
    Ok(NetworkConfig {
        version: 2,
        renderer,
        ethernets,
        wifis,
    })
}
