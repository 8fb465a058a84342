//! The OpenPGP keys a build trusts to sign what it downloads.
//!
//! The built-in keys are armored files under `keys/`, embedded in the binary at build time,
//! each recorded here with its name and fingerprint: a key file whose fingerprint is not the
//! recorded one is refused. Catalog entries name a key (`checksum.signature.key`); a catalog
//! directory (`$PIKUBE_BOARDS_DIR`) may add keys of its own as `keys/<name>.asc`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use pgp::composed::{Deserializable, SignedPublicKey};
use pgp::types::KeyDetails;

/// For tests only: a directory of `<name>.asc` keys that replace the built-in ones.
pub const TEST_KEYS_VAR: &str = "PIKUBE_TEST_KEYS";

/// A key shipped in `keys/`: its name in the catalog, its file and its fingerprint.
pub struct BuiltinKey {
    pub name: &'static str,
    /// File name under `keys/`.
    pub file: &'static str,
    /// The fingerprint the file must hold (40 hex digits, upper case, no spaces).
    pub fingerprint: &'static str,
    pub armored: &'static str,
}

/// The keys built into the binary.
pub const BUILTIN: &[BuiltinKey] = &[
    BuiltinKey {
        name: "ubuntu-cdimage",
        file: "ubuntu-cdimage-2012.asc",
        fingerprint: "843938DF228D22F7B3742BC0D94AA3F0EFE21092",
        armored: include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/keys/ubuntu-cdimage-2012.asc"
        )),
    },
    BuiltinKey {
        name: "armbian",
        file: "armbian-release.asc",
        fingerprint: "DF00FAF1C577104B50BF1D0093D6889F9F0E78D5",
        armored: include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/keys/armbian-release.asc"
        )),
    },
];

/// A public key parsed once, with the name the catalog knows it by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedKey {
    name: String,
    fingerprint: String,
    /// Where the key came from (`built in (keys/<file>)` or a path), for messages.
    origin: String,
    key: SignedPublicKey,
}

impl TrustedKey {
    /// Parses an armored (or binary) public key and checks its self-signatures.
    pub fn parse(name: &str, data: &[u8], origin: &str) -> Result<TrustedKey> {
        let (key, _) = SignedPublicKey::from_reader_single(data)
            .map_err(|e| anyhow::anyhow!("{origin}: not an OpenPGP public key: {e}"))?;
        key.verify_bindings().map_err(|e| {
            anyhow::anyhow!("{origin}: the key's self-signatures do not verify: {e}")
        })?;
        Ok(TrustedKey {
            name: name.to_string(),
            fingerprint: format!("{:X}", key.fingerprint()),
            origin: origin.to_string(),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// 40 hex digits, upper case, no spaces.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn public_key(&self) -> &SignedPublicKey {
        &self.key
    }
}

impl fmt::Display for TrustedKey {
    /// `name (8439 38DF ... 1092)`, the fingerprint grouped as `gpg` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' ({})",
            self.name,
            group_fingerprint(&self.fingerprint)
        )
    }
}

/// `843938DF...` as `8439 38DF ...` (groups of four).
pub fn group_fingerprint(hex: &str) -> String {
    hex.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Keys by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keyring {
    keys: BTreeMap<String, Arc<TrustedKey>>,
}

impl Keyring {
    /// The built-in keys, each checked against its recorded fingerprint.
    pub fn builtin() -> Result<Keyring> {
        let mut ring = Keyring::default();
        for b in BUILTIN {
            let key = TrustedKey::parse(
                b.name,
                b.armored.as_bytes(),
                &format!("built-in key keys/{}", b.file),
            )?;
            if key.fingerprint != b.fingerprint {
                bail!(
                    "built-in key keys/{} has fingerprint {}, but '{}' is recorded as {}: \
                     the file was replaced; restore it",
                    b.file,
                    group_fingerprint(&key.fingerprint),
                    b.name,
                    group_fingerprint(b.fingerprint)
                );
            }
            ring.keys.insert(b.name.to_string(), Arc::new(key));
        }
        Ok(ring)
    }

    /// Adds a key file `<name>.asc` from a catalog directory. A built-in key cannot be
    /// replaced this way.
    pub fn add_file(&mut self, path: &Path) -> Result<()> {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .with_context(|| format!("{}: key file names must be UTF-8", path.display()))?;
        if BUILTIN.iter().any(|b| b.name == name) {
            bail!(
                "{}: '{name}' is a built-in key and cannot be replaced; give the key another \
                 file name and name that in the catalog entry",
                path.display()
            );
        }
        let data =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let key = TrustedKey::parse(name, &data, &path.display().to_string())?;
        self.keys.insert(name.to_string(), Arc::new(key));
        Ok(())
    }

    /// For tests only: every `<name>.asc` in `dir` replaces (or adds) the key `<name>`, so
    /// a test can sign what it serves under the name a built-in catalog entry uses.
    pub fn replace_for_tests(&mut self, dir: &Path) -> Result<()> {
        let rd = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read ${TEST_KEYS_VAR} {}", dir.display()))?;
        for e in rd {
            let p = e
                .with_context(|| format!("cannot read {}", dir.display()))?
                .path();
            let Some(name) = p
                .extension()
                .is_some_and(|e| e == "asc")
                .then(|| p.file_stem().and_then(|s| s.to_str()))
                .flatten()
            else {
                continue;
            };
            let data = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
            let origin = format!("{} (${TEST_KEYS_VAR}, for tests only)", p.display());
            let key = TrustedKey::parse(name, &data, &origin)?;
            self.keys.insert(name.to_string(), Arc::new(key));
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Arc<TrustedKey>> {
        self.keys.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_file_is_registered_with_its_fingerprint() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("keys");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".asc"))
            .collect();
        files.sort();
        let mut registered: Vec<String> = BUILTIN.iter().map(|b| b.file.to_string()).collect();
        registered.sort();
        assert_eq!(files, registered, "every keys/*.asc is in BUILTIN and back");
        for b in BUILTIN {
            // The file on disk, not only the embedded copy.
            let data = std::fs::read(dir.join(b.file)).unwrap();
            let key = TrustedKey::parse(b.name, &data, b.file).unwrap();
            assert_eq!(key.fingerprint(), b.fingerprint, "keys/{}", b.file);
            assert_eq!(data, b.armored.as_bytes());
            assert!(
                b.armored
                    .starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----")
            );
        }
        let ring = Keyring::builtin().unwrap();
        assert_eq!(
            ring.get("ubuntu-cdimage").unwrap().to_string(),
            "'ubuntu-cdimage' (8439 38DF 228D 22F7 B374 2BC0 D94A A3F0 EFE2 1092)"
        );
        assert_eq!(
            ring.get("armbian").unwrap().fingerprint(),
            "DF00FAF1C577104B50BF1D0093D6889F9F0E78D5"
        );
    }

    #[test]
    fn a_catalog_key_cannot_replace_a_builtin_one() {
        let td = tempfile::tempdir().unwrap();
        let p = td.path().join("armbian.asc");
        std::fs::write(&p, BUILTIN[0].armored).unwrap();
        let e = Keyring::builtin().unwrap().add_file(&p).unwrap_err();
        assert!(e.to_string().contains("built-in key"), "{e}");
        let p = td.path().join("broken.asc");
        std::fs::write(&p, "not a key").unwrap();
        let e = Keyring::default().add_file(&p).unwrap_err();
        assert!(e.to_string().contains("not an OpenPGP public key"), "{e}");
    }
}
