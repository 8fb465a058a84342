//! `pikube-image build`: runs the stages for each selected node.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::boards::{Board, Catalog, ImageChecksum, OsImage};
use crate::config::{Cluster, Node, Role};
use crate::decompress;
use crate::disk::Disk;
use crate::emit::{self, PendingFile};
use crate::formats::Format;
use crate::fs::Image;
use crate::io::overlay::Overlay;
use crate::manifest::{BaseRef, FileRecord, GrowthRecord, Manifest, OutputRecord};
use crate::plan::{Content, OpView, Payload, Plan, PlanInputs};
use crate::progress::Progress;
use crate::progress::human_bytes;
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
    /// Free space left in a root filesystem that had to grow, beyond what the payload needs.
    pub grow_margin: u64,
    /// Nodes built in parallel.
    pub jobs: usize,
    /// Build only this deterministic share of the selected nodes: (index from 1, count).
    pub shard: Option<(usize, usize)>,
    /// Output formats (at least one).
    pub formats: Vec<Format>,
}

/// Default of `--grow-margin`.
pub const DEFAULT_GROW_MARGIN: u64 = 256 << 20;

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
    /// Every file produced for the node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputRecord>,
    /// Whether the prepared base came from the cache (a fleet build reuses it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepared_from_cache: Option<bool>,
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
            images: Vec::new(),
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

/// The nodes of shard `i` of `n` (1-based): every n-th node from the i-th, in the given order.
pub fn shard<T>(items: Vec<T>, (i, n): (usize, usize)) -> Vec<T> {
    items
        .into_iter()
        .enumerate()
        .filter(|(k, _)| k % n == i - 1)
        .map(|(_, t)| t)
        .collect()
}

