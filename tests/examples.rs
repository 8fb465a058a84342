//! The reference clusters in `examples/*/cluster.yaml`, built as a user would build them:
//! each plans with `build --all --dry-run`, and one server and one agent of each are built
//! for real against a local mirror (fixture OS image, stand-in k3s release, Argo CD and Flux
//! manifests) and a local registry holding stand-ins for every image the example preloads.

mod support;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use pikube_image::config::{Cluster, GitopsEngine, Role};
use pikube_image::decompress::Compression;
use serde_json::Value;
use support::build_env::{
    e2fsck_clean, run_cli, serve_board_image, serve_k3s_arch, stderr, write_token,
};
use support::examples::{
    cluster_yaml, preloaded_images, pull_from_local_registry, push, serve_argocd_install,
    serve_upstream,
};
use support::fixtures::{self, Fixture, FixtureOpts};
use support::http::TestServer;
use support::registry::Registry;
use support::signing::CatalogSigner;

const EXAMPLES: [&str; 4] = [
    "pi4-ha-vip-argocd",
    "pi4-and-32bit-agent",
    "ingress-nginx-preloaded",
    "cilium-oidc-flux",
];

const MANIFESTS: &str = "/var/lib/rancher/k3s/server/manifests";
const IMAGES: &str = "/var/lib/rancher/k3s/agent/images";

/// A copy of `examples/<name>/` with the secrets `init` and the user would add.
fn example_dir(name: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("pikube-example-{name}-"))
        .tempdir_in(std::env::temp_dir())
        .unwrap();
    std::fs::copy(cluster_yaml(name), dir.path().join("cluster.yaml")).unwrap();
    write_token(dir.path());
    let cluster = Cluster::load(&dir.path().join("cluster.yaml")).unwrap();
    if let Some(f) = cluster.gitops.as_ref().and_then(|g| g.flux.as_ref()) {
        if let Some(key) = &f.ssh_key_file {
            let path = dir.path().join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let o = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "flux", "-f"])
                .arg(&path)
                .output()
                .expect("ssh-keygen runs (install openssh-client)");
            assert!(o.status.success(), "ssh-keygen: {}", stderr(&o));
        }
        if let Some(hosts) = &f.known_hosts_file {
            std::fs::write(
                dir.path().join(hosts),
                format!("github.com {}\n", support::build_env::KEY),
            )
            .unwrap();
        }
    }
    dir
}

#[test]
fn every_example_plans_every_node_with_a_dry_run() {
    for name in EXAMPLES {
        let dir = example_dir(name);
        let cluster = Cluster::load(&dir.path().join("cluster.yaml")).unwrap();
        let out = run_cli(dir.path(), &[], &["build", "--all", "--dry-run", "--json"]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
        let planned: Vec<&str> = summary["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node"].as_str().unwrap())
            .collect();
        let want: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(planned, want, "{name}");
        assert!(
            !dir.path().join("images").exists(),
            "{name}: a dry run writes nothing"
        );
        let first = &summary["nodes"][0]["plan"];
        let has = |file: &str| {
            first
                .as_array()
                .unwrap()
                .iter()
                .any(|op| op["path"] == format!("{MANIFESTS}/{file}"))
        };
        assert_eq!(
            has("pikube-kube-vip.yaml"),
            cluster.k3s.vip.is_some(),
            "{name}"
        );
        let flux = cluster
            .gitops
            .as_ref()
            .is_some_and(|g| g.engine == GitopsEngine::Flux);
        assert_eq!(has("pikube-flux-sync.yaml"), flux, "{name}");
    }
}

/// The fixture OS image, k3s, the GitOps manifests and the images an example needs, served
/// locally; the example's inventory rewritten to pull its images from the local registry.
struct Lab {
    dir: tempfile::TempDir,
    server: TestServer,
    signer: CatalogSigner,
    _registry: Option<Registry>,
    cluster: Cluster,
}

