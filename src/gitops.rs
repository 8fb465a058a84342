//! GitOps bootstrap for the first server: Argo CD's install manifest (downloaded at build
//! time, made explicit about its namespace) and a root "app of apps" Application, both put in
//! k3s's auto-deploy directory so they are applied at first start with no network for the
//! API objects.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Gitops;
use crate::op::{Content, Op};

/// Namespace Argo CD runs in.
pub const NAMESPACE: &str = "argocd";
/// File names in k3s's manifests directory (RFC 1123: no underscores).
pub const INSTALL_FILE: &str = "pikube-argocd-install.yaml";
pub const ROOT_APP_FILE: &str = "pikube-argocd-root-app.yaml";
pub const REPO_SECRET_FILE: &str = "pikube-argocd-repo.yaml";

/// URL of the install manifest of an Argo CD release.
pub fn install_url(version: &str) -> String {
    format!("https://raw.githubusercontent.com/argoproj/argo-cd/{version}/manifests/install.yaml")
}

/// Whether `version` is a release tag (`v2.13.3`, `v3.0.0-rc1`), which names one manifest
/// for good, rather than a branch (`stable`, `master`) whose manifest moves.
pub fn is_release_tag(version: &str) -> bool {
    let Some(rest) = version.strip_prefix('v') else {
        return false;
    };
    let core = rest.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Kinds that live outside namespaces (the ones Argo CD's manifests use, and their kin).
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "PriorityClass",
    "StorageClass",
    "PersistentVolume",
    "APIService",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
];

/// The documents of a multi-document manifest.
pub(crate) fn parse_docs(text: &str) -> Result<Vec<Value>> {
    // Upstream manifests carry deep CRD schemas: allow more depth and nodes than the
    // defaults meant for small configuration files.
    let mut budget = serde_saphyr::budget::Budget::default();
    budget.max_depth = 512;
    budget.max_nodes = 20_000_000;
    budget.max_events = 50_000_000;
    budget.max_documents = 100_000;
    let opts = serde_saphyr::options! { budget: Some(budget) };
    serde_saphyr::from_str_multiple_with_options::<Value, Vec<Value>>(text, opts)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Whether objects of `kind` live outside namespaces.
pub(crate) fn cluster_scoped(kind: &str) -> bool {
    CLUSTER_SCOPED.contains(&kind)
}

/// Argo CD's install manifest with every namespaced object placed in [`NAMESPACE`] and the
/// namespace itself created first. k3s applies manifests without a namespace to `default`,
/// which would split Argo CD across two namespaces.
pub fn namespaced_install(install_yaml: &str) -> Result<String> {
    let docs = parse_docs(install_yaml).context("Argo CD install manifest is not valid YAML")?;
    let mut out = vec![serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": NAMESPACE },
    })];
    let mut objects = 0;
    for mut doc in docs {
        let kind = doc.get("kind").and_then(Value::as_str).map(str::to_string);
        let Some(kind) = kind else {
            if doc.is_null() {
                continue;
            }
            bail!("Argo CD install manifest holds a document without `kind`");
        };
        if kind == "Namespace" {
            continue;
        }
        if !cluster_scoped(&kind) {
            let meta = doc
                .get_mut("metadata")
                .and_then(Value::as_object_mut)
                .with_context(|| format!("a {kind} in the Argo CD manifest has no metadata"))?;
            meta.entry("namespace")
                .or_insert_with(|| Value::from(NAMESPACE));
        }
        objects += 1;
        out.push(doc);
    }
    if objects == 0 {
        bail!("Argo CD install manifest holds no objects: check gitops.argocd_version");
    }
    serde_saphyr::to_string_multiple(&out)
        .map_err(|e| anyhow::anyhow!("cannot serialise the Argo CD manifest: {e}"))
}

/// Every container image the install manifest runs (containers and init containers), sorted
/// and de-duplicated: what a first server needs preloaded to start Argo CD without a registry.
pub fn install_images(install_yaml: &str) -> Result<Vec<crate::registry::ImageRef>> {
    fn walk(v: &Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    if k == "containers" || k == "initContainers" {
                        if let Value::Array(list) = child {
                            for c in list {
                                if let Some(img) = c.get("image").and_then(Value::as_str) {
                                    out.insert(img.to_string());
                                }
                            }
                        }
                    }
                    walk(child, out);
                }
            }
            Value::Array(list) => list.iter().for_each(|c| walk(c, out)),
            _ => {}
        }
    }
    let mut out = std::collections::BTreeSet::new();
    for doc in parse_docs(install_yaml)? {
        walk(&doc, &mut out);
    }
    out.iter()
        .map(|r| {
            crate::registry::ImageRef::parse(r)
                .with_context(|| format!("image {r:?} in the manifest"))
        })
        .collect()
}

