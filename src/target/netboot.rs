//! The netboot target: a tree that boots every built node from the network, next to its disk
//! image, from the same plan.
//!
//! ```text
//! DIR/README.md         how to serve it and what to set on the boards
//! DIR/dnsmasq.conf      DHCP (a static lease per node) and TFTP of DIR/tftp
//! DIR/nbd-server.conf   one export per node: its disk image in the build's output directory
//! DIR/tftp/bootcode.bin                  Pi 3: the first stage, from the TFTP root
//! DIR/tftp/<serial or mac>/...           Raspberry Pi: the node's boot partition, cmdline.txt
//!                                        booting the root from NBD
//! DIR/tftp/pxelinux.cfg/01-<mac>         U-Boot: kernel, fdt, initrd, append of the node
//! DIR/tftp/boot/<os>-<hash>/...          U-Boot: kernel, initramfs, DTBs shared by the nodes
//!                                        of one base image
//! DIR/tftp/overlay-user/<node>/...       U-Boot: the node's own device tree overlays
//! ```
//!
//! The root filesystem is the node's own disk image, served by `nbd-server` as a block device
//! (`nbdroot=<server>,<node>,nbd0 root=/dev/nbd0p<N>`, `<server>:<port>/<node>` off port
//! 10809); the initramfs configures the network with the node's static address, or DHCP. Identical files are stored once (hard
//! links). Files the plan marks secret are left out: TFTP has no access control.

mod armbian_overlays;
pub mod dnsmasq;
pub mod initramfs;
pub mod nbd;
pub mod pxelinux;
pub mod serve;
mod settings;
mod tree;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

pub use settings::{DhcpRange, NBD_PORT, NetRoot, PiSerial, Settings, TftpPrefix};

use crate::boards::{Board, OsImage};
use crate::boot::BootConfig;
use crate::config::{Cluster, Node};
use crate::disk::Disk;
use crate::fs::fat::{Fat, ReadOnly};
use crate::progress::Progress;
use tree::TreeWriter;

/// Where the tree goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub dir: PathBuf,
}

/// The generated files at the top of the tree.
pub const DNSMASQ_CONF: &str = "dnsmasq.conf";
pub const NBD_CONF: &str = "nbd-server.conf";
pub const TFTP_DIR: &str = "tftp";
/// The DHCP boot file of U-Boot clients: `pxe get` looks for `pxelinux.cfg/` in its
/// directory (the TFTP root); the file itself need not exist.
pub const UBOOT_BOOT_FILE: &str = "pxelinux.0";
/// Above this an initramfs risks the Raspberry Pi bootloader's TFTP limits.
pub const PI_INITRAMFS_WARN: u64 = 60 << 20;

/// How a node's boot loader finds its files on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// The Raspberry Pi EEPROM (or Pi 3 ROM) bootloader: a TFTP directory per node.
    RaspberryPi,
    /// U-Boot's `pxe get`: `pxelinux.cfg/01-<mac>`.
    UBoot,
}

impl Family {
    /// The family of an image's boot mechanism; `None` for one that cannot be exported
    /// (extlinux images: their U-Boot entry is not written yet), which
    /// [`check_inventory`] refuses before anything is built.
    pub fn of(image: &OsImage) -> Option<Family> {
        match image.boot {
            BootConfig::RaspiFirmware { .. } => Some(Family::RaspberryPi),
            BootConfig::ArmbianEnv { .. } => Some(Family::UBoot),
            BootConfig::Extlinux { .. } => None,
        }
    }

    /// [`Family::of`] for an image [`check_inventory`] accepted.
    fn checked(image: &OsImage) -> Family {
        Family::of(image).expect("check_inventory refuses images that cannot netboot")
    }
}

/// The netboot settings of the inventory, or an error saying how to add them.
pub fn settings(cluster: &Cluster) -> Result<&Settings> {
    cluster.netboot.as_ref().context(
        "--netboot needs a netboot: section in cluster.yaml naming the machine that serves \
         the tree, e.g. `netboot: {server: 192.168.50.2}` (also tftp_prefix: serial|mac, \
         dhcp_range: FIRST,LAST, interface: NAME)",
    )
}

