//! `pikube-image init`: a commented cluster.yaml, a random k3s join token and a .gitignore
//! that keeps the secrets out of version control.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::config::{AuthorizedKey, Cluster, PLACEHOLDER_KEY};

/// The documented inventory `init` writes.
pub const EXAMPLE: &str = include_str!("cluster.example.yaml");

/// The line `init` puts into `.gitignore`.
const GITIGNORE_SECRETS: &str = "secrets/";

/// The user's own public key: the first of `~/.ssh/id_{ed25519,ecdsa,rsa}.pub` that holds
/// one. Returns the file it came from with the key.
pub fn user_public_key(home: &Path) -> Option<(PathBuf, AuthorizedKey)> {
    ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"]
        .iter()
        .map(|n| home.join(".ssh").join(n))
        .find_map(|p| {
            let text = fs::read_to_string(&p).ok()?;
            let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
            let key = AuthorizedKey::try_from(line.to_string()).ok()?;
            Some((p, key))
        })
}

/// The example inventory, with `key` in place of the placeholder when there is one. The key
/// goes in as a double-quoted scalar (a JSON string is one), the result is parsed back and the
/// key must read back identical.
pub fn example_config(key: Option<&AuthorizedKey>) -> Result<String> {
    let Some(key) = key else {
        return Ok(EXAMPLE.to_string());
    };
    let scalar = serde_json::to_string(key.as_str())?;
    let text = EXAMPLE.replacen(PLACEHOLDER_KEY, &scalar, 1);
    let parsed = Cluster::parse(&text).context("the generated cluster.yaml does not validate")?;
    if parsed.admin.ssh_authorized_keys.as_slice() != std::slice::from_ref(key) {
        bail!("the SSH key does not read back identical from the generated cluster.yaml");
    }
    Ok(text)
}

/// A random join token: 32 bytes from the OS generator, hex encoded.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

fn create(path: &Path, force: bool, mode: u32) -> Result<fs::File> {
    let mut o = OpenOptions::new();
    o.write(true).mode(mode);
    if force {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    let f = o
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // `mode` only applies to new files; make an overwritten one private too.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(f)
}

/// What `init` did with each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Wrote(PathBuf),
    /// Already there and left as it was.
    Kept(PathBuf),
    /// `.gitignore` existed without a line covering the secrets: one was added.
    Extended(PathBuf),
}

/// What `init` did, and where the admin key came from.
#[derive(Debug)]
pub struct Report {
    pub files: Vec<Outcome>,
    /// The public key file written into cluster.yaml; `None` when the placeholder was
    /// written (or cluster.yaml was kept).
    pub key_from: Option<PathBuf>,
    /// Whether cluster.yaml holds the placeholder key `init` just wrote.
    pub placeholder: bool,
}

impl Report {
    /// What `init` tells the user on standard error: each file, where the key came from or
    /// that there was none, and the next step. `config` is the cluster.yaml written or kept.
    pub fn render(&self, config: &Path) -> String {
        let mut out = String::new();
        for f in &self.files {
            out.push_str(&match f {
                Outcome::Wrote(p) => format!("wrote {}\n", p.display()),
                Outcome::Kept(p) => format!("kept {} (already there)\n", p.display()),
                Outcome::Extended(p) => format!("added secrets/ to {}\n", p.display()),
            });
        }
        if let Some(k) = &self.key_from {
            out.push_str(&format!(
                "admin key: {} (in {})\n",
                k.display(),
                config.display()
            ));
        }
        if self.placeholder {
            out.push_str(&format!(
                "warning: no public key found in ~/.ssh (id_ed25519.pub, id_ecdsa.pub, id_rsa.pub): {} holds the placeholder {PLACEHOLDER_KEY}; replace it with your key (make one with `ssh-keygen -t ed25519`), or build will refuse it\n",
                config.display()
            ));
        }
        out.push_str(&format!(
            "next: edit {} (nodes, addresses), then run `pikube-image build --all`\n",
            config.display()
        ));
        out
    }
}

