//! Flux as the GitOps engine (`gitops.engine: flux`): the install manifest of a pinned Flux
//! release narrowed to the controllers asked for (the four of `flux install` by default),
//! and the objects `flux bootstrap` would commit (a `GitRepository` and a `Kustomization`
//! named `flux-system`, and the repository's credentials as a Secret), all put in k3s's
//! manifests directory on the first server.
//!
//! k3s's deploy controller applies the files of that directory in the order of their names
//! and, every 15 seconds, again those that failed: the file with the CRDs sorts first
//! ([`COMPONENTS_FILE`]), and the custom resources, in a file of their own
//! ([`SYNC_FILE`]), are applied again until their kinds exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Cluster, Gitops};
use crate::op::{Content, Op};
use crate::progress::Progress;
use crate::registry::ImageRef;
use crate::source::{Artifact, Checksum, Fetcher};

/// Flux release installed when the inventory names none.
pub const DEFAULT_VERSION: &str = "v2.9.0";
/// Namespace, and name of the sync objects and the Secret, as `flux bootstrap` has them.
pub const NAMESPACE: &str = "flux-system";
pub const NAME: &str = "flux-system";
/// Files in k3s's manifests directory, in the order k3s applies them.
pub const COMPONENTS_FILE: &str = "pikube-flux-components.yaml";
pub const SECRET_FILE: &str = "pikube-flux-secret.yaml";
pub const SYNC_FILE: &str = "pikube-flux-sync.yaml";
/// The label Flux's install manifest puts on every object of a controller.
const COMPONENT_LABEL: &str = "app.kubernetes.io/component";

/// A controller of Flux's install manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Controller {
    SourceController,
    KustomizeController,
    HelmController,
    NotificationController,
    ImageReflectorController,
    ImageAutomationController,
    SourceWatcher,
}

impl Controller {
    pub fn as_str(self) -> &'static str {
        match self {
            Controller::SourceController => "source-controller",
            Controller::KustomizeController => "kustomize-controller",
            Controller::HelmController => "helm-controller",
            Controller::NotificationController => "notification-controller",
            Controller::ImageReflectorController => "image-reflector-controller",
            Controller::ImageAutomationController => "image-automation-controller",
            Controller::SourceWatcher => "source-watcher",
        }
    }
}

/// The controllers `flux install` installs unless told otherwise.
pub const CORE: [Controller; 4] = [
    Controller::SourceController,
    Controller::KustomizeController,
    Controller::HelmController,
    Controller::NotificationController,
];

/// `gitops.flux`: the release, its digest, the controllers and SSH credentials.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FluxSettings {
    /// Flux release whose `install.yaml` is put on the first server.
    #[serde(default = "default_version")]
    pub version: String,
    /// Expected SHA-256 of that `install.yaml`; the build prints the digest it got when absent.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Controllers to install (default: source, kustomize, helm and notification).
    #[serde(default = "core")]
    pub components: Vec<Controller>,
    /// The deploy key for an `ssh://` repository (private key in OpenSSH format, mode 0600),
    /// relative to cluster.yaml.
    #[serde(default)]
    pub ssh_key_file: Option<PathBuf>,
    /// `known_hosts` lines of the Git server (`ssh-keyscan github.com`), relative to cluster.yaml.
    #[serde(default)]
    pub known_hosts_file: Option<PathBuf>,
}

impl Default for FluxSettings {
    fn default() -> Self {
        FluxSettings {
            version: default_version(),
            sha256: None,
            components: core(),
            ssh_key_file: None,
            known_hosts_file: None,
        }
    }
}

fn default_version() -> String {
    DEFAULT_VERSION.into()
}

fn core() -> Vec<Controller> {
    CORE.to_vec()
}

/// The Flux settings of `g` (defaults when `gitops.flux` is absent).
pub fn settings(g: &Gitops) -> FluxSettings {
    g.flux.clone().unwrap_or_default()
}

/// URL of the install manifest of a Flux release.
pub fn install_url(version: &str) -> String {
    format!("https://github.com/fluxcd/flux2/releases/download/{version}/install.yaml")
}

/// How the `GitRepository` follows `gitops.revision`: a commit (40 hex digits), a full
/// reference name (`refs/...`) or a branch.
fn git_ref(revision: &str) -> (&'static str, &str) {
    if revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()) {
        ("commit", revision)
    } else if revision.starts_with("refs/") {
        ("name", revision)
    } else {
        ("branch", revision)
    }
}