/// The TFTP directory of a Raspberry Pi, as its bootloader names it.
pub fn pi_dir(settings: &Settings, node: &Node) -> Option<String> {
    match settings.tftp_prefix {
        TftpPrefix::Serial => node.serial.as_ref().map(|s| s.as_str().to_string()),
        TftpPrefix::Mac => node.mac.as_ref().map(|m| m.dashed()),
    }
}

/// Checks the inventory before anything is built: every node has what its board's network
/// boot needs. Returns warnings; fails listing every problem with its fix.
pub fn check_inventory(
    cluster: &Cluster,
    nodes: &[(&Node, &Board, &OsImage)],
) -> Result<Vec<String>> {
    let s = settings(cluster)?;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut dirs: BTreeMap<String, &str> = BTreeMap::new();
    for (node, board, image) in nodes {
        let n = node.name.as_str();
        match Family::of(image) {
            None => problems.push(format!(
                "node '{n}' ({}) runs OS image '{}', which boots through extlinux.conf: --netboot \
                 cannot export it; build a disk image for this node, or give it another `os:`",
                board.name, image.name
            )),
            Some(Family::RaspberryPi) => match (pi_dir(s, node), s.tftp_prefix) {
                (Some(d), _) => {
                    if let Some(other) = dirs.insert(d.clone(), n) {
                        problems.push(format!(
                            "nodes '{other}' and '{n}' would share the TFTP directory {d}: give each its own serial:/mac:"
                        ));
                    }
                }
                (None, TftpPrefix::Serial) => problems.push(format!(
                    "node '{n}' ({}) has no serial: its bootloader looks for a directory named by its serial number (netboot.tftp_prefix: serial); add serial: with the 8 hex digits the bootloader prints (or `cat /proc/cpuinfo`'s Serial without the leading 10000000), or use tftp_prefix: mac with mac:",
                    board.name
                )),
                (None, TftpPrefix::Mac) => problems.push(format!(
                    "node '{n}' ({}) has no mac: its bootloader looks for a directory named by its MAC address (netboot.tftp_prefix: mac); add mac: (printed on the board's boot screen, or `ip link` on it)",
                    board.name
                )),
            },
            Some(Family::UBoot) => {
                if node.mac.is_none() {
                    problems.push(format!(
                        "node '{n}' ({}) has no mac: U-Boot finds its boot entry as pxelinux.cfg/01-<mac>; add mac: (U-Boot prints it as ethaddr, `printenv ethaddr`)",
                        board.name
                    ));
                }
            }
        }
        if let Some(a) = node.ip
            && !a.ip.is_ipv4()
        {
            problems.push(format!(
                "node '{n}' has the IPv6 address {}: network boot leases IPv4 addresses; give it an IPv4 ip:",
                a.ip
            ));
        }
        let leased = (node.mac.is_some() && node.ip.is_some()) || s.dhcp_range.is_some();
        if !leased {
            problems.push(format!(
                "node '{n}' would get no DHCP lease at boot: give it both ip: and mac: (a static lease), or set netboot.dhcp_range: FIRST,LAST"
            ));
        }
        if let Some(nb) = &board.netboot
            && !nb.supported
        {
            warnings.push(format!(
                "board {} of node '{n}' cannot boot from the network with its shipped boot loader: {}",
                board.name, nb.note
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "cannot export the nodes for network boot:\n  - {}",
            problems.join("\n  - ")
        );
    }
    Ok(warnings)
}

/// A built node, as the export reads it.
pub struct BuiltImage<'a> {
    pub node: &'a Node,
    pub board: &'a Board,
    pub image: &'a OsImage,
    /// The node's raw disk image (the NBD export).
    pub disk_image: PathBuf,
    /// `(partition, path)` of the files the plan marks secret, left out of the TFTP tree.
    pub secrets: Vec<(String, String)>,
}

/// What the export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub dir: PathBuf,
    pub files: usize,
    pub linked: usize,
}

