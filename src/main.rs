use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use pikube_image::build::{self, AdHoc, BuildRequest, Selection};
use pikube_image::config::Role;
use pikube_image::progress::{Mode, Progress, human_bytes};
use pikube_image::source::base::BaseSource;
use pikube_image::{boards, images, init, inspect};

/// Build flashable, per-node k3s images for Raspberry Pi and Orange Pi boards from stock OS
/// downloads, without root.
#[derive(Parser)]
#[command(name = "pikube-image", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a commented cluster.yaml and a random k3s join token (secrets/k3s-token).
    Init(InitArgs),
    /// Build node images into the output directory (default: images/).
    Build(BuildArgs),
    /// List the supported boards and their default OS image.
    Boards,
    /// Show an image's partitions, filesystems, detected OS and cloud-init seed.
    Inspect(InspectArgs),
    /// Container images preloaded into the nodes.
    #[command(subcommand)]
    Images(ImagesCommand),
    /// The download and build cache ($PIKUBE_CACHE_DIR, else ~/.cache/pikube-image).
    #[command(subcommand)]
    Cache(CacheCommand),
}

#[derive(Subcommand)]
enum CacheCommand {
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
enum ImagesCommand {
    /// Resolve every image tag of the inventory again, pull them into the cache and rewrite
    /// images.lock (builds use the pinned digests until the next update).
    Update {
        /// Cluster inventory.
        #[arg(long, default_value = "cluster.yaml")]
        config: PathBuf,
        /// Download mirror for the Argo CD manifest, as for `build`.
        #[arg(long, value_name = "URL")]
        mirror: Option<String>,
    },
}

#[derive(Args)]
struct InitArgs {
    /// Directory to write cluster.yaml and secrets/ into.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct BuildArgs {
    /// Cluster inventory.
    #[arg(long, default_value = "cluster.yaml")]
    config: PathBuf,
    /// Build this node of the inventory (repeatable).
    #[arg(long = "node", value_name = "NAME")]
    nodes: Vec<String>,
    /// Build every node of the inventory.
    #[arg(long, conflicts_with_all = ["nodes", "board"])]
    all: bool,
    /// Build an ad-hoc node for this board (with --role), not listed in the inventory.
    #[arg(long, requires = "role", conflicts_with = "nodes")]
    board: Option<String>,
    /// Role of the ad-hoc node: server, agent or worker.
    #[arg(long, requires = "board")]
    role: Option<Role>,
    /// Hostname of the ad-hoc node (generated when absent).
    #[arg(long, requires = "board")]
    name: Option<String>,
    /// Start from this local image file (.img, .img.xz, .img.gz, .img.zst) instead of the
    /// board's download.
    #[arg(long, conflicts_with = "image_url")]
    image: Option<PathBuf>,
    /// Start from this URL instead of the board's download.
    #[arg(long)]
    image_url: Option<String>,
    /// Expected SHA-256 of --image-url (else looked up in SHA256SUMS beside it).
    #[arg(long, requires = "image_url", value_name = "HEX")]
    image_sha256: Option<String>,
    /// Rewrite every download https://HOST/PATH to URL/HOST/PATH (local mirror, air-gapped CI).
    #[arg(long, value_name = "URL")]
    mirror: Option<String>,
    /// Output directory.
    #[arg(long, default_value = "images")]
    out: PathBuf,
    /// Use only the download cache; fail naming anything missing.
    #[arg(long)]
    offline: bool,
    /// When the root filesystem must grow to fit the payload, leave this much free space
    /// beyond it (MiB).
    #[arg(long, value_name = "MIB", default_value_t = build::DEFAULT_GROW_MARGIN >> 20)]
    grow_margin: u64,
    /// Build this many nodes in parallel.
    #[arg(long, short = 'j', default_value_t = 1, value_name = "N")]
    jobs: usize,
    /// Build only share I of N of the selected nodes (inventory order, every N-th node from
    /// the I-th), for CI matrices: --shard 2/4.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
    /// Output formats, comma separated: raw (sparse .img), zst, xz (.img.zst/.img.xz, read by
    /// any zstd/xz), bmap (for `bmaptool copy`). Default: raw, or `formats:` in cluster.yaml.
    #[arg(long, value_name = "LIST")]
    format: Option<String>,
    /// Print the plan (every file, partition, size, mode) and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Progress as JSON lines on stderr and a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct InspectArgs {
    /// Image file (raw, or compressed with xz, gzip or zstd).
    image: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
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

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init(a) => {
            let home = dirs::home_dir();
            let report = init::init(&a.dir, a.force, home.as_deref())?;
            for f in &report.files {
                match f {
                    init::Outcome::Wrote(p) => eprintln!("wrote {}", p.display()),
                    init::Outcome::Kept(p) => eprintln!("kept {} (already there)", p.display()),
                    init::Outcome::Extended(p) => {
                        eprintln!("added secrets/ to {}", p.display())
                    }
                }
            }
            let config = a.dir.join(pikube_image::config::DEFAULT_CONFIG);
            if let Some(k) = &report.key_from {
                eprintln!("admin key: {} (in {})", k.display(), config.display());
            }
            if report.placeholder {
                eprintln!(
                    "warning: no public key found in ~/.ssh (id_ed25519.pub, id_ecdsa.pub, id_rsa.pub): {} holds the placeholder {}; replace it with your key (make one with `ssh-keygen -t ed25519`), or build will refuse it",
                    config.display(),
                    pikube_image::config::PLACEHOLDER_KEY
                );
            }
            eprintln!(
                "next: edit {} (nodes, addresses), then run `pikube-image build --all`",
                config.display()
            );
            Ok(())
        }
        Command::Boards => {
            let cat = boards::Catalog::load()?;
            println!(
                "{:<8} {:<6} {:<14} {:<24} DESCRIPTION",
                "BOARD", "ARCH", "DEFAULT OS", "ALIASES"
            );
            for b in cat.boards() {
                let img = cat.image_for(b, None)?;
                println!(
                    "{:<8} {:<6} {:<14} {:<24} {}",
                    b.name,
                    b.arch.as_str(),
                    img.name,
                    b.aliases.join(","),
                    b.description
                );
            }
            Ok(())
        }
        Command::Images(ImagesCommand::Update { config, mirror }) => {
            let progress = Progress::new(Mode::detect(false));
            let (path, n) = images::update_images(&config, mirror, None, &progress)?;
            eprintln!("pinned {n} image references in {}", path.display());
            Ok(())
        }
        Command::Cache(c) => {
            let cache = pikube_image::source::Cache::open_default()?;
            let root = cache.root();
            match c {
                CacheCommand::List { json } => {
                    let entries = pikube_image::cache_admin::list(root)?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&entries)?);
                    } else {
                        println!("{}", root.display());
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0);
                        let mut total = 0;
                        for e in &entries {
                            total += e.disk_bytes;
                            println!(
                                "{:<14} {:>10}  {:>4}d ago  {}",
                                e.kind,
                                human_bytes(e.disk_bytes),
                                now.saturating_sub(e.last_used) / 86_400,
                                e.name
                            );
                        }
                        println!("{} entries, {}", entries.len(), human_bytes(total));
                    }
                }
                CacheCommand::Prune { older_than, all } => {
                    let age = match (older_than, all) {
                        (_, true) => None,
                        (Some(a), false) => Some(pikube_image::cache_admin::parse_age(&a)?),
                        (None, false) => unreachable!("clap requires --older-than or --all"),
                    };
                    let removed =
                        pikube_image::cache_admin::prune(root, age, std::time::SystemTime::now())?;
                    let freed: u64 = removed.iter().map(|e| e.disk_bytes).sum();
                    eprintln!(
                        "removed {} entries, freed {}",
                        removed.len(),
                        human_bytes(freed)
                    );
                }
            }
            Ok(())
        }
        Command::Inspect(a) => {
            let report = inspect::inspect(&a.image, &Progress::new(Mode::detect(false)))?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(())
        }
        Command::Build(a) => {
            let progress = Progress::new(Mode::detect(a.json));
            let base = match (a.image, a.image_url) {
                (Some(p), _) => BaseSource::File(p),
                (None, Some(url)) => BaseSource::Url {
                    url,
                    sha256: a.image_sha256,
                },
                (None, None) => BaseSource::Catalog,
            };
            let req = BuildRequest {
                config: a.config,
                select: match (a.all, a.board) {
                    (true, _) => Selection::All,
                    (false, Some(board)) => Selection::AdHoc(AdHoc {
                        board,
                        role: a.role.expect("clap requires --role with --board"),
                        name: a.name,
                    }),
                    (false, None) => Selection::Named(a.nodes),
                },
                base,
                mirror: a.mirror,
                out: a.out,
                offline: a.offline,
                dry_run: a.dry_run,
                cache_dir: None,
                grow_margin: a.grow_margin << 20,
                jobs: a.jobs.max(1),
                shard: a.shard,
                formats: match &a.format {
                    Some(list) => pikube_image::formats::parse_formats(list)?,
                    None => Vec::new(),
                },
            };
            let summary = build::build(&req, &progress)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else if summary.dry_run {
                for n in &summary.nodes {
                    println!(
                        "node {} ({}, board {}) from {}",
                        n.node, n.role, n.board, n.base_url
                    );
                    if let Some(id) = &n.instance_id {
                        println!("  cloud-init instance-id: {id}");
                    }
                    print!("{}", pikube_image::plan::render_table(&n.plan));
                }
                println!("dry run: nothing was written");
            } else {
                for n in &summary.nodes {
                    println!(
                        "{}  {}",
                        n.sha256.as_deref().unwrap_or(""),
                        n.image
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // An interrupted build removes its partial outputs before exiting, so nothing
    // half-written is left behind (outputs only get their final names when complete).
    let _ = ctrlc::set_handler(|| {
        pikube_image::emit::remove_temporaries();
        eprintln!("interrupted: partial outputs removed");
        std::process::exit(130);
    });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