/// A Flux install manifest shaped like the release's: shared objects, and per controller a
/// CRD, a Deployment (image from the local registry) and a Service, labelled by component.
fn flux_install(host: &str, version: &str) -> String {
    let mut docs = vec![
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flux-system"}}),
        serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "cluster-reconciler-flux-system"}}),
    ];
    for c in [
        "source-controller",
        "kustomize-controller",
        "helm-controller",
        "notification-controller",
        "image-reflector-controller",
        "image-automation-controller",
        "source-watcher",
    ] {
        let labels = serde_json::json!({"app.kubernetes.io/component": c, "app.kubernetes.io/part-of": "flux"});
        docs.push(serde_json::json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": format!("{c}s.toolkit.fluxcd.io"), "labels": labels}}));
        docs.push(serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": c, "namespace": "flux-system", "labels": labels}, "spec": {"template": {"spec": {"containers": [{"name": "manager", "image": format!("{host}/fluxcd/{c}:{version}")}]}}}}));
        docs.push(serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": c, "namespace": "flux-system", "labels": labels}}));
    }
    serde_saphyr::to_string_multiple(&docs).unwrap()
}

impl Lab {
    /// `None` when the registry this example needs cannot run here (the test was skipped).
    fn new(name: &str, seed: u64) -> Option<Lab> {
        let dir = example_dir(name);
        let path = dir.path().join("cluster.yaml");
        let cluster = Cluster::load(&path).unwrap();
        let server = TestServer::start();
        let signer = CatalogSigner::new();
        // Each board's default OS image, as a fixture with that image's layout, and the k3s
        // release of every architecture in the inventory.
        let catalog = pikube_image::boards::Catalog::load().unwrap();
        let boards: BTreeSet<&str> = cluster.nodes.iter().map(|n| n.board.as_str()).collect();
        let mut arches = BTreeSet::new();
        for b in boards {
            let image = catalog.image_for(catalog.board(b).unwrap(), None).unwrap();
            arches.insert(image.arch.as_str());
            let sub = dir.path().join(format!("fixture-{b}"));
            std::fs::create_dir_all(&sub).unwrap();
            let opts = FixtureOpts {
                seed,
                ..FixtureOpts::default()
            };
            let fixture = fixture_for(&image.name)(&sub, opts);
            let xz = std::fs::read(fixtures::compress(&fixture.image, Compression::Xz)).unwrap();
            serve_board_image(&server, b, xz, &signer);
        }
        for arch in arches {
            serve_k3s_arch(
                &server,
                &cluster.k3s.version,
                arch,
                b"#!/bin/sh\necho stand-in k3s \"$@\"\n",
                b"airgap",
            );
        }

        let images = preloaded_images(&cluster);
        let flux = cluster
            .gitops
            .as_ref()
            .filter(|g| g.engine == GitopsEngine::Flux)
            .map(pikube_image::flux::settings);
        let registry = if images.is_empty() && flux.is_none() {
            None
        } else {
            Some(Registry::start()?)
        };
        let mut doc: Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        if let Some(reg) = &registry {
            pull_from_local_registry(reg, &cluster, &mut doc, &images, "linux/arm64", seed);
            if let Some(f) = &flux {
                // Only the core controllers are in the registry: pulling another one fails.
                for c in pikube_image::flux::CORE {
                    push(
                        reg,
                        &format!("fluxcd/{}:{}", c.as_str(), f.version),
                        "linux/arm64",
                        seed + 7,
                    );
                }
                serve_upstream(
                    &server,
                    &pikube_image::flux::install_url(&f.version),
                    flux_install(&reg.host(), &f.version),
                );
            }
        }
        serve_argocd_install(&server, &cluster);
        std::fs::write(&path, serde_saphyr::to_string(&doc).unwrap()).unwrap();
        let cluster = Cluster::load(&path).unwrap();
        Some(Lab {
            dir,
            server,
            signer,
            _registry: registry,
            cluster,
        })
    }

    fn build(&self, nodes: &[&str]) -> std::time::Duration {
        let url = self.server.url();
        let mut args = vec!["build", "--mirror", &url, "--out", "out"];
        for n in nodes {
            args.extend(["--node", n]);
        }
        let started = std::time::Instant::now();
        let out = run_cli(
            self.dir.path(),
            &[("PIKUBE_TEST_KEYS", self.signer.keys_dir())],
            &args,
        );
        let took = started.elapsed();
        assert!(out.status.success(), "{}", stderr(&out));
        took
    }

    fn node(&self, name: &str) -> Built {
        let img = self.dir.path().join(format!("out/{name}.img"));
        let disk = pikube_image::disk::Disk::read(&img).unwrap();
        let node = self.cluster.nodes.iter().find(|n| n.name.as_str() == name);
        let catalog = pikube_image::boards::Catalog::load().unwrap();
        let board = catalog.board(&node.unwrap().board).unwrap();
        let root = &catalog.image_for(board, None).unwrap().root.partition;
        let part = disk.by_label(root).unwrap().clone();
        e2fsck_clean(
            &img,
            part.start,
            part.size,
            &self.dir.path().join("root.part"),
        );
        let file = std::fs::File::open(&img).unwrap();
        let fs = pikube_image::fs::ext4_reader(&file, &part).unwrap();
        Built {
            fs,
            scratch: self.dir.path().to_path_buf(),
        }
    }
}

struct Built {
    fs: ext4_view::Ext4,
    scratch: PathBuf,
}

impl Built {
    fn config(&self) -> Value {
        serde_saphyr::from_str(
            &self
                .fs
                .read_to_string("/etc/rancher/k3s/config.yaml")
                .unwrap(),
        )
        .unwrap()
    }

    fn manifests(&self) -> Vec<String> {
        if !self.fs.exists(MANIFESTS).unwrap() {
            return Vec::new();
        }
        let mut names: Vec<String> = self
            .fs
            .read_dir(MANIFESTS)
            .unwrap()
            .map(|e| e.unwrap().file_name().as_str().unwrap().to_string())
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort();
        names
    }

    fn docs(&self, file: &str) -> Vec<Value> {
        let text = self
            .fs
            .read_to_string(format!("{MANIFESTS}/{file}").as_str())
            .unwrap();
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
    }

    /// The names of the images in the preloaded archives (`io.containerd.image.name`).
    fn preloaded(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for f in ["pikube-role-images.tar.zst", "pikube-node-images.tar.zst"] {
            let p = format!("{IMAGES}/{f}");
            if !self.fs.exists(p.as_str()).unwrap() {
                continue;
            }
            let zst = self.fs.read(p.as_str()).unwrap();
            let tar_path = self.scratch.join("archive.tar");
            std::fs::write(&tar_path, zstd::decode_all(&zst[..]).unwrap()).unwrap();
            let mut ar = tar::Archive::new(std::fs::File::open(&tar_path).unwrap());
            for e in ar.entries().unwrap() {
                let mut e = e.unwrap();
                if e.path().unwrap().to_str() == Some("index.json") {
                    let mut s = String::new();
                    e.read_to_string(&mut s).unwrap();
                    let index: Value = serde_json::from_str(&s).unwrap();
                    for m in index["manifests"].as_array().unwrap() {
                        names.insert(
                            m["annotations"]["io.containerd.image.name"]
                                .as_str()
                                .unwrap()
                                .to_string(),
                        );
                    }
                }
            }
        }
        names
    }

    /// Every image the manifests on this node run, each in a preloaded archive.
    fn manifest_images_are_preloaded(&self) -> usize {
        let preloaded = self.preloaded();
        let mut n = 0;
        for f in self.manifests() {
            let text = self
                .fs
                .read_to_string(format!("{MANIFESTS}/{f}").as_str())
                .unwrap();
            for image in pikube_image::gitops::install_images(&text).unwrap() {
                assert!(
                    preloaded.contains(&image.full_name()),
                    "{f} runs {image}, which is not preloaded: {preloaded:?}"
                );
                n += 1;
            }
        }
        n
    }
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap()).collect())
        .unwrap_or_default()
}

