//! Per-node SSH host keys, generated once at build time and kept in `secrets/`, so the
//! build can publish a `known_hosts` for the whole cluster: no trust on first use.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ssh_key::{Algorithm, LineEnding, PrivateKey};

use crate::config::{Cluster, Node};
use crate::manifest::Manifest;
use crate::op::{Action, Op};
use crate::progress::Progress;

/// A node's ed25519 host key pair in OpenSSH formats.
#[derive(Clone)]
pub struct HostKey {
    pub private_openssh: String,
    pub public_openssh: String,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKey")
            .field("public_openssh", &self.public_openssh)
            .finish_non_exhaustive()
    }
}

/// Host key files the OS images may carry, removed so only the node's own key remains.
pub const IMAGE_HOST_KEYS: [&str; 8] = [
    "/etc/ssh/ssh_host_rsa_key",
    "/etc/ssh/ssh_host_rsa_key.pub",
    "/etc/ssh/ssh_host_ecdsa_key",
    "/etc/ssh/ssh_host_ecdsa_key.pub",
    "/etc/ssh/ssh_host_ed25519_key",
    "/etc/ssh/ssh_host_ed25519_key.pub",
    "/etc/ssh/ssh_host_dsa_key",
    "/etc/ssh/ssh_host_dsa_key.pub",
];
pub const HOST_KEY_PATH: &str = "/etc/ssh/ssh_host_ed25519_key";

/// The file of the output directory that lists the host keys of the nodes there.
pub const KNOWN_HOSTS: &str = "known_hosts";

/// Directory of a node's keys: `<secrets>/ssh/<node>/`.
pub fn key_dir(secrets: &Path, node: &str) -> PathBuf {
    secrets.join("ssh").join(node)
}

/// What is at `path`, without following a link there: `None` when nothing is. A link is
/// refused: host keys are read and written only in real files and directories, so that a
/// link cannot put another key into an image or make the build write elsewhere.
fn no_link(path: &Path) -> Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            let target = fs::read_link(path)
                .map(|t| format!(" to {}", t.display()))
                .unwrap_or_default();
            bail!(
                "{} is a symbolic link{target}: host keys are kept only in real files and directories under secrets/; replace the link with the file or directory itself",
                path.display()
            )
        }
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot stat {}", path.display())),
    }
}

fn private_dir(path: &Path) -> Result<()> {
    no_link(path)?;
    crate::emit::private_dir(path)
}

fn generate() -> Result<(PrivateKey, String, String)> {
    let key = PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519)
        .map_err(|e| anyhow::anyhow!("cannot generate a host key: {e}"))?;
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode the host key: {e}"))?
        .to_string();
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| anyhow::anyhow!("cannot encode the public key: {e}"))?;
    Ok((key, private, public))
}

/// The node's key directory and the paths of its private and public key, refusing links
/// on the way there.
fn key_paths(secrets: &Path, node: &str) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let dir = key_dir(secrets, node);
    for d in [secrets, &secrets.join("ssh"), &dir] {
        no_link(d)?;
    }
    let private = dir.join("ssh_host_ed25519_key");
    let public = dir.join("ssh_host_ed25519_key.pub");
    Ok((dir, private, public))
}

/// The node's stored host key, or a throw-away one when it has none yet. Writes nothing
/// (for `--dry-run`).
pub fn host_key_preview(secrets: &Path, node: &str) -> Result<HostKey> {
    if no_link(&key_paths(secrets, node)?.1)?.is_some() {
        return host_key(secrets, node);
    }
    let (_, private_openssh, public_openssh) = generate()?;
    Ok(HostKey {
        private_openssh,
        public_openssh,
    })
}

/// The node's host key: read from `secrets/ssh/<node>/`, or generated there (private key
/// 0600) on first use.
pub fn host_key(secrets: &Path, node: &str) -> Result<HostKey> {
    let (dir, priv_path, pub_path) = key_paths(secrets, node)?;
    if let Some(meta) = no_link(&priv_path)? {
        if meta.permissions().mode() & 0o077 != 0 {
            bail!(
                "{} is readable by others: run `chmod 600 {}`",
                priv_path.display(),
                priv_path.display()
            );
        }
        let text = fs::read_to_string(&priv_path)
            .with_context(|| format!("cannot read {}", priv_path.display()))?;
        let key = PrivateKey::from_openssh(&text).map_err(|e| {
            anyhow::anyhow!(
                "{} is not an OpenSSH private key ({e}): delete it to generate a new one",
                priv_path.display()
            )
        })?;
        if key.algorithm() != Algorithm::Ed25519 {
            bail!("{} is not an ed25519 key", priv_path.display());
        }
        let public = key
            .public_key()
            .to_openssh()
            .map_err(|e| anyhow::anyhow!("cannot encode the public key: {e}"))?;
        return Ok(HostKey {
            private_openssh: text,
            public_openssh: public,
        });
    }
    private_dir(secrets)?;
    private_dir(&secrets.join("ssh"))?;
    private_dir(&dir)?;
    let (_, private, public) = generate()?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&priv_path)
        .with_context(|| format!("cannot create {}", priv_path.display()))?;
    f.write_all(private.as_bytes())
        .with_context(|| format!("cannot write {}", priv_path.display()))?;
    no_link(&pub_path)?;
    // Renamed into place: a file left there is replaced, never written through.
    crate::emit::write_atomic(&pub_path, format!("{public}\n").as_bytes())?;
    Ok(HostKey {
        private_openssh: private,
        public_openssh: public,
    })
}

