//! The board catalog: which boards exist, which OS images they run and how those images are laid
//! out. It is YAML data under `boards/`, embedded in the binary; extra entries can be loaded from
//! the directory named by `$PIKUBE_BOARDS_DIR` (same layout) for boards not shipped yet. Image
//! entries name the OpenPGP key their signature must be made by: one of `keys/` (built in), or
//! `keys/<name>.asc` in that directory.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub use crate::arch::Arch;
pub use crate::boot::BootConfig;
pub use crate::disk::protect::BootArea;
pub use crate::firstboot::{Firstboot, NetworkStack};
pub use crate::source::base::{ImageChecksum, SignatureSpec};
use crate::source::keys::Keyring;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/catalog.rs"));
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Board {
    pub name: String,
    pub description: String,
    /// The system on chip, as its maker names it (`BCM2711`, `RK3588S`).
    pub soc: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub arch: Arch,
    /// The amounts of RAM the board is sold with, in MiB (`[1024, 2048, 4096]`); empty when
    /// unknown. A board that never has 2 GiB is warned about as a k3s server.
    #[serde(default)]
    pub memory_mib: Vec<u32>,
    /// Who keeps the board working in its OS images.
    #[serde(default)]
    pub support: Support,
    /// What a user should know before choosing the board (shown by `pikube-image boards`).
    #[serde(default)]
    pub note: Option<String>,
    pub default_image: String,
    pub images: Vec<String>,
    /// Kernel arguments every node of this board needs (k3s needs the memory cgroup).
    #[serde(default)]
    pub kernel_args: Vec<String>,
    /// Whether the board has a wired Ethernet port (default true). Nodes of a board
    /// without one need Wi-Fi settings.
    #[serde(default = "has_ethernet")]
    pub ethernet: bool,
    /// Whether the board's own boot loader boots from the network (`build --netboot`
    /// warns when it does not); absent means it does.
    #[serde(default)]
    pub netboot: Option<NetbootSupport>,
}

fn has_ethernet() -> bool {
    true
}

/// A board's network boot, as its shipped boot loader does it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetbootSupport {
    pub supported: bool,
    /// Why not, and what to do instead (another boot loader in SPI flash, say).
    pub note: String,
}

/// How well a board or an OS image is looked after upstream.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Support {
    /// Maintained by the board's or the distribution's makers.
    #[default]
    Official,
    /// Maintained by volunteers (Armbian's community-supported boards, for example).
    Community,
    /// Published once and no longer updated upstream.
    Unmaintained,
}

