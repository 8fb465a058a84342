//! `pikube-image build`: runs the stages for each selected node.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::boards::{Board, Catalog, ImageChecksum, OsImage};
use crate::config::{Cluster, Node, Role};
use crate::decompress;
use crate::disk::Disk;
use crate::emit::{self, PendingFile};
use crate::manifest::{BaseRef, Manifest, OutputRecord};
use crate::plan::{OpView, Plan, PlanInputs};
use crate::progress::Progress;
use crate::source::{Artifact, Cache, Checksum, Fetcher};

/// Which base image to start from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseChoice {
    /// The board's catalog image.
    Catalog,
    /// A local file (compressed or raw).
    File(PathBuf),
    /// A URL, with a pinned digest or the `SHA256SUMS` beside it.
    Url { url: String, sha256: Option<String> },
}

/// A node built from command-line flags instead of the inventory.
#[derive(Debug, Clone)]
pub struct AdHoc {
    pub board: String,
    pub role: Role,
    pub name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub config: PathBuf,
    pub nodes: Vec<String>,
    pub all: bool,
    pub adhoc: Option<AdHoc>,
    pub base: BaseChoice,
    pub mirror: Option<String>,
    pub out: PathBuf,
    pub offline: bool,
    pub dry_run: bool,
    /// Cache directory; the default one when `None`.
    pub cache_dir: Option<PathBuf>,
}

/// What `build` produced, per node (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct NodeResult {
    pub node: String,
    pub board: String,
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    pub base_url: String,
    pub plan: Vec<OpView>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildSummary {
    pub dry_run: bool,
    pub nodes: Vec<NodeResult>,
}

/// A base image identified before download: where it comes from and how it is verified.
#[derive(Debug, Clone)]
struct BaseSpec {
    url: String,
    file_name: String,
    artifact: Option<Artifact>,
    local: Option<PathBuf>,
    /// Digest known before download (pinned or local file): enters the instance-id.
    identity: String,
}

fn base_spec(choice: &BaseChoice, image: &OsImage) -> Result<BaseSpec> {
    let name_of = |u: &str| u.rsplit('/').next().unwrap_or(u).to_string();
    Ok(match choice {
        BaseChoice::Catalog => {
            let checksum = match &image.checksum {
                ImageChecksum::Sha256(h) => Checksum::Sha256(h.clone()),
                ImageChecksum::SumsUrl(u) => Checksum::SumsFile {
                    url: u.clone(),
                    name: image.file_name().to_string(),
                },
            };
            let identity = match &image.checksum {
                ImageChecksum::Sha256(h) => h.clone(),
                ImageChecksum::SumsUrl(_) => image.url.clone(),
            };
            BaseSpec {
                url: image.url.clone(),
                file_name: image.file_name().to_string(),
                artifact: Some(Artifact {
                    url: image.url.clone(),
                    checksum,
                }),
                local: None,
                identity,
            }
        }
        BaseChoice::Url { url, sha256 } => {
            let file_name = name_of(url);
            let checksum = match sha256 {
                Some(h) => Checksum::Sha256(h.to_ascii_lowercase()),
                None => {
                    let dir = url.rsplit_once('/').map(|(d, _)| d).unwrap_or(url);
                    Checksum::SumsFile {
                        url: format!("{dir}/SHA256SUMS"),
                        name: file_name.clone(),
                    }
                }
            };
            BaseSpec {
                url: url.clone(),
                file_name,
                artifact: Some(Artifact {
                    url: url.clone(),
                    checksum,
                }),
                local: None,
                identity: sha256.clone().unwrap_or_else(|| url.clone()),
            }
        }
        BaseChoice::File(path) => BaseSpec {
            url: format!("file://{}", path.display()),
            file_name: name_of(&path.to_string_lossy()),
            artifact: None,
            local: Some(path.clone()),
            identity: String::new(),
        },
    })
}

/// Picks the nodes to build: `--all`, named `--node`s, or one ad-hoc node.
pub fn select_nodes(cluster: &mut Cluster, req: &BuildRequest) -> Result<Vec<Node>> {
    if let Some(adhoc) = &req.adhoc {
        let name = match &adhoc.name {
            Some(n) => n.clone(),
            None => {
                let suffix: u32 = rand::random::<u32>() & 0xffffff;
                format!("{}-{}-{suffix:06x}", adhoc.role, adhoc.board)
            }
        };
        if cluster.node(&name).is_some() {
            bail!(
                "a node named '{name}' is already in {}: build it with --node {name}, or pick another --name",
                req.config.display()
            );
        }
        let node = Node {
            name,
            board: adhoc.board.clone(),
            os: None,
            role: adhoc.role,
            ip: None,
            mac: None,
            labels: BTreeMap::new(),
            overlays: Vec::new(),
        };
        cluster.nodes.push(node.clone());
        cluster
            .validate()
            .context("the ad-hoc node does not fit the inventory")?;
        return Ok(vec![node]);
    }
    if req.all {
        if cluster.nodes.is_empty() {
            bail!(
                "{} lists no nodes: add some under `nodes:`",
                req.config.display()
            );
        }
        return Ok(cluster.nodes.clone());
    }
    if req.nodes.is_empty() {
        bail!(
            "nothing to build: name nodes with --node NAME (or --all), or build an ad-hoc node with --board BOARD --role ROLE"
        );
    }
    req.nodes
        .iter()
        .map(|n| {
            cluster.node(n).cloned().with_context(|| {
                let known: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
                format!(
                    "no node '{n}' in {} (nodes: {})",
                    req.config.display(),
                    known.join(", ")
                )
            })
        })
        .collect()
}