/// Writes the tree for `nodes` into `spec.dir`, replacing an earlier tree there as a whole.
pub fn export(
    cluster: &Cluster,
    nodes: &[BuiltImage<'_>],
    spec: &Spec,
    progress: &Progress,
) -> Result<Exported> {
    let s = settings(cluster)?;
    let staging = tree::Staging::new(&spec.dir)?;
    let mut w = TreeWriter::new(staging.path().join(TFTP_DIR))?;
    let mut hosts = Vec::new();
    let mut exports = Vec::new();
    let mut families = Vec::new();
    for b in nodes {
        let root = root_partition(b)?;
        let nbd = NbdRoot {
            ip: KernelIp::of(cluster, b.node, b.image)?,
            server: s.server,
            port: s.nbd_port,
            export: b.node.name.to_string(),
            partition: root,
        };
        let family = Family::checked(b.image);
        families.push(family);
        match family {
            Family::RaspberryPi => export_pi(s, b, &nbd, &mut w, progress),
            Family::UBoot => export_uboot(b, &nbd, &mut w, progress),
        }
        .with_context(|| {
            format!(
                "exporting node '{}' ({}) for network boot",
                b.node.name,
                b.disk_image.display()
            )
        })?;
        if let Some(mac) = &b.node.mac {
            hosts.push(dnsmasq::DhcpHost {
                mac: mac.clone(),
                ip: b.node.ip.and_then(|a| match a.ip {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                }),
                name: b.node.name.clone(),
            });
        }
        exports.push(nbd::Export {
            name: b.node.name.clone(),
            file: std::path::absolute(&b.disk_image).with_context(|| {
                format!("cannot make {} an absolute path", b.disk_image.display())
            })?,
        });
    }
    let final_dir = std::path::absolute(&spec.dir)
        .with_context(|| format!("cannot make {} an absolute path", spec.dir.display()))?;
    let prefix = cluster.network.prefix.unwrap_or(24);
    let mask = dnsmasq::netmask(prefix);
    let range = match s.dhcp_range {
        Some(r) => dnsmasq::DhcpRange::Dynamic {
            first: r.first,
            last: r.last,
            netmask: mask,
            hours: 12,
        },
        None => dnsmasq::DhcpRange::Static {
            network: Ipv4Addr::from(u32::from(s.server) & u32::from(mask)),
            netmask: mask,
        },
    };
    let conf = dnsmasq::DnsmasqConf {
        interface: s.interface.clone(),
        range,
        hosts,
        pi_boot_service: families
            .contains(&Family::RaspberryPi)
            .then(|| dnsmasq::PI_BOOT_SERVICE.to_string()),
        uboot: families
            .contains(&Family::UBoot)
            .then(|| dnsmasq::UbootBoot {
                tag: "uboot".into(),
                vendor_class: dnsmasq::UBOOT_VENDOR_CLASS.into(),
                boot_file: UBOOT_BOOT_FILE.into(),
            }),
        tftp_root: final_dir.join(TFTP_DIR),
        lease_file: final_dir.join("dnsmasq.leases"),
    };
    let nbd = nbd::NbdConfig {
        port: s.nbd_port,
        allow_list: true,
        exports,
    };
    let top = staging.path();
    tree::write_file(&top.join(DNSMASQ_CONF), conf.render().as_bytes())?;
    tree::write_file(&top.join(NBD_CONF), nbd.render().as_bytes())?;
    tree::write_file(&top.join("README.md"), readme(s, nodes).as_bytes())?;
    let (files, linked) = (w.files(), w.linked());
    staging.commit()?;
    progress.message(&format!(
        "wrote the network boot tree {} ({files} files in tftp/, {linked} of them hard links to identical ones)",
        spec.dir.display()
    ));
    Ok(Exported {
        dir: spec.dir.clone(),
        files,
        linked,
    })
}

/// How the initramfs configures the interface the root is reached through (the kernel's
/// `ip=`). cloud-init keeps that configuration for the running system when `ip=` is on the
/// command line (its initramfs network source comes before the seed's `network-config`, and
/// leaves the interface to the initramfs so the root stays reachable), so a node with a
/// static address gets it here rather than the DHCP lease.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KernelIp {
    Dhcp,
    Static {
        addr: Ipv4Addr,
        netmask: Ipv4Addr,
        gateway: Option<Ipv4Addr>,
        hostname: String,
        device: String,
        /// At most two: `ip=` has fields for dns0 and dns1.
        dns: Vec<Ipv4Addr>,
    },
}