/// The fixture that imitates catalog OS image `image`'s layout.
fn fixture_for(image: &str) -> fn(&Path, FixtureOpts) -> Fixture {
    match image {
        "ubuntu-26.04" => fixtures::ubuntu_26_04_raspi,
        "ubuntu-24.04" => fixtures::ubuntu_raspi,
        "ubuntu-22.04-armhf" => fixtures::ubuntu_22_04_armhf_raspi,
        "raspios-trixie-arm64" | "raspios-trixie-armhf" => fixtures::raspios,
        "armbian-orangepi5" | "armbian-orangepi5-plus" | "armbian-orangepi3b" => {
            fixtures::armbian_rockchip_gpt
        }
        i if i.starts_with("armbian-") => fixtures::armbian_allwinner,
        other => panic!("no fixture imitates OS image {other}"),
    }
}

fn first_and_agent(c: &Cluster) -> (String, String) {
    let server = c.first_server().unwrap().name.to_string();
    let agent = c
        .nodes
        .iter()
        .find(|n| n.role == Role::Agent)
        .unwrap()
        .name
        .to_string();
    (server, agent)
}

/// The checks every example shares: the first server initialises the cluster, the agent
/// joins the VIP (or the first server), the typed flags are in the server's config.
fn check_k3s(lab: &Lab, server: &Built, agent: &Built) {
    let c = &lab.cluster;
    let s = server.config();
    assert_eq!(s["cluster-init"], true, "{s:?}");
    let sans = strings(&s["tls-san"]);
    let joined = match &c.k3s.vip {
        Some(vip) => {
            assert!(sans.contains(&vip.address.to_string().as_str()), "{sans:?}");
            format!("https://{}:6443", vip.address)
        }
        None => pikube_image::k3s::api_url(c).unwrap(),
    };
    let a = agent.config();
    assert_eq!(a["server"], joined.as_str());
    assert!(a.get("cluster-init").is_none());
    let disabled = strings(&s["disable"]);
    for d in &c.k3s.disable {
        assert!(disabled.contains(&d.as_str()), "{d:?} in {disabled:?}");
    }
    for (k, v) in &c.k3s.server_config {
        if let Value::Array(items) = v {
            for i in items {
                assert!(s[k].as_array().unwrap().contains(i), "{k}: {i}");
            }
        } else {
            assert_eq!(&s[k], v, "pass-through {k}");
        }
    }
    for (k, v) in &c.k3s.agent_config {
        assert_eq!(&a[k], v, "pass-through {k} on the agent");
    }
    assert!(agent.manifests().is_empty(), "agents get no manifests");
}