/// Checks `gitops` for Flux, before anything is downloaded.
pub fn validate(c: &Cluster) -> Result<()> {
    let Some(g) = &c.gitops else {
        return Ok(());
    };
    if g.engine != crate::config::GitopsEngine::Flux {
        if g.flux.is_some() {
            bail!(
                "gitops.flux is set, but gitops.engine is argocd: add `engine: flux` under gitops, or remove gitops.flux"
            );
        }
        return Ok(());
    }
    if g.revision == "HEAD" {
        bail!(
            "gitops.revision is HEAD (the default), but Flux follows a branch, a tag reference or a commit: set gitops.revision to the branch, e.g. `revision: main`"
        );
    }
    let f = settings(g);
    let ok_version = f.version.starts_with('v')
        && f.version.len() > 1
        && f.version
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-'));
    if !ok_version {
        bail!(
            "gitops.flux.version '{}' is not a Flux release name like {DEFAULT_VERSION}",
            f.version
        );
    }
    if let Some(h) = &f.sha256
        && (h.len() != 64 || !h.chars().all(|ch| ch.is_ascii_hexdigit()))
    {
        bail!(
            "gitops.flux.sha256 '{h}' is not a SHA-256 (64 hex digits): copy the digest the build printed, or remove the key"
        );
    }
    let mut seen = BTreeSet::new();
    for comp in &f.components {
        if !seen.insert(comp) {
            bail!(
                "gitops.flux.components lists {} twice: list it once",
                comp.as_str()
            );
        }
    }
    for needed in [
        Controller::SourceController,
        Controller::KustomizeController,
    ] {
        if !f.components.contains(&needed) {
            bail!(
                "gitops.flux.components leaves out {}, which the GitRepository and Kustomization of the bootstrap need: add it",
                needed.as_str()
            );
        }
    }
    let scheme = url::Url::parse(&g.repo)
        .map(|u| u.scheme().to_string())
        .unwrap_or_default();
    match (scheme.as_str(), &f.ssh_key_file, &f.known_hosts_file) {
        ("ssh", None, _) => bail!(
            "gitops.repo {} is an ssh:// URL, so Flux needs a deploy key: set gitops.flux.ssh_key_file (and known_hosts_file) to files next to cluster.yaml, e.g. secrets/flux/identity from `ssh-keygen -t ed25519 -f secrets/flux/identity`",
            g.repo
        ),
        ("ssh", Some(_), None) => bail!(
            "gitops.flux.known_hosts_file is missing: Flux checks the Git server's host key; write `ssh-keyscan <host>` into a file next to cluster.yaml and name it there"
        ),
        ("ssh", Some(_), Some(_)) => {}
        (_, Some(_), _) | (_, _, Some(_)) => bail!(
            "gitops.flux.ssh_key_file and known_hosts_file are for an ssh:// repository, but gitops.repo is {}: use an ssh://git@host/org/repo URL, or remove them (gitops.credentials_file holds a username and password or token for https)",
            g.repo
        ),
        _ => {}
    }
    Ok(())
}

/// Checks the paths Flux reads (`k3s.token_file` and the like are checked by the caller).
pub fn check_paths(c: &Cluster) -> Result<()> {
    if let Some(g) = &c.gitops
        && let Some(f) = &g.flux
    {
        if let Some(p) = &f.ssh_key_file {
            c.inventory_path("gitops.flux.ssh_key_file", p)?;
        }
        if let Some(p) = &f.known_hosts_file {
            c.inventory_path("gitops.flux.known_hosts_file", p)?;
        }
    }
    Ok(())
}

