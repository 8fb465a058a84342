//! Embeds every YAML file under `boards/` in the binary, so adding a board or an OS image
//! is a data change: drop a file in `boards/` or `boards/images/` and rebuild.

use std::fmt::Write as _;
use std::path::Path;

fn collect(dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            let rel = path
                .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join("boards"))
                .expect("under boards/")
                .to_string_lossy()
                .into_owned();
            out.push((rel, path.to_string_lossy().into_owned()));
        }
    }
}

/// Every file under `overlays/<name>/`, with its permission bits, as
/// `(overlay name, path in the image, mode, absolute source path)`.
fn overlay_files(root: &Path) -> Vec<(String, String, u32, String)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root) else {
        return out;
    };
    let mut names: Vec<_> = rd.map(|e| e.expect("overlay entry").path()).collect();
    names.sort();
    for dir in names.into_iter().filter(|p| p.is_dir()) {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut stack = vec![dir.clone()];
        let mut files = Vec::new();
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let meta = std::fs::symlink_metadata(&p).unwrap();
                if meta.is_dir() {
                    stack.push(p);
                } else if meta.is_file() {
                    let rel = p.strip_prefix(&dir).unwrap().to_string_lossy().into_owned();
                    let mode = meta.permissions().mode() & 0o7777;
                    files.push((
                        name.clone(),
                        format!("/{rel}"),
                        mode,
                        p.to_string_lossy().into_owned(),
                    ));
                } else {
                    panic!(
                        "{}: built-in overlays hold only files and directories",
                        p.display()
                    );
                }
            }
        }
        files.sort();
        out.extend(files);
    }
    out
}

/// Output of a command run in the source tree, when it runs and succeeds.
fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let o = std::process::Command::new(cmd)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&o.stdout).trim().to_string()).filter(|s| !s.is_empty())
}

/// `--version`: the version, the git commit built from and the build date (the day of
/// `$SOURCE_DATE_EPOCH` when set, so reproducible builds stay reproducible).
fn version_info() {
    let git = Path::new(env!("CARGO_MANIFEST_DIR")).join(".git");
    for f in ["HEAD", "refs", "packed-refs"] {
        println!("cargo:rerun-if-changed={}", git.join(f).display());
    }
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let commit = output("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or("unknown".into());
    let date = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) => output("date", &["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%d"]),
        Err(_) => output("date", &["-u", "+%Y-%m-%d"]),
    }
    .unwrap_or("unknown".into());
    println!(
        "cargo:rustc-env=PIKUBE_LONG_VERSION={} (commit {commit}, built {date})",
        env!("CARGO_PKG_VERSION")
    );
}

fn main() {
    version_info();
    let overlays = Path::new(env!("CARGO_MANIFEST_DIR")).join("overlays");
    println!("cargo:rerun-if-changed={}", overlays.display());
    let mut code = String::from(
        "/// (overlay, path in the image, mode, content)\npub static OVERLAYS: &[(&str, &str, u32, &[u8])] = &[\n",
    );
    for (name, rel, mode, abs) in overlay_files(&overlays) {
        println!("cargo:rerun-if-changed={abs}");
        writeln!(
            code,
            "    ({name:?}, {rel:?}, 0o{mode:o}, include_bytes!({abs:?})),"
        )
        .unwrap();
    }
    code.push_str("];\n");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("overlays.rs");
    std::fs::write(out, code).unwrap();

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("boards");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root, &mut files);
    let mut code = String::from("pub static EMBEDDED: &[(&str, &str)] = &[\n");
    for (rel, abs) in &files {
        println!("cargo:rerun-if-changed={abs}");
        writeln!(code, "    ({rel:?}, include_str!({abs:?})),").unwrap();
    }
    code.push_str("];\n");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("catalog.rs");
    std::fs::write(out, code).unwrap();
}