fn check_kube_vip(lab: &Lab, server: &Built) {
    let vip = lab.cluster.k3s.vip.as_ref().unwrap();
    let rbac = server.docs("pikube-kube-vip-rbac.yaml");
    let kinds: Vec<&str> = rbac.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
    );
    let ds = &server.docs("pikube-kube-vip.yaml")[0];
    assert_eq!(ds["kind"], "DaemonSet");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], vip.image().full_name());
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    let env = c["env"].as_array().unwrap();
    let has = |k: &str, v: &str| env.iter().any(|e| e["name"] == k && e["value"] == v);
    assert!(
        has("address", &vip.address.to_string()) && has("vip_interface", vip.interface.as_str())
    );
    assert!(
        has("vip_arp", "true") && has("cp_enable", "true") && has("vip_leaderelection", "true")
    );
}

fn report(name: &str, lab: &Lab, nodes: &[&str], took: std::time::Duration) {
    let sizes: Vec<String> = nodes
        .iter()
        .map(|n| {
            let m = std::fs::metadata(lab.dir.path().join(format!("out/{n}.img"))).unwrap();
            format!("{n}.img {} MiB", m.len() >> 20)
        })
        .collect();
    eprintln!(
        "example {name}: built {} in {:.1} s: {}",
        nodes.join(", "),
        took.as_secs_f64(),
        sizes.join(", ")
    );
}

