//! `examples/nightly-images.yml` works as written. Its steps after "Install pikube-image"
//! that run commands (`run:`) run with `bash -e`, as GitHub runs them, on a fresh clone of a
//! cluster repository (one clone per shard of the matrix, as on separate runners), with the
//! `${{ ... }}` expressions filled in the way GitHub would: the shard, the workspace, and
//! repository secrets made as the workflow's header says. The steps that use actions
//! (checkout, cache, upload) are GitHub's own and do not run; instead of the install step,
//! the binary under test is first on `PATH`. The downloads come from a local server set as
//! the inventory's `mirror:`.
//!
//! Then every uploaded directory's `SHA256SUMS` must pass `sha256sum -c`, each shard's JSON
//! summary must parse, the shards must build every node exactly once, and the images must
//! carry the host keys restored from the secrets.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use pikube_image::config::DEFAULT_K3S_VERSION;
use serde_json::Value;
use support::build_env::{
    KEY, path_with_binary, run_cli, serve_board_image, serve_k3s, stderr, walk,
};
use support::fixtures::{self, FixtureOpts};
use support::http::TestServer;
use support::signing::CatalogSigner;

const WORKFLOW: &str = include_str!("../examples/nightly-images.yml");

/// A `run:` step of the workflow.
#[derive(Debug)]
struct Step {
    name: String,
    run: String,
    env: BTreeMap<String, String>,
    working_directory: Option<String>,
}

struct Workflow {
    env: BTreeMap<String, String>,
    shards: Vec<String>,
    steps: Vec<Step>,
    /// The `path:` of the upload step.
    upload: String,
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("a string").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn workflow() -> Workflow {
    let doc: Value = serde_saphyr::from_str(WORKFLOW).unwrap();
    let job = &doc["jobs"]["build"];
    let all = job["steps"].as_array().expect("jobs.build.steps");
    let install = all
        .iter()
        .position(|s| s["name"] == "Install pikube-image")
        .expect("a step named \"Install pikube-image\"");
    let mut steps = Vec::new();
    let mut upload = None;
    for s in &all[install + 1..] {
        if let Some(action) = s["uses"].as_str() {
            assert!(
                action.starts_with("actions/"),
                "step {action} is not one of GitHub's own actions: the test would skip it"
            );
            if action.starts_with("actions/upload-artifact") {
                upload = Some(s["with"]["path"].as_str().unwrap().trim().to_string());
            }
            continue;
        }
        assert!(
            s.get("shell").is_none(),
            "the test runs steps with GitHub's default shell, bash -e"
        );
        steps.push(Step {
            name: s["name"].as_str().unwrap_or("").to_string(),
            run: s["run"].as_str().expect("a step runs commands").to_string(),
            env: string_map(&s["env"]),
            working_directory: s["working-directory"].as_str().map(str::to_string),
        });
    }
    let shards = job["strategy"]["matrix"]["shard"]
        .as_array()
        .expect("a matrix of shards")
        .iter()
        .map(|v| v.to_string())
        .collect();
    Workflow {
        env: string_map(&doc["env"]),
        shards,
        steps,
        upload: upload.expect("an upload-artifact step after the build"),
    }
}

/// `text` with every `${{ expr }}` replaced by `values[expr]`; an expression the test does
/// not know fails the test, naming it.
fn expand(text: &str, values: &BTreeMap<&str, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("${{") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find("}}").expect("a closed ${{ expression") + at;
        let expr = rest[at + 3..end].trim();
        out.push_str(values.get(expr).unwrap_or_else(|| {
            panic!("the workflow uses ${{{{ {expr} }}}}, which the test does not provide")
        }));
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

/// The command the workflow's header gives for a secret (the text between backquotes on
/// its line), run in the cluster repository.
fn secret_from_header(name: &str, repo: &Path) -> String {
    let line = WORKFLOW
        .lines()
        .find(|l| l.starts_with('#') && l[1..].trim_start().starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("the workflow's header says how to make {name}"));
    let cmd = line.split('`').nth(1).expect("a command in backquotes");
    let o = Command::new("bash")
        .args(["-e", "-o", "pipefail", "-c", cmd])
        .current_dir(repo)
        .output()
        .unwrap();
    assert!(o.status.success(), "{cmd}: {}", stderr(&o));
    String::from_utf8(o.stdout).unwrap()
}

fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .args(["-c", "user.name=Ops", "-c", "user.email=ops@example.test"])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "git {args:?}: {}", stderr(&o));
}

