//! `pikube-image init`: a commented cluster.yaml and a random k3s join token.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::config::Cluster;

/// The documented inventory `init` writes.
pub const EXAMPLE: &str = include_str!("cluster.example.yaml");

const PLACEHOLDER_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIReplaceWithYourOwnPublicKey you@laptop";

/// The user's own public key, when there is one in ~/.ssh.
fn user_public_key() -> Option<String> {
    let home = dirs::home_dir()?;
    ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"]
        .iter()
        .filter_map(|n| fs::read_to_string(home.join(".ssh").join(n)).ok())
        .map(|k| k.trim().to_string())
        .find(|k| !k.is_empty() && !k.contains('\n'))
}

/// The example inventory, with the user's own public key in place of the placeholder when
/// one is found. The key is inserted as a serialised YAML scalar and the result is parsed
/// back, so whatever the key holds the file stays valid.
pub fn example_config(key: Option<&str>) -> Result<String> {
    let text = match key {
        Some(k) => {
            let scalar = serde_saphyr::to_string(&k)
                .map_err(|e| anyhow::anyhow!("cannot serialise the SSH key: {e}"))?;
            EXAMPLE.replace(PLACEHOLDER_KEY, scalar.trim_end())
        }
        None => EXAMPLE.to_string(),
    };
    Cluster::parse(&text).context("the generated cluster.yaml does not validate")?;
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
    let f = o.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} already exists: keep it, or pass --force to overwrite it",
                path.display()
            )
        } else {
            anyhow::anyhow!("cannot create {}: {e}", path.display())
        }
    })?;
    // `mode` only applies to new files; make an overwritten one private too.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(f)
}

/// Writes `DIR/cluster.yaml` and `DIR/secrets/k3s-token` (0600, directory 0700). Refuses to
/// overwrite either unless `force`. Returns the paths written; the token is never printed.
pub fn init(dir: &Path, force: bool) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config = dir.join(crate::config::DEFAULT_CONFIG);
    let secrets = dir.join("secrets");
    let token = secrets.join("k3s-token");
    if !force {
        for p in [&config, &token] {
            if p.exists() {
                bail!(
                    "{} already exists: keep it, or pass --force to overwrite it",
                    p.display()
                );
            }
        }
    }
    let text = example_config(user_public_key().as_deref())?;
    fs::create_dir_all(&secrets).with_context(|| format!("cannot create {}", secrets.display()))?;
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set the mode of {}", secrets.display()))?;
    let mut t = create(&token, force, 0o600)?;
    writeln!(t, "{}", new_token()).with_context(|| format!("cannot write {}", token.display()))?;
    let mut c = create(&config, force, 0o644)?;
    c.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", config.display()))?;
    Ok(vec![config, token])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_validates_and_takes_a_key() {
        let base = example_config(None).unwrap();
        assert!(base.contains("# pikube-image cluster inventory"));
        let k = "ssh-ed25519 AAAAC3Nza me@host: with 'quotes' #hash";
        let text = example_config(Some(k)).unwrap();
        let c = Cluster::parse(&text).unwrap();
        assert_eq!(c.admin.ssh_authorized_keys, vec![k.to_string()]);
    }

    #[test]
    fn init_writes_private_token_and_refuses_to_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let written = init(d.path(), false).unwrap();
        assert_eq!(written.len(), 2);
        let token = d.path().join("secrets/k3s-token");
        let meta = fs::metadata(&token).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dmeta = fs::metadata(d.path().join("secrets")).unwrap();
        assert_eq!(dmeta.permissions().mode() & 0o777, 0o700);
        let t1 = fs::read_to_string(&token).unwrap();
        assert_eq!(t1.trim().len(), 64);
        let e = init(d.path(), false).unwrap_err().to_string();
        assert!(e.contains("already exists") && e.contains("--force"), "{e}");
        assert_eq!(
            fs::read_to_string(&token).unwrap(),
            t1,
            "refusal changes nothing"
        );
        init(d.path(), true).unwrap();
        let t2 = fs::read_to_string(&token).unwrap();
        assert_ne!(t1, t2, "--force writes a new token");
        assert_eq!(
            fs::metadata(&token).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