#[test]
fn example_pi4_ha_vip_argocd_builds() {
    let name = "pi4-ha-vip-argocd";
    let Some(lab) = Lab::new(name, 81) else {
        return;
    };
    let (s, a) = first_and_agent(&lab.cluster);
    let took = lab.build(&[&s, &a]);
    report(name, &lab, &[&s, &a], took);
    let (server, agent) = (lab.node(&s), lab.node(&a));
    check_k3s(&lab, &server, &agent);
    let cfg = server.config();
    assert_eq!(cfg["flannel-backend"], "none");
    assert_eq!(cfg["disable-network-policy"], true);
    check_kube_vip(&lab, &server);
    assert_eq!(
        server.manifests(),
        [
            "pikube-argocd-install.yaml",
            "pikube-argocd-root-app.yaml",
            "pikube-kube-vip-rbac.yaml",
            "pikube-kube-vip.yaml"
        ]
    );
    let app = &server.docs("pikube-argocd-root-app.yaml")[0];
    assert_eq!(
        app["spec"]["source"]["repoURL"],
        lab.cluster.gitops.as_ref().unwrap().repo
    );
    assert_eq!(server.manifest_images_are_preloaded(), 1, "kube-vip");
    assert!(
        agent.preloaded().is_empty(),
        "kube-vip runs on servers only"
    );
}

#[test]
fn example_pi4_and_32bit_agent_builds() {
    let name = "pi4-and-32bit-agent";
    let Some(lab) = Lab::new(name, 82) else {
        return;
    };
    let (s, a) = first_and_agent(&lab.cluster);
    let took = lab.build(&[&s, &a]);
    report(name, &lab, &[&s, &a], took);
    let (server, agent) = (lab.node(&s), lab.node(&a));
    check_k3s(&lab, &server, &agent);
    assert!(server.manifests().is_empty());
    assert!(
        agent.config().get("node-ip").is_none(),
        "the agent uses DHCP"
    );
}

#[test]
fn example_ingress_nginx_preloaded_builds() {
    let name = "ingress-nginx-preloaded";
    let Some(lab) = Lab::new(name, 83) else {
        return;
    };
    let (s, a) = first_and_agent(&lab.cluster);
    let took = lab.build(&[&s, &a]);
    report(name, &lab, &[&s, &a], took);
    let (server, agent) = (lab.node(&s), lab.node(&a));
    check_k3s(&lab, &server, &agent);
    assert_eq!(server.config()["embedded-registry"], true);
    for node in [&server, &agent] {
        let reg: Value = serde_saphyr::from_str(
            &node
                .fs
                .read_to_string("/etc/rancher/k3s/registries.yaml")
                .unwrap(),
        )
        .unwrap();
        assert!(reg["mirrors"].get("*").is_some(), "{reg:?}");
        let want: BTreeSet<String> = lab
            .cluster
            .images
            .all
            .iter()
            .map(|i| i.full_name())
            .collect();
        assert_eq!(node.preloaded(), want);
    }
}

