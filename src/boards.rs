//! The board catalog: which boards exist, which OS images they run and how those images are laid
//! out. It is YAML data under `boards/`, embedded in the binary; extra entries can be loaded from
//! the directory named by `$PIKUBE_BOARDS_DIR` (same layout) for boards not shipped yet.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub use crate::arch::Arch;
pub use crate::boot::BootConfig;
pub use crate::firstboot::{Firstboot, NetworkStack};
pub use crate::source::base::ImageChecksum;

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
    /// Whether the board's own boot loader boots from the network (`build --netboot`
    /// warns when it does not); absent means it does.
    #[serde(default)]
    pub netboot: Option<NetbootSupport>,
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
}

impl Catalog {
    /// The catalog built into the binary, plus `$PIKUBE_BOARDS_DIR` when set.
    pub fn load() -> Result<Catalog> {
        let mut cat = Catalog::default();
        for (name, text) in embedded::EMBEDDED {
            cat.add_yaml(name, text)
                .with_context(|| format!("built-in board catalog file boards/{name}"))?;
        }
        if let Some(dir) = std::env::var_os("PIKUBE_BOARDS_DIR") {
            cat.add_dir(Path::new(&dir))?;
        }
        cat.check()?;
        Ok(cat)
    }

    /// Adds every `*.yaml` below `dir` (boards at the top, OS images under `images/`).
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

    /// Cross-checks boards against images and aliases against names.
    fn check(&self) -> Result<()> {
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

/// One board as `pikube-image boards --json` prints it.
#[derive(Debug, Serialize)]
pub struct BoardListing<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub soc: &'a str,
    pub arch: Arch,
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
    fn aliases_resolve() {
        let cat = Catalog::load().unwrap();
        assert_eq!(cat.board("rpi400").unwrap().name, "rpi4");
        assert_eq!(cat.board("CM4").unwrap().name, "rpi4");
        assert_eq!(cat.board("zero2w").unwrap().name, "rpi3");
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
