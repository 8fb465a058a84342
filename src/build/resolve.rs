//! Resolving what plans need from outside the inventory, once per build: the join token,
//! host keys, k3s downloads per architecture, the Argo CD manifest and container image
//! archives.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::boards::Board;
use crate::config::{Cluster, Node, Role};
use crate::plan::{Content, Payload};
use crate::progress::Progress;
use crate::registry::ImageRef;
use crate::source::{Artifact, Checksum, Fetcher};

/// Resolves what plans need from outside the inventory, once per build: the join token,
/// host keys, k3s downloads per architecture, the Argo CD manifest.
pub struct Resolver<'a> {
    cluster: &'a Cluster,
    dry_run: bool,
    fetcher: Option<&'a Fetcher>,
    progress: &'a Progress,
    secrets: PathBuf,
    token: Option<String>,
    k3s: BTreeMap<&'static str, (Content, Option<(String, Content)>)>,
    argocd: Option<(Content, Vec<ImageRef>)>,
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

impl<'a> Resolver<'a> {
    /// `dry_run`: nothing is downloaded or generated; `offline`: images come from the cache
    /// only.
    pub fn new(
        cluster: &'a Cluster,
        dry_run: bool,
        offline: bool,
        fetcher: Option<&'a Fetcher>,
        progress: &'a Progress,
    ) -> Result<Resolver<'a>> {
        let token = if cluster.k3s.install {
            Some(read_token(
                &cluster.inventory_path("k3s.token_file", &cluster.k3s.token_file)?,
                &cluster.base_dir,
            )?)
        } else {
            None
        };
        let repo_secret = match cluster.gitops.as_ref() {
            Some(g) => match &g.credentials_file {
                Some(f) => {
                    let path = cluster.inventory_path("gitops.credentials_file", f)?;
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
                offline,
                false,
                progress,
            )?),
            None => None,
        };
        Ok(Resolver {
            cluster,
            dry_run,
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

    pub fn for_node(&mut self, node: &Node, board: &Board) -> Result<Payload> {
        let c = self.cluster;
        let host_key = Some(if self.dry_run {
            crate::host_keys::host_key_preview(&self.secrets, &node.name)?
        } else {
            crate::host_keys::host_key(&self.secrets, &node.name)?
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
                // Argo CD has no images for 32-bit ARM: such servers get none.
                ArgocdImages::AllServers
                    if node.role == Role::Server && crate::gitops::runs_on(board.arch) =>
                {
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
        refs: &[ImageRef],
        arch: crate::boards::Arch,
    ) -> Result<Option<Content>> {
        if refs.is_empty() {
            return Ok(None);
        }
        match &mut self.preloader {
            None => Ok(Some(Content::Download {
                url: format!(
                    "registries: {}",
                    refs.iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })),
            Some(p) => p
                .archive(refs, arch, self.progress)
                .with_context(|| format!("container images for {}", arch.as_str())),
        }
    }

    /// Pins what this build resolved in images.lock.
    pub fn save_lock(&mut self) -> Result<()> {
        if let Some(p) = &mut self.preloader {
            if let Some(path) = p.save_lock(self.cluster)? {
                self.progress
                    .message(&format!("pinned image digests in {}", path.display()));
            }
        }
        Ok(())
    }

    /// The namespaced install manifest and the images it runs.
    fn argocd(&mut self, g: &crate::config::Gitops) -> Result<(Content, Vec<ImageRef>)> {
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
}