struct Runner<'a> {
    workflow: &'a Workflow,
    home: PathBuf,
    /// Where the step scripts are written, outside the workspace.
    scratch: PathBuf,
    path: std::ffi::OsString,
    secrets: BTreeMap<&'static str, String>,
    /// `$PIKUBE_TEST_KEYS`: the key the mirror's checksum lists are signed with.
    test_keys: PathBuf,
}

impl Runner<'_> {
    /// Runs the workflow's steps for `shard` in `workspace`; stops at the first failure and
    /// returns its output.
    fn run(&self, workspace: &Path, shard: &str) -> Result<(), (String, Output)> {
        let mut values: BTreeMap<&str, String> = BTreeMap::new();
        values.insert("matrix.shard", shard.to_string());
        values.insert("github.workspace", workspace.to_str().unwrap().to_string());
        for (k, v) in &self.secrets {
            values.insert(k, v.clone());
        }
        for step in &self.workflow.steps {
            let name = expand(&step.name, &values);
            let dir = match &step.working_directory {
                Some(d) => workspace.join(expand(d, &values)),
                None => workspace.to_path_buf(),
            };
            let script = self.scratch.join(format!("step-{shard}.sh"));
            std::fs::write(&script, expand(&step.run, &values)).unwrap();
            let mut cmd = Command::new("bash");
            cmd.args(["--noprofile", "--norc", "-e"])
                .arg(&script)
                .current_dir(&dir)
                .env("HOME", &self.home)
                .env("PATH", &self.path)
                .env("GITHUB_WORKSPACE", workspace)
                .env("CI", "true")
                .env("PIKUBE_TEST_KEYS", &self.test_keys)
                .env_remove("PIKUBE_CACHE_DIR")
                .env_remove("XDG_CACHE_HOME")
                .env_remove("SOURCE_DATE_EPOCH")
                .stdin(Stdio::null());
            for (k, v) in self.workflow.env.iter().chain(&step.env) {
                cmd.env(k, expand(v, &values));
            }
            let out = cmd.output().unwrap();
            std::fs::remove_file(&script).unwrap();
            eprintln!(
                "shard {shard}, step {name:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                stderr(&out)
            );
            if !out.status.success() {
                return Err((name, out));
            }
        }
        Ok(())
    }
}

