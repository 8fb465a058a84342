//! What the command line refuses before any work starts: usage errors exit 2 and name the
//! flag and the fix; a bad value in cluster.yaml names the file, its line and the fix.

use std::process::Command;

fn run(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_pikube-image"))
        .args(args)
        .current_dir(dir)
        .env("PIKUBE_CACHE_DIR", dir.join("cache"))
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn usage_errors_exit_2_naming_the_flag_and_the_fix() {
    let d = tempfile::tempdir().unwrap();
    for (args, flag, fix) in [
        (
            &["--format", "raw,tgz"][..],
            "--format",
            "raw, zst, xz, bmap",
        ),
        (&["--jobs", "0"], "--jobs", "1 or more"),
        (
            &["--mirror", "mirror.lan"],
            "--mirror",
            "http://127.0.0.1:8080",
        ),
        (&["--mirror", "ftp://mirror.lan"], "--mirror", "http://"),
        (&["--shard", "3/2"], "--shard", "between 1 and N"),
        (
            &["--grow-margin", "17592186044416"],
            "--grow-margin",
            "0..=1048576",
        ),
    ] {
        let mut all = vec!["build", "--all"];
        all.extend_from_slice(args);
        let (code, err) = run(d.path(), &all);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(flag) && err.contains(fix), "{args:?}: {err}");
    }
    assert!(!d.path().join("cache").exists(), "nothing was started");
}

#[test]
fn a_bad_value_in_cluster_yaml_names_the_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c me";
    let cases = [
        ("ip: 10.0.0.300", "line 5", "not an IP address"),
        ("mac: dc:a6:32", "line 5", "like dc:a6:32:01:02:03"),
        ("name: Bad_Name", "line 4", "hostname"),
    ];
    for (field, line, why) in cases {
        let text = format!(
            "cluster: lab\nadmin: {{ssh_authorized_keys: [\"{key}\"]}}\nnodes:\n  - name: cp1\n    {field}\n    board: rpi4\n    role: server\n"
        )
        .replace("  - name: cp1\n    name: Bad_Name\n", "  - name: Bad_Name\n    ip: 10.0.0.1\n");
        let path = d.path().join("my-cluster.yaml");
        std::fs::write(&path, text).unwrap();
        let (code, err) = run(
            d.path(),
            &["build", "--all", "--dry-run", "--config", "my-cluster.yaml"],
        );
        assert_eq!(code, Some(1), "{field}: {err}");
        assert!(
            err.contains("my-cluster.yaml:") && err.contains(line) && err.contains(why),
            "{field}: {err}"
        );
        assert!(!err.contains("<input>"), "{err}");
    }
}

/// `boards --json` is for scripts: every board with its SoC, architecture and exactly one
/// default OS image, which is the one the text table marks.
#[test]
fn boards_json_lists_each_board_with_one_default_image() {
    let o = Command::new(env!("CARGO_BIN_EXE_pikube-image"))
        .args(["boards", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let boards: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    let boards = boards.as_array().expect("a list of boards");
    assert!(boards.iter().any(|b| b["name"] == "rpi4"), "{boards:?}");
    let text = Command::new(env!("CARGO_BIN_EXE_pikube-image"))
        .arg("boards")
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    for b in boards {
        let name = b["name"].as_str().unwrap();
        assert!(!b["soc"].as_str().unwrap().is_empty(), "{name}: no SoC");
        assert!(b["arch"].is_string(), "{name}: no arch");
        let defaults: Vec<&str> = b["images"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["default"] == true)
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert_eq!(defaults.len(), 1, "{name}: defaults {defaults:?}");
        let row = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing from the table:\n{text}"));
        assert!(row.contains(&format!("{}*", defaults[0])), "{row}");
    }
}

/// Runs the binary, returning its exit code, stdout and stderr.
fn run_json(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_pikube-image"))
        .args(args)
        .current_dir(dir)
        .env("PIKUBE_CACHE_DIR", dir.join("cache"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let v = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!("{args:?}: stdout is not one JSON object ({e}): {out}\nstderr: {err}")
    });
    (o.status.code(), v, err)
}

#[test]
fn with_json_errors_are_one_json_object_on_stdout() {
    let d = tempfile::tempdir().unwrap();
    // A usage error: exit 2, the flag and the fix in the message.
    let (code, v, _) = run_json(d.path(), &["build", "--all", "--json", "--jobs", "0"]);
    assert_eq!(code, Some(2), "{v}");
    let e = &v["error"];
    assert_eq!(e["exit_code"], 2, "{v}");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("--jobs") && msg.contains("1 or more"), "{v}");
    assert!(e["causes"].as_array().is_some_and(|c| !c.is_empty()), "{v}");

    // A build that fails: exit 1, the message and every cause.
    let (code, v, err) = run_json(d.path(), &["build", "--all", "--json"]);
    assert_eq!(code, Some(1), "{v}");
    let e = &v["error"];
    assert_eq!(e["exit_code"], 1, "{v}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("cluster.yaml not found") && msg.contains("pikube-image init"),
        "{v}"
    );
    assert!(
        !err.contains("error:"),
        "the error is not printed twice: {err}"
    );

    // A failure with several layers lists each, outermost first.
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c me";
    std::fs::write(
        d.path().join("cluster.yaml"),
        format!("cluster: lab\nadmin: {{ssh_authorized_keys: [\"{key}\"]}}\nnodes:\n  - {{name: cp1, board: rpi9, role: server}}\n"),
    )
    .unwrap();
    let (code, v, _) = run_json(d.path(), &["build", "--all", "--dry-run", "--json"]);
    assert_eq!(code, Some(1), "{v}");
    let causes: Vec<&str> = v["error"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        causes.len() >= 2
            && causes[0].contains("node 'cp1'")
            && causes.last().unwrap().contains("unknown board 'rpi9'"),
        "{v}"
    );

    // inspect and cache list speak JSON too.
    let (code, v, _) = run_json(d.path(), &["inspect", "--json", "missing.img"]);
    assert_eq!(code, Some(1), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing.img"),
        "{v}"
    );

    // Without --json the error stays a line on stderr.
    let (code, err) = run(d.path(), &["inspect", "missing.img"]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with("error: "), "{err}");
}