impl KernelIp {
    /// The node's static IPv4 address from cluster.yaml (with the cluster's gateway and DNS
    /// servers, on the interface its network configuration names), else DHCP.
    fn of(cluster: &Cluster, node: &Node, image: &OsImage) -> Result<KernelIp> {
        let Some(a) = cluster.static_addr(node) else {
            return Ok(KernelIp::Dhcp);
        };
        let IpAddr::V4(addr) = a.ip else {
            bail!(
                "node '{}' has the IPv6 address {}: network boot leases IPv4 addresses; give it an IPv4 ip:",
                node.name,
                a.ip
            );
        };
        let v4 = |ip: &IpAddr| match ip {
            IpAddr::V4(v) => Some(*v),
            IpAddr::V6(_) => None,
        };
        let image_interface = match &image.firstboot {
            crate::firstboot::Firstboot::Direct { interface, .. } => interface.as_deref(),
            crate::firstboot::Firstboot::CloudInit { .. } => None,
        };
        Ok(KernelIp::Static {
            addr,
            netmask: dnsmasq::netmask(a.prefix),
            gateway: cluster.network.gateway.as_ref().and_then(v4),
            hostname: node.name.to_string(),
            device: crate::netconfig::interface(cluster, image_interface)?,
            dns: cluster.network.dns.iter().filter_map(v4).take(2).collect(),
        })
    }

    /// `ip=dhcp`, or `ip=<client>::<gateway>:<netmask>:<hostname>:<device>:off[:<dns0>[:<dns1>]]`
    /// (the kernel's nfsroot syntax, which the initramfs hands to ipconfig).
    fn arg(&self) -> String {
        match self {
            KernelIp::Dhcp => "ip=dhcp".into(),
            KernelIp::Static {
                addr,
                netmask,
                gateway,
                hostname,
                device,
                dns,
            } => {
                let gw = gateway.map(|g| g.to_string()).unwrap_or_default();
                let mut fields = vec![
                    addr.to_string(),
                    String::new(),
                    gw,
                    netmask.to_string(),
                    hostname.clone(),
                    device.clone(),
                    "off".into(),
                ];
                fields.extend(dns.iter().map(|d| d.to_string()));
                format!("ip={}", fields.join(":"))
            }
        }
    }
}

/// The root filesystem over NBD: the node's disk image, the root partition's number in it.
struct NbdRoot {
    ip: KernelIp,
    server: Ipv4Addr,
    port: u16,
    export: String,
    partition: u32,
}

impl NbdRoot {
    /// Kernel arguments for Debian's `nbd-client` initramfs script, `root=` the partition.
    /// Its three-part `nbdroot=server,export,nbd0` always connects to port 10809; another
    /// port needs the `server:port/export` form.
    fn kernel_args(&self) -> Vec<String> {
        let nbdroot = if self.port == NBD_PORT {
            format!("nbdroot={},{},nbd0", self.server, self.export)
        } else {
            format!("nbdroot={}:{}/{}", self.server, self.port, self.export)
        };
        vec![
            self.ip.arg(),
            nbdroot,
            format!("root=/dev/nbd0p{}", self.partition),
        ]
    }
}

/// Kernel arguments a network boot replaces: where the root is, and how it is waited for.
const REPLACED_ARGS: &[&str] = &["root", "nbdroot", "ip", "nfsroot", "rootfstype"];

/// `cmdline` with the root on NBD instead of the local card.
fn network_cmdline(cmdline: &str, nbd: &NbdRoot) -> String {
    let mut args: Vec<String> = cmdline
        .split_whitespace()
        .filter(|a| {
            let key = a.split('=').next().unwrap_or(a);
            !REPLACED_ARGS.contains(&key)
        })
        .map(str::to_string)
        .collect();
    args.push("rootfstype=ext4".into());
    args.extend(nbd.kernel_args());
    args.join(" ") + "\n"
}

fn root_partition(b: &BuiltImage<'_>) -> Result<u32> {
    let disk = Disk::read(&b.disk_image)?;
    Ok(crate::fs::partition(&disk, &b.image.root.partition)?.number)
}