#[derive(Serialize)]
struct Application<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    metadata: AppMeta<'a>,
    spec: AppSpec<'a>,
}

#[derive(Serialize)]
struct AppMeta<'a> {
    name: &'a str,
    namespace: &'static str,
    finalizers: Vec<&'static str>,
}

#[derive(Serialize)]
struct AppSpec<'a> {
    project: &'static str,
    source: AppSource<'a>,
    destination: Destination,
    #[serde(rename = "syncPolicy")]
    sync_policy: SyncPolicy,
}

#[derive(Serialize)]
struct AppSource<'a> {
    #[serde(rename = "repoURL")]
    repo_url: &'a str,
    #[serde(rename = "targetRevision")]
    target_revision: &'a str,
    path: &'a str,
    directory: Directory,
}

#[derive(Serialize)]
struct Directory {
    recurse: bool,
}

#[derive(Serialize)]
struct Destination {
    server: &'static str,
    namespace: &'static str,
}

#[derive(Serialize)]
struct SyncPolicy {
    automated: Automated,
    #[serde(rename = "syncOptions")]
    sync_options: Vec<&'static str>,
    retry: Retry,
}

#[derive(Serialize)]
struct Automated {
    prune: bool,
    #[serde(rename = "selfHeal")]
    self_heal: bool,
}

#[derive(Serialize)]
struct Retry {
    limit: u32,
    backoff: Backoff,
}

#[derive(Serialize)]
struct Backoff {
    duration: &'static str,
    factor: u32,
    #[serde(rename = "maxDuration")]
    max_duration: &'static str,
}

/// The root Application ("app of apps") that syncs `gitops.path` of the repository with
/// automated sync, pruning, self-healing and retries.
pub fn root_application(cluster: &str, g: &Gitops) -> Result<String> {
    let name = format!("{cluster}-root");
    let app = Application {
        api_version: "argoproj.io/v1alpha1",
        kind: "Application",
        metadata: AppMeta {
            name: &name,
            namespace: NAMESPACE,
            finalizers: vec!["resources-finalizer.argocd.argoproj.io"],
        },
        spec: AppSpec {
            project: "default",
            source: AppSource {
                repo_url: &g.repo,
                target_revision: &g.revision,
                path: &g.path,
                directory: Directory { recurse: true },
            },
            destination: Destination {
                server: "https://kubernetes.default.svc",
                namespace: NAMESPACE,
            },
            sync_policy: SyncPolicy {
                automated: Automated {
                    prune: true,
                    self_heal: true,
                },
                sync_options: vec!["CreateNamespace=true"],
                retry: Retry {
                    limit: 10,
                    backoff: Backoff {
                        duration: "10s",
                        factor: 2,
                        max_duration: "5m",
                    },
                },
            },
        },
    };
    serde_saphyr::to_string(&app)
        .map_err(|e| anyhow::anyhow!("cannot serialise the Application: {e}"))
}

/// Credentials for a private repository, as read from `gitops.credentials_file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoCredentials {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default, rename = "sshPrivateKey")]
    pub ssh_private_key: Option<String>,
}

/// An Argo CD repository Secret for `g.repo` with the given credentials.
pub fn repo_secret(cluster: &str, g: &Gitops, creds: &RepoCredentials) -> Result<String> {
    if creds.password.is_none() && creds.ssh_private_key.is_none() {
        bail!("gitops credentials need a password (or token) or an sshPrivateKey");
    }
    let mut data = BTreeMap::new();
    data.insert("type", "git".to_string());
    data.insert("url", g.repo.clone());
    if let Some(u) = &creds.username {
        data.insert("username", u.clone());
    }
    if let Some(p) = &creds.password {
        data.insert("password", p.clone());
    }
    if let Some(k) = &creds.ssh_private_key {
        data.insert("sshPrivateKey", k.clone());
    }
    let secret = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": format!("{cluster}-gitops-repo"),
            "namespace": NAMESPACE,
            "labels": { "argocd.argoproj.io/secret-type": "repository" },
        },
        "type": "Opaque",
        "stringData": data,
    });
    serde_saphyr::to_string(&secret)
        .map_err(|e| anyhow::anyhow!("cannot serialise the Secret: {e}"))
}