/// The token file an existing cluster.yaml names, read without validating the rest (it may
/// still hold the placeholder key, or be half edited).
fn token_file_of(config: &Path) -> Result<PathBuf> {
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        k3s: Option<K3s>,
    }
    #[derive(Deserialize)]
    struct K3s {
        #[serde(default)]
        token_file: Option<PathBuf>,
    }
    let text =
        fs::read_to_string(config).with_context(|| format!("cannot read {}", config.display()))?;
    let f: File =
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
    Ok(f.k3s
        .and_then(|k| k.token_file)
        .unwrap_or_else(|| PathBuf::from("secrets/k3s-token")))
}

/// Writes `DIR/cluster.yaml`, the join token it names (0600, directory 0700) and a
/// `.gitignore` covering `secrets/`. Files that exist are kept (only what is missing is
/// created) unless `force`; when every file exists already it refuses, naming them.
/// `home` is where `.ssh/` is looked up. The token is never printed. The token file must be
/// inside `dir` unless `allow_outside` ([`crate::config::path_inside`]).
pub fn init(dir: &Path, force: bool, allow_outside: bool, home: Option<&Path>) -> Result<Report> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config = dir.join(crate::config::DEFAULT_CONFIG);
    let gitignore = dir.join(".gitignore");
    let config_exists = config.exists() && !force;
    let token_file = match config_exists {
        true => token_file_of(&config)?,
        false => PathBuf::from("secrets/k3s-token"),
    };
    let token = crate::config::path_inside(dir, "k3s.token_file", &token_file, allow_outside)?;
    let gitignore_ok = gitignore_covers_secrets(&gitignore)?;
    if !force && config_exists && token.exists() && gitignore_ok {
        bail!(
            "{} and {} already exist: keep them, or pass --force to overwrite them",
            config.display(),
            token.display()
        );
    }

    let mut files = Vec::new();
    let mut report = Report {
        files: Vec::new(),
        key_from: None,
        placeholder: false,
    };
    if config_exists {
        files.push(Outcome::Kept(config.clone()));
    } else {
        let found = home.and_then(user_public_key);
        let text = example_config(found.as_ref().map(|(_, k)| k))?;
        report.placeholder = found.is_none();
        report.key_from = found.map(|(p, _)| p);
        let mut c = create(&config, force, 0o644)?;
        c.write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", config.display()))?;
        files.push(Outcome::Wrote(config.clone()));
    }

    if token.exists() && !force {
        files.push(Outcome::Kept(token.clone()));
    } else {
        let secrets = token.parent().unwrap_or(dir);
        fs::create_dir_all(secrets)
            .with_context(|| format!("cannot create {}", secrets.display()))?;
        fs::set_permissions(secrets, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot set the mode of {}", secrets.display()))?;
        let mut t = create(&token, force, 0o600)?;
        writeln!(t, "{}", new_token())
            .with_context(|| format!("cannot write {}", token.display()))?;
        files.push(Outcome::Wrote(token));
    }

    if gitignore_ok {
        files.push(Outcome::Kept(gitignore));
    } else {
        let existed = gitignore.exists();
        let mut g = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(&gitignore)
            .with_context(|| format!("cannot write {}", gitignore.display()))?;
        let text = fs::read_to_string(&gitignore).unwrap_or_default();
        let sep = if text.is_empty() || text.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        write!(
            g,
            "{sep}# The k3s join token and other secrets of the cluster: never commit them.\n{GITIGNORE_SECRETS}\n"
        )
        .with_context(|| format!("cannot write {}", gitignore.display()))?;
        files.push(if existed {
            Outcome::Extended(gitignore)
        } else {
            Outcome::Wrote(gitignore)
        });
    }
    report.files = files;
    Ok(report)
}

