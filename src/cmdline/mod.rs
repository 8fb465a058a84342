//! The command line: clap types only. What each command does lives in the library.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use pikube_image::build::{self, AdHoc, BuildRequest, Selection};
use pikube_image::config::Role;
use pikube_image::source::base::BaseSource;

/// Build flashable, per-node k3s images for Raspberry Pi and Orange Pi boards from stock OS
/// downloads, without root.
#[derive(Parser)]
#[command(name = "pikube-image", version = env!("PIKUBE_LONG_VERSION"), about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Whether the command was asked for JSON output (`--json`): its errors are JSON too.
    pub fn json(&self) -> bool {
        match &self.command {
            Command::Build(a) => a.json,
            Command::Inspect(a) => a.json,
            Command::Flash(a) => a.json,
            Command::Cache(CacheCommand::List { json }) | Command::Boards { json } => *json,
            Command::Init(_)
            | Command::Netboot(_)
            | Command::Images(_)
            | Command::Cache(CacheCommand::Prune { .. }) => false,
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Write a commented cluster.yaml and a random k3s join token (secrets/k3s-token).
    Init(InitArgs),
    /// Build node images into the output directory (default: images/).
    Build(BuildArgs),
    /// List the supported boards: SoC, architecture, OS images (default marked), support notes.
    Boards {
        /// Print the catalog as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show an image's partitions, filesystems, detected OS and cloud-init seed.
    Inspect(InspectArgs),
    /// Write a node image to an SD card or USB disk (only its data, verified by reading
    /// back); list removable disks with --list.
    Flash(FlashArgs),
    /// Container images preloaded into the nodes.
    #[command(subcommand)]
    Images(ImagesCommand),
    /// The download and build cache ($PIKUBE_CACHE_DIR, else ~/.cache/pikube-image).
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Network boot trees written by `build --netboot DIR`.
    #[command(subcommand)]
    Netboot(NetbootCommand),
}

#[derive(Subcommand)]
pub enum NetbootCommand {
    /// Run the installed dnsmasq (DHCP, TFTP) and nbd-server (root disks) in the foreground
    /// with the tree's configuration, as root; Ctrl-C stops both.
    Serve {
        /// The directory written by `build --netboot DIR`.
        dir: PathBuf,
        /// Answer DHCP and TFTP on this network interface only (default: the tree's
        /// netboot.interface, else every interface).
        #[arg(long, value_name = "NAME")]
        interface: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum CacheCommand {
    /// List what the cache holds: downloads, prepared bases, image archives and blobs.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove entries not used for a while (--older-than 30d), or everything (--all).
    Prune {
        /// Age like 30d, 12h or 2w: entries last used before that are removed.
        #[arg(long, value_name = "AGE", required_unless_present = "all")]
        older_than: Option<String>,
        /// Remove every entry.
        #[arg(long, conflicts_with = "older_than")]
        all: bool,
    },
}

#[derive(Subcommand)]
pub enum ImagesCommand {
    /// Resolve every image tag of the inventory again, pull them into the cache and rewrite
    /// images.lock (builds use the pinned digests until the next update).
    Update {
        /// Cluster inventory.
        #[arg(long, default_value = "cluster.yaml")]
        config: PathBuf,
        /// Download mirror for the Argo CD manifest, as for `build`.
        #[arg(long, value_name = "URL", value_parser = parse_mirror)]
        mirror: Option<String>,
    },
}

#[derive(Args)]
pub struct InitArgs {
    /// Directory to write cluster.yaml and secrets/ into.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
    /// Let k3s.token_file of an existing cluster.yaml lead outside its directory.
    #[arg(long)]
    pub allow_outside_paths: bool,
}

#[derive(Args)]
pub struct BuildArgs {
    /// Cluster inventory.
    #[arg(long, default_value = "cluster.yaml")]
    pub config: PathBuf,
    /// Build this node of the inventory (repeatable).
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,
    /// Build every node of the inventory.
    #[arg(long, conflicts_with_all = ["nodes", "board"])]
    pub all: bool,
    /// Build an ad-hoc node for this board (with --role), not listed in the inventory.
    #[arg(long, requires = "role", conflicts_with = "nodes")]
    pub board: Option<String>,
    /// Role of the ad-hoc node: server, agent or worker.
    #[arg(long, requires = "board")]
    pub role: Option<Role>,
    /// Hostname of the ad-hoc node (generated when absent).
    #[arg(long, requires = "board")]
    pub name: Option<String>,
    /// Start from this local image file (.img, .img.xz, .img.gz, .img.zst) instead of the
    /// board's download.
    #[arg(long, conflicts_with = "image_url")]
    pub image: Option<PathBuf>,
    /// Start from this URL instead of the board's download.
    #[arg(long)]
    pub image_url: Option<String>,
    /// Expected SHA-256 of --image-url (else looked up in SHA256SUMS beside it).
    #[arg(long, requires = "image_url", value_name = "HEX")]
    image_sha256: Option<String>,
    /// Rewrite every download https://HOST/PATH to URL/HOST/PATH (local mirror, air-gapped CI).
    #[arg(long, value_name = "URL", value_parser = parse_mirror)]
    pub mirror: Option<String>,
    /// Output directory. A path through a symbolic link is refused: name the real directory.
    #[arg(long, default_value = "images")]
    pub out: PathBuf,
    /// Use only the download cache; fail naming anything missing.
    #[arg(long)]
    pub offline: bool,
    /// When the root filesystem must grow to fit the payload, leave this much free space
    /// beyond it (MiB).
    #[arg(long, value_name = "MIB", default_value_t = build::DEFAULT_GROW_MARGIN >> 20,
          value_parser = clap::value_parser!(u64).range(0..=MAX_GROW_MARGIN_MIB))]
    pub grow_margin: u64,
    /// Build this many nodes in parallel (at least 1).
    #[arg(long, short = 'j', default_value_t = 1, value_name = "N", value_parser = parse_jobs)]
    pub jobs: usize,
    /// Build only share I of N of the selected nodes (inventory order, every N-th node from
    /// the I-th), for CI matrices: --shard 2/4.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,
    /// Output formats, comma separated: raw (sparse .img), zst, xz (.img.zst/.img.xz, read by
    /// any zstd/xz), bmap (for `bmaptool copy`). Default: raw, or `formats:` in cluster.yaml.
    #[arg(long, value_name = "LIST", value_parser = parse_formats)]
    pub format: Option<FormatList>,
    /// Also write a network boot tree for the built nodes into DIR (TFTP files, dnsmasq and
    /// nbd-server configuration; the root is each node's raw image, so raw is always made).
    #[arg(long, value_name = "DIR")]
    pub netboot: Option<PathBuf>,
    /// Print the plan (every file, partition, size, mode) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Progress as JSON lines on stderr and a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Let paths in cluster.yaml (overlays, k3s.token_file, gitops.credentials_file) lead
    /// outside its directory: only for an inventory you trust, as they go into the images.
    #[arg(long)]
    pub allow_outside_paths: bool,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Image file (raw, or compressed with xz, gzip or zstd).
    pub image: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  pikube-image flash --list\n  sudo pikube-image flash --node cp1 /dev/sdX\n  sudo pikube-image flash images/cp1.img.zst /dev/mmcblk0\n  sudo pikube-image flash --all --wait"
)]
pub struct FlashArgs {
    /// IMAGE DEVICE, or only DEVICE with --node. IMAGE is a .img, .img.zst or .img.xz; its
    /// block map (X.bmap or X.img.bmap beside it) is used when present.
    #[arg(value_name = "IMAGE|DEVICE", num_args = 0..=2)]
    pub paths: Vec<PathBuf>,
    /// Flash this node's image from the output directory.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["all", "list"])]
    pub node: Option<String>,
    /// Every node of the inventory, one card after another (with --wait).
    #[arg(long, requires = "wait", conflicts_with = "list")]
    pub all: bool,
    /// Wait for each card to be inserted (a new removable disk), flash it, and wait for the
    /// next; Ctrl-C stops between cards.
    #[arg(long, requires = "all")]
    pub wait: bool,
    /// List the removable disks: path, model, size, transport, whether mounted.
    #[arg(long)]
    pub list: bool,
    /// Output directory of the build, where --node and --all find the images.
    #[arg(long, default_value = "images")]
    pub out: PathBuf,
    /// Cluster inventory, for --all.
    #[arg(long, default_value = "cluster.yaml")]
    pub config: PathBuf,
    /// Block map to use instead of the one beside the image.
    #[arg(long, value_name = "FILE")]
    pub bmap: Option<PathBuf>,
    /// Write without asking to type the device's name.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Unmount the device's mounted partitions first.
    #[arg(long)]
    pub unmount: bool,
    /// Write a disk that is not removable (not USB or an SD card): internal disks, loop
    /// devices.
    #[arg(long)]
    pub allow_fixed: bool,
    /// Write a regular file (an image file) instead of a device.
    #[arg(long)]
    pub allow_file: bool,
    /// Do not read the device back to compare.
    #[arg(long)]
    pub no_verify: bool,
    /// Progress as JSON lines on stderr and a JSON report (or list) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Where sysfs is (tests use a fake tree).
    #[arg(long, hide = true, default_value = "/sys")]
    pub sys_root: PathBuf,
    /// Where device nodes are (tests use a fake tree).
    #[arg(long, hide = true, default_value = "/dev")]
    pub dev_root: PathBuf,
}

/// What `flash` was asked to do.
pub enum FlashJob {
    List,
    One {
        image: PathBuf,
        node: Option<String>,
        device: PathBuf,
    },
    All,
}

impl FlashArgs {
    pub fn host(&self) -> pikube_image::flash::device::Host {
        pikube_image::flash::device::Host {
            sys: self.sys_root.clone(),
            dev: self.dev_root.clone(),
            ..pikube_image::flash::device::Host::real()
        }
    }

    pub fn options(&self) -> pikube_image::flash::Options {
        pikube_image::flash::Options {
            yes: self.yes,
            allow: pikube_image::flash::device::Allow {
                fixed: self.allow_fixed,
                unmount: self.unmount,
            },
            allow_file: self.allow_file,
            verify: !self.no_verify,
            bmap: self.bmap.clone(),
        }
    }

    pub fn job(&self) -> anyhow::Result<FlashJob> {
        let p = &self.paths;
        match (self.list, self.all, &self.node, p.len()) {
            (true, _, _, 0) => Ok(FlashJob::List),
            (true, ..) => anyhow::bail!("--list takes no IMAGE or DEVICE"),
            (_, true, _, 0) => Ok(FlashJob::All),
            (_, true, ..) => {
                anyhow::bail!("--all --wait takes no DEVICE: it flashes each card that is inserted")
            }
            (_, _, Some(node), 1) => Ok(FlashJob::One {
                image: pikube_image::flash::node_image(&self.out, node)?,
                node: Some(node.clone()),
                device: p[0].clone(),
            }),
            (_, _, Some(_), _) => {
                anyhow::bail!("give the device to write: pikube-image flash --node NAME /dev/sdX")
            }
            (_, _, None, 2) => Ok(FlashJob::One {
                image: p[0].clone(),
                node: None,
                device: p[1].clone(),
            }),
            _ => anyhow::bail!(
                "give IMAGE and DEVICE (pikube-image flash images/cp1.img /dev/sdX), or --node NAME DEVICE; --list shows the removable disks"
            ),
        }
    }
}

/// The largest `--grow-margin`: 1 TiB, far beyond any SD card.
const MAX_GROW_MARGIN_MIB: u64 = 1 << 20;

/// The formats of `--format` (one value, so clap does not take it for repeated flags).
#[derive(Clone, Debug)]
pub struct FormatList(Vec<pikube_image::formats::Format>);

fn parse_formats(s: &str) -> Result<FormatList, String> {
    pikube_image::formats::parse_formats(s)
        .map(FormatList)
        .map_err(|e| format!("{e:#}"))
}

fn parse_jobs(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("0 builds nothing: give 1 or more".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a number of nodes to build at once")),
    }
}

fn parse_mirror(s: &str) -> Result<String, String> {
    let u = url::Url::parse(s).map_err(|e| {
        format!("'{s}' is not a URL ({e}): give the mirror's base URL, like http://127.0.0.1:8080")
    })?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "'{s}' is not an http:// or https:// URL with a host, like http://127.0.0.1:8080"
        ));
    }
    Ok(s.to_string())
}

fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("'{s}' is not I/N, e.g. 1/4"))?;
    let i: usize = i
        .trim()
        .parse()
        .map_err(|_| format!("'{i}' is not a number"))?;
    let n: usize = n
        .trim()
        .parse()
        .map_err(|_| format!("'{n}' is not a number"))?;
    if n == 0 || i == 0 || i > n {
        return Err(format!("shard {i}/{n}: I must be between 1 and N"));
    }
    Ok((i, n))
}

impl BuildArgs {
    /// The build request these flags describe.
    pub fn request(self) -> anyhow::Result<BuildRequest> {
        let base = match (self.image, self.image_url) {
            (Some(p), _) => BaseSource::File(p),
            (None, Some(url)) => BaseSource::Url {
                url,
                sha256: self.image_sha256,
            },
            (None, None) => BaseSource::Catalog,
        };
        let select = match (self.all, self.board) {
            (true, _) => Selection::All,
            (false, Some(board)) => Selection::AdHoc(AdHoc {
                board,
                role: self.role.expect("clap requires --role with --board"),
                name: self.name,
            }),
            (false, None) => Selection::Named(self.nodes),
        };
        Ok(BuildRequest {
            config: self.config,
            select,
            base,
            mirror: self.mirror,
            out: self.out,
            offline: self.offline,
            dry_run: self.dry_run,
            cache_dir: None,
            grow_margin: self.grow_margin << 20,
            jobs: self.jobs,
            shard: self.shard,
            formats: self.format.map(|f| f.0).unwrap_or_default(),
            allow_outside_paths: self.allow_outside_paths,
            netboot: self.netboot,
        })
    }
}
