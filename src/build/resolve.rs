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
use crate::source::{Artifact, Checksum, Fetcher, SourceError};

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
    flux: Option<crate::flux::Components>,
    repo_secret: Option<Vec<u8>>,
    preloader: Option<crate::images::Preloader>,
    role_images: BTreeMap<(Role, &'static str), Option<Content>>,
    /// Wi-Fi passphrases by file, each read once.
    passphrases: BTreeMap<PathBuf, crate::netconfig::Passphrase>,
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
            Some(g) if g.engine == crate::config::GitopsEngine::Flux => {
                match crate::flux::read_credentials(cluster, g)? {
                    Some(c) => Some(crate::flux::secret_yaml(&c)?.into_bytes()),
                    None => None,
                }
            }
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
            flux: None,
            repo_secret,
            preloader,
            role_images: BTreeMap::new(),
            passphrases: BTreeMap::new(),
        })
    }

    fn fetch(&self, a: &Artifact) -> Result<Content> {
        match self.fetcher {
            None => Ok(Content::Download { url: a.url.clone() }),
            Some(f) => Ok(downloaded(f.fetch(a)?)),
        }
    }

    /// The Wi-Fi network `node` joins, with the passphrase read from its file (a secret,
    /// refused when others can read it).
    pub fn wifi(&mut self, node: &Node) -> Result<Option<crate::netconfig::WifiJoin>> {
        let Some((key, w)) = self.cluster.wifi_for(node) else {
            return Ok(None);
        };
        let key = format!("{key}.passphrase_file");
        let path = self.cluster.inventory_path(&key, &w.passphrase_file)?;
        if !self.passphrases.contains_key(&path) {
            let p = crate::netconfig::Passphrase::read(&path, &key)?;
            self.passphrases.insert(path.clone(), p);
        }
        Ok(Some(crate::netconfig::WifiJoin {
            ssid: w.ssid.clone(),
            passphrase: self.passphrases[&path].clone(),
            country: w.country.clone(),
        }))
    }

    pub fn for_node(&mut self, node: &Node, board: &Board) -> Result<Payload> {
        let c = self.cluster;
        let wifi = self.wifi(node)?;
        let host_key = Some(if self.dry_run {
            crate::host_keys::host_key_preview(&self.secrets, &node.name)?
        } else {
            crate::host_keys::host_key(&self.secrets, &node.name)?
        });
        let (k3s_binary, k3s_airgap) = if c.k3s.install {
            let arch = board.arch.as_str();
            if !self.k3s.contains_key(arch) {
                let got = self.k3s_release(board.arch);
                self.k3s.insert(arch, got?);
            }
            let (b, a) = self.k3s[arch].clone();
            (Some(b), a)
        } else {
            (None, None)
        };
        let first = c.first_server().map(|n| n.name.as_str()) == Some(node.name.as_str());
        use crate::config::GitopsEngine;
        let gitops = c.gitops.as_ref();
        let engine = gitops.map(|g| g.engine);
        let argocd_install = match (gitops, first) {
            (Some(g), true) if g.engine == GitopsEngine::Argocd => Some(self.argocd(g)?.0),
            _ => None,
        };
        let flux = match (gitops, first) {
            (Some(g), true) if g.engine == GitopsEngine::Flux => Some(self.flux(g)?),
            _ => None,
        };
        // Container images: the role's set is shared, the node's own set is not. Argo CD's
        // images follow `images.argocd`; Flux's go to the first server, which installs it;
        // kube-vip's to every server, where it runs.
        let (mut role_refs, mut node_refs) = c.images_for(node);
        let add = |refs: &mut Vec<ImageRef>, r: &ImageRef| {
            if !refs.contains(r) {
                refs.push(r.clone());
            }
        };
        for r in flux.iter().flat_map(|f| &f.images) {
            add(&mut node_refs, r);
        }
        if let (Some(vip), Role::Server) = (&c.k3s.vip, node.role) {
            add(&mut role_refs, &vip.image());
        }
        if let (Some(g), Some(GitopsEngine::Argocd)) = (gitops, engine) {
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
            flux_components: flux.map(|f| f.manifest),
            repo_secret: if first {
                self.repo_secret.clone()
            } else {
                None
            },
            role_images,
            node_images,
            wifi,
        })
    }

    /// The k3s binary and airgap tarball for `arch`: from `k3s.release_dir` when set, else
    /// downloaded (or from the cache).
    fn k3s_release(
        &self,
        arch: crate::boards::Arch,
    ) -> Result<(Content, Option<(String, Content)>)> {
        let k = &self.cluster.k3s;
        let what = format!("k3s {} for {}", k.version, arch.as_str());
        let (bin, air) = match &k.release_dir {
            Some(d) => {
                let dir = self.cluster.inventory_path("k3s.release_dir", d)?;
                crate::k3s::local_artifacts(&dir, &k.version, arch, k.airgap)
                    .with_context(|| what.clone())?
            }
            None => {
                let (bin, air) = crate::k3s::artifacts(&k.version, arch);
                (bin, k.airgap.then_some(air))
            }
        };
        let fix = || k3s_fix(&k.version, arch, k.release_dir.is_some());
        let binary = self.fetch(&bin).map_err(|e| {
            let hint = match e.downcast_ref::<SourceError>() {
                Some(SourceError::NotFound { .. }) => {
                    ": is k3s.version in cluster.yaml a published release?"
                }
                _ => "",
            };
            with_fix(e.context(format!("{what}{hint}")), &fix())
        })?;
        let airgap = match air {
            Some(air) => {
                let name = air.url.rsplit('/').next().unwrap_or_default().to_string();
                let content = self
                    .fetch(&air)
                    .map_err(|e| with_fix(e.context(what.clone()), &fix()))?;
                Some((name, content))
            }
            None => None,
        };
        Ok((binary, airgap))
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
            Some(p) => p.archive(refs, arch, self.progress).map_err(|e| {
                let e = e.context(format!("container images for {}", arch.as_str()));
                with_fix(e, &images_fix(self.cluster))
            }),
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

    /// Flux's install manifest narrowed to the controllers asked for, and their images.
    fn flux(&mut self, g: &crate::config::Gitops) -> Result<crate::flux::Components> {
        if let Some(c) = &self.flux {
            return Ok(c.clone());
        }
        let settings = crate::flux::settings(g);
        let components = match self.fetcher {
            None => crate::flux::Components {
                manifest: Content::Download {
                    url: crate::flux::install_url(&settings.version),
                },
                images: Vec::new(),
            },
            Some(f) => crate::flux::fetch_components(f, &settings, self.progress)?,
        };
        self.flux = Some(components.clone());
        Ok(components)
    }

    /// The namespaced install manifest and the images it runs.
    fn argocd(&mut self, g: &crate::config::Gitops) -> Result<(Content, Vec<ImageRef>)> {
        if let Some(c) = &self.argocd {
            return Ok(c.clone());
        }
        let upstream = crate::gitops::install_url(&g.argocd_version);
        let local = match &g.argocd_manifest {
            Some(f) => Some(
                self.cluster
                    .inventory_path("gitops.argocd_manifest", f)
                    .and_then(|p| {
                        let p = std::path::absolute(&p)
                            .with_context(|| format!("cannot resolve {}", p.display()))?;
                        url::Url::from_file_path(&p)
                            .map_err(|()| anyhow::anyhow!("cannot name {} as a URL", p.display()))
                    })?
                    .to_string(),
            ),
            None => None,
        };
        let url = local.clone().unwrap_or_else(|| upstream.clone());
        let content = match self.fetcher {
            None => (Content::Download { url: url.clone() }, Vec::new()),
            Some(f) => {
                let what = format!("Argo CD {} install manifest", g.argocd_version);
                let fix = argocd_fix(&upstream, local.is_some());
                let text = match &g.argocd_sha256 {
                    Some(h) => {
                        let got = f
                            .fetch(&Artifact {
                                url: url.clone(),
                                checksum: Checksum::Sha256(h.clone()),
                            })
                            .map_err(|e| with_fix(e.context(what.clone()), &fix))?;
                        std::fs::read_to_string(&got.path)
                            .with_context(|| format!("cannot read {}", got.path.display()))?
                    }
                    None => {
                        // A release tag names one manifest for good; a branch (`stable`,
                        // `master`) moves, so it is fetched again, and the build says so.
                        let pinned =
                            local.is_none() && crate::gitops::is_release_tag(&g.argocd_version);
                        if local.is_none() && !pinned {
                            self.progress.message(&format!(
                                "fetching the Argo CD install manifest {url} again: {} is not a \
                                 release tag, so what it names may have changed",
                                g.argocd_version
                            ));
                        }
                        let got = if pinned {
                            f.fetch_text_pinned(&url)
                        } else {
                            f.fetch_text(&url)
                        };
                        let text = got.map_err(|e| {
                            let hint = match e.downcast_ref::<SourceError>() {
                                Some(SourceError::NotFound { .. }) => {
                                    ": check gitops.argocd_version in cluster.yaml"
                                }
                                _ => "",
                            };
                            with_fix(e.context(format!("{what}{hint}")), &fix)
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

/// `e` with what the user can do about it appended, unless it is a matter of integrity (a
/// checksum that does not match), whose message already says what to check.
pub(crate) fn with_fix(e: anyhow::Error, fix: &str) -> anyhow::Error {
    let integrity = matches!(
        e.downcast_ref::<SourceError>(),
        Some(
            SourceError::ChecksumMismatch { .. }
                | SourceError::NotInSums { .. }
                | SourceError::DamagedEntry { .. }
        )
    );
    if integrity {
        e
    } else {
        anyhow::anyhow!("{e:#}. {fix}")
    }
}

/// How to get a k3s release without its release server.
fn k3s_fix(version: &str, arch: crate::boards::Arch, local: bool) -> String {
    let (bin, sums, air) = crate::k3s::asset_names(arch);
    if local {
        return format!(
            "Check the files in k3s.release_dir: they must be the k3s {version} release's own \
             ({bin}, {sums}, {air}, from {})",
            crate::k3s::release_page(version)
        );
    }
    format!(
        "Without access to github.com: download through a reachable --mirror (a copy of \
         {}/{}/...), or copy {bin}, {sums} and {air} from {} into a directory beside \
         cluster.yaml and name it in k3s.release_dir",
        crate::k3s::RELEASES
            .trim_start_matches("https://")
            .trim_end_matches('/'),
        version.replace('+', "%2B"),
        crate::k3s::release_page(version)
    )
}

/// How to get the Argo CD manifest without raw.githubusercontent.com.
fn argocd_fix(upstream: &str, local: bool) -> String {
    if local {
        return format!(
            "Check gitops.argocd_manifest: it must be the install manifest of the release \
             (saved from {upstream})"
        );
    }
    format!(
        "Without access to raw.githubusercontent.com: download through a reachable --mirror, \
         or save {upstream} as a file beside cluster.yaml and name it in \
         gitops.argocd_manifest (Argo CD's container images are preloaded too: set \
         `images.argocd: none` to leave them for the first server to pull when it starts)"
    )
}

/// How to get container images without their registries.
fn images_fix(cluster: &Cluster) -> String {
    let mut s = String::from(
        "Without access to the registries: pull through a registry you can reach, \
         images.registry_mirror in cluster.yaml (--mirror serves file downloads only, not \
         registries), or run one build with network access: what images.lock pins is then \
         taken from the cache",
    );
    if cluster.gitops.is_some() && cluster.images.argocd != crate::config::ArgocdImages::None {
        s.push_str(
            "; Argo CD's images can be left for the first server to pull when it starts with \
             `images.argocd: none`",
        );
    }
    s
}
