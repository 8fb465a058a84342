//! The `netboot:` section of cluster.yaml and the per-node `serial:`, parsed into types.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// `netboot:` in cluster.yaml: how `build --netboot DIR` lays out the tree and where the
/// nodes find it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address of the machine that serves the tree (TFTP, DHCP, NBD).
    pub server: Ipv4Addr,
    /// How Raspberry Pis name their TFTP directory (the EEPROM's `TFTP_PREFIX`).
    #[serde(default)]
    pub tftp_prefix: TftpPrefix,
    /// Where the root filesystem comes from.
    #[serde(default)]
    pub root: NetRoot,
    /// TCP port of the NBD server.
    #[serde(default = "default_nbd_port")]
    pub nbd_port: u16,
    /// Addresses handed to nodes without `ip:` (`first,last`); without it only nodes with
    /// an `ip:` and a `mac:` get a lease.
    #[serde(default)]
    pub dhcp_range: Option<DhcpRange>,
    /// Network interface dnsmasq listens on (all when absent).
    #[serde(default)]
    pub interface: Option<String>,
}

/// The IANA port of NBD.
pub const NBD_PORT: u16 = 10809;

fn default_nbd_port() -> u16 {
    NBD_PORT
}

/// The Raspberry Pi bootloader's `TFTP_PREFIX`: the per-node directory is named by the
/// board's serial number (0, the default) or its MAC address (2).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TftpPrefix {
    #[default]
    Serial,
    Mac,
}

impl TftpPrefix {
    /// The EEPROM setting that selects it.
    pub fn eeprom_value(self) -> u8 {
        match self {
            TftpPrefix::Serial => 0,
            TftpPrefix::Mac => 2,
        }
    }
}

/// The root filesystem over the network. Only NBD: an NFS root is refused when read,
/// because k3s does not run on one.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NetRoot {
    /// The node's own disk image served as a block device by `nbd-server`.
    #[default]
    Nbd,
}

impl<'de> Deserialize<'de> for NetRoot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NetRoot, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "nbd" => Ok(NetRoot::Nbd),
            "nfs" => Err(serde::de::Error::custom(
                "root: nfs is refused: k3s's containerd uses the overlayfs snapshotter, which \
                 fails on an NFS root (\"upper fs does not support tmpfile\", k3s-io/k3s#10512); \
                 use root: nbd (the default), which serves each node's own disk image as a \
                 block device holding ext4",
            )),
            other => Err(serde::de::Error::custom(format!(
                "unknown netboot root '{other}': use nbd"
            ))),
        }
    }
}

/// A range of addresses dnsmasq leases to nodes without a static address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct DhcpRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl TryFrom<String> for DhcpRange {
    type Error = String;

    fn try_from(s: String) -> Result<DhcpRange, String> {
        let bad = || format!("'{s}' is not an address range like 192.168.50.100,192.168.50.150");
        let (a, b) = s.split_once(',').ok_or_else(bad)?;
        let first: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
        let last: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
        if u32::from(first) > u32::from(last) {
            return Err(format!(
                "dhcp_range '{s}': the first address is after the last"
            ));
        }
        Ok(DhcpRange { first, last })
    }
}

impl From<DhcpRange> for String {
    fn from(r: DhcpRange) -> String {
        format!("{},{}", r.first, r.last)
    }
}

/// A Raspberry Pi's serial number as its network bootloader uses it: 8 lower-case hex
/// digits (`/proc/cpuinfo` prints 16 with a leading `10000000`, which is dropped).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct PiSerial(String);

impl TryFrom<String> for PiSerial {
    type Error = String;

    fn try_from(s: String) -> Result<PiSerial, String> {
        let t = s.trim().to_ascii_lowercase();
        let t = t.strip_prefix("0x").unwrap_or(&t);
        let low = match t.len() {
            8 => t,
            16 if t.starts_with("10000000") => &t[8..],
            _ => t,
        };
        if low.len() != 8 || !low.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "'{s}' is not a Raspberry Pi serial number: give the 8 hex digits the \
                 bootloader shows (or the 16 of /proc/cpuinfo starting with 10000000)"
            ));
        }
        Ok(PiSerial(low.to_string()))
    }
}

impl From<PiSerial> for String {
    fn from(s: PiSerial) -> String {
        s.0
    }
}

impl PiSerial {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_drop_the_leading_10000000() {
        let s = |v: &str| PiSerial::try_from(v.to_string());
        assert_eq!(s("100000002B7E6C2F").unwrap().as_str(), "2b7e6c2f");
        assert_eq!(s("2b7e6c2f").unwrap().as_str(), "2b7e6c2f");
        assert!(s("a1b2c3d4e5f6a7b8").is_err());
        assert!(s("2b7e6c2").is_err());
        assert!(s("2b7e6c2g").is_err());
    }

    #[test]
    fn nfs_root_is_refused_with_the_reason() {
        let e = serde_saphyr::from_str::<Settings>("server: 10.0.0.1\nroot: nfs\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("overlayfs") && e.contains("root: nbd"), "{e}");
        let ok: Settings = serde_saphyr::from_str("server: 10.0.0.1\n").unwrap();
        assert_eq!(ok.root, NetRoot::Nbd);
        assert_eq!(ok.tftp_prefix, TftpPrefix::Serial);
        assert_eq!(ok.nbd_port, NBD_PORT);
    }

    #[test]
    fn dhcp_ranges_are_ordered_pairs() {
        let r = DhcpRange::try_from("10.0.0.100, 10.0.0.150".to_string()).unwrap();
        assert_eq!(String::from(r), "10.0.0.100,10.0.0.150");
        assert!(DhcpRange::try_from("10.0.0.150,10.0.0.100".to_string()).is_err());
        assert!(DhcpRange::try_from("10.0.0.1".to_string()).is_err());
    }
}
