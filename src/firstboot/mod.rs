//! First-boot kinds: how a node learns its identity (hostname, network, admin user, SSH
//! keys) on its first start. One module per kind; the catalog names the kind of each OS
//! image (`firstboot: {kind: ...}`).

pub mod cloud_init;
pub mod direct;
pub mod edits;
pub mod locale;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::config::{Cluster, Node};
use crate::host_keys::HostKey;
use crate::op::Op;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
pub enum Firstboot {
    /// cloud-init with a NoCloud seed (`user-data`, `meta-data`, `network-config`) at the root
    /// of the FAT partition with this label.
    CloudInit {
        seed_partition: String,
        /// Name the datasource and the node's instance on the kernel command line
        /// (`ds=nocloud;i=<instance-id>`), as Raspberry Pi Imager does for Raspberry Pi OS.
        #[serde(default)]
        cmdline_datasource: bool,
        /// Units the image ships disabled that a node needs (Raspberry Pi OS: `ssh.service`),
        /// from `/usr/lib/systemd/system`: enabled in the image for `multi-user.target`, so
        /// they start with the first boot and the seed needs no command for them.
        #[serde(default)]
        enable_units: Vec<crate::systemd::UnitName>,
    },
    /// No first-boot configuration tool in the image: the identity is written straight into
    /// the root filesystem, plus a small first-boot unit for what needs the running system
    /// (creating the admin user).
    Direct {
        /// The network stack the image configures its interfaces with.
        network: NetworkStack,
        /// Name of the wired interface in this image, when it is not `eth0`
        /// (`network.interface` in cluster.yaml overrides it).
        #[serde(default)]
        interface: Option<String>,
    },
}

/// How an image without cloud-init configures its network.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NetworkStack {
    /// netplan YAML under /etc/netplan, rendered for systemd-networkd.
    Netplan,
    /// systemd-networkd `.network` files under /etc/systemd/network.
    Networkd,
}

/// Where a distribution keeps the unit files of its packages.
pub const VENDOR_UNIT_DIR: &str = "/usr/lib/systemd/system";

/// What a first-boot kind contributes to a node's plan.
pub struct Contribution {
    pub ops: Vec<Op>,
    /// cloud-init's instance-id, for kinds that have one.
    pub instance_id: Option<String>,
}

/// The ops that give `node` its identity at first boot. `root` is the label of the root
/// partition and `boot` how the image boots (for a datasource named on the kernel command
/// line); `build_inputs` are digests of what else shapes the image (for cloud-init's
/// instance-id); `host_key` is the node's SSH host key when the build provides one;
/// `links` the wired port and Wi-Fi network the node's network config describes.
pub fn ops(
    kind: &Firstboot,
    cluster: &Cluster,
    node: &Node,
    root: &str,
    boot: &crate::boot::BootConfig,
    build_inputs: &[&str],
    host_key: Option<&HostKey>,
    links: crate::netconfig::Links<'_>,
) -> Result<Contribution> {
    match kind {
        Firstboot::CloudInit {
            seed_partition,
            cmdline_datasource,
            enable_units,
        } => {
            let mut c = cloud_init::ops(
                cluster,
                node,
                seed_partition,
                build_inputs,
                host_key.is_some(),
                links,
            )?;
            if *cmdline_datasource {
                let id = c
                    .instance_id
                    .as_deref()
                    .expect("a cloud-init seed has an instance-id");
                c.ops.push(crate::boot::set_kernel_arg(
                    boot,
                    "ds",
                    &format!("nocloud;i={id}"),
                )?);
            }
            for unit in enable_units.iter().map(|u| u.as_str()) {
                c.ops.push(
                    crate::systemd::enable(root, unit, &format!("{VENDOR_UNIT_DIR}/{unit}"))
                        .role_wide(),
                );
            }
            Ok(c)
        }
        Firstboot::Direct { network, interface } => Ok(Contribution {
            ops: direct::ops(
                cluster,
                node,
                root,
                *network,
                interface.as_deref(),
                host_key,
                links,
            )?,
            instance_id: None,
        }),
    }
}
