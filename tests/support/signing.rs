//! OpenPGP keys and detached signatures made with `gpg` in a throw-away home, for tests of
//! signed downloads.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A throw-away GnuPG home with keys made for one test.
pub struct Gpg {
    home: tempfile::TempDir,
}

impl Gpg {
    pub fn new() -> Option<Gpg> {
        if !pikube_test_oracles::require_tool("gpg", "gnupg") {
            return None;
        }
        Some(Gpg {
            home: tempfile::Builder::new().prefix("gpg").tempdir().unwrap(),
        })
    }

    pub fn run(&self, args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
        let mut child = Command::new("gpg")
            .env("GNUPGHOME", self.home.path())
            .args([
                "--batch",
                "--quiet",
                "--no-tty",
                "--pinentry-mode",
                "loopback",
            ])
            .args(["--passphrase", ""])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run gpg");
        let mut stdin = child.stdin.take().unwrap();
        if let Some(data) = input {
            std::io::Write::write_all(&mut stdin, data).unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// A new signing key (no passphrase, no expiry); its fingerprint.
    pub fn generate(&self, email: &str, algo: &str) -> String {
        self.run(
            &[
                "--quick-gen-key",
                &format!("Test <{email}>"),
                algo,
                "sign",
                "never",
            ],
            None,
        );
        let listing = String::from_utf8(self.run(
            &["--with-colons", "--list-keys", &format!("<{email}>")],
            None,
        ))
        .unwrap();
        listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.trim_matches(':').split(':').next_back())
            .expect("fingerprint")
            .to_string()
    }

    pub fn export(&self, fpr: &str) -> Vec<u8> {
        self.run(&["--armor", "--export", fpr], None)
    }

    /// A detached signature by `fpr` over `data`, binary (`.gpg`) or armored (`.asc`).
    pub fn sign(&self, fpr: &str, data: &[u8], armor: bool) -> Vec<u8> {
        self.sign_by(&[fpr], data, armor)
    }

    /// One detached signature file holding a signature by each of `fprs`.
    pub fn sign_by(&self, fprs: &[&str], data: &[u8], armor: bool) -> Vec<u8> {
        let mut args = Vec::new();
        for f in fprs {
            args.extend(["--local-user", f]);
        }
        args.extend(["--detach-sign", "--output", "-"]);
        if armor {
            args.push("--armor");
        }
        self.run(&args, Some(data))
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "all"])
            .status();
    }
}

/// A key that signs what a test serves as the built-in catalog's releases, trusted under
/// every built-in key name (Ubuntu's, Armbian's) through `$PIKUBE_TEST_KEYS`.
pub struct CatalogSigner {
    gpg: Gpg,
    fpr: String,
    keys: PathBuf,
}

impl CatalogSigner {
    /// Panics when gpg is missing: the tests that build from the built-in catalog need it
    /// (Debian package gnupg, in .ci/packages.txt).
    pub fn new() -> CatalogSigner {
        let gpg = Gpg {
            home: tempfile::Builder::new().prefix("gpg").tempdir().unwrap(),
        };
        let fpr = gpg.generate("cdimage@example.org", "ed25519");
        let keys = gpg.home.path().join("trusted");
        std::fs::create_dir_all(&keys).unwrap();
        let public = gpg.export(&fpr);
        for name in ["ubuntu-cdimage", "armbian"] {
            std::fs::write(keys.join(format!("{name}.asc")), &public).unwrap();
        }
        CatalogSigner { gpg, fpr, keys }
    }

    /// The detached signature of `list` (or an image), binary as Ubuntu publishes
    /// `SHA256SUMS.gpg`.
    pub fn sign(&self, list: &[u8]) -> Vec<u8> {
        self.gpg.sign(&self.fpr, list, false)
    }

    /// The directory for `$PIKUBE_TEST_KEYS`.
    pub fn keys_dir(&self) -> &Path {
        &self.keys
    }
}