/// Fails when the initramfs cannot mount the root over NBD; `what` names it in messages.
fn check_initramfs(data: &[u8], what: &str) -> Result<()> {
    let entries = initramfs::entries(data)
        .with_context(|| format!("cannot look inside the initramfs {what}"))?;
    let missing = initramfs::missing_for_nbd(&entries);
    if !missing.is_empty() {
        bail!(
            "the initramfs {what} cannot mount a root filesystem over NBD: it lacks {}. Install \
             Debian's/Ubuntu's nbd-client package in the OS (its initramfs-tools hook adds \
             both) and rebuild the initramfs (`apt install nbd-client` on a node, then start \
             from an image of it), or build the node for its card instead of --netboot",
            missing.join(" and ")
        );
    }
    Ok(())
}

/// The `initramfs FILE` of config.txt (settings for every model, `os_prefix` applied).
fn pi_initramfs(config_txt: &str) -> Option<String> {
    let mut prefix = String::new();
    let mut file = None;
    let mut applies = true;
    for raw in config_txt.lines() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            applies = line.eq_ignore_ascii_case("[all]");
            continue;
        }
        if !applies {
            continue;
        }
        if let Some(rest) = line.strip_prefix("initramfs") {
            file = rest.split_whitespace().next().map(str::to_string);
        } else if let Some(("os_prefix", v)) = line.split_once('=').map(|(k, v)| (k.trim(), v)) {
            prefix = v.trim().to_string();
        }
    }
    file.map(|f| format!("{}{}", prefix.trim_start_matches('/'), f))
}

fn export_pi(
    s: &Settings,
    b: &BuiltImage<'_>,
    nbd: &NbdRoot,
    w: &mut TreeWriter,
    progress: &Progress,
) -> Result<()> {
    let BootConfig::RaspiFirmware {
        partition,
        config_txt,
    } = &b.image.boot
    else {
        bail!("not a Raspberry Pi firmware image");
    };
    let dir = pi_dir(s, b.node).context("the node has no serial/mac for its TFTP directory")?;
    let file = File::open(&b.disk_image)
        .with_context(|| format!("cannot open {}", b.disk_image.display()))?;
    let disk = Disk::read(&b.disk_image)?;
    let part = crate::fs::partition(&disk, partition)?;
    let fat = Fat::open(ReadOnly(&file), part.start, part.size, partition)?;
    let read = |p: &str| -> Result<Vec<u8>> {
        fat.read(p)?
            .with_context(|| format!("{partition}:{p} not found in the built image"))
    };
    let config = String::from_utf8_lossy(&read(&format!("/{config_txt}"))?).to_string();
    let cmdline_path = format!("/{}", crate::boot::raspi::cmdline_path(&config));
    let initrd = pi_initramfs(&config).with_context(|| {
        format!("{partition}:/{config_txt} loads no initramfs: the kernel alone cannot mount a root over NBD; add `initramfs initrd.img followkernel`")
    })?;
    let initrd_data = read(&format!("/{initrd}"))?;
    check_initramfs(&initrd_data, &format!("{partition}:/{initrd}"))?;
    if initrd_data.len() as u64 > PI_INITRAMFS_WARN {
        progress.message(&format!(
            "warning: node '{}': the initramfs {partition}:/{initrd} is {} MiB: Raspberry Pi bootloaders before the 2025-09-23 EEPROM fail on TFTP files near 64 MiB and time out after TFTP_FILE_TIMEOUT (30 s); update the EEPROM, raise TFTP_FILE_TIMEOUT or make the initramfs smaller (MODULES=dep)",
            b.node.name,
            initrd_data.len() >> 20
        ));
    }
    let secret = |p: &str| {
        b.secrets
            .iter()
            .any(|(sp, path)| sp == partition && path.eq_ignore_ascii_case(p))
    };
    for path in fat.files()? {
        if secret(&path) {
            continue;
        }
        let rel = format!("{dir}{path}");
        if path.eq_ignore_ascii_case(&cmdline_path) {
            let cmdline = String::from_utf8(read(&path)?)
                .with_context(|| format!("{partition}:{path} is not text"))?;
            w.put(&rel, network_cmdline(&cmdline, nbd).as_bytes())?;
        } else {
            let data = read(&path)?;
            if path.eq_ignore_ascii_case("/bootcode.bin") {
                // The Pi 3 ROM loads the first stage from the TFTP root.
                w.put_once("bootcode.bin", &data)?;
            }
            w.put(&rel, &data)?;
        }
    }
    Ok(())
}