/// Whether `.gitignore` has a line that ignores `secrets/` at its top level.
fn gitignore_covers_secrets(path: &Path) -> Result<bool> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().map(str::trim).any(|l| {
            matches!(
                l,
                "secrets" | "secrets/" | "/secrets" | "/secrets/" | "secrets/*" | "/secrets/*"
            )
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c";

    fn key(comment: &str) -> AuthorizedKey {
        AuthorizedKey::try_from(format!("{KEY} {comment}")).unwrap()
    }

    #[test]
    fn example_takes_a_key_with_any_comment() {
        for comment in [
            "me@host: with 'quotes' #hash",
            "\"double\" and 'single'",
            "Zoë's laptop — ключ",
            "- [not] {yaml}: &anchor *alias !tag %x @y `z`",
        ] {
            let k = key(comment);
            let text = example_config(Some(&k)).unwrap();
            let c = Cluster::parse(&text).unwrap();
            assert_eq!(c.admin.ssh_authorized_keys, vec![k]);
        }
    }

    #[test]
    fn the_placeholder_is_refused_by_name() {
        let text = example_config(None).unwrap();
        assert!(text.contains("# pikube-image cluster inventory"));
        let e = format!("{:#}", Cluster::parse(&text).unwrap_err());
        assert!(
            e.contains(PLACEHOLDER_KEY) && e.contains("ssh-keygen"),
            "{e}"
        );
        let line = EXAMPLE
            .lines()
            .position(|l| l.contains(PLACEHOLDER_KEY))
            .unwrap()
            + 1;
        assert!(
            e.contains(&format!("line {line} ")),
            "names the key's position: {e}"
        );
    }

    #[test]
    fn init_writes_private_token_and_refuses_to_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let r = init(d.path(), false, false, None).unwrap();
        assert_eq!(r.files.len(), 3);
        assert!(r.placeholder);
        let token = d.path().join("secrets/k3s-token");
        let meta = fs::metadata(&token).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dmeta = fs::metadata(d.path().join("secrets")).unwrap();
        assert_eq!(dmeta.permissions().mode() & 0o777, 0o700);
        let t1 = fs::read_to_string(&token).unwrap();
        assert_eq!(t1.trim().len(), 64);
        let e = init(d.path(), false, false, None).unwrap_err().to_string();
        assert!(e.contains("already exist") && e.contains("--force"), "{e}");
        assert_eq!(
            fs::read_to_string(&token).unwrap(),
            t1,
            "refusal changes nothing"
        );
        init(d.path(), true, false, None).unwrap();
        let t2 = fs::read_to_string(&token).unwrap();
        assert_ne!(t1, t2, "--force writes a new token");
        assert_eq!(
            fs::metadata(&token).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn init_creates_only_what_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let config = d.path().join("cluster.yaml");
        let edited = EXAMPLE.replace("secrets/k3s-token", "private/join-token");
        fs::write(&config, &edited).unwrap();
        fs::write(d.path().join(".gitignore"), "target/").unwrap();
        let r = init(d.path(), false, false, None).unwrap();
        assert_eq!(fs::read_to_string(&config).unwrap(), edited, "kept");
        let token = d.path().join("private/join-token");
        assert_eq!(fs::read_to_string(&token).unwrap().trim().len(), 64);
        assert!(!d.path().join("secrets").exists());
        assert_eq!(
            fs::read_to_string(d.path().join(".gitignore")).unwrap(),
            "target/\n# The k3s join token and other secrets of the cluster: never commit them.\nsecrets/\n"
        );
        assert!(r.files.contains(&Outcome::Kept(config)));
        assert!(r.files.contains(&Outcome::Wrote(token)));
    }

    #[test]
    fn init_finds_the_users_key() {
        let home = tempfile::tempdir().unwrap();
        fs::create_dir(home.path().join(".ssh")).unwrap();
        let line = format!("{KEY} me@laptop");
        fs::write(home.path().join(".ssh/id_rsa.pub"), "not a key\n").unwrap();
        fs::write(home.path().join(".ssh/id_ed25519.pub"), format!("{line}\n")).unwrap();
        let d = tempfile::tempdir().unwrap();
        let r = init(d.path(), false, false, Some(home.path())).unwrap();
        assert_eq!(r.key_from, Some(home.path().join(".ssh/id_ed25519.pub")));
        let c = Cluster::load(&d.path().join("cluster.yaml")).unwrap();
        assert_eq!(c.admin.ssh_authorized_keys[0].as_str(), line);
    }
}
