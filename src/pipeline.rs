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
use crate::plan::{Content, OpView, Payload, Plan, PlanInputs};
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
    for (node, board, image, spec) in &jobs {
        let started = std::time::Instant::now();
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
    if !req.dry_run {
        payloads.write_known_hosts(&req.out)?;
    }
    Ok(BuildSummary {
        dry_run: req.dry_run,
        nodes: results,
    })
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
    argocd: Option<Content>,
    repo_secret: Option<Vec<u8>>,
}

fn downloaded(f: crate::source::Fetched) -> Content {
    Content::File {
        path: f.path,
        size: f.size,
        sha256: f.sha256,
    }
}

/// Reads the join token, refusing a file others can read.
pub fn read_token(path: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "k3s join token {} not found: run `pikube-image init`, or write a token there with mode 0600",
            path.display()
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
            Some(read_token(&cluster.resolve(&cluster.k3s.token_file))?)
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
            (Some(g), true) => Some(self.argocd(g)?),
            _ => None,
        };
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
        })
    }

    fn argocd(&mut self, g: &crate::config::Gitops) -> Result<Content> {
        if let Some(c) = &self.argocd {
            return Ok(c.clone());
        }
        let url = crate::gitops::install_url(&g.argocd_version);
        let content = match self.fetcher {
            None => Content::Download { url: url.clone() },
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
                Content::Bytes(namespaced.into_bytes())
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
