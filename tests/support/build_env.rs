//! Helpers for end-to-end builds through the command line: the join token, a k3s release on
//! the test mirror, running the binary, and filesystem oracles.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::http::TestServer;

pub const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c ops@laptop";
pub const K3S_VERSION: &str = "v1.31.4+k3s1";
pub const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// Writes `secrets/k3s-token` (0600) under `dir`.
pub fn write_token(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    std::fs::write(dir.join("secrets/k3s-token"), format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(
        dir.join("secrets/k3s-token"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

/// Publishes a k3s release (arm64 binary, airgap tarball, checksum list) on the mirror.
pub fn serve_k3s(server: &TestServer, version: &str, binary: &[u8], airgap: &[u8]) {
    let dir = format!(
        "/github.com/k3s-io/k3s/releases/download/{}",
        version.replace('+', "%2B")
    );
    let sha = pikube_image::io::sha256_bytes;
    server.add(&format!("{dir}/k3s-arm64"), binary.to_vec());
    server.add(
        &format!("{dir}/k3s-airgap-images-arm64.tar.zst"),
        airgap.to_vec(),
    );
    server.add(
        &format!("{dir}/sha256sum-arm64.txt"),
        format!(
            "{}  k3s-arm64\n{}  k3s-airgap-images-arm64.tar.zst\n",
            sha(binary),
            sha(airgap)
        ),
    );
}

/// Runs `pikube-image ARGS` in `dir` with its own cache, echoing the output for failures.
pub fn run_cli(dir: &Path, envs: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pikube-image"));
    cmd.args(args)
        .current_dir(dir)
        .env("PIKUBE_CACHE_DIR", dir.join("cache"))
        .env_remove("SOURCE_DATE_EPOCH");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    eprintln!(
        "$ pikube-image {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every regular file below `dir`.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Copies `[start, start+len)` of `img` into its own file, for tools without an offset option.
pub fn extract(img: &Path, start: u64, len: u64, out: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(img).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut o = std::fs::File::create(out).unwrap();
    std::io::copy(&mut f.take(len), &mut o).unwrap();
}

/// `e2fsck -fn` on the ext4 filesystem at `[start, start+len)` of `img` must find nothing.
pub fn e2fsck_clean(img: &Path, start: u64, len: u64, scratch: &Path) {
    extract(img, start, len, scratch);
    let o = Command::new("e2fsck")
        .args(["-fn"])
        .arg(scratch)
        .output()
        .expect("e2fsck is installed");
    assert!(
        o.status.success(),
        "e2fsck -fn: {}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    std::fs::remove_file(scratch).unwrap();
}