/// Whether Argo CD publishes images for boards of `arch` (it has none for 32-bit ARM).
pub fn runs_on(arch: crate::arch::Arch) -> bool {
    arch != crate::arch::Arch::Armhf
}

/// Refuses an inventory with GitOps whose first server, the node that runs Argo CD, is on a
/// board Argo CD publishes no images for.
pub fn check_host(
    cluster: &crate::config::Cluster,
    catalog: &crate::boards::Catalog,
    config: &std::path::Path,
) -> Result<()> {
    if cluster.gitops.is_none() {
        return Ok(());
    }
    let Some(first) = cluster.first_server() else {
        return Ok(());
    };
    let board = catalog
        .board(&first.board)
        .with_context(|| format!("node '{}' in {}", first.name, config.display()))?;
    if !runs_on(board.arch) {
        bail!(
            "{}: node '{}' would run Argo CD (gitops is set and it is the first server), but its board '{}' is {} and Argo CD publishes no images for 32-bit ARM (linux/arm/v7): list a server on a 64-bit board (rpi3, rpi4, rpi5) first under nodes, or make '{}' an agent",
            config.display(),
            first.name,
            board.name,
            board.arch.as_str(),
            first.name
        );
    }
    Ok(())
}

/// The first server's GitOps files in k3s's manifests directory: the namespaced install
/// manifest, the root Application and, for a private repository, its Secret.
pub fn ops(
    cluster: &str,
    g: &Gitops,
    root: &str,
    install: Content,
    repo_secret: Option<Vec<u8>>,
) -> Result<Vec<Op>> {
    let dir = crate::k3s::MANIFESTS_DIR;
    let mut ops = vec![
        Op::write(root, &format!("{dir}/{INSTALL_FILE}"), install, 0o600),
        Op::file(
            root,
            &format!("{dir}/{ROOT_APP_FILE}"),
            root_application(cluster, g)?.into_bytes(),
            0o600,
        ),
    ];
    if let Some(secret) = repo_secret {
        ops.push(Op::file(root, &format!("{dir}/{REPO_SECRET_FILE}"), secret, 0o600).secret());
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argo_cd_3_images_are_found_with_their_registries() {
        let yaml = "kind: Deployment\nmetadata: {name: a}\nspec:\n  template:\n    spec:\n      initContainers: [{name: copyutil, image: quay.io/argoproj/argocd:v3.5.3}]\n      containers:\n      - {name: dex, image: ghcr.io/dexidp/dex:v2.45.1}\n---\nkind: Deployment\nmetadata: {name: r}\nspec: {template: {spec: {containers: [{name: redis, image: public.ecr.aws/docker/library/redis:8.2.3-alpine}]}}}\n";
        let imgs: Vec<String> = install_images(yaml)
            .unwrap()
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(imgs.len(), 3, "{imgs:?}");
        for want in [
            "quay.io/argoproj/argocd:v3.5.3",
            "ghcr.io/dexidp/dex:v2.45.1",
            "public.ecr.aws/docker/library/redis:8.2.3-alpine",
        ] {
            assert!(imgs.iter().any(|i| i == want), "{want} in {imgs:?}");
        }
    }

    #[test]
    fn a_32_bit_first_server_cannot_host_argo_cd() {
        let cat = crate::boards::Catalog::load().unwrap();
        let yaml = |first: &str| {
            format!(
                "cluster: lab\nadmin: {{ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c me]}}\ngitops: {{repo: https://example.org/x.git}}\nnodes:\n  - {{name: cp1, board: {first}, role: server}}\n  - {{name: w1, board: rpi2, role: agent}}\n"
            )
        };
        let path = std::path::Path::new("cluster.yaml");
        let c = crate::config::Cluster::parse(&yaml("rpi2")).unwrap();
        let e = format!("{:#}", check_host(&c, &cat, path).unwrap_err());
        assert!(
            e.contains("cluster.yaml")
                && e.contains("'cp1'")
                && e.contains("linux/arm/v7")
                && e.contains("64-bit"),
            "{e}"
        );
        let c = crate::config::Cluster::parse(&yaml("rpi4")).unwrap();
        check_host(&c, &cat, path).unwrap();
        let c = crate::config::Cluster::parse(
            &yaml("rpi2").replace("gitops: {repo: https://example.org/x.git}\n", ""),
        )
        .unwrap();
        check_host(&c, &cat, path).unwrap();
    }

    const INSTALL: &str = r#"# This is an auto-generated file.
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: applications.argoproj.io
spec:
  group: argoproj.io
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: argocd-server
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: argocd-server
subjects:
- kind: ServiceAccount
  name: argocd-server
  namespace: argocd
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: argocd-server
  namespace: elsewhere
---
"#;

    #[test]
    fn install_objects_are_placed_in_the_namespace() {
        let out = namespaced_install(INSTALL).unwrap();
        let docs = parse_docs(&out).unwrap();
        assert_eq!(docs.len(), 5);
        assert_eq!(docs[0]["kind"], "Namespace");
        assert_eq!(docs[0]["metadata"]["name"], "argocd");
        assert!(
            docs[1]["metadata"].get("namespace").is_none(),
            "CRDs are cluster-scoped"
        );
        assert_eq!(docs[2]["metadata"]["namespace"], "argocd");
        assert!(docs[3]["metadata"].get("namespace").is_none());
        assert_eq!(
            docs[4]["metadata"]["namespace"], "elsewhere",
            "explicit namespaces kept"
        );
        assert!(namespaced_install("---\n").is_err());
        assert!(namespaced_install("a: [").is_err());
    }

    #[test]
    fn release_tags_are_told_from_branches() {
        for tag in ["v2.13.3", "v3.0.0-rc1", "v10.20.30"] {
            assert!(is_release_tag(tag), "{tag}");
        }
        for branch in [
            "stable", "master", "v2.13", "2.13.3", "v2.x.3", "latest", "v",
        ] {
            assert!(!is_release_tag(branch), "{branch}");
        }
    }

    #[test]
    fn root_application_has_automated_sync() {
        let g = Gitops {
            repo: "https://git.example.com/lab.git".into(),
            revision: "main".into(),
            path: "clusters/lab".into(),
            argocd_version: "v2.13.3".into(),
            argocd_sha256: None,
            argocd_manifest: None,
            credentials_file: None,
            engine: Default::default(),
            flux: None,
        };
        let v: Value = serde_saphyr::from_str(&root_application("lab", &g).unwrap()).unwrap();
        assert_eq!(v["apiVersion"], "argoproj.io/v1alpha1");
        assert_eq!(v["kind"], "Application");
        assert_eq!(v["metadata"]["namespace"], "argocd");
        assert_eq!(
            v["spec"]["source"]["repoURL"],
            "https://git.example.com/lab.git"
        );
        assert_eq!(v["spec"]["source"]["targetRevision"], "main");
        assert_eq!(v["spec"]["source"]["path"], "clusters/lab");
        assert_eq!(v["spec"]["syncPolicy"]["automated"]["prune"], true);
        assert_eq!(v["spec"]["syncPolicy"]["automated"]["selfHeal"], true);
        assert_eq!(v["spec"]["syncPolicy"]["retry"]["limit"], 10);
        let creds = RepoCredentials {
            username: Some("git".into()),
            password: Some("tok: en".into()),
            ssh_private_key: None,
        };
        let s: Value = serde_saphyr::from_str(&repo_secret("lab", &g, &creds).unwrap()).unwrap();
        assert_eq!(
            s["metadata"]["labels"]["argocd.argoproj.io/secret-type"],
            "repository"
        );
        assert_eq!(s["stringData"]["password"], "tok: en");
    }

    #[test]
    fn images_of_the_install_manifest() {
        let yaml = "kind: Deployment\nmetadata: {name: a}\nspec:\n  template:\n    spec:\n      initContainers: [{name: copy, image: quay.io/argoproj/argocd:v2.13.3}]\n      containers:\n      - {name: s, image: quay.io/argoproj/argocd:v2.13.3}\n      - {name: d, image: ghcr.io/dexidp/dex:v2.41.1}\n---\nkind: StatefulSet\nmetadata: {name: r}\nspec: {template: {spec: {containers: [{name: r, image: \"redis:7.0.15-alpine\"}]}}}\n";
        let names: Vec<String> = install_images(yaml)
            .unwrap()
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "ghcr.io/dexidp/dex:v2.41.1",
                "quay.io/argoproj/argocd:v2.13.3",
                "docker.io/library/redis:7.0.15-alpine"
            ]
        );
    }

    #[test]
    fn install_url_per_version() {
        assert_eq!(
            install_url("v2.13.3"),
            "https://raw.githubusercontent.com/argoproj/argo-cd/v2.13.3/manifests/install.yaml"
        );
    }
}