#[test]
fn example_cilium_oidc_flux_builds() {
    let name = "cilium-oidc-flux";
    let Some(lab) = Lab::new(name, 84) else {
        return;
    };
    let (s, a) = first_and_agent(&lab.cluster);
    let took = lab.build(&[&s, &a]);
    report(name, &lab, &[&s, &a], took);
    let (server, agent) = (lab.node(&s), lab.node(&a));
    check_k3s(&lab, &server, &agent);
    let cfg = server.config();
    assert_eq!(cfg["flannel-backend"], "none");
    assert_eq!(cfg["disable-network-policy"], true);
    assert_eq!(cfg["disable-kube-proxy"], true);
    let args = strings(&cfg["kube-apiserver-arg"]);
    assert!(
        args.contains(&"oidc-issuer-url=https://auth.home.example.com/realms/home")
            && args.contains(&"oidc-client-id=kubernetes")
            && args.contains(&"oidc-groups-prefix=oidc:"),
        "{args:?}"
    );
    check_kube_vip(&lab, &server);
    assert_eq!(
        server.manifests(),
        [
            "pikube-flux-components.yaml",
            "pikube-flux-secret.yaml",
            "pikube-flux-sync.yaml",
            "pikube-kube-vip-rbac.yaml",
            "pikube-kube-vip.yaml"
        ],
        "k3s applies them in this order: CRDs before the objects that need them"
    );
    let components = server.docs("pikube-flux-components.yaml");
    let deployments: Vec<&str> = components
        .iter()
        .filter(|d| d["kind"] == "Deployment")
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        deployments,
        [
            "source-controller",
            "kustomize-controller",
            "helm-controller",
            "notification-controller"
        ]
    );
    assert!(
        components
            .iter()
            .all(|d| d["kind"] != "CustomResourceDefinition"
                || !d["metadata"]["name"].as_str().unwrap().starts_with("image"))
    );
    let sync = server.docs("pikube-flux-sync.yaml");
    assert!(sync.iter().all(|d| d["kind"] != "CustomResourceDefinition"));
    assert_eq!(sync[0]["kind"], "GitRepository");
    assert_eq!(
        sync[0]["spec"]["url"],
        "ssh://git@github.com/example/home-ops.git"
    );
    assert_eq!(sync[0]["spec"]["ref"]["branch"], "main");
    assert_eq!(sync[1]["kind"], "Kustomization");
    assert_eq!(sync[1]["spec"]["path"], "./clusters/home");
    let secret = &server.docs("pikube-flux-secret.yaml")[0];
    let key = std::fs::read_to_string(lab.dir.path().join("secrets/flux/identity")).unwrap();
    assert_eq!(secret["stringData"]["identity"], key.as_str());
    assert!(
        secret["stringData"]["known_hosts"]
            .as_str()
            .unwrap()
            .starts_with("github.com ")
    );
    let mode = server
        .fs
        .metadata(format!("{MANIFESTS}/pikube-flux-secret.yaml").as_str())
        .unwrap()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        server.manifest_images_are_preloaded(),
        5,
        "4 controllers and kube-vip"
    );
    let cilium: BTreeSet<String> = lab
        .cluster
        .images
        .all
        .iter()
        .map(|i| i.full_name())
        .collect();
    assert!(agent.preloaded().is_superset(&cilium) && server.preloaded().is_superset(&cilium));
}

#[test]
fn inventory_mistakes_fail_before_any_download_naming_the_key() {
    let dir = example_dir("pi4-ha-vip-argocd");
    let path = dir.path().join("cluster.yaml");
    let original = std::fs::read_to_string(&path).unwrap();
    let server = TestServer::start();
    let flux_without_repo = original.replace(
        "  repo: https://github.com/example/pi-ha-fleet.git\n",
        "  engine: flux\n",
    );
    let cases = [
        (
            original.replace("address: 192.168.10.50", "address: 192.168.11.50"),
            "k3s.vip.address 192.168.11.50 is not in the servers' subnet",
        ),
        (
            original.replace("address: 192.168.10.50", "address: 192.168.10.12"),
            "k3s.vip.address 192.168.10.12 is node 'cp2''s ip",
        ),
        (flux_without_repo, "gitops.repo is missing"),
    ];
    for (yaml, want) in cases {
        assert_ne!(yaml, original, "{want}: the case changes the inventory");
        std::fs::write(&path, yaml).unwrap();
        let url = server.url();
        let out = run_cli(
            dir.path(),
            &[],
            &["build", "--all", "--mirror", &url, "--out", "out"],
        );
        assert_eq!(out.status.code(), Some(1), "{want}");
        let err = stderr(&out);
        assert!(err.contains(want), "expected '{want}' in: {err}");
        assert!(err.contains("cluster.yaml"), "the file is named: {err}");
        assert_eq!(server.total_hits(), 0, "{want}: nothing was downloaded");
        assert!(
            !dir.path().join("out").exists(),
            "{want}: nothing was written"
        );
    }
}