impl Support {
    pub fn as_str(self) -> &'static str {
        match self {
            Support::Official => "official",
            Support::Community => "community",
            Support::Unmaintained => "unmaintained",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RootFs {
    /// Label of the ext4 root partition.
    pub partition: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OsImage {
    pub name: String,
    pub description: String,
    pub os: String,
    pub version: String,
    pub arch: Arch,
    /// Who maintains the image upstream.
    #[serde(default)]
    pub support: Support,
    /// What a user should know before choosing the image (shown by `pikube-image boards`).
    #[serde(default)]
    pub note: Option<String>,
    pub url: String,
    pub checksum: ImageChecksum,
    /// Raw byte ranges outside the partitions that hold the boot loader: a build never
    /// changes a byte there, and refuses an image whose partitions or growth would.
    #[serde(default)]
    pub bootloader: Vec<BootArea>,
    pub boot: BootConfig,
    pub root: RootFs,
    pub firstboot: Firstboot,
}

impl OsImage {
    /// The file name at the end of the URL.
    pub fn file_name(&self) -> &str {
        self.url.rsplit('/').next().unwrap_or(&self.url)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    boards: BTreeMap<String, Board>,
    images: BTreeMap<String, OsImage>,
    /// The keys signatures may name: the built-in ones, and `keys/*.asc` of a directory.
    keys: Keyring,
}

impl Catalog {
    /// The catalog built into the binary, plus `$PIKUBE_BOARDS_DIR` when set.
    pub fn load() -> Result<Catalog> {
        let mut cat = Catalog {
            keys: Keyring::builtin()?,
            ..Catalog::default()
        };
        for (name, text) in embedded::EMBEDDED {
            cat.add_yaml(name, text)
                .with_context(|| format!("built-in board catalog file boards/{name}"))?;
        }
        if let Some(dir) = std::env::var_os(crate::source::keys::TEST_KEYS_VAR) {
            cat.keys.replace_for_tests(Path::new(&dir))?;
        }
        if let Some(dir) = std::env::var_os("PIKUBE_BOARDS_DIR") {
            cat.add_dir(Path::new(&dir))?;
        }
        cat.check()?;
        Ok(cat)
    }

    /// Adds every `*.yaml` below `dir` (boards at the top, OS images under `images/`), and
    /// every OpenPGP key `keys/<name>.asc` (known to image entries as `<name>`).
    pub fn add_dir(&mut self, dir: &Path) -> Result<()> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let rd = std::fs::read_dir(&d)
                .with_context(|| format!("cannot read board directory {}", d.display()))?;
            for e in rd {
                let p = e
                    .with_context(|| format!("cannot read {}", d.display()))?
                    .path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "asc") && d == dir.join("keys") {
                    self.keys
                        .add_file(&p)
                        .with_context(|| format!("catalog key {}", p.display()))?;
                } else if p.extension().is_some_and(|e| e == "yaml") {
                    let text = std::fs::read_to_string(&p)
                        .with_context(|| format!("cannot read {}", p.display()))?;
                    let rel = p.strip_prefix(dir).unwrap_or(&p).to_string_lossy();
                    self.add_yaml(&rel, &text)
                        .with_context(|| format!("board file {}", p.display()))?;
                }
            }
        }
        Ok(())
    }

    fn add_yaml(&mut self, rel: &str, text: &str) -> Result<()> {
        let is_image = rel.starts_with("images/") || rel.starts_with("images\\");
        if is_image {
            let img: OsImage = serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
            self.images.insert(img.name.clone(), img);
        } else {
            let b: Board = serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
            self.boards.insert(b.name.clone(), b);
        }
        Ok(())
    }

    /// Cross-checks boards against images, aliases against names, signatures against keys.
    pub fn check(&self) -> Result<()> {
        for img in self.images.values() {
            crate::disk::protect::check_areas(&img.bootloader)
                .with_context(|| format!("OS image '{}': bootloader", img.name))?;
            if let Some(sig) = img.checksum.signature() {
                sig.resolve(&self.keys)
                    .with_context(|| format!("OS image '{}'", img.name))?;
            }
            if let (
                Firstboot::CloudInit {
                    cmdline_datasource: true,
                    ..
                },
                BootConfig::ArmbianEnv { .. },
            ) = (&img.firstboot, &img.boot)
            {
                bail!(
                    "OS image '{}': cmdline_datasource needs a Raspberry Pi firmware command line (boot kind raspi-firmware)",
                    img.name
                );
            }
        }
        let mut names: BTreeMap<&str, &str> = BTreeMap::new();
        for b in self.boards.values() {
            for n in std::iter::once(&b.name).chain(&b.aliases) {
                if let Some(other) = names.insert(n, &b.name) {
                    if other != b.name {
                        bail!(
                            "board name '{n}' is used by both '{other}' and '{}'",
                            b.name
                        );
                    }
                }
            }
            if !b.images.contains(&b.default_image) {
                bail!(
                    "board '{}': default_image '{}' is not in its images",
                    b.name,
                    b.default_image
                );
            }
            for i in &b.images {
                let img = self
                    .images
                    .get(i)
                    .with_context(|| format!("board '{}' names unknown image '{i}'", b.name))?;
                if img.arch != b.arch {
                    bail!(
                        "board '{}' is {} but image '{i}' is {}",
                        b.name,
                        b.arch.as_str(),
                        img.arch.as_str()
                    );
                }
            }
        }
        Ok(())
    }

    /// The keys image signatures are checked with.
    pub fn keys(&self) -> &Keyring {
        &self.keys
    }

    pub fn boards(&self) -> impl Iterator<Item = &Board> {
        self.boards.values()
    }

    /// A board by name or alias.
    pub fn board(&self, name: &str) -> Result<&Board> {
        let key = name.to_ascii_lowercase();
        self.boards
            .values()
            .find(|b| b.name == key || b.aliases.iter().any(|a| *a == key))
            .with_context(|| {
                format!(
                    "unknown board '{name}': known boards are {} (see `pikube-image boards`)",
                    self.boards.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })
    }

    /// The OS image a board runs: `os` when given (must be one of the board's), else its default.
    pub fn image_for(&self, board: &Board, os: Option<&str>) -> Result<&OsImage> {
        let name = os.unwrap_or(&board.default_image);
        if !board.images.iter().any(|i| i == name) {
            bail!(
                "board '{}' has no OS image '{name}': choose one of {}",
                board.name,
                board.images.join(", ")
            );
        }
        self.images
            .get(name)
            .with_context(|| format!("unknown OS image '{name}'"))
    }
}

/// RAM a k3s server needs (k3s's documented minimum for servers is 2 GiB).
pub const SERVER_MIN_MEMORY_MIB: u32 = 2048;

impl Board {
    /// The most RAM any variant of the board has, when the catalog says.
    pub fn max_memory_mib(&self) -> Option<u32> {
        self.memory_mib.iter().copied().max()
    }
}

impl Catalog {
    /// What the inventory asks of its boards that is allowed but likely to go wrong: a server
    /// on a board that never has the 2 GiB a k3s server needs. Nodes whose board is unknown
    /// are left to the build, which names them.
    pub fn warnings(&self, cluster: &crate::config::Cluster) -> Vec<String> {
        let mut out = Vec::new();
        for node in &cluster.nodes {
            let Ok(board) = self.board(&node.board) else {
                continue;
            };
            if node.role != crate::config::Role::Server {
                continue;
            }
            if let Some(max) = board
                .max_memory_mib()
                .filter(|m| *m < SERVER_MIN_MEMORY_MIB)
            {
                out.push(format!(
                    "node '{}' is a server on board '{}', which has at most {} MiB of RAM: a k3s server needs {} MiB; make it an agent (`role: agent`) and put the server on a board with more memory",
                    node.name, board.name, max, SERVER_MIN_MEMORY_MIB
                ));
            }
        }
        out
    }
}

/// One board as `pikube-image boards --json` prints it.
#[derive(Debug, Serialize)]
pub struct BoardListing<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub soc: &'a str,
    pub arch: Arch,
    pub memory_mib: &'a [u32],
    pub aliases: &'a [String],
    pub support: Support,
    pub note: Option<&'a str>,
    pub images: Vec<ImageListing<'a>>,
}

/// One of a board's OS images in [`BoardListing`].
#[derive(Debug, Serialize)]
pub struct ImageListing<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub os: &'a str,
    pub version: &'a str,
    pub arch: Arch,
    pub default: bool,
    pub support: Support,
    pub note: Option<&'a str>,
    pub url: &'a str,
}