#[test]
fn nightly_workflow_builds_every_shard_with_consistent_checksums() {
    if !pikube_test_oracles::require_tool("git", "git") {
        return;
    }
    let wf = workflow();
    assert!(
        wf.steps
            .iter()
            .any(|s| s.run.contains("pikube-image build")),
        "{:?}",
        wf.steps
    );
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(home.join(".ssh/id_ed25519.pub"), format!("{KEY}\n")).unwrap();

    let fixture = fixtures::ubuntu_26_04_raspi(root.path(), FixtureOpts::default());
    let xz = std::fs::read(fixtures::compress(
        &fixture.image,
        pikube_image::decompress::Compression::Xz,
    ))
    .unwrap();
    let server = TestServer::start();
    let signer = CatalogSigner::new();
    serve_board_image(&server, "rpi4", xz.clone(), &signer);
    serve_board_image(&server, "rpi5", xz, &signer);
    serve_k3s(&server, DEFAULT_K3S_VERSION, b"#!/bin/sh\n", b"airgap");

    // The cluster's repository: what `init` wrote, with a mirror, committed without
    // secrets/; the host keys a first local build made.
    let origin = root.path().join("origin");
    std::fs::create_dir_all(&origin).unwrap();
    let o = run_cli(&origin, &[("HOME", &home)], &["init"]);
    assert!(o.status.success(), "init: {}", stderr(&o));
    let config = origin.join("cluster.yaml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("\nmirror: {}\n", server.url()));
    std::fs::write(&config, text).unwrap();
    let cluster = pikube_image::config::Cluster::load(&config).unwrap();
    let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.name.to_string()).collect();
    let mut host_keys = BTreeMap::new();
    for n in &nodes {
        let k = pikube_image::host_keys::host_key(&origin.join("secrets"), n).unwrap();
        host_keys.insert(n.clone(), k.public_openssh);
    }
    git(&origin, &["init", "-q", "-b", "main"]);
    git(&origin, &["add", "."]);
    git(&origin, &["commit", "-q", "-m", "cluster"]);
    let o = Command::new("git")
        .args(["ls-files"])
        .current_dir(&origin)
        .output()
        .unwrap();
    let tracked = String::from_utf8_lossy(&o.stdout);
    assert!(
        !tracked.contains("secrets/"),
        "secrets are not committed: {tracked}"
    );

    let mut secrets = BTreeMap::new();
    secrets.insert(
        "secrets.K3S_TOKEN",
        std::fs::read_to_string(origin.join("secrets/k3s-token"))
            .unwrap()
            .trim_end()
            .to_string(),
    );
    secrets.insert(
        "secrets.HOST_KEYS_TGZ_B64",
        secret_from_header("HOST_KEYS_TGZ_B64", &origin),
    );
    let mut runner = Runner {
        workflow: &wf,
        home: home.clone(),
        scratch: root.path().to_path_buf(),
        path: path_with_binary(),
        secrets,
        test_keys: signer.keys_dir().to_path_buf(),
    };

    let mut built = Vec::new();
    for shard in &wf.shards {
        let ws = root.path().join(format!("runner-{shard}"));
        git(
            root.path(),
            &[
                "clone",
                "-q",
                "--depth",
                "1",
                &format!("file://{}", origin.display()),
                ws.to_str().unwrap(),
            ],
        );
        if let Err((step, out)) = runner.run(&ws, shard) {
            panic!("shard {shard}: step {step:?} failed:\n{}", stderr(&out));
        }
        let upload = ws.join(&wf.upload);
        let files = walk(&upload);
        let sums: Vec<&PathBuf> = files.iter().filter(|p| p.ends_with("SHA256SUMS")).collect();
        assert!(
            !sums.is_empty(),
            "shard {shard} uploads a SHA256SUMS: {files:?}"
        );
        for s in sums {
            let o = Command::new("sha256sum")
                .args(["-c", "--strict", "SHA256SUMS"])
                .current_dir(s.parent().unwrap())
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "shard {shard}: sha256sum -c {}:\n{}{}",
                s.display(),
                String::from_utf8_lossy(&o.stdout),
                stderr(&o)
            );
        }
        let summaries: Vec<&PathBuf> = files
            .iter()
            .filter(|p| {
                let n = p.file_name().unwrap().to_str().unwrap();
                n.ends_with(".json") && !n.ends_with(".manifest.json")
            })
            .collect();
        assert_eq!(summaries.len(), 1, "one JSON summary per shard: {files:?}");
        let summary: Value = serde_json::from_slice(&std::fs::read(summaries[0]).unwrap())
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", summaries[0].display()));
        let mine: Vec<String> = summary["nodes"]
            .as_array()
            .expect("the summary lists the nodes")
            .iter()
            .map(|n| n["node"].as_str().unwrap().to_string())
            .collect();
        if !mine.is_empty() {
            let kh = files
                .iter()
                .find(|p| p.ends_with("known_hosts"))
                .expect("a known_hosts");
            let kh = std::fs::read_to_string(kh).unwrap();
            for n in &mine {
                let key = host_keys[n].split_whitespace().nth(1).unwrap();
                let names = |l: &str| -> Vec<String> {
                    let hosts = l.split_whitespace().next().unwrap_or("");
                    hosts.split(',').map(str::to_string).collect()
                };
                assert!(
                    kh.lines().any(|l| names(l).contains(n) && l.contains(key)),
                    "{n} keeps the host key restored from the secrets:\n{kh}"
                );
            }
        }
        built.extend(mine);
    }
    built.sort();
    let mut want = nodes.clone();
    want.sort();
    assert_eq!(built, want, "the shards build every node exactly once");

    // A missing secret stops the run at the restore step, naming it.
    runner
        .secrets
        .insert("secrets.HOST_KEYS_TGZ_B64", String::new());
    let ws = root.path().join("runner-no-secret");
    git(
        root.path(),
        &[
            "clone",
            "-q",
            &format!("file://{}", origin.display()),
            ws.to_str().unwrap(),
        ],
    );
    let (step, out) = runner.run(&ws, &wf.shards[0]).unwrap_err();
    assert_eq!(step, "Restore secrets");
    assert!(
        stderr(&out).contains("HOST_KEYS_TGZ_B64"),
        "{}",
        stderr(&out)
    );
}