/// `key=value` lines of armbianEnv.txt; the last of a key wins, like `env import`.
fn env_values(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// What Armbian's boot scripts add for `docker_optimizations` (on unless armbianEnv.txt says
/// otherwise): the memory cgroup k3s needs, which a pxelinux entry must carry itself.
fn docker_optimizations(env: &BTreeMap<String, String>) -> Vec<String> {
    match env.get("docker_optimizations").map(String::as_str) {
        None | Some("on") => vec!["cgroup_enable=memory".into(), "swapaccount=1".into()],
        Some(_) => Vec::new(),
    }
}

fn export_uboot(
    b: &BuiltImage<'_>,
    nbd: &NbdRoot,
    w: &mut TreeWriter,
    progress: &Progress,
) -> Result<()> {
    let BootConfig::ArmbianEnv { partition, path } = &b.image.boot else {
        bail!("not an Armbian U-Boot image");
    };
    let mac = b.node.mac.as_ref().context("the node has no mac")?;
    let file = File::open(&b.disk_image)
        .with_context(|| format!("cannot open {}", b.disk_image.display()))?;
    let disk = Disk::read(&b.disk_image)?;
    let part = crate::fs::partition(&disk, partition)?;
    let fs = crate::fs::ext4_reader(&file, part)?;
    let at = |p: &str| format!("{partition}:{p}");
    let read = |p: &str| fs.read(p).map_err(|e| anyhow::anyhow!("{}: {e}", at(p)));
    let env = env_values(&String::from_utf8_lossy(&read(path)?));
    // /boot/Image links to vmlinuz-<version>; its initramfs is initrd.img-<version> (raw,
    // which U-Boot's pxe loads with its size; uInitrd carries a legacy header).
    let kernel = fs.canonicalize("/boot/Image").map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}: the image has no kernel where Armbian keeps it",
            at("/boot/Image")
        )
    })?;
    let kernel = kernel
        .to_str()
        .context("kernel path is not UTF-8")?
        .to_string();
    let version = kernel
        .rsplit('/')
        .next()
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .with_context(|| {
            format!(
                "{}: /boot/Image names {kernel}, not a vmlinuz-<version>",
                at("/boot/Image")
            )
        })?
        .to_string();
    let initrd_path = format!("/boot/initrd.img-{version}");
    let kernel_data = read(&kernel)?;
    let initrd_data = read(&initrd_path)?;
    check_initramfs(&initrd_data, &at(&initrd_path))?;
    let dtb_root = fs
        .canonicalize("/boot/dtb")
        .map_err(|e| anyhow::anyhow!("{}: {e}", at("/boot/dtb")))?;
    let digest = crate::io::sha256_bytes(&[kernel_data.as_slice(), &initrd_data].concat());
    let shared = format!("boot/{}-{}", b.image.name, &digest[..12]);
    w.put_once(&format!("{shared}/vmlinuz-{version}"), &kernel_data)?;
    w.put_once(&format!("{shared}/initrd.img-{version}"), &initrd_data)?;
    let mut dtb_files = std::collections::BTreeSet::new();
    let mut stack = vec![dtb_root.clone()];
    let dtb_prefix = dtb_root
        .to_str()
        .context("dtb path is not UTF-8")?
        .to_string();
    while let Some(d) = stack.pop() {
        let entries = fs
            .read_dir(&d)
            .map_err(|e| anyhow::anyhow!("{}: {e}", at(&d.display().to_string())))?;
        for e in entries {
            let e = e.map_err(|e| anyhow::anyhow!("{}: {e}", at(&dtb_prefix)))?;
            let name = e.file_name();
            let name = name.as_str().unwrap_or("");
            if name == "." || name == ".." {
                continue;
            }
            let p = e.path();
            let ft = e.file_type().map_err(|e| anyhow::anyhow!("{e}"))?;
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_regular_file() {
                let ps = p.to_str().context("dtb path is not UTF-8")?;
                let rel = ps.strip_prefix(&dtb_prefix).unwrap_or(ps);
                w.put_once(&format!("{shared}/dtb{rel}"), &read(ps)?)?;
                dtb_files.insert(rel.trim_start_matches('/').to_string());
            }
        }
    }
    let fdt = match env.get("fdtfile") {
        Some(f) if !f.is_empty() => pxelinux::Fdt::File(format!("{shared}/dtb/{f}")),
        _ => pxelinux::Fdt::Dir(format!("{shared}/dtb/")),
    };
    let user_overlay = |name: &str| format!("/boot/overlay-user/{name}.dtbo");
    let mut user_files = std::collections::BTreeSet::new();
    for name in env
        .get("user_overlays")
        .map(|v| v.split_whitespace())
        .into_iter()
        .flatten()
    {
        if fs
            .exists(user_overlay(name).as_str())
            .map_err(|e| anyhow::anyhow!("{}: {e}", at(&user_overlay(name))))?
        {
            user_files.insert(name.to_string());
        }
    }
    let overlays = armbian_overlays::resolve(&env, &dtb_files, &user_files, &at(path))?;
    for warning in &overlays.warnings {
        progress.message(&format!("warning: node '{}': {warning}", b.node.name));
    }
    let mut fdtoverlays = Vec::new();
    for o in overlays.overlays {
        fdtoverlays.push(match o {
            armbian_overlays::Overlay::Kernel(rel) => format!("{shared}/dtb/{rel}"),
            // A node's own overlays: its directory, beside the files shared by the base image.
            armbian_overlays::Overlay::User(name) => {
                let dest = format!("overlay-user/{}/{name}.dtbo", b.node.name);
                w.put(&dest, &read(&user_overlay(&name))?)?;
                dest
            }
        });
    }
    let mut append = vec![
        "rootwait".to_string(),
        format!(
            "rootfstype={}",
            env.get("rootfstype").map(String::as_str).unwrap_or("ext4")
        ),
    ];
    append.extend(nbd.kernel_args());
    if let Some(v) = env.get("verbosity") {
        append.push(format!("loglevel={v}"));
    }
    if let Some(q) = env.get("usbstoragequirks") {
        append.push(format!("usb-storage.quirks={q}"));
    }
    for key in ["extraargs", "extraboardargs"] {
        if let Some(v) = env.get(key) {
            append.extend(v.split_whitespace().map(str::to_string));
        }
    }
    // Once, even when the board's own arguments in extraargs name them too.
    for arg in docker_optimizations(&env) {
        if !append.contains(&arg) {
            append.push(arg);
        }
    }
    let entry = pxelinux::PxeEntry {
        label: b.node.name.to_string(),
        kernel: format!("{shared}/vmlinuz-{version}"),
        fdt,
        fdtoverlays,
        initrd: Some(format!("{shared}/initrd.img-{version}")),
        append,
    };
    w.put(
        &format!("pxelinux.cfg/01-{}", mac.dashed()),
        entry.render().as_bytes(),
    )
}