impl Catalog {
    /// Every board with its OS images, default first, in name order.
    pub fn listing(&self) -> Result<Vec<BoardListing<'_>>> {
        self.boards()
            .map(|b| {
                let mut images = b
                    .images
                    .iter()
                    .map(|name| {
                        let img = self.image_for(b, Some(name))?;
                        Ok(ImageListing {
                            name: &img.name,
                            description: &img.description,
                            os: &img.os,
                            version: &img.version,
                            arch: img.arch,
                            default: *name == b.default_image,
                            support: img.support,
                            note: img.note.as_deref(),
                            url: &img.url,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                images.sort_by_key(|i| !i.default);
                Ok(BoardListing {
                    name: &b.name,
                    description: &b.description,
                    soc: &b.soc,
                    arch: b.arch,
                    memory_mib: &b.memory_mib,
                    aliases: &b.aliases,
                    support: b.support,
                    note: b.note.as_deref(),
                    images,
                })
            })
            .collect()
    }

    /// The table `pikube-image boards` prints, then the notes that matter for a choice.
    pub fn render_table(&self) -> Result<String> {
        let listing = self.listing()?;
        let rows: Vec<[String; 5]> = listing
            .iter()
            .map(|b| {
                [
                    b.name.to_string(),
                    b.soc.to_string(),
                    b.arch.as_str().to_string(),
                    b.images
                        .iter()
                        .map(|i| format!("{}{}", i.name, if i.default { "*" } else { "" }))
                        .collect::<Vec<_>>()
                        .join(", "),
                    b.aliases.join(", "),
                ]
            })
            .collect();
        let head = ["BOARD", "SOC", "ARCH", "OS IMAGES (* default)", "ALIASES"];
        let mut widths = head.map(str::len);
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: [&str; 5]| {
            let mut l = String::new();
            for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(c);
                } else {
                    l.push_str(&format!("{c:<w$}  "));
                }
            }
            l.trim_end().to_string() + "\n"
        };
        let mut out = line(head);
        for r in &rows {
            out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
        }
        let mut notes = String::new();
        let mut seen_images = std::collections::BTreeSet::new();
        for b in &listing {
            if let Some(n) = support_note(b.support, b.note) {
                notes.push_str(&format!("  {}: {n}\n", b.name));
            }
            for i in &b.images {
                if !seen_images.insert(i.name) {
                    continue;
                }
                if let Some(n) = support_note(i.support, i.note) {
                    notes.push_str(&format!("  {}: {n}\n", i.name));
                }
            }
        }
        if !notes.is_empty() {
            out.push_str("\nNotes:\n");
            out.push_str(&notes);
        }
        Ok(out)
    }

    /// README's table of supported boards, made from the catalog (a test keeps README equal).
    pub fn render_markdown(&self) -> Result<String> {
        let mut out = String::from(
            "| board | SoC | arch | OS images (default first) | aliases | support |\n\
             | --- | --- | --- | --- | --- | --- |\n",
        );
        let code = |s: &str| format!("`{s}`");
        for b in self.listing()? {
            let images = b
                .images
                .iter()
                .map(|i| format!("`{}`: {}", i.name, i.description))
                .collect::<Vec<_>>()
                .join("<br>");
            let support =
                std::iter::once(support_note(b.support, b.note))
                    .chain(b.images.iter().map(|i| {
                        support_note(i.support, i.note).map(|n| format!("{}: {n}", i.name))
                    }))
                    .flatten()
                    .collect::<Vec<_>>()
                    .join("<br>");
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                code(b.name),
                b.soc,
                b.arch.as_str(),
                images,
                b.aliases
                    .iter()
                    .map(|a| code(a))
                    .collect::<Vec<_>>()
                    .join(", "),
                if support.is_empty() {
                    "official".to_string()
                } else {
                    support
                },
            ));
        }
        Ok(out)
    }
}