/// Loads the cluster file, with a pointer to `init` when it is missing.
pub fn load_cluster(path: &Path) -> Result<Cluster> {
    if !path.exists() {
        bail!(
            "{} not found: run `pikube-image init` to create a cluster.yaml (and secrets/), or pass --config FILE",
            path.display()
        );
    }
    Cluster::load(path)
}

pub fn build(req: &BuildRequest, progress: &Progress) -> Result<BuildSummary> {
    let mut cluster = load_cluster(&req.config)?;
    let nodes = select_nodes(&mut cluster, req)?;
    let catalog = Catalog::load()?;
    let mirror = req.mirror.clone().or_else(|| cluster.mirror.clone());

    // Resolve every node's board and image first: a typo fails before any download.
    let mut jobs: Vec<(Node, &Board, &OsImage, BaseSpec)> = Vec::new();
    for node in nodes {
        let at = || format!("node '{}' in {}", node.name, req.config.display());
        let board = catalog.board(&node.board).with_context(at)?;
        let image = catalog
            .image_for(board, node.os.as_deref())
            .with_context(at)?;
        let spec = base_spec(&req.base, image)?;
        jobs.push((node, board, image, spec));
    }

    // Local base files are hashed once; their digest is part of each node's identity.
    let mut local_digests: BTreeMap<PathBuf, String> = BTreeMap::new();
    for (_, _, _, spec) in &mut jobs {
        if let Some(path) = &spec.local {
            if !local_digests.contains_key(path) {
                let d = emit::hash_file(path, progress)
                    .with_context(|| format!("cannot read base image {}", path.display()))?;
                local_digests.insert(path.clone(), d);
            }
            spec.identity = local_digests[path].clone();
        }
    }

    if !req.dry_run {
        std::fs::create_dir_all(&req.out)
            .with_context(|| format!("cannot create output directory {}", req.out.display()))?;
    }
    let fetcher = if req.dry_run || jobs.iter().all(|j| j.3.artifact.is_none()) {
        None
    } else {
        let cache = match &req.cache_dir {
            Some(d) => Cache::open(d)?,
            None => Cache::open_default()?,
        };
        Some(Fetcher::new(cache, mirror, req.offline, progress.clone()))
    };

    let mut results = Vec::new();
    for (node, board, image, spec) in &jobs {
        let started = std::time::Instant::now();
        let plan = Plan::for_node(
            &cluster,
            node,
            board,
            image,
            &PlanInputs {
                base_sha256: &spec.identity,
            },
        )?;
        let mut result = NodeResult {
            node: node.name.clone(),
            board: board.name.clone(),
            role: node.role.to_string(),
            image: None,
            sha256: None,
            size: None,
            manifest: None,
            instance_id: plan.instance_id.clone(),
            base_url: spec.url.clone(),
            plan: plan.views(),
            seconds: 0.0,
        };
        if req.dry_run {
            results.push(result);
            continue;
        }
        let (base_path, base_sha256) = match (&spec.local, &spec.artifact, &fetcher) {
            (Some(p), _, _) => (p.clone(), local_digests[p].clone()),
            (None, Some(a), Some(f)) => {
                let got = f.fetch(a)?;
                (got.path, got.sha256)
            }
            _ => unreachable!("a base is either local or downloadable"),
        };
        let (path, sha, size, manifest_path) =
            build_one(req, &plan, &base_path, &base_sha256, spec, progress)
                .with_context(|| format!("building node '{}'", node.name))?;
        result.image = Some(path);
        result.sha256 = Some(sha);
        result.size = Some(size);
        result.manifest = Some(manifest_path);
        result.seconds = started.elapsed().as_secs_f64();
        results.push(result);
    }
    Ok(BuildSummary {
        dry_run: req.dry_run,
        nodes: results,
    })
}

fn build_one(
    req: &BuildRequest,
    plan: &Plan,
    base_path: &Path,
    base_sha256: &str,
    spec: &BaseSpec,
    progress: &Progress,
) -> Result<(PathBuf, String, u64, PathBuf)> {
    let img_name = format!("{}.img", plan.node);
    let mut pending = PendingFile::create(&req.out, &img_name)?;
    decompress::decompress_to(base_path, pending.path(), progress)?;
    let disk = Disk::read(pending.path())?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(pending.path())
        .with_context(|| format!("cannot open {}", pending.path().display()))?;
    let files = crate::fs::apply(&file, &disk, plan)?;
    file.sync_all()
        .with_context(|| format!("cannot sync {}", pending.path().display()))?;
    drop(file);
    let size = pending
        .file()
        .metadata()
        .with_context(|| format!("cannot stat {}", pending.path().display()))?
        .len();
    let sha = emit::hash_file(pending.path(), progress)?;
    let contains_secrets = files.iter().any(|f| f.secret);
    let manifest = Manifest {
        tool: crate::manifest::TOOL.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        node: plan.node.clone(),
        board: plan.board.clone(),
        role: plan.role.to_string(),
        base: BaseRef {
            url: spec.url.clone(),
            sha256: base_sha256.to_string(),
            file: spec.file_name.clone(),
        },
        files,
        growth: None,
        contains_secrets,
        image: Some(OutputRecord {
            file: img_name.clone(),
            size,
            sha256: sha.clone(),
        }),
    };
    let final_img = pending.final_path();
    let manifest_path = req.out.join(format!("{}.manifest.json", plan.node));
    emit::write_manifest(&manifest_path, &manifest)?;
    emit::write_sha256_file(&final_img, &sha)?;
    let path = pending.commit()?;
    progress.message(&format!(
        "wrote {} ({})",
        path.display(),
        crate::progress::human_bytes(size)
    ));
    Ok((path, sha, size, manifest_path))
}
