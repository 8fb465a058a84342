//! The reference clusters of `examples/` with what their builds download served locally:
//! stand-ins for the container images they preload in a local registry, and the GitOps
//! install manifests on the test mirror. Shared by tests/examples.rs (fixture OS images) and
//! tests/boot.rs (the HA example's first server booted in QEMU).

use std::path::PathBuf;

use pikube_image::config::{Cluster, GitopsEngine};
use pikube_image::registry::ImageRef;
use serde_json::Value;

use super::http::TestServer;
use super::registry::{Registry, TestImage, build_layout};

/// `examples/<name>/cluster.yaml` in the source tree.
pub fn cluster_yaml(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
        .join("cluster.yaml")
}

/// Argo CD's install manifest as served in place of the release's: its shape (a CRD, then
/// the server's Deployment), none of its images.
pub const ARGOCD_INSTALL: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: applications.argoproj.io\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: argocd-server\n";

/// Serves `body` where the upstream `url` lands through `--mirror server.url()`.
pub fn serve_upstream(server: &TestServer, url: &str, body: impl Into<Vec<u8>>) {
    let mirrored = pikube_image::source::mirror_url(url, &server.url()).unwrap();
    server.add(&mirrored[server.url().len()..], body);
}

/// `image` as served by the local registry `host`: same repository and tag.
pub fn local(host: &str, image: &ImageRef) -> String {
    format!(
        "{host}/{}:{}",
        image.repository,
        image.tag.as_deref().unwrap_or("latest")
    )
}

/// Pushes a one-platform stand-in image (`platform` like `linux/arm64`) as `repo_tag`.
pub fn push(reg: &Registry, repo_tag: &str, platform: &str, seed: u64) {
    let layout = tempfile::tempdir().unwrap();
    build_layout(layout.path(), "1", &[TestImage::new(platform, seed)]);
    reg.push_layout(layout.path(), "1", repo_tag).unwrap();
}

/// Every image a build of `cluster` preloads: `images.all`, `.server`, `.agent` and kube-vip's
/// when there is a VIP.
pub fn preloaded_images(cluster: &Cluster) -> Vec<ImageRef> {
    let mut images: Vec<ImageRef> = cluster.images.all.clone();
    images.extend(cluster.images.server.iter().cloned());
    images.extend(cluster.images.agent.iter().cloned());
    if let Some(vip) = &cluster.k3s.vip {
        images.push(vip.image());
    }
    images
}

/// Pushes a stand-in for each of `images` (for `platform`) to `reg` under its own
/// repository and tag, and points `doc` (the parsed cluster.yaml of `cluster`) at them: the
/// image lists, `k3s.vip.image`, and `images.insecure_registries` naming the registry.
pub fn pull_from_local_registry(
    reg: &Registry,
    cluster: &Cluster,
    doc: &mut Value,
    images: &[ImageRef],
    platform: &str,
    seed: u64,
) {
    let host = reg.host();
    for (i, image) in images.iter().enumerate() {
        push(reg, &local("", image)[1..], platform, seed * 100 + i as u64);
    }
    for list in ["all", "server", "agent"] {
        if let Some(Value::Array(refs)) = doc.pointer_mut(&format!("/images/{list}")) {
            for r in refs.iter_mut() {
                let parsed = ImageRef::parse(r.as_str().unwrap()).unwrap();
                *r = Value::from(local(&host, &parsed));
            }
        }
    }
    if let Some(vip) = doc.pointer_mut("/k3s/vip") {
        let img = cluster.k3s.vip.as_ref().unwrap().image();
        vip["image"] = Value::from(local(&host, &img));
    }
    let obj = doc.as_object_mut().unwrap();
    let sets = obj.entry("images").or_insert_with(|| serde_json::json!({}));
    sets["insecure_registries"] = serde_json::json!([host]);
}

/// Serves [`ARGOCD_INSTALL`] at the install URL of the Argo CD release `cluster` names, when
/// its GitOps engine is Argo CD.
pub fn serve_argocd_install(server: &TestServer, cluster: &Cluster) {
    if let Some(g) = &cluster.gitops
        && g.engine == GitopsEngine::Argocd
    {
        serve_upstream(
            server,
            &pikube_image::gitops::install_url(&g.argocd_version),
            ARGOCD_INSTALL,
        );
    }
}