/// The controllers' objects of the install manifest: every object that belongs to one of
/// `wanted` (by its `app.kubernetes.io/component` label) and every shared one (the
/// namespace, RBAC, policies, which carry no such label). Namespaced objects without a
/// namespace are put in `flux-system`; the namespace and the CRDs come first.
pub fn select_components(install_yaml: &str, wanted: &[Controller]) -> Result<String> {
    let docs = crate::gitops::parse_docs(install_yaml)
        .context("the Flux install manifest is not valid YAML")?;
    let names: BTreeSet<&str> = wanted.iter().map(|c| c.as_str()).collect();
    let mut found = BTreeSet::new();
    let (mut first, mut rest) = (Vec::new(), Vec::new());
    let mut namespace = false;
    for mut doc in docs {
        if doc.is_null() {
            continue;
        }
        let kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .context("the Flux install manifest holds a document without `kind`")?
            .to_string();
        let component = doc
            .pointer(&format!(
                "/metadata/labels/{}",
                COMPONENT_LABEL.replace('/', "~1")
            ))
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(comp) = &component {
            if !names.contains(comp.as_str()) {
                continue;
            }
            if kind == "Deployment" {
                found.insert(comp.clone());
            }
        }
        match kind.as_str() {
            "Namespace" => {
                namespace |= doc.pointer("/metadata/name") == Some(&Value::from(NAMESPACE));
                first.insert(0, doc);
            }
            "CustomResourceDefinition" => first.push(doc),
            k => {
                if !crate::gitops::cluster_scoped(k) {
                    let meta = doc
                        .get_mut("metadata")
                        .and_then(Value::as_object_mut)
                        .with_context(|| format!("a {k} in the Flux manifest has no metadata"))?;
                    meta.entry("namespace")
                        .or_insert_with(|| Value::from(NAMESPACE));
                }
                rest.push(doc);
            }
        }
    }
    for c in wanted {
        if !found.contains(c.as_str()) {
            bail!(
                "the Flux install manifest has no {} Deployment: check gitops.flux.version and gitops.flux.components",
                c.as_str()
            );
        }
    }
    if !namespace {
        first.insert(
            0,
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
        );
    }
    first.extend(rest);
    serde_saphyr::to_string_multiple(&first)
        .map_err(|e| anyhow::anyhow!("cannot serialise the Flux manifest: {e}"))
}

/// The selected install manifest and the images its controllers run.
#[derive(Debug, Clone)]
pub struct Components {
    pub manifest: Content,
    pub images: Vec<ImageRef>,
}

/// Downloads the install manifest of `f.version` through the cache (and the mirror),
/// checked against `f.sha256` when set, and selects the controllers.
pub fn fetch_components(
    fetcher: &Fetcher,
    f: &FluxSettings,
    progress: &Progress,
) -> Result<Components> {
    let url = install_url(&f.version);
    let text = match &f.sha256 {
        Some(h) => {
            let got = fetcher
                .fetch(&Artifact {
                    url: url.clone(),
                    checksum: Checksum::Sha256(h.to_ascii_lowercase()),
                })
                .with_context(|| {
                    format!(
                        "Flux {}: check gitops.flux.version and gitops.flux.sha256",
                        f.version
                    )
                })?;
            std::fs::read_to_string(&got.path)
                .with_context(|| format!("cannot read {}", got.path.display()))?
        }
        None => {
            let text = fetcher.fetch_text(&url).with_context(|| {
                format!(
                    "Flux {}: check gitops.flux.version in cluster.yaml",
                    f.version
                )
            })?;
            progress.message(&format!(
                "Flux install manifest {url} has SHA-256 {}: pin it with `gitops.flux.sha256` in cluster.yaml",
                crate::io::sha256_bytes(text.as_bytes())
            ));
            text
        }
    };
    let selected = select_components(&text, &f.components)
        .with_context(|| format!("Flux install manifest {url}"))?;
    let images = crate::gitops::install_images(&selected)
        .with_context(|| format!("Flux install manifest {url}"))?;
    Ok(Components {
        manifest: Content::Bytes(selected.into_bytes()),
        images,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Object<S: Serialize> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Meta,
    spec: S,
}

#[derive(Serialize)]
struct Meta {
    name: &'static str,
    namespace: &'static str,
}

const META: fn() -> Meta = || Meta {
    name: NAME,
    namespace: NAMESPACE,
};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GitRepositorySpec<'a> {
    interval: &'static str,
    #[serde(rename = "ref")]
    reference: std::collections::BTreeMap<&'static str, &'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_ref: Option<LocalRef>,
    url: &'a str,
}

#[derive(Serialize)]
struct LocalRef {
    name: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KustomizationSpec {
    interval: &'static str,
    path: String,
    prune: bool,
    source_ref: SourceRef,
}

#[derive(Serialize)]
struct SourceRef {
    kind: &'static str,
    name: &'static str,
}

/// `./<path>`, as `flux bootstrap --path` writes it.
fn sync_path(path: &str) -> String {
    let p = path.trim_start_matches("./").trim_matches('/');
    if p.is_empty() || p == "." {
        "./".to_string()
    } else {
        format!("./{p}")
    }
}

/// The `GitRepository` and `Kustomization` that make Flux sync `gitops.path` of the
/// repository, as `flux bootstrap` writes them into `gotk-sync.yaml`.
pub fn sync_yaml(g: &Gitops, with_secret: bool) -> Result<String> {
    let (kind, value) = git_ref(&g.revision);
    let repo = Object {
        api_version: "source.toolkit.fluxcd.io/v1",
        kind: "GitRepository",
        metadata: META(),
        spec: GitRepositorySpec {
            interval: "1m0s",
            reference: [(kind, value)].into(),
            secret_ref: with_secret.then_some(LocalRef { name: NAME }),
            url: &g.repo,
        },
    };
    let kustomization = Object {
        api_version: "kustomize.toolkit.fluxcd.io/v1",
        kind: "Kustomization",
        metadata: META(),
        spec: KustomizationSpec {
            interval: "10m0s",
            path: sync_path(&g.path),
            prune: true,
            source_ref: SourceRef {
                kind: "GitRepository",
                name: NAME,
            },
        },
    };
    let docs = [
        serde_json::to_value(repo)?,
        serde_json::to_value(kustomization)?,
    ];
    serde_saphyr::to_string_multiple(&docs)
        .map_err(|e| anyhow::anyhow!("cannot serialise the Flux sync objects: {e}"))
}

/// Credentials of the repository, read from the files the inventory names.
pub enum Credentials {
    Ssh {
        identity: String,
        known_hosts: String,
    },
    Basic {
        username: String,
        password: String,
    },
}

fn read_private(path: &Path, key: &str) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{key} {} cannot be read", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{key} {} is readable by others: run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {key} {}", path.display()))
}