/// What a build may create for a node's host key: the key files and the directories on
/// the way to them. [`NewKeys::watch`] notes which of them do not exist yet; dropped
/// without [`NewKeys::keep`], it removes those again (files first, then directories that
/// are empty), so a build that fails leaves no key behind that it made. What existed before
/// is never removed.
pub struct NewKeys {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    keep: bool,
}

impl NewKeys {
    pub fn watch(secrets: &Path, node: &str) -> Result<NewKeys> {
        let (dir, private, public) = key_paths(secrets, node)?;
        let ssh = secrets.join("ssh");
        let missing = |p: &Path| fs::symlink_metadata(p).is_err();
        Ok(NewKeys {
            files: [private, public]
                .into_iter()
                .filter(|p| missing(p))
                .collect(),
            dirs: [dir, ssh, secrets.to_path_buf()]
                .into_iter()
                .filter(|p| missing(p))
                .collect(),
            keep: false,
        })
    }

    /// The build succeeded: what it created stays.
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for NewKeys {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for f in &self.files {
            let _ = fs::remove_file(f);
        }
        // Innermost first; a directory something else was put into stays.
        for d in &self.dirs {
            let _ = fs::remove_dir(d);
        }
    }
}

/// Names a node answers to in `known_hosts`: hostname, fqdn, static address.
pub fn host_names(cluster: &Cluster, node: &Node) -> Result<Vec<String>> {
    let mut names = vec![node.name.to_string()];
    if let Some(f) = cluster.fqdn(&node.name) {
        names.push(f);
    }
    if let Some(a) = cluster.static_addr(node) {
        names.push(a.ip.to_string());
    }
    Ok(names)
}

/// The `known_hosts` line of `node` holding `key`: its names, then the key without its
/// comment.
pub fn known_host_line(cluster: &Cluster, node: &Node, key: &HostKey) -> Result<String> {
    let public = key
        .public_openssh
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    Ok(format!("{} {public}", host_names(cluster, node)?.join(",")))
}

/// Writes `DIR/known_hosts`: the line of every node whose manifest is in `dir` and whose
/// outputs are there, as the manifest records it (the key inside that node's image), sorted
/// by node name. It describes exactly the images present, whichever build made them.
pub fn write_known_hosts(dir: &Path, progress: &Progress) -> Result<PathBuf> {
    let mut lines = std::collections::BTreeMap::new();
    let rd = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in rd {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let path = entry.path();
        let is_manifest = entry
            .file_name()
            .to_string_lossy()
            .ends_with(".manifest.json");
        if !is_manifest || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let read = fs::read_to_string(&path)
            .map_err(anyhow::Error::from)
            .and_then(|text| Ok(Manifest::from_json(&text)?));
        match read {
            Ok(m) if !m.outputs.iter().any(|o| dir.join(&o.file).is_file()) => {}
            Ok(Manifest {
                known_hosts: Some(line),
                node,
                ..
            }) => {
                lines.insert(node, line);
            }
            Ok(m) => progress.message(&format!(
                "{} records no host key (an older pikube-image wrote it): node '{}' is left out of known_hosts until it is built again",
                path.display(),
                m.node
            )),
            Err(e) => progress.message(&format!(
                "{} cannot be read as a manifest ({e:#}): it is left out of known_hosts; build its node again or remove it",
                path.display()
            )),
        }
    }
    let text: String = lines.values().map(|l| format!("{l}\n")).collect();
    crate::emit::write_atomic(&dir.join(KNOWN_HOSTS), text.as_bytes())
}