pub fn build(req: &BuildRequest, progress: &Progress) -> Result<BuildSummary> {
    let mut cluster = load_cluster(&req.config)?;
    let formats = if !req.formats.is_empty() {
        req.formats.clone()
    } else if !cluster.formats.is_empty() {
        crate::formats::parse_formats(&cluster.formats.join(","))?
    } else {
        vec![Format::Raw]
    };
    let req = &BuildRequest {
        formats,
        ..req.clone()
    };
    let mut nodes = select_nodes(&mut cluster, req)?;
    if let Some(s) = req.shard {
        nodes = shard(nodes, s);
        if nodes.is_empty() {
            progress.message(&format!("shard {}/{} has no nodes to build", s.0, s.1));
        }
    }
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
        for p in emit::sweep_stale(&req.out, "partial") {
            progress.message(&format!(
                "removed {} left by an interrupted build",
                p.display()
            ));
        }
    }
    let needs_downloads = cluster.k3s.install
        || cluster.gitops.is_some()
        || jobs.iter().any(|j| j.3.artifact.is_some());
    let fetcher = if req.dry_run || !needs_downloads {
        None
    } else {
        let cache = match &req.cache_dir {
            Some(d) => Cache::open(d)?,
            None => Cache::open_default()?,
        };
        Some(Fetcher::new(cache, mirror, req.offline, progress.clone()))
    };

    let mut payloads = Payloads::new(&cluster, req, fetcher.as_ref(), progress)?;
    let mut results = Vec::new();
    let mut work: Vec<NodeWork> = Vec::new();
    for (node, board, image, spec) in &jobs {
        let payload = payloads.for_node(node, board)?;
        let plan = Plan::for_node(
            &cluster,
            node,
            board,
            image,
            &PlanInputs {
                base_sha256: &spec.identity,
                payload: &payload,
            },
        )?;
        results.push(NodeResult {
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
            outputs: Vec::new(),
            prepared_from_cache: None,
            seconds: 0.0,
        });
        if req.dry_run {
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
        let mut w = NodeWork {
            plan,
            spec: spec.clone(),
            base_path,
            base_sha256,
            key: String::new(),
        };
        w.key = prepared_key(&w, req.grow_margin);
        work.push(w);
    }
    if req.dry_run {
        return Ok(BuildSummary {
            dry_run: true,
            nodes: results,
        });
    }

    // Stage 1: one prepared base per (base image, role payload), reused across builds.
    let cache_root = match &req.cache_dir {
        Some(d) => Cache::open(d)?,
        None => Cache::open_default()?,
    }
    .root()
    .to_path_buf();
    // A prepared base is made (and cached) for fleet builds, where nodes share it now or in
    // the next build; one in the cache is always reused. A build of a single node writes its
    // image once, straight into the output file.
    let mut prepared: BTreeMap<String, Prepared> = BTreeMap::new();
    for w in &work {
        let key = w.key.clone();
        if !prepared.contains_key(&key) && (work.len() > 1 || prepared_cached(&cache_root, &key)) {
            let mut p = prepare(&cache_root, &key, w, req.grow_margin, progress)
                .with_context(|| format!("preparing the base image for node '{}'", w.plan.node))?;
            for &f in req.formats.iter().filter(|f| f.is_compressed()) {
                let dir = cache_root
                    .join("prepared")
                    .join(&key)
                    .join(format!("frames-{}", f.name()));
                let index = crate::formats::FrameIndex::load_or_build(&p.path, f, &dir, progress)?;
                p.frames.insert(f, index);
            }
            prepared.insert(key, p);
        }
    }

    // Stage 2: derive every node from its prepared base, `--jobs` at a time.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let outcomes: Vec<std::sync::Mutex<Option<Result<Derived>>>> =
        work.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..req.jobs.clamp(1, work.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= work.len() || failed.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let w = &work[i];
                    let p = prepared.get(&w.key);
                    let started = std::time::Instant::now();
                    let r = derive(req, w, p, progress)
                        .with_context(|| format!("building node '{}'", w.plan.node))
                        .map(|mut d| {
                            d.seconds = started.elapsed().as_secs_f64();
                            d
                        });
                    if r.is_err() {
                        failed.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    *outcomes[i].lock().expect("outcome lock") = Some(r);
                }
            });
        }
    });
    let mut by_node = BTreeMap::new();
    for (w, o) in work.iter().zip(outcomes) {
        match o.into_inner().expect("outcome lock") {
            Some(Ok(d)) => {
                by_node.insert(w.plan.node.clone(), d);
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    let mut known = BTreeMap::new();
    for r in &mut results {
        if let Some(d) = by_node.remove(&r.node) {
            for o in &d.outputs {
                known.insert(o.file.clone(), o.sha256.clone());
            }
            r.image = d.path;
            r.sha256 = d.sha256;
            r.size = Some(d.size);
            r.manifest = Some(d.manifest);
            r.outputs = d.outputs;
            r.seconds = d.seconds;
        }
    }
    for (r, w) in results.iter_mut().zip(&work) {
        r.prepared_from_cache = Some(prepared.get(&w.key).is_some_and(|p| p.from_cache));
    }
    payloads.write_known_hosts(&req.out)?;
    crate::formats::write_sha256sums_known(&req.out, &known)?;
    payloads.save_lock()?;
    Ok(BuildSummary {
        dry_run: false,
        nodes: results,
    })
}

/// `pikube-image images update`: resolves every image of the inventory again (per node
/// platform, Argo CD's included), pulls them into the cache and rewrites images.lock.
/// Returns the lock's path and how many references it pins.
pub fn update_images(
    config: &Path,
    mirror: Option<String>,
    cache_dir: Option<&Path>,
    progress: &Progress,
) -> Result<(PathBuf, usize)> {
    let cluster = load_cluster(config)?;
    let catalog = Catalog::load()?;
    let cache = match cache_dir {
        Some(d) => Cache::open(d)?,
        None => Cache::open_default()?,
    };
    let fetcher = Fetcher::new(
        cache.clone(),
        mirror.or_else(|| cluster.mirror.clone()),
        false,
        progress.clone(),
    );
    let argocd_images = match &cluster.gitops {
        Some(g) if cluster.images.argocd != crate::config::ArgocdImages::None => {
            let url = crate::gitops::install_url(&g.argocd_version);
            let text = fetcher.fetch_text(&url)?;
            crate::gitops::install_images(&text)
                .with_context(|| format!("Argo CD install manifest {url}"))?
        }
        _ => Vec::new(),
    };
    let mut pre = crate::images::Preloader::new(&cluster, cache, false, true, progress)?;
    let first = cluster.first_server().map(|n| n.name.clone());
    let mut count = 0;
    for node in &cluster.nodes {
        let board = catalog
            .board(&node.board)
            .with_context(|| format!("node '{}' in {}", node.name, config.display()))?;
        let (mut refs, own) = cluster.images_for(node);
        refs.extend(own);
        let argocd_here = match cluster.images.argocd {
            crate::config::ArgocdImages::FirstServer => {
                first.as_deref() == Some(node.name.as_str())
            }
            crate::config::ArgocdImages::AllServers => node.role == Role::Server,
            crate::config::ArgocdImages::None => false,
        };
        if argocd_here {
            refs.extend(argocd_images.iter().cloned());
        }
        refs.sort();
        refs.dedup();
        count += pre.resolve(&refs, board.arch)?.len();
    }
    let path = match pre.save_lock(&cluster)? {
        Some(p) => p,
        None => crate::images::Lock::default().save(&cluster)?,
    };
    Ok((path, count))
}

/// A node ready to be built: its plan and its (downloaded) base image.
struct NodeWork {
    plan: Plan,
    spec: BaseSpec,
    base_path: PathBuf,
    base_sha256: String,
    /// Identity of the prepared base it derives from ([`prepared_key`]).
    key: String,
}

/// A decompressed base image with a role's shared ops applied, kept in the cache.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct Prepared {
    #[serde(skip)]
    path: PathBuf,
    files: Vec<FileRecord>,
    growth: Option<GrowthRecord>,
    /// Compressed frames of the prepared image, per compressed output format.
    #[serde(skip)]
    frames: BTreeMap<Format, crate::formats::FrameIndex>,
    /// Whether it came from an earlier build.
    #[serde(skip)]
    from_cache: bool,
}

struct Derived {
    /// The raw image, when it was kept.
    path: Option<PathBuf>,
    /// Its SHA-256, when it was kept.
    sha256: Option<String>,
    size: u64,
    manifest: PathBuf,
    outputs: Vec<OutputRecord>,
    seconds: f64,
}

/// Identifies a prepared base: the base image, the OS image entry, the role and every shared
/// op (content digests included), the tool version, the growth margin and the build time
/// when it is fixed (reproducible builds).
fn prepared_key(w: &NodeWork, margin: u64) -> String {
    let shared: Vec<OpView> = w.plan.views().into_iter().filter(|v| v.shared).collect();
    let material = serde_json::json!({
        "format": 1,
        "tool": env!("CARGO_PKG_VERSION"),
        "base": w.base_sha256,
        "image": w.plan.image.name,
        "role": w.plan.role.as_str(),
        "margin": margin,
        "epoch": std::env::var("SOURCE_DATE_EPOCH").ok(),
        "ops": shared,
    });
    crate::io::sha256_bytes(material.to_string().as_bytes())
}

const PREPARED_META: &str = "prepared.json";
const PREPARED_IMAGE: &str = "base.img";

/// The prepared base for `key`: from the cache, or built (decompressed, grown for the whole
/// plan when needed, shared ops applied) under a lock and moved into the cache when complete.
fn prepare(
    cache_root: &Path,
    key: &str,
    w: &NodeWork,
    margin: u64,
    progress: &Progress,
) -> Result<Prepared> {
    use fs4::fs_std::FileExt as _;
    let root = cache_root.join("prepared");
    let dir = root.join(key);
    let load = |dir: &Path| -> Result<Prepared> {
        let meta = dir.join(PREPARED_META);
        let text = std::fs::read_to_string(&meta)
            .with_context(|| format!("cannot read {}", meta.display()))?;
        let mut p: Prepared = serde_json::from_str(&text)
            .with_context(|| format!("{} is damaged: delete {}", meta.display(), dir.display()))?;
        p.path = dir.join(PREPARED_IMAGE);
        p.from_cache = true;
        Ok(p)
    };
    if dir.join(PREPARED_META).exists() {
        progress.message(&format!(
            "using prepared base {} from the cache",
            &key[..12]
        ));
        return load(&dir);
    }
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let lock_path = root.join(format!("{key}.lock"));
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    lock.lock_exclusive()
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    if dir.join(PREPARED_META).exists() {
        return load(&dir);
    }
    emit::sweep_stale(&root, "tmp");
    let tmp = root.join(format!(".{key}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    emit::register_temporary(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let built = (|| -> Result<Prepared> {
        let img = tmp.join(PREPARED_IMAGE);
        let (files, growth) = prepare_image(&img, w, margin, progress)?;
        // On disk before it enters the cache, where later builds trust it.
        open_rw(&img)?
            .sync_all()
            .with_context(|| format!("cannot sync {}", img.display()))?;
        let p = Prepared {
            path: PathBuf::new(),
            files,
            growth,
            frames: BTreeMap::new(),
            from_cache: false,
        };
        emit::write_atomic(
            &tmp.join(PREPARED_META),
            serde_json::to_string_pretty(&p)?.as_bytes(),
        )?;
        Ok(p)
    })();
    emit::unregister_temporary(&tmp);
    match built {
        Ok(mut p) => {
            std::fs::rename(&tmp, &dir)
                .with_context(|| format!("cannot move {} to {}", tmp.display(), dir.display()))?;
            p.path = dir.join(PREPARED_IMAGE);
            Ok(p)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Decompresses the node's base image into `img` and writes the role's shared ops into it,
/// growing it first when the whole plan would not fit.
fn prepare_image(
    img: &Path,
    w: &NodeWork,
    margin: u64,
    progress: &Progress,
) -> Result<(Vec<FileRecord>, Option<GrowthRecord>)> {
    decompress::decompress_to(&w.base_path, img, progress)?;
    let mut disk = Disk::read(img)?;
    let file = open_rw(img)?;
    // Size for the whole plan, so node images normally need no growth of their own.
    let all: Vec<&crate::plan::Op> = w.plan.ops.iter().collect();
    let growth = make_room(&file, img, &disk, &all, margin, progress)?;
    if growth.is_some() {
        disk = Disk::read(img)?;
    }
    let image: Image = Arc::new(file);
    let files = crate::fs::apply(&image, &disk, &w.plan.shared_ops())?;
    Ok((files, growth))
}

/// Whether a prepared base for `key` is in the cache.
fn prepared_cached(cache_root: &Path, key: &str) -> bool {
    cache_root
        .join("prepared")
        .join(key)
        .join(PREPARED_META)
        .exists()
}

/// One node image. With a prepared base, the node's own ops are written to an overlay on
/// it (the base is shared and never copied for that), and every output is made from the
/// overlay, touching only what the node changed. Without one (a single node whose base is
/// not cached, or a node whose own files do not fit in the prepared base), the base is
/// decompressed straight into the output with every op applied, which writes the image
/// only once.
fn derive(
    req: &BuildRequest,
    w: &NodeWork,
    prepared: Option<&Prepared>,
    progress: &Progress,
) -> Result<Derived> {
    let node_ops = w.plan.node_ops();
    if let Some(p) = prepared {
        let overlay = Arc::new(Overlay::open(&p.path, &req.out)?);
        let image: Image = overlay.clone();
        let disk = Disk::read(&p.path)?;
        if crate::fs::ext4_shortfall(&image, &disk, &node_ops)?.is_empty() {
            let mut files = p.files.clone();
            files.extend(crate::fs::apply(&image, &disk, &node_ops)?);
            return emit_outputs(
                req,
                w,
                files,
                p.growth.clone(),
                Built::Overlay(&overlay, p),
                progress,
            );
        }
        progress.message(&format!(
            "the files of node '{}' do not fit in its prepared base: building it from the base image",
            w.plan.node
        ));
    }
    let pending = PendingFile::create(&req.out, &format!("{}.img", w.plan.node))?;
    let (mut files, growth) = prepare_image(pending.path(), w, req.grow_margin, progress)?;
    let disk = Disk::read(pending.path())?;
    let image: Image = Arc::new(open_rw(pending.path())?);
    files.extend(crate::fs::apply(&image, &disk, &node_ops)?);
    // Synced when it gets its final name.
    emit_outputs(req, w, files, growth, Built::File(pending), progress)
}

fn open_rw(path: &Path) -> Result<std::fs::File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// A finished node image: an overlay on a prepared base, or a complete file not yet under
/// its final name.
enum Built<'a> {
    Overlay(&'a Overlay, &'a Prepared),
    File(PendingFile),
}

/// Writes the node's outputs in the requested formats, their `.sha256` files and the
/// manifest.
fn emit_outputs(
    req: &BuildRequest,
    w: &NodeWork,
    files: Vec<FileRecord>,
    growth: Option<GrowthRecord>,
    built: Built,
    progress: &Progress,
) -> Result<Derived> {
    let plan = &w.plan;
    let img_name = format!("{}.img", plan.node);
    let wants_raw = req.formats.contains(&Format::Raw);
    // The raw image as a file, when it is an output or a bmap needs it; its SHA-256 only
    // when it is an output.
    let (overlay, raw, size, raw_sha) = match built {
        Built::File(pending) => {
            let size = std::fs::metadata(pending.path())
                .with_context(|| format!("cannot stat {}", pending.path().display()))?
                .len();
            let sha = match wants_raw {
                true => Some(emit::hash_file(pending.path(), progress)?),
                false => None,
            };
            (None, Some(pending), size, sha)
        }
        Built::Overlay(o, p) if wants_raw || req.formats.contains(&Format::Bmap) => {
            let mut pending = PendingFile::create(&req.out, &img_name)?;
            let path = pending.path().to_path_buf();
            let sha = o.write_image(pending.file(), &path, &img_name, progress)?;
            (Some((o, p)), Some(pending), o.size(), Some(sha))
        }
        Built::Overlay(o, p) => (Some((o, p)), None, o.size(), None),
    };
    let raw_record = raw_sha.filter(|_| wants_raw).map(|sha256| OutputRecord {
        file: img_name.clone(),
        size,
        sha256,
    });
    let mut outputs: Vec<OutputRecord> = raw_record.iter().cloned().collect();
    for &f in &req.formats {
        let name = match f {
            Format::Raw => continue,
            Format::Bmap => format!("{}.bmap", plan.node),
            _ => format!("{img_name}{}", f.suffix()),
        };
        let out = req.out.join(&name);
        let raw_path = || raw.as_ref().map(|r| r.path()).expect("a raw image file");
        let (size, sha256) = match (f, overlay) {
            (Format::Bmap, _) => crate::formats::write_bmap(raw_path(), &out, progress)?,
            (_, Some((o, p))) => {
                let s = crate::formats::write_compressed_overlay(
                    o,
                    p.frames.get(&f),
                    f,
                    &out,
                    progress,
                )?;
                (s.size, s.sha256)
            }
            (_, None) => crate::formats::write_compressed(raw_path(), f, &out, progress)?,
        };
        emit::write_sha256_file(&out, &sha256)?;
        outputs.push(OutputRecord {
            file: name,
            size,
            sha256,
        });
    }
    let manifest = Manifest {
        tool: crate::manifest::TOOL.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        node: plan.node.clone(),
        board: plan.board.clone(),
        role: plan.role.to_string(),
        base: BaseRef {
            url: w.spec.url.clone(),
            sha256: w.base_sha256.clone(),
            file: w.spec.file_name.clone(),
        },
        contains_secrets: files.iter().any(|f| f.secret),
        files,
        growth,
        image: raw_record.clone(),
        outputs: outputs.clone(),
    };
    let manifest_path = req.out.join(format!("{}.manifest.json", plan.node));
    emit::write_manifest(&manifest_path, &manifest)?;
    let path = match (raw, &raw_record) {
        (Some(pending), Some(r)) => {
            emit::write_sha256_file(&pending.final_path(), &r.sha256)?;
            let path = pending.commit()?;
            progress.message(&format!("wrote {} ({})", path.display(), human_bytes(size)));
            Some(path)
        }
        // Only derived formats were asked for: a raw file was only their source.
        _ => None,
    };
    for o in &outputs {
        if !o.file.ends_with(".img") {
            progress.message(&format!(
                "wrote {} ({})",
                req.out.join(&o.file).display(),
                human_bytes(o.size)
            ));
        }
    }
    Ok(Derived {
        path,
        sha256: raw_record.map(|r| r.sha256),
        size,
        manifest: manifest_path,
        outputs,
        seconds: 0.0,
    })
}

/// Grows the image, its last partition and the ext4 filesystem in it when the plan's payload
/// does not fit, by the shortfall plus `margin`, rounded up to whole MiB.
fn make_room(
    file: &std::fs::File,
    path: &Path,
    disk: &Disk,
    ops: &[&crate::plan::Op],
    margin: u64,
    progress: &Progress,
) -> Result<Option<GrowthRecord>> {
    let image: Image = Arc::new(
        file.try_clone()
            .with_context(|| format!("cannot reopen {}", path.display()))?,
    );
    let short = crate::fs::ext4_shortfall(&image, disk, ops)?;
    let Some(&(number, missing)) = short.first() else {
        return Ok(None);
    };
    let last = disk.last().context("the image has no partitions")?;
    if short.len() > 1 || last.number != number {
        bail!(
            "partition {number} needs {} more but is not the last partition of the image, so it cannot grow: make the payload smaller (overlays, k3s.airgap)",
            human_bytes(missing)
        );
    }
    const MIB: u64 = 1 << 20;
    let grow_by = (missing + margin).div_ceil(MIB) * MIB;
    let old_len = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    let new_len = old_len.div_ceil(MIB) * MIB + grow_by;
    let part = crate::disk::grow::grow_last_partition(path, new_len, number)?;
    let now = crate::build_timestamp();
    let fs = pikube_ext4::grow::grow_fs(file, part.old_start, part.new_size, now).map_err(|e| {
        anyhow::anyhow!("cannot grow the ext4 filesystem of partition {number}: {e}")
    })?;
    progress.message(&format!(
        "grew partition {number} from {} to {} ({} to {} block groups) to fit the payload",
        human_bytes(part.old_size),
        human_bytes(part.new_size),
        fs.old_groups,
        fs.new_groups,
    ));
    Ok(Some(GrowthRecord {
        partition: number,
        old_size: part.old_size,
        new_size: part.new_size,
        image_old_size: old_len,
        image_new_size: new_len,
    }))
}

/// Resolves what plans need from outside the inventory, once per build: the join token,
/// host keys, k3s downloads per architecture, the Argo CD manifest.
struct Payloads<'a> {
    cluster: &'a Cluster,
    dry_run: bool,
    fetcher: Option<&'a Fetcher>,
    progress: &'a Progress,
    secrets: PathBuf,
    token: Option<String>,
    k3s: BTreeMap<&'static str, (Content, Option<(String, Content)>)>,
    argocd: Option<(Content, Vec<String>)>,
    repo_secret: Option<Vec<u8>>,
    preloader: Option<crate::images::Preloader>,
    role_images: BTreeMap<(Role, &'static str), Option<Content>>,
}

fn downloaded(f: crate::source::Fetched) -> Content {
    Content::File {
        path: f.path,
        size: f.size,
        sha256: f.sha256,
    }
}

/// Reads the join token, refusing a file others can read. `cluster_dir` is the directory of
/// cluster.yaml, named in the hint to run `init` there.
pub fn read_token(path: &Path, cluster_dir: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "k3s join token {} not found: run `pikube-image init --dir {}` (it creates only what is missing), or write a token there with mode 0600",
            path.display(),
            cluster_dir.display()
        )
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "k3s join token {} is readable by others: run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .trim()
        .to_string();
    if token.is_empty() || token.contains(char::is_whitespace) {
        bail!(
            "k3s join token {} must hold one token on one line",
            path.display()
        );
    }
    Ok(token)
}

impl<'a> Payloads<'a> {
    fn new(
        cluster: &'a Cluster,
        req: &BuildRequest,
        fetcher: Option<&'a Fetcher>,
        progress: &'a Progress,
    ) -> Result<Payloads<'a>> {
        let token = if cluster.k3s.install {
            Some(read_token(
                &cluster.resolve(&cluster.k3s.token_file),
                &cluster.base_dir,
            )?)
        } else {
            None
        };
        let repo_secret = match cluster.gitops.as_ref() {
            Some(g) => match &g.credentials_file {
                Some(f) => {
                    let path = cluster.resolve(f);
                    let text = std::fs::read_to_string(&path).with_context(|| {
                        format!("cannot read gitops credentials {}", path.display())
                    })?;
                    let creds: crate::gitops::RepoCredentials = serde_saphyr::from_str(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                    Some(crate::gitops::repo_secret(&cluster.cluster, g, &creds)?.into_bytes())
                }
                None => None,
            },
            None => None,
        };
        let preloader = match fetcher {
            Some(f) => Some(crate::images::Preloader::new(
                cluster,
                f.cache().clone(),
                req.offline,
                false,
                progress,
            )?),
            None => None,
        };
        Ok(Payloads {
            cluster,
            dry_run: req.dry_run,
            fetcher,
            progress,
            secrets: cluster.resolve(Path::new("secrets")),
            token,
            k3s: BTreeMap::new(),
            argocd: None,
            repo_secret,
            preloader,
            role_images: BTreeMap::new(),
        })
    }

    fn fetch(&self, a: &Artifact) -> Result<Content> {
        match self.fetcher {
            None => Ok(Content::Download { url: a.url.clone() }),
            Some(f) => Ok(downloaded(f.fetch(a)?)),
        }
    }

    fn for_node(&mut self, node: &Node, board: &Board) -> Result<Payload> {
        let c = self.cluster;
        let host_key = Some(if self.dry_run {
            crate::identity::host_key_preview(&self.secrets, &node.name)?
        } else {
            crate::identity::host_key(&self.secrets, &node.name)?
        });
        let (k3s_binary, k3s_airgap) = if c.k3s.install {
            let arch = board.arch.as_str();
            if !self.k3s.contains_key(arch) {
                let (bin, air) = crate::k3s::artifacts(&c.k3s.version, board.arch);
                let binary = self.fetch(&bin).map_err(|e| {
                    let hint = match e.downcast_ref::<crate::source::SourceError>() {
                        Some(crate::source::SourceError::NotFound { .. }) => {
                            ": is k3s.version in cluster.yaml a published release?"
                        }
                        _ => "",
                    };
                    e.context(format!("k3s {} for {arch}{hint}", c.k3s.version))
                })?;
                let airgap = if c.k3s.airgap {
                    let name = air.url.rsplit('/').next().unwrap_or_default().to_string();
                    Some((name, self.fetch(&air)?))
                } else {
                    None
                };
                self.k3s.insert(arch, (binary, airgap));
            }
            let (b, a) = self.k3s[arch].clone();
            (Some(b), a)
        } else {
            (None, None)
        };
        let first = c.first_server().map(|n| n.name.as_str()) == Some(node.name.as_str());
        let argocd_install = match (&c.gitops, first) {
            (Some(g), true) => Some(self.argocd(g)?.0),
            _ => None,
        };
        // Container images: the role's set is shared, the node's own set is not. Argo CD's
        // images follow `images.argocd`.
        let (mut role_refs, mut node_refs) = c.images_for(node);
        if let Some(g) = &c.gitops {
            use crate::config::ArgocdImages;
            match c.images.argocd {
                ArgocdImages::FirstServer if first => node_refs.extend(self.argocd(g)?.1),
                ArgocdImages::AllServers if node.role == Role::Server => {
                    role_refs.extend(self.argocd(g)?.1)
                }
                _ => {}
            }
        }
        let arch = board.arch.as_str();
        let key = (node.role, arch);
        if !self.role_images.contains_key(&key) {
            let content = self.image_archive(&role_refs, board.arch)?;
            self.role_images.insert(key, content);
        }
        let role_images = self.role_images[&key].clone();
        let node_images = self.image_archive(&node_refs, board.arch)?;
        Ok(Payload {
            k3s_binary,
            k3s_airgap,
            token: self.token.clone(),
            host_key,
            argocd_install,
            repo_secret: if first {
                self.repo_secret.clone()
            } else {
                None
            },
            role_images,
            node_images,
        })
    }

    fn image_archive(
        &mut self,
        refs: &[String],
        arch: crate::boards::Arch,
    ) -> Result<Option<Content>> {
        if refs.is_empty() {
            return Ok(None);
        }
        match &mut self.preloader {
            None => Ok(Some(Content::Download {
                url: format!("registries: {}", refs.join(", ")),
            })),
            Some(p) => p
                .archive(refs, arch, self.progress)
                .with_context(|| format!("container images for {}", arch.as_str())),
        }
    }

    /// Pins what this build resolved in images.lock.
    fn save_lock(&mut self) -> Result<()> {
        if let Some(p) = &mut self.preloader {
            if let Some(path) = p.save_lock(self.cluster)? {
                self.progress
                    .message(&format!("pinned image digests in {}", path.display()));
            }
        }
        Ok(())
    }

    /// The namespaced install manifest and the images it runs.
    fn argocd(&mut self, g: &crate::config::Gitops) -> Result<(Content, Vec<String>)> {
        if let Some(c) = &self.argocd {
            return Ok(c.clone());
        }
        let url = crate::gitops::install_url(&g.argocd_version);
        let content = match self.fetcher {
            None => (Content::Download { url: url.clone() }, Vec::new()),
            Some(f) => {
                let text = match &g.argocd_sha256 {
                    Some(h) => {
                        let got = f.fetch(&Artifact {
                            url: url.clone(),
                            checksum: Checksum::Sha256(h.clone()),
                        })?;
                        std::fs::read_to_string(&got.path)
                            .with_context(|| format!("cannot read {}", got.path.display()))?
                    }
                    None => {
                        let text = f.fetch_text(&url).with_context(|| {
                            format!(
                                "Argo CD {}: check gitops.argocd_version in cluster.yaml",
                                g.argocd_version
                            )
                        })?;
                        self.progress.message(&format!(
                            "Argo CD install manifest {url} has SHA-256 {}: pin it with `gitops.argocd_sha256` in cluster.yaml",
                            crate::io::sha256_bytes(text.as_bytes())
                        ));
                        text
                    }
                };
                let namespaced = crate::gitops::namespaced_install(&text)
                    .with_context(|| format!("Argo CD install manifest {url}"))?;
                let images = crate::gitops::install_images(&text)
                    .with_context(|| format!("Argo CD install manifest {url}"))?;
                (Content::Bytes(namespaced.into_bytes()), images)
            }
        };
        self.argocd = Some(content.clone());
        Ok(content)
    }

    /// `known_hosts` for every node of the inventory (keys are generated for nodes that do
    /// not have one yet), so SSH never has to trust a key on first use.
    fn write_known_hosts(&self, out: &Path) -> Result<()> {
        let mut pairs = Vec::new();
        for n in &self.cluster.nodes {
            pairs.push((
                n.clone(),
                crate::identity::host_key(&self.secrets, &n.name)?,
            ));
        }
        let text = crate::identity::known_hosts(self.cluster, &pairs)?;
        emit::write_atomic(&out.join("known_hosts"), text.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_nodes() {
        let nodes: Vec<u32> = (0..10).collect();
        let mut all: Vec<u32> = (1..=3).flat_map(|i| shard(nodes.clone(), (i, 3))).collect();
        assert_eq!(shard(nodes.clone(), (1, 3)), [0, 3, 6, 9]);
        assert_eq!(shard(nodes.clone(), (3, 3)), [2, 5, 8]);
        all.sort();
        assert_eq!(all, nodes, "every node in exactly one shard");
        assert_eq!(shard(nodes.clone(), (1, 1)), nodes);
    }
}
