//! Helpers for end-to-end builds through the command line: the join token, a k3s release on
//! the test mirror, running the binary, and filesystem oracles.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::http::TestServer;

pub const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c ops@laptop";
/// The k3s release the builds fetch when cluster.yaml names none.
pub const K3S_VERSION: &str = pikube_image::config::DEFAULT_K3S_VERSION;
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
    serve_k3s_arch(server, version, "arm64", binary, airgap);
}

/// Publishes a k3s release for `arch` (`arm64` or `armhf`) on the mirror, with the asset
/// names k3s's releases use: the armhf binary is `k3s-armhf`, but its checksum list and
/// airgap images say `arm`.
pub fn serve_k3s_arch(
    server: &TestServer,
    version: &str,
    arch: &str,
    binary: &[u8],
    airgap: &[u8],
) {
    let dir = format!(
        "/github.com/k3s-io/k3s/releases/download/{}",
        version.replace('+', "%2B")
    );
    let (bin, sums, air) = match arch {
        "arm64" => (
            "k3s-arm64",
            "sha256sum-arm64.txt",
            "k3s-airgap-images-arm64.tar.zst",
        ),
        "armhf" => (
            "k3s-armhf",
            "sha256sum-arm.txt",
            "k3s-airgap-images-arm.tar.zst",
        ),
        other => panic!("no k3s release layout for {other} in the tests"),
    };
    let sha = pikube_image::io::sha256_bytes;
    server.add(&format!("{dir}/{bin}"), binary.to_vec());
    server.add(&format!("{dir}/{air}"), airgap.to_vec());
    server.add(
        &format!("{dir}/{sums}"),
        format!("{}  {bin}\n{}  {air}\n", sha(binary), sha(airgap)),
    );
}

/// The first bytes of an ELF executable for `e_machine` (40 ARM, 183 AArch64): enough for
/// a test to tell which architecture's k3s binary an image holds.
pub fn elf_header(e_machine: u16, class64: bool) -> Vec<u8> {
    let mut h = vec![0x7f, b'E', b'L', b'F', if class64 { 2 } else { 1 }, 1, 1, 0];
    h.resize(16, 0);
    h.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    h.extend_from_slice(&e_machine.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    h.resize(64, 0);
    h
}

/// The `e_machine` field of an ELF file.
pub fn elf_machine(bytes: &[u8]) -> u16 {
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    u16::from_le_bytes([bytes[18], bytes[19]])
}

/// Publishes `image` on the mirror at the URL of OS image `os` of `board` (its default when
/// `None`) in the built-in catalog, with a checksum list beside it in that publisher's
/// format (`<hex> *<name>` in Ubuntu's SHA256SUMS, `<hex>  <name>` in Raspberry Pi's
/// `<image>.sha256`, `<hex> <name>` in Armbian's `.sha`) and, when the catalog expects one,
/// the signature by `signer` over the list or the image (trusted by a build run with
/// `$PIKUBE_TEST_KEYS` = `signer.keys_dir()`). Returns the upstream URL.
pub fn serve_catalog_image(
    server: &TestServer,
    board: &str,
    os: Option<&str>,
    image: Vec<u8>,
    signer: &super::signing::CatalogSigner,
) -> String {
    use pikube_image::source::Signs;
    use pikube_image::source::base::ImageChecksum;
    let catalog = pikube_image::boards::Catalog::load().unwrap();
    let entry = catalog
        .image_for(catalog.board(board).unwrap(), os)
        .unwrap();
    let ImageChecksum::SumsUrl {
        url: sums,
        signature,
    } = &entry.checksum
    else {
        panic!("{board}'s image pins its digest: serve it by that instead");
    };
    let path = |url: &str| {
        let mirrored = pikube_image::source::mirror_url(url, &server.url()).unwrap();
        mirrored[server.url().len()..].to_string()
    };
    let sha = pikube_image::io::sha256_bytes(&image);
    let name = entry.file_name();
    let line = if sums.ends_with(".sha256") {
        format!("{sha}  {name}\n")
    } else if sums.ends_with(".sha") {
        format!("{sha} {name}\n")
    } else {
        format!("{sha} *{name}\n")
    };
    if let Some(sig) = signature {
        let signed = match sig.signs {
            Signs::ChecksumList => line.as_bytes(),
            Signs::Image => &image[..],
        };
        server.add(&path(&sig.url), signer.sign(signed));
    }
    server.add(&path(&entry.url), image);
    server.add(&path(sums), line);
    entry.url.clone()
}

/// [`serve_catalog_image`] for `board`'s default OS image.
pub fn serve_board_image(
    server: &TestServer,
    board: &str,
    image: Vec<u8>,
    signer: &super::signing::CatalogSigner,
) -> String {
    serve_catalog_image(server, board, None, image, signer)
}

/// `ssh-keygen -t KIND -C COMMENT` into `home/.ssh/id_KIND`; returns the `.pub` line.
pub fn keygen(home: &Path, kind: &str, comment: &str) -> String {
    let ssh = home.join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    let file = ssh.join(format!("id_{kind}"));
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", "", "-C", comment, "-f"])
        .arg(&file);
    if kind == "rsa" {
        cmd.args(["-b", "2048"]);
    }
    let o = cmd
        .output()
        .expect("ssh-keygen runs (install openssh-client)");
    assert!(o.status.success(), "ssh-keygen: {}", stderr(&o));
    std::fs::read_to_string(file.with_extension("pub"))
        .unwrap()
        .trim_end()
        .to_string()
}

/// `PATH` with the directory of the binary under test first, so scripts run `pikube-image`
/// as a user who installed it would.
pub fn path_with_binary() -> std::ffi::OsString {
    let bin = Path::new(env!("CARGO_BIN_EXE_pikube-image"))
        .parent()
        .unwrap();
    let mut dirs = vec![bin.to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
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