/// Reads the repository credentials of `g` (Flux's SSH key and known hosts, or the
/// username and password of `gitops.credentials_file`); `None` for a public repository.
pub fn read_credentials(c: &Cluster, g: &Gitops) -> Result<Option<Credentials>> {
    let f = settings(g);
    if let (Some(k), Some(h)) = (&f.ssh_key_file, &f.known_hosts_file) {
        let key_path = c.inventory_path("gitops.flux.ssh_key_file", k)?;
        let identity = read_private(&key_path, "gitops.flux.ssh_key_file")?;
        let parsed = ssh_key::PrivateKey::from_openssh(identity.trim()).map_err(|e| {
            anyhow::anyhow!(
                "gitops.flux.ssh_key_file {} is not an OpenSSH private key ({e}): make one with `ssh-keygen -t ed25519 -N '' -f {}`",
                key_path.display(),
                k.display()
            )
        })?;
        if parsed.is_encrypted() {
            bail!(
                "gitops.flux.ssh_key_file {} is protected by a passphrase, which Flux cannot type: make a deploy key without one (`ssh-keygen -N ''`)",
                key_path.display()
            );
        }
        let hosts_path = c.inventory_path("gitops.flux.known_hosts_file", h)?;
        let known_hosts = std::fs::read_to_string(&hosts_path).with_context(|| {
            format!(
                "cannot read gitops.flux.known_hosts_file {}",
                hosts_path.display()
            )
        })?;
        let entries = known_hosts
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .count();
        if entries == 0 {
            bail!(
                "gitops.flux.known_hosts_file {} holds no host key: fill it with `ssh-keyscan <git host>`",
                hosts_path.display()
            );
        }
        return Ok(Some(Credentials::Ssh {
            identity,
            known_hosts,
        }));
    }
    let Some(file) = &g.credentials_file else {
        return Ok(None);
    };
    let path = c.inventory_path("gitops.credentials_file", file)?;
    let text = read_private(&path, "gitops.credentials_file")?;
    let creds: crate::gitops::RepoCredentials =
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    match creds {
        crate::gitops::RepoCredentials {
            ssh_private_key: Some(_),
            ..
        } => bail!(
            "{}: with gitops.engine flux, an SSH key goes in its own file, named by gitops.flux.ssh_key_file (with known_hosts_file); keep username and password here",
            path.display()
        ),
        crate::gitops::RepoCredentials {
            username: Some(username),
            password: Some(password),
            ..
        } => Ok(Some(Credentials::Basic { username, password })),
        _ => bail!(
            "{}: Flux needs both `username` and `password` (or a token as password)",
            path.display()
        ),
    }
}