fn readme(s: &Settings, nodes: &[BuiltImage<'_>]) -> String {
    let mut t = String::from(
        "# Network boot tree\n\nWritten by `pikube-image build --netboot`. Serve it from the machine at ",
    );
    t.push_str(&format!(
        "{} (netboot.server in cluster.yaml), as root (DHCP, TFTP and NBD use privileged ports):\n\n    sudo pikube-image netboot serve {} [--interface NAME]\n\n",
        s.server, "THIS_DIRECTORY"
    ));
    t.push_str("or run the two servers yourself:\n\n    sudo dnsmasq --keep-in-foreground --conf-file=dnsmasq.conf\n    sudo nbd-server -d -C nbd-server.conf\n\n");
    t.push_str("dnsmasq is the network's DHCP server here (U-Boot does not boot behind a proxy DHCP): switch off the router's DHCP on this network, or give the nodes their addresses there.\nThe root filesystem of each node is its disk image in the build's output directory, served read-write over NBD: keep the images there.\n\n## Nodes\n\n");
    for b in nodes {
        let how = match Family::checked(b.image) {
            Family::RaspberryPi => format!(
                "Raspberry Pi, TFTP directory tftp/{}/",
                pi_dir(s, b.node).unwrap_or_default()
            ),
            Family::UBoot => format!(
                "U-Boot, tftp/pxelinux.cfg/01-{}",
                b.node.mac.as_ref().map(|m| m.dashed()).unwrap_or_default()
            ),
        };
        t.push_str(&format!("- {} ({}): {how}\n", b.node.name, b.board.name));
    }
    t.push_str(&format!(
        "\n## On the boards\n\n- Raspberry Pi 4 and 5: `sudo rpi-eeprom-config --edit` and set `BOOT_ORDER=0xf21` (SD card, then network) and `TFTP_PREFIX={}`.\n- Raspberry Pi 3B/3B+: network boot from the ROM is enabled once with `program_usb_boot_mode=1` in config.txt (3B) and loads tftp/bootcode.bin.\n- U-Boot boards: distro boot tries PXE after local media; boot with no card (or an empty one). Vendor U-Boot builds without a network driver cannot; put a mainline U-Boot in SPI flash. Device tree overlays (`fdtoverlays`) are applied only when its environment sets `fdtoverlay_addr_r` and it was built with overlay support (CONFIG_OF_LIBFDT_OVERLAY).\n",
        s.tftp_prefix.eeprom_value()
    ));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn armbian_docker_optimizations_default_on() {
        let on = env_values("rootdev=UUID=x\n");
        assert_eq!(
            docker_optimizations(&on),
            ["cgroup_enable=memory", "swapaccount=1"]
        );
        let off = env_values("docker_optimizations=off\n");
        assert!(docker_optimizations(&off).is_empty());
    }

    #[test]
    fn the_command_line_boots_the_root_from_nbd() {
        let nbd = NbdRoot {
            ip: KernelIp::Dhcp,
            server: "192.168.50.2".parse().unwrap(),
            port: NBD_PORT,
            export: "cp1".into(),
            partition: 2,
        };
        let c = network_cmdline(
            "console=tty1 root=LABEL=writable rootfstype=ext4 rootwait cgroup_memory=1\n",
            &nbd,
        );
        assert_eq!(
            c,
            "console=tty1 rootwait cgroup_memory=1 rootfstype=ext4 ip=dhcp nbdroot=192.168.50.2,cp1,nbd0 root=/dev/nbd0p2\n"
        );
    }

    #[test]
    fn a_port_other_than_10809_is_named_in_nbdroot() {
        let nbd = NbdRoot {
            ip: KernelIp::Dhcp,
            server: "10.0.2.2".parse().unwrap(),
            port: 40123,
            export: "cp1".into(),
            partition: 2,
        };
        assert_eq!(
            nbd.kernel_args(),
            ["ip=dhcp", "nbdroot=10.0.2.2:40123/cp1", "root=/dev/nbd0p2"]
        );
    }

    #[test]
    fn a_static_address_is_configured_by_the_initramfs() {
        let ip = KernelIp::Static {
            addr: "192.168.50.10".parse().unwrap(),
            netmask: dnsmasq::netmask(24),
            gateway: Some("192.168.50.1".parse().unwrap()),
            hostname: "cp1".into(),
            device: "eth0".into(),
            dns: vec!["192.168.50.2".parse().unwrap(), "1.1.1.1".parse().unwrap()],
        };
        assert_eq!(
            ip.arg(),
            "ip=192.168.50.10::192.168.50.1:255.255.255.0:cp1:eth0:off:192.168.50.2:1.1.1.1"
        );
        let bare = KernelIp::Static {
            addr: "10.0.0.5".parse().unwrap(),
            netmask: dnsmasq::netmask(16),
            gateway: None,
            hostname: "w1".into(),
            device: "end0".into(),
            dns: vec![],
        };
        assert_eq!(bare.arg(), "ip=10.0.0.5:::255.255.0.0:w1:end0:off");
    }

    #[test]
    fn the_initramfs_of_config_txt_follows_os_prefix() {
        assert_eq!(
            pi_initramfs("[all]\nkernel=vmlinuz\ninitramfs initrd.img followkernel\n").as_deref(),
            Some("initrd.img")
        );
        assert_eq!(
            pi_initramfs(
                "[pi4]\ninitramfs x\n[all]\ninitramfs initrd.img followkernel\nos_prefix=current/\n"
            )
            .as_deref(),
            Some("current/initrd.img")
        );
        assert_eq!(pi_initramfs("kernel=vmlinuz\n"), None);
    }
}
