//! `pikube-image build`: the stages for each selected node. Resolve the inventory, the nodes
//! and their base images; gather what the plans need; plan every node; prepare one base per
//! role and image; derive each node from it; hand each built node to the output target.

mod derive;
mod locale;
mod pool;
mod prepared;
mod request;
mod resolve;
mod select;

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

pub use request::{AdHoc, BuildRequest, BuildSummary, DEFAULT_GROW_MARGIN, NodeResult, Selection};
pub use resolve::read_token;
pub use select::{select_nodes, shard};

use crate::boards::{Board, Catalog, OsImage};
use crate::config::Node;
use crate::emit;
use crate::formats::Format;
use crate::manifest::BaseRef;
use crate::plan::{Plan, PlanInputs};
use crate::progress::Progress;
use crate::source::base::{BaseImage, Origin};
use crate::source::{Cache, Fetcher};
use crate::target::{Target, disk_image, netboot};
use derive::NodeInput;
use prepared::{Prepared, PreparedStore};

/// A node ready to be built: its plan and its (downloaded) base image.
struct NodeWork {
    plan: Plan,
    base: BaseImage,
    base_path: PathBuf,
    base_sha256: String,
    /// Identity of the prepared base it derives from ([`prepared::key`]).
    key: String,
}

fn open_cache(dir: &Option<PathBuf>) -> Result<Cache> {
    match dir {
        Some(d) => Cache::open(d),
        None => Cache::open_default(),
    }
}