/// The Secret `flux-system` that the `GitRepository` names, as `flux bootstrap` makes it.
pub fn secret_yaml(creds: &Credentials) -> Result<String> {
    let data = match creds {
        Credentials::Ssh {
            identity,
            known_hosts,
        } => serde_json::json!({ "identity": identity, "known_hosts": known_hosts }),
        Credentials::Basic { username, password } => {
            serde_json::json!({ "username": username, "password": password })
        }
    };
    let secret = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": NAME, "namespace": NAMESPACE },
        "type": "Opaque",
        "stringData": data,
    });
    serde_saphyr::to_string(&secret)
        .map_err(|e| anyhow::anyhow!("cannot serialise the Flux Secret: {e}"))
}

/// The first server's Flux files in k3s's manifests directory.
pub fn ops(
    g: &Gitops,
    root: &str,
    components: Content,
    secret: Option<Vec<u8>>,
) -> Result<Vec<Op>> {
    let dir = crate::k3s::MANIFESTS_DIR;
    let mut ops = vec![Op::write(
        root,
        &format!("{dir}/{COMPONENTS_FILE}"),
        components,
        0o600,
    )];
    let with_secret = secret.is_some();
    if let Some(s) = secret {
        ops.push(Op::file(root, &format!("{dir}/{SECRET_FILE}"), s, 0o600).secret());
    }
    ops.push(Op::file(
        root,
        &format!("{dir}/{SYNC_FILE}"),
        sync_yaml(g, with_secret)?.into_bytes(),
        0o600,
    ));
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest shaped like Flux's install.yaml: a namespace, shared RBAC, and per
    /// controller a CRD, a Deployment and a Service, all labelled with their component.
    fn install_yaml(image_prefix: &str) -> String {
        let mut docs = vec![
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flux-system", "labels": {"app.kubernetes.io/part-of": "flux"}}}),
            serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "crd-controller-flux-system"}}),
        ];
        let all = [
            (
                "source-controller",
                "gitrepositories.source.toolkit.fluxcd.io",
            ),
            (
                "kustomize-controller",
                "kustomizations.kustomize.toolkit.fluxcd.io",
            ),
            ("helm-controller", "helmreleases.helm.toolkit.fluxcd.io"),
            (
                "notification-controller",
                "alerts.notification.toolkit.fluxcd.io",
            ),
            (
                "image-reflector-controller",
                "imagerepositories.image.toolkit.fluxcd.io",
            ),
            (
                "image-automation-controller",
                "imageupdateautomations.image.toolkit.fluxcd.io",
            ),
            (
                "source-watcher",
                "artifactgenerators.source.extensions.fluxcd.io",
            ),
        ];
        for (c, crd) in all {
            let labels = serde_json::json!({"app.kubernetes.io/component": c});
            docs.push(serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": c, "namespace": "flux-system", "labels": labels}, "spec": {"template": {"spec": {"containers": [{"name": "manager", "image": format!("{image_prefix}/{c}:v1.0.0")}]}}}}));
            docs.push(serde_json::json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": crd, "labels": labels}}));
            docs.push(serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": c, "labels": labels}}));
        }
        serde_saphyr::to_string_multiple(&docs).unwrap()
    }

    #[test]
    fn only_the_core_controllers_are_kept() {
        let out = select_components(&install_yaml("ghcr.io/fluxcd"), &CORE).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&out).unwrap();
        assert_eq!(docs[0]["kind"], "Namespace");
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        let first_other = kinds
            .iter()
            .position(|k| *k != "Namespace" && *k != "CustomResourceDefinition")
            .unwrap();
        assert!(
            kinds[first_other..]
                .iter()
                .all(|k| *k != "CustomResourceDefinition"),
            "CRDs come before everything else: {kinds:?}"
        );
        assert_eq!(kinds.iter().filter(|k| **k == "Deployment").count(), 4);
        assert!(
            docs.iter().any(|d| d["kind"] == "ClusterRole"),
            "shared RBAC kept"
        );
        assert!(!out.contains("image-reflector") && !out.contains("source-watcher"));
        let svc = docs.iter().find(|d| d["kind"] == "Service").unwrap();
        assert_eq!(svc["metadata"]["namespace"], "flux-system");
        let images: Vec<String> = crate::gitops::install_images(&out)
            .unwrap()
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(images.len(), 4, "{images:?}");
        assert!(images.contains(&"ghcr.io/fluxcd/helm-controller:v1.0.0".to_string()));
        let all = [CORE.to_vec(), vec![Controller::ImageReflectorController]].concat();
        let out = select_components(&install_yaml("ghcr.io/fluxcd"), &all).unwrap();
        assert!(out.contains("image-reflector-controller"));
        let e = select_components("kind: Namespace\nmetadata: {name: flux-system}\n", &CORE)
            .unwrap_err();
        assert!(e.to_string().contains("no source-controller"), "{e}");
    }

    fn gitops(revision: &str, path: &str) -> Gitops {
        Cluster::parse(&format!(
            "cluster: lab\nadmin: {{ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c me]}}\ngitops: {{engine: flux, repo: \"https://git.example.com/lab.git\", revision: \"{revision}\", path: \"{path}\"}}\n"
        ))
        .unwrap()
        .gitops
        .unwrap()
    }

    #[test]
    fn sync_objects_are_those_of_flux_bootstrap() {
        let g = gitops("main", "clusters/lab");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&sync_yaml(&g, true).unwrap()).unwrap();
        let repo = &docs[0];
        assert_eq!(repo["apiVersion"], "source.toolkit.fluxcd.io/v1");
        assert_eq!(repo["kind"], "GitRepository");
        assert_eq!(repo["metadata"]["namespace"], "flux-system");
        assert_eq!(repo["spec"]["interval"], "1m0s");
        assert_eq!(repo["spec"]["ref"]["branch"], "main");
        assert_eq!(repo["spec"]["secretRef"]["name"], "flux-system");
        assert_eq!(repo["spec"]["url"], "https://git.example.com/lab.git");
        let k = &docs[1];
        assert_eq!(k["apiVersion"], "kustomize.toolkit.fluxcd.io/v1");
        assert_eq!(k["spec"]["interval"], "10m0s");
        assert_eq!(k["spec"]["path"], "./clusters/lab");
        assert_eq!(k["spec"]["prune"], true);
        assert_eq!(k["spec"]["sourceRef"]["name"], "flux-system");
        let public: Vec<Value> =
            serde_saphyr::from_multiple(&sync_yaml(&gitops("main", "."), false).unwrap()).unwrap();
        assert!(public[0]["spec"].get("secretRef").is_none());
        assert_eq!(public[1]["spec"]["path"], "./");
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let c: Vec<Value> =
            serde_saphyr::from_multiple(&sync_yaml(&gitops(sha, "x"), false).unwrap()).unwrap();
        assert_eq!(c[0]["spec"]["ref"]["commit"], sha);
        let s: Value = serde_saphyr::from_str(
            &secret_yaml(&Credentials::Ssh {
                identity: "KEY".into(),
                known_hosts: "github.com ssh-ed25519 AAAA".into(),
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(s["metadata"]["name"], "flux-system");
        assert_eq!(
            s["stringData"]["known_hosts"],
            "github.com ssh-ed25519 AAAA"
        );
    }

    #[test]
    fn flux_settings_are_checked() {
        let base = "cluster: lab\nadmin: {ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c me]}\ngitops:\n";
        let err = |g: &str| format!("{:#}", Cluster::parse(&format!("{base}{g}")).unwrap_err());
        for (g, want) in [
            ("  engine: flux\n", "gitops.repo"),
            (
                "  engine: flux\n  repo: https://g.example/x.git\n",
                "gitops.revision",
            ),
            (
                "  engine: flux\n  repo: ssh://git@g.example/x.git\n  revision: main\n",
                "gitops.flux.ssh_key_file",
            ),
            (
                "  engine: flux\n  repo: ssh://git@g.example/x.git\n  revision: main\n  flux: {ssh_key_file: k}\n",
                "known_hosts_file",
            ),
            (
                "  engine: flux\n  repo: https://g.example/x.git\n  revision: main\n  flux: {components: [source-controller]}\n",
                "kustomize-controller",
            ),
            (
                "  engine: flux\n  repo: https://g.example/x.git\n  revision: main\n  flux: {sha256: abc}\n",
                "gitops.flux.sha256",
            ),
            (
                "  repo: https://g.example/x.git\n  flux: {}\n",
                "gitops.engine is argocd",
            ),
        ] {
            let e = err(g);
            assert!(e.contains(want), "{g}: {e}");
        }
        Cluster::parse(&format!(
            "{base}  engine: flux\n  repo: ssh://git@g.example/x.git\n  revision: main\n  flux: {{ssh_key_file: k, known_hosts_file: h}}\n"
        ))
        .unwrap();
    }
}