/// The ops that give a node `key` as its only SSH host key: the image's own keys removed
/// (the same for every node), the node's key written (its own).
pub fn host_key_ops(root: &str, key: &HostKey) -> Vec<Op> {
    let mut ops: Vec<Op> = IMAGE_HOST_KEYS
        .iter()
        .map(|path| Op::new(root, path, Action::Remove, 0o600).role_wide())
        .collect();
    ops.push(
        Op::file(
            root,
            HOST_KEY_PATH,
            key.private_openssh.clone().into_bytes(),
            0o600,
        )
        .secret(),
    );
    ops.push(Op::file(
        root,
        &format!("{HOST_KEY_PATH}.pub"),
        format!("{}\n", key.public_openssh).into_bytes(),
        0o644,
    ));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_generated_once_private_and_reused() {
        let d = tempfile::tempdir().unwrap();
        let secrets = d.path().join("secrets");
        let k1 = host_key(&secrets, "cp1").unwrap();
        assert!(
            k1.private_openssh
                .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
        );
        assert!(k1.public_openssh.starts_with("ssh-ed25519 AAAA"));
        let p = key_dir(&secrets, "cp1").join("ssh_host_ed25519_key");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(key_dir(&secrets, "cp1"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let k2 = host_key(&secrets, "cp1").unwrap();
        assert_eq!(k1.public_openssh, k2.public_openssh, "reused");
        let preview = host_key_preview(&secrets, "cp1").unwrap();
        assert_eq!(
            preview.public_openssh, k1.public_openssh,
            "preview reads stored keys"
        );
        let fresh = host_key_preview(&secrets, "new").unwrap();
        assert!(fresh.public_openssh.starts_with("ssh-ed25519 "));
        assert!(!key_dir(&secrets, "new").exists(), "preview writes nothing");
        let other = host_key(&secrets, "w1").unwrap();
        assert_ne!(k1.public_openssh, other.public_openssh);
        assert!(
            !format!("{k1:?}").contains("PRIVATE"),
            "Debug never shows the key"
        );
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let e = host_key(&secrets, "cp1").unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn links_in_the_key_directory_are_refused() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let secrets = d.path().join("secrets");
        let victim = d.path().join("authorized_keys");
        fs::write(&victim, "ssh-ed25519 AAAA mine\n").unwrap();
        // A link at the public key: generating the key pair would write through it.
        let dir = key_dir(&secrets, "cp1");
        private_dir(&secrets).unwrap();
        private_dir(&secrets.join("ssh")).unwrap();
        private_dir(&dir).unwrap();
        let public = dir.join("ssh_host_ed25519_key.pub");
        symlink(&victim, &public).unwrap();
        let e = format!("{:#}", host_key(&secrets, "cp1").unwrap_err());
        assert!(
            e.contains(&public.display().to_string()) && e.contains("symbolic link"),
            "{e}"
        );
        assert_eq!(
            fs::read_to_string(&victim).unwrap(),
            "ssh-ed25519 AAAA mine\n"
        );
        // A link at the private key: the build would put another key into the image.
        let other = host_key(d.path(), "elsewhere").unwrap();
        let private = key_dir(&secrets, "w1").join("ssh_host_ed25519_key");
        private_dir(&key_dir(&secrets, "w1")).unwrap();
        symlink(
            key_dir(d.path(), "elsewhere").join("ssh_host_ed25519_key"),
            &private,
        )
        .unwrap();
        let e = format!("{:#}", host_key(&secrets, "w1").unwrap_err());
        assert!(e.contains("symbolic link"), "{e}");
        assert!(!e.contains(&other.private_openssh), "{e}");
        // A linked key directory.
        symlink(key_dir(d.path(), "elsewhere"), key_dir(&secrets, "w2")).unwrap();
        let e = format!("{:#}", host_key(&secrets, "w2").unwrap_err());
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn known_hosts_lists_every_node_whose_image_is_there() {
        let c = Cluster::parse(
            "cluster: lab\ndomain: home.arpa\nadmin: {user: ops, ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c me]}\nnodes:\n  - {name: cp1, board: rpi4, role: server, ip: 10.0.0.10}\n  - {name: w1, board: rpi4, role: agent}\n",
        )
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        fs::create_dir(&out).unwrap();
        // Manifests as builds leave them: w1's and cp1's with their images, gone's without
        // its image, old's from a version that recorded no key.
        for (node, line, image) in [
            ("w1", true, true),
            ("cp1", true, true),
            ("gone", true, false),
            ("old", false, true),
        ] {
            let mut m = crate::manifest::tests::sample();
            m.node = node.into();
            m.outputs = vec![crate::manifest::OutputRecord {
                file: format!("{node}.img"),
                size: 1,
                sha256: "ab".repeat(32),
            }];
            m.known_hosts = match (line, c.node(node)) {
                (false, _) => None,
                (true, Some(n)) => {
                    let key = host_key(d.path(), node).unwrap();
                    Some(known_host_line(&c, n, &key).unwrap())
                }
                (true, None) => Some(format!("{node} ssh-ed25519 AAAA")),
            };
            fs::write(out.join(format!("{node}.manifest.json")), m.to_json()).unwrap();
            if image {
                fs::write(out.join(format!("{node}.img")), b"x").unwrap();
            }
        }
        let kh = write_known_hosts(&out, &Progress::quiet()).unwrap();
        let text = fs::read_to_string(&kh).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with("cp1,cp1.home.arpa,10.0.0.10 ssh-ed25519 AAAA"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("w1,w1.home.arpa ssh-ed25519 "),
            "{text}"
        );
        // ssh-keygen accepts the file.
        let o = std::process::Command::new("ssh-keygen")
            .args(["-F", "10.0.0.10", "-f"])
            .arg(&kh)
            .output()
            .expect("ssh-keygen runs (install openssh-client)");
        assert!(o.status.success(), "ssh-keygen -F finds the node");
    }
}
