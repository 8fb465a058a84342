//! Preloaded container images: the lists a node gets, pinned in `images.lock`, pulled for the
//! node's platform and written as OCI archives that k3s imports at start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::boards::{Arch, Catalog};
use crate::config::Cluster;
use crate::op::{Content, Op};
use crate::progress::Progress;
use crate::registry::{ImageRef, Platform, Puller, RegistryOptions, ResolvedImage};
use crate::source::{Cache, Fetcher};

/// File next to cluster.yaml pinning every tag to the digest it resolved to.
pub const LOCK_FILE: &str = "images.lock";

/// `images.lock`: image reference -> digest (`sha256:...` of the index, or of the manifest
/// for single-platform images).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    #[serde(default)]
    pub images: BTreeMap<String, String>,
}

impl Lock {
    pub fn path(cluster: &Cluster) -> PathBuf {
        cluster.resolve(Path::new(LOCK_FILE))
    }

    /// The lock next to the cluster file, or an empty one.
    pub fn load(cluster: &Cluster) -> Result<Lock> {
        let path = Lock::path(cluster);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_saphyr::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{} is damaged ({e}): fix it, or delete it and run `pikube-image images update`",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Lock::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn save(&self, cluster: &Cluster) -> Result<PathBuf> {
        let path = Lock::path(cluster);
        let body = serde_saphyr::to_string(self)
            .map_err(|e| anyhow::anyhow!("cannot serialise {LOCK_FILE}: {e}"))?;
        let text = format!(
            "# Written by pikube-image: the digest every image tag resolved to.\n# Builds use these digests until `pikube-image images update` refreshes them.\n{body}"
        );
        crate::emit::write_atomic(&path, text.as_bytes())
    }
}

/// Pulls image sets and turns them into cached archives.
pub struct Preloader {
    puller: Puller,
    cache: Cache,
    lock: Lock,
    /// Entries resolved during this build that the lock did not have.
    added: BTreeMap<String, String>,
}

impl Preloader {
    /// `refresh` ignores the lock (re-resolves every tag), for `images update`.
    pub fn new(
        cluster: &Cluster,
        cache: Cache,
        offline: bool,
        refresh: bool,
        progress: &Progress,
    ) -> Result<Preloader> {
        let lock = if refresh {
            Lock::default()
        } else {
            Lock::load(cluster)?
        };
        let opts = RegistryOptions {
            insecure: cluster.images.insecure_registries.clone(),
            docker_config: None,
            offline,
            locked: lock.images.clone(),
            mirror: cluster.images.registry_mirror.clone(),
        };
        let puller = Puller::new(Cache::open(cache.root())?, opts, progress.clone());
        Ok(Preloader {
            puller,
            cache,
            lock,
            added: BTreeMap::new(),
        })
    }

    /// Pulls `refs` for `arch`, recording what tags resolved to.
    pub fn resolve(&mut self, refs: &[ImageRef], arch: Arch) -> Result<Vec<ResolvedImage>> {
        let images = self.puller.pull_all(refs, &Platform::for_arch(arch))?;
        for (k, v) in crate::registry::lock_entries(&images) {
            if self.lock.images.get(&k) != Some(&v) {
                self.added.insert(k, v);
            }
        }
        Ok(images)
    }