/// "community-maintained: <note>" and the like; `None` for an official entry without a note.
fn support_note(support: Support, note: Option<&str>) -> Option<String> {
    match (support, note) {
        (Support::Official, None) => None,
        (Support::Official, Some(n)) => Some(n.to_string()),
        (s, None) => Some(format!("{} upstream", s.as_str())),
        (s, Some(n)) => Some(format!("{} upstream; {n}", s.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_is_consistent() {
        let cat = Catalog::load().unwrap();
        for name in ["rpi3", "rpi4", "rpi5"] {
            let b = cat.board(name).unwrap();
            assert_eq!(b.arch, Arch::Arm64);
            let img = cat.image_for(b, None).unwrap();
            assert!(img.url.starts_with("https://"), "{}", img.url);
            assert!(img.file_name().ends_with(".img.xz"));
            assert!(b.kernel_args.iter().any(|a| a == "cgroup_enable=memory"));
        }
    }

    #[test]
    fn orange_pi_boards_run_armbian_with_their_boot_loader_declared() {
        let cat = Catalog::load().unwrap();
        for (alias, name, soc, support, gpt) in [
            ("opi5", "orangepi5", "RK3588S", Support::Official, true),
            (
                "orangepi-5-plus",
                "orangepi5-plus",
                "RK3588",
                Support::Official,
                true,
            ),
            (
                "opi5plus",
                "orangepi5-plus",
                "RK3588",
                Support::Official,
                true,
            ),
            (
                "orangepi-3b",
                "orangepi3b",
                "RK3566",
                Support::Community,
                true,
            ),
            (
                "opizero3",
                "orangepizero3",
                "H618",
                Support::Community,
                false,
            ),
            (
                "orangepi-zero3",
                "orangepizero3",
                "H618",
                Support::Community,
                false,
            ),
            (
                "opizero2w",
                "orangepizero2w",
                "H618",
                Support::Community,
                false,
            ),
            ("opipc2", "orangepipc2", "H5", Support::Official, false),
            ("opi3lts", "orangepi3-lts", "H6", Support::Official, false),
        ] {
            let b = cat.board(alias).unwrap();
            assert_eq!((b.name.as_str(), b.soc.as_str()), (name, soc));
            assert_eq!(b.support, support, "{name}");
            assert_eq!(b.arch, Arch::Arm64);
            let img = cat.image_for(b, None).unwrap();
            assert_eq!(img.os, "armbian");
            assert_eq!(img.support, support, "{name}");
            assert!(
                img.file_name()
                    .ends_with("_trixie_current_6.18.43_minimal.img.xz")
            );
            assert!(img.file_name().contains("26.8.1"), "{}", img.url);
            let ImageChecksum::SumsUrl {
                url: sums,
                signature: Some(sig),
            } = &img.checksum
            else {
                panic!("{name}: checksum from the .sha file, signed");
            };
            assert_eq!(sig.key, "armbian", "{name}");
            assert_eq!(
                sig.url,
                format!(
                    "{}.asc",
                    img.url.replace(
                        img.url.rsplit_once('/').unwrap().0,
                        sums.rsplit_once('/').unwrap().0,
                    )
                ),
                "{name}: the .asc beside the .sha"
            );
            assert_eq!(
                sums.rsplit('/').next().unwrap(),
                format!("{}.sha", img.file_name())
            );
            assert_eq!(img.root.partition, "armbi_root");
            let areas: Vec<(&str, u64, u64)> = img
                .bootloader
                .iter()
                .map(|a| (a.name.as_str(), a.offset, a.end()))
                .collect();
            if gpt {
                // idbloader from sector 64, u-boot.itb from sector 16384, root at 16 MiB.
                assert_eq!(
                    areas,
                    [
                        ("idbloader", 64 * 512, 16384 * 512),
                        ("u-boot.itb", 16384 * 512, 16 << 20)
                    ]
                );
            } else {
                // SPL from 8 KiB up to the root partition at 4 MiB.
                assert_eq!(areas, [("u-boot-sunxi-with-spl", 8192, 4 << 20)]);
            }
        }
        assert!(
            cat.board("orangepi5")
                .unwrap()
                .note
                .as_deref()
                .unwrap()
                .contains("cannot netboot")
        );
    }

    #[test]
    fn raspberry_pi_boards_default_to_ubuntu_26_04_and_rpi2_is_32_bit() {
        let cat = Catalog::load().unwrap();
        for name in ["rpi3", "rpi4", "rpi5"] {
            let b = cat.board(name).unwrap();
            assert_eq!(cat.image_for(b, None).unwrap().name, "ubuntu-26.04");
            for os in ["ubuntu-24.04", "raspios-trixie-arm64"] {
                assert_eq!(cat.image_for(b, Some(os)).unwrap().arch, Arch::Arm64);
            }
        }
        let b = cat.board("rpi2").unwrap();
        assert_eq!(b.arch, Arch::Armhf);
        assert!(b.kernel_args.iter().any(|a| a == "cgroup_memory=1"));
        let img = cat.image_for(b, Some("ubuntu-22.04-armhf")).unwrap();
        assert!(
            img.url.ends_with("-preinstalled-server-armhf+raspi.img.xz"),
            "{}",
            img.url
        );
        let img = cat.image_for(b, None).unwrap();
        assert_eq!(img.name, "raspios-trixie-armhf");
        let ImageChecksum::SumsUrl {
            url: sums,
            signature: None,
        } = &img.checksum
        else {
            panic!("Raspberry Pi OS is checked against the .sha256 beside it, unsigned");
        };
        assert_eq!(*sums, format!("{}.sha256", img.url));
    }

    #[test]
    fn a_server_on_a_board_without_2_gib_is_warned_about() {
        let cat = Catalog::load().unwrap();
        let yaml = |b: &str, role: &str| {
            format!(
                "cluster: lab\nadmin: {{ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c me]}}\nnodes:\n  - {{name: cp1, board: {b}, role: {role}}}\n"
            )
        };
        let c = crate::config::Cluster::parse(&yaml("rpi2", "server")).unwrap();
        let w = cat.warnings(&c);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("'cp1'") && w[0].contains("1024 MiB") && w[0].contains("role: agent"),
            "{w:?}"
        );
        for (b, role) in [("rpi2", "agent"), ("rpi4", "server"), ("rpi5", "server")] {
            let text = yaml(b, role).replace("nodes:", "k3s: {api: https://10.0.0.1:6443}\nnodes:");
            let c = crate::config::Cluster::parse(&text).unwrap();
            assert!(cat.warnings(&c).is_empty(), "{b} {role}");
        }
        let c = crate::config::Cluster::parse(&yaml("rpi3", "server")).unwrap();
        assert_eq!(cat.warnings(&c).len(), 1);
    }

    #[test]
    fn ubuntu_rockchip_image_boots_through_extlinux() {
        let cat = Catalog::load().unwrap();
        let img = &cat.images["ubuntu-24.04-rockchip"];
        assert_eq!(img.support, Support::Unmaintained);
        assert!(img.note.as_deref().is_some_and(|n| n.contains("2025-04")));
        assert_eq!(
            img.boot,
            BootConfig::Extlinux {
                partition: "cloudimg-rootfs".into(),
                path: "/boot/extlinux/extlinux.conf".into(),
                cmdline: "/etc/kernel/cmdline".into(),
            }
        );
        assert_eq!(
            img.firstboot,
            Firstboot::CloudInit {
                seed_partition: "CIDATA".into(),
                cmdline_datasource: false,
                enable_units: Vec::new(),
            }
        );
        assert!(
            matches!(&img.checksum, ImageChecksum::SumsUrl { url: u, signature: None } if u == &format!("{}.sha256", img.url))
        );
    }

    #[test]
    fn aliases_resolve() {
        let cat = Catalog::load().unwrap();
        assert_eq!(cat.board("rpi400").unwrap().name, "rpi4");
        assert_eq!(cat.board("CM4").unwrap().name, "rpi4");
        assert_eq!(cat.board("rpi3b").unwrap().name, "rpi3");
        assert!(cat.board("rpi3").unwrap().ethernet);
        let zero = cat.board("zero2w").unwrap();
        assert_eq!(zero.name, "zero2w");
        assert!(!zero.ethernet, "the Zero 2 W has no wired port");
    }

    #[test]
    fn unknown_board_lists_the_known_ones() {
        let cat = Catalog::load().unwrap();
        let e = format!("{:#}", cat.board("rpi9").unwrap_err());
        assert!(
            e.contains("unknown board 'rpi9'") && e.contains("rpi4"),
            "{e}"
        );
        let b = cat.board("rpi4").unwrap();
        let e = format!("{:#}", cat.image_for(b, Some("windows")).unwrap_err());
        assert!(e.contains("windows") && e.contains("ubuntu-24.04"), "{e}");
    }

    #[test]
    fn notes_name_the_support_level_and_the_board_or_image() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("images")).unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            "name: sbc\ndescription: t\nsoc: X1\narch: arm64\nsupport: community\n\
             default_image: b\nimages: [a, b]\n",
        )
        .unwrap();
        for (name, extra) in [
            ("a", "note: cannot netboot\n"),
            ("b", "support: unmaintained\n"),
        ] {
            std::fs::write(
                dir.path().join(format!("images/{name}.yaml")),
                format!(
                    "name: {name}\ndescription: d\nos: o\nversion: '1'\narch: arm64\n{extra}\
                     url: https://x/{name}.img.xz\nchecksum: {{ sha256: '{}' }}\n\
                     boot: {{ kind: raspi-firmware, partition: p, config_txt: config.txt }}\n\
                     root: {{ partition: r }}\nfirstboot: {{ kind: cloud-init, seed_partition: p }}\n",
                    "0".repeat(64)
                ),
            )
            .unwrap();
        }
        let mut cat = Catalog::default();
        cat.add_dir(dir.path()).unwrap();
        cat.check().unwrap();
        let table = cat.render_table().unwrap();
        assert!(table.contains("b*, a"), "{table}");
        assert!(table.contains("sbc: community upstream"), "{table}");
        assert!(table.contains("a: cannot netboot"), "{table}");
        assert!(table.contains("b: unmaintained upstream"), "{table}");
        let md = cat.render_markdown().unwrap();
        assert!(
            md.contains("community upstream<br>b: unmaintained upstream<br>a: cannot netboot"),
            "{md}"
        );
    }

    #[test]
    fn extra_directory_adds_boards_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("images")).unwrap();
        std::fs::write(
            dir.path().join("x86.yaml"),
            "name: testpc\ndescription: t\nsoc: x\narch: amd64\ndefault_image: nope\nimages: [nope]\n",
        )
        .unwrap();
        let mut cat = Catalog::default();
        cat.add_dir(dir.path()).unwrap();
        let e = format!("{:#}", cat.check().unwrap_err());
        assert!(e.contains("unknown image 'nope'"), "{e}");
    }
}
