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
    #[serde(default)]
    pub aliases: Vec<String>,
    pub arch: Arch,
    pub default_image: String,
    pub images: Vec<String>,
    /// Kernel arguments every node of this board needs (k3s needs the memory cgroup).
    #[serde(default)]
    pub kernel_args: Vec<String>,
    /// Whether the board has a wired Ethernet port (default true). Nodes of a board
    /// without one need Wi-Fi settings.
    #[serde(default = "has_ethernet")]
    pub ethernet: bool,
}

fn has_ethernet() -> bool {
    true
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

impl Catalog {
    /// The table `pikube-image boards` prints.
    pub fn render_table(&self) -> Result<String> {
        let mut out = format!(
            "{:<8} {:<6} {:<14} {:<24} DESCRIPTION\n",
            "BOARD", "ARCH", "DEFAULT OS", "ALIASES"
        );
        for b in self.boards() {
            let img = self.image_for(b, None)?;
            out.push_str(&format!(
                "{:<8} {:<6} {:<14} {:<24} {}\n",
                b.name,
                b.arch.as_str(),
                img.name,
                b.aliases.join(","),
                b.description
            ));
        }
        Ok(out)
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
    fn extra_directory_adds_boards_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("images")).unwrap();
        std::fs::write(
            dir.path().join("x86.yaml"),
            "name: testpc\ndescription: t\narch: amd64\ndefault_image: nope\nimages: [nope]\n",
        )
        .unwrap();
        let mut cat = Catalog::default();
        cat.add_dir(dir.path()).unwrap();
        let e = format!("{:#}", cat.check().unwrap_err());
        assert!(e.contains("unknown image 'nope'"), "{e}");
    }
}