pub fn build(req: &BuildRequest, progress: &Progress) -> Result<BuildSummary> {
    let mut cluster = crate::config::Cluster::load(&req.config)?;
    for w in cluster.warnings() {
        progress.message(&format!("warning: {w}"));
    }
    cluster.allow_outside_paths = req.allow_outside_paths;
    cluster.check_paths()?;
    let mut formats = if !req.formats.is_empty() {
        req.formats.clone()
    } else if !cluster.formats.is_empty() {
        cluster.formats.clone()
    } else {
        vec![Format::Raw]
    };
    // A network boot serves each node's raw image as its root disk.
    if req.netboot.is_some() && !formats.contains(&Format::Raw) {
        formats.insert(0, Format::Raw);
    }
    let target = Target::DiskImage(disk_image::Spec {
        dir: req.out.clone(),
        formats: formats.clone(),
    });
    let mut nodes = select_nodes(&mut cluster, &req.select, &req.config)?;
    if let Some(s) = req.shard {
        nodes = shard(nodes, s);
        if nodes.is_empty() {
            progress.message(&format!("shard {}/{} has no nodes to build", s.0, s.1));
        }
    }
    // A failed ad-hoc build leaves no host key for a node that had none: the next attempt
    // may well pick another name, and a stray key would only pile up under secrets/ssh/.
    let adhoc_keys = match (&req.select, nodes.as_slice()) {
        (Selection::AdHoc(_), [node]) if !req.dry_run => Some(crate::host_keys::NewKeys::watch(
            &cluster.resolve(std::path::Path::new("secrets")),
            &node.name,
        )?),
        _ => None,
    };
    let catalog = Catalog::load()?;
    for w in catalog.warnings(&cluster) {
        progress.message(&format!("warning: {w}"));
    }
    crate::gitops::check_host(&cluster, &catalog, &req.config)?;
    let mirror = req.mirror.clone().or_else(|| cluster.mirror.clone());

    // Resolve every node's board and image first: a typo fails before any download.
    let mut jobs: Vec<(Node, &Board, &OsImage, BaseImage)> = Vec::new();
    for node in nodes {
        let at = || format!("node '{}' in {}", node.name, req.config.display());
        let board = catalog.board(&node.board).with_context(at)?;
        let image = catalog
            .image_for(board, node.os.as_deref())
            .with_context(at)?;
        crate::netconfig::check_links(&cluster, &node, board, &req.config)?;
        let base = req
            .base
            .resolve(&image.url, &image.checksum, catalog.keys())
            .with_context(|| format!("OS image '{}'", image.name))
            .with_context(at)?;
        jobs.push((node, board, image, base));
    }
    let netboot_nodes: Vec<(Node, &Board, &OsImage)> = match &req.netboot {
        Some(_) => jobs.iter().map(|j| (j.0.clone(), j.1, j.2)).collect(),
        None => Vec::new(),
    };
    if req.netboot.is_some() {
        let checked: Vec<_> = netboot_nodes.iter().map(|(n, b, i)| (n, *b, *i)).collect();
        for w in netboot::check_inventory(&cluster, &checked)? {
            progress.message(&format!("warning: {w}"));
        }
    }

    // Local base files are hashed once; their digest is part of each node's identity.
    let mut local_digests: BTreeMap<PathBuf, String> = BTreeMap::new();
    for (_, _, _, base) in &mut jobs {
        if let Origin::Local(path) = &base.origin {
            if !local_digests.contains_key(path) {
                let d = emit::hash_file(path, progress)
                    .with_context(|| format!("cannot read base image {}", path.display()))?;
                local_digests.insert(path.clone(), d);
            }
            base.content_id = local_digests[path].clone();
        }
    }

    if !req.dry_run {
        emit::refuse_linked_dir(&req.out)?;
        // Images hold secrets: a directory made for them is private (an existing one keeps
        // the mode its owner gave it).
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&req.out)
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
        || jobs
            .iter()
            .any(|j| matches!(j.3.origin, Origin::Download(_)));
    let fetcher = if req.dry_run || !needs_downloads {
        None
    } else {
        Some(Fetcher::new(
            open_cache(&req.cache_dir)?,
            mirror,
            req.offline,
            progress.clone(),
        ))
    };

    let mut resolver = resolve::Resolver::new(
        &cluster,
        req.dry_run,
        req.offline,
        fetcher.as_ref(),
        progress,
    )?;
    // Secrets the plans need are read before the first download.
    for (node, ..) in &jobs {
        resolver.wifi(node)?;
    }
    let mut results = Vec::new();
    let mut work: Vec<NodeWork> = Vec::new();
    for (node, board, image, base) in jobs {
        let payload = resolver.for_node(&node, board)?;
        let plan = Plan::for_node(
            &cluster,
            &node,
            board,
            image,
            &PlanInputs {
                base_sha256: &base.content_id,
                payload: &payload,
                built: crate::build_timestamp(),
            },
        )?;
        results.push(NodeResult {
            node: node.name.to_string(),
            board: board.name.clone(),
            role: node.role.to_string(),
            image: None,
            sha256: None,
            size: None,
            manifest: None,
            instance_id: plan.instance_id.clone(),
            base_url: base.url.clone(),
            plan: plan.views(),
            outputs: Vec::new(),
            prepared_from_cache: None,
            seconds: 0.0,
        });
        if req.dry_run {
            continue;
        }
        let (base_path, base_sha256) = match (&base.origin, &fetcher) {
            (Origin::Local(p), _) => (p.clone(), local_digests[p].clone()),
            (Origin::Download(a), Some(f)) => {
                let got = f.fetch(a).map_err(|e| {
                    resolve::with_fix(
                        e.context(format!("the base image of node '{}'", node.name)),
                        "Check the board name and its OS image (`pikube-image boards`), download \
                         through a reachable --mirror, or download the image by hand and start \
                         from it with --image FILE (or from another URL with --image-url)",
                    )
                })?;
                (got.path, got.sha256)
            }
            (Origin::Download(a), None) => {
                anyhow::bail!("{} needs a download, but this build has no fetcher", a.url)
            }
        };
        let key = prepared::key(&plan, &base_sha256, req.grow_margin);
        work.push(NodeWork {
            plan,
            base,
            base_path,
            base_sha256,
            key,
        });
    }
    if req.dry_run {
        return Ok(BuildSummary {
            dry_run: true,
            nodes: results,
        });
    }

    // Stage 1: one prepared base per (base image, role payload), reused across builds.
    // A prepared base is made (and cached) for fleet builds, where nodes share it now or in
    // the next build; one in the cache is always reused. A build of a single node writes its
    // image once, straight into the output file.
    let store = PreparedStore::new(open_cache(&req.cache_dir)?.layout());
    let mut prepared: BTreeMap<String, Prepared> = BTreeMap::new();
    // The inventory's locale is checked against each base image as it is decompressed,
    // once per base image, before any node image is written.
    let locale_check = cluster.locale.as_ref().map(|l| locale::LocaleCheck {
        locale: l,
        config: &req.config,
    });
    let mut checked = locale::Checked::default();
    for w in &work {
        let key = w.key.clone();
        if !prepared.contains_key(&key) && (work.len() > 1 || store.contains(&key)) {
            let mut p = store
                .get_or_make(&key, progress, |img| {
                    let all: Vec<&crate::plan::Op> = w.plan.ops.iter().collect();
                    derive::prepare_image(
                        &w.base_path,
                        img,
                        &all,
                        &w.plan.shared_ops(),
                        &w.plan.image,
                        req.grow_margin,
                        &|_| Ok(()),
                        progress,
                    )
                })
                .with_context(|| format!("preparing the base image for node '{}'", w.plan.node))?;
            checked.once(
                locale_check,
                &w.base_sha256,
                &p.path,
                &w.plan,
                &w.base.file_name,
            )?;
            store.add_frames(&key, &mut p, &formats, progress)?;
            prepared.insert(key, p);
        }
    }

    // Stage 2: derive every node from its prepared base, `--jobs` at a time, and write its
    // outputs.
    let outcomes = pool::run(&work, req.jobs, |w| {
        let started = std::time::Instant::now();
        let input = NodeInput {
            plan: &w.plan,
            base_path: &w.base_path,
            base: BaseRef {
                url: w.base.url.clone(),
                sha256: w.base_sha256.clone(),
                file: w.base.file_name.clone(),
            },
            out_dir: &req.out,
            grow_margin: req.grow_margin,
            locale: locale_check.filter(|_| !checked.contains(&w.base_sha256)),
        };
        let mut overlay: Option<Arc<crate::io::cow::CowImage>> = None;
        derive::derive(&input, prepared.get(&w.key), &mut overlay, progress)
            .and_then(|node| target.write(node, progress))
            .with_context(|| format!("building node '{}'", w.plan.node))
            .map(|o| (o, started.elapsed().as_secs_f64()))
    });
    let mut by_node = BTreeMap::new();
    let mut failed = None;
    for (w, o) in work.iter().zip(outcomes) {
        match o {
            Some(Ok(d)) => {
                by_node.insert(w.plan.node.clone(), d);
            }
            Some(Err(e)) => {
                failed.get_or_insert(e);
            }
            None => {}
        }
    }
    if failed.is_none()
        && let Some(keys) = adhoc_keys
    {
        // The image holds the key now: it stays, whatever happens next.
        keys.keep();
    }
    let mut known = BTreeMap::new();
    for r in &mut results {
        if let Some((d, seconds)) = by_node.remove(&r.node) {
            for o in &d.files {
                known.insert(o.file.clone(), o.sha256.clone());
            }
            r.image = d.image;
            r.sha256 = d.sha256;
            r.size = Some(d.size);
            r.manifest = Some(d.manifest);
            r.outputs = d.files;
            r.seconds = seconds;
        }
    }
    for (r, w) in results.iter_mut().zip(&work) {
        r.prepared_from_cache = Some(prepared.get(&w.key).is_some_and(|p| p.from_cache));
    }
    // A node's outputs replaced the directory's indexes with nothing: write them again for
    // what is there now, even when another node failed.
    if failed.is_none() || !known.is_empty() {
        let indexes = crate::host_keys::write_known_hosts(&req.out, progress)
            .and_then(|_| crate::formats::write_sha256sums_known(&req.out, &known));
        if let Err(e) = indexes {
            match &failed {
                None => return Err(e),
                Some(_) => progress.message(&format!("{e:#}")),
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    resolver.save_lock()?;
    if let Some(dir) = &req.netboot {
        export_netboot(&cluster, &netboot_nodes, &results, dir, progress)?;
    }
    Ok(BuildSummary {
        dry_run: false,
        nodes: results,
    })
}

/// Exports the built nodes for network boot, from their raw images.
fn export_netboot(
    cluster: &crate::config::Cluster,
    nodes: &[(Node, &Board, &OsImage)],
    results: &[NodeResult],
    dir: &std::path::Path,
    progress: &Progress,
) -> Result<()> {
    let mut built = Vec::new();
    for ((node, board, image), r) in nodes.iter().zip(results) {
        let disk_image = r
            .image
            .clone()
            .with_context(|| format!("node '{}' has no raw image to serve", node.name))?;
        built.push(netboot::BuiltImage {
            node,
            board,
            image,
            disk_image,
            secrets: r
                .plan
                .iter()
                .filter(|o| o.secret)
                .map(|o| (o.partition.clone(), o.path.clone()))
                .collect(),
        });
    }
    netboot::export(
        cluster,
        &built,
        &netboot::Spec {
            dir: dir.to_path_buf(),
        },
        progress,
    )?;
    Ok(())
}