    /// One archive holding `refs` for `arch`, from the cache when the same images were
    /// archived before. `None` for an empty list.
    pub fn archive(
        &mut self,
        refs: &[ImageRef],
        arch: Arch,
        progress: &Progress,
    ) -> Result<Option<Content>> {
        if refs.is_empty() {
            return Ok(None);
        }
        let images = self.resolve(refs, arch)?;
        let key_material = serde_json::json!({
            "format": 1,
            "platform": Platform::for_arch(arch).to_string(),
            "images": images.iter().map(|i| (i.reference.clone(), i.manifest_digest.clone())).collect::<Vec<_>>(),
        });
        let key = crate::io::sha256_bytes(key_material.to_string().as_bytes());
        let dir = self.cache.layout().image_archives();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{key}.tar.zst"));
        if !path.exists() {
            crate::registry::write_oci_archive(&images, &self.cache, &path, progress)?;
        }
        let f = std::fs::File::open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let size = f
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len();
        let sha256 = crate::io::sha256_reader(f)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Some(Content::File { path, size, sha256 }))
    }

    /// Writes the lock when this build resolved tags it did not pin yet; returns its path then.
    pub fn save_lock(&mut self, cluster: &Cluster) -> Result<Option<PathBuf>> {
        if self.added.is_empty() {
            return Ok(None);
        }
        self.lock.images.append(&mut self.added);
        Ok(Some(self.lock.save(cluster)?))
    }
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
    let cluster = Cluster::load(config)?;
    let catalog = Catalog::load()?;
    crate::gitops::check_host(&cluster, &catalog, config)?;
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
    let flux_images = match &cluster.gitops {
        Some(g) if g.engine == crate::config::GitopsEngine::Flux => {
            crate::flux::fetch_components(&fetcher, &crate::flux::settings(g), progress)?.images
        }
        _ => Vec::new(),
    };
    let argocd_images = match &cluster.gitops {
        Some(g) if g.engine == crate::config::GitopsEngine::Flux => Vec::new(),
        Some(g) if cluster.images.argocd != crate::config::ArgocdImages::None => {
            let (url, text) = match &g.argocd_manifest {
                Some(f) => {
                    let p = cluster.inventory_path("gitops.argocd_manifest", f)?;
                    let text = std::fs::read_to_string(&p).with_context(|| {
                        format!("cannot read gitops.argocd_manifest {}", p.display())
                    })?;
                    (p.display().to_string(), text)
                }
                None => {
                    let url = crate::gitops::install_url(&g.argocd_version);
                    let text = if crate::gitops::is_release_tag(&g.argocd_version) {
                        fetcher.fetch_text_pinned(&url)?
                    } else {
                        fetcher.fetch_text(&url)?
                    };
                    (url, text)
                }
            };
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
            crate::config::ArgocdImages::AllServers => node.role == crate::config::Role::Server,
            crate::config::ArgocdImages::None => false,
        };
        if argocd_here && crate::gitops::runs_on(board.arch) {
            refs.extend(argocd_images.iter().cloned());
        }
        if first.as_deref() == Some(node.name.as_str()) {
            refs.extend(flux_images.iter().cloned());
        }
        if let (Some(vip), crate::config::Role::Server) = (&cluster.k3s.vip, node.role) {
            refs.push(vip.image());
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

/// File names of the preloaded image archives in k3s's images directory.
pub const ROLE_IMAGES: &str = "pikube-role-images.tar.zst";
pub const NODE_IMAGES: &str = "pikube-node-images.tar.zst";

/// The ops that preload container images: the role's archive (the same for every node of
/// the role) and the node's own.
pub fn preload_ops(
    root: &str,
    role_images: Option<Content>,
    node_images: Option<Content>,
) -> Vec<Op> {
    let dir = crate::k3s::IMAGES_DIR;
    let role =
        role_images.map(|c| Op::write(root, &format!("{dir}/{ROLE_IMAGES}"), c, 0o644).role_wide());
    let node = node_images.map(|c| Op::write(root, &format!("{dir}/{NODE_IMAGES}"), c, 0o644));
    role.into_iter().chain(node).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_round_trips_with_a_header() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("cluster.yaml");
        std::fs::write(
            &path,
            "cluster: lab\nadmin: {ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c me]}\n",
        )
        .unwrap();
        let c = Cluster::load(&path).unwrap();
        assert_eq!(Lock::load(&c).unwrap(), Lock::default());
        let mut l = Lock::default();
        l.images.insert(
            "docker.io/library/redis:7-alpine".into(),
            format!("sha256:{}", "a".repeat(64)),
        );
        let p = l.save(&c).unwrap();
        assert!(
            std::fs::read_to_string(&p)
                .unwrap()
                .starts_with("# Written by pikube-image")
        );
        assert_eq!(Lock::load(&c).unwrap(), l);
        std::fs::write(&p, "images: [").unwrap();
        let e = Lock::load(&c).unwrap_err().to_string();
        assert!(e.contains("images update"), "{e}");
    }
}
