//! The build manifest: a JSON record, written next to every image, of what went into it
//! (base image, files placed, partition growth) and what came out (file name, size, SHA-256).

use serde::{Deserialize, Serialize};

/// Name written in [`Manifest::tool`].
pub const TOOL: &str = "pikube-image";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `"pikube-image"`.
    pub tool: String,
    /// Version of the tool that produced the image.
    pub version: String,
    /// Node name from the cluster file.
    pub node: String,
    /// Board of the node (`rpi4`, `orangepi5`, ...).
    pub board: String,
    /// k3s role of the node (`server`, `agent`).
    pub role: String,
    /// The stock image the output was made from.
    pub base: BaseRef,
    /// Every file the build created, replaced or edited.
    pub files: Vec<FileRecord>,
    /// Set when the last partition was grown.
    pub growth: Option<GrowthRecord>,
    /// True when the image holds secrets (tokens, passwords, private keys): do not publish it.
    pub contains_secrets: bool,
    /// The produced image; absent for outputs that are not an image (netboot trees).
    pub image: Option<OutputRecord>,
    /// Every file produced for the node (raw image, compressed images, bmap).
    #[serde(default)]
    pub outputs: Vec<OutputRecord>,
    /// The node's line of `known_hosts`: its names and the SSH host public key in its image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRef {
    pub url: String,
    /// SHA-256 of the downloaded (compressed) file.
    pub sha256: String,
    /// File name of the download.
    pub file: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Label of the partition the file is on (`system-boot`, `writable`, ...).
    pub partition: String,
    /// Absolute path inside that partition.
    pub path: String,
    /// `file`, `dir`, `symlink` or `edit`.
    pub kind: String,
    pub size: u64,
    /// Octal permission bits, e.g. `"0644"`.
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    /// SHA-256 of the content; `None` for secrets, whose digest would help guess them.
    pub sha256: Option<String>,
    pub secret: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrowthRecord {
    /// Number of the grown partition.
    pub partition: u32,
    /// Partition size in bytes before and after.
    pub old_size: u64,
    pub new_size: u64,
    /// Image size in bytes before and after.
    pub image_old_size: u64,
    pub image_new_size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// File name of the image (no directory).
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

impl Manifest {
    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("manifest serialises");
        s.push('\n');
        s
    }

    pub fn from_json(text: &str) -> serde_json::Result<Manifest> {
        serde_json::from_str(text)
    }
}

/// Formats permission bits the way the manifest stores them (`0o644` -> `"0644"`).
pub fn format_mode(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            tool: TOOL.into(),
            version: "0.1.0".into(),
            node: "n1".into(),
            board: "rpi4".into(),
            role: "server".into(),
            base: BaseRef {
                url: "https://example.invalid/base.img.xz".into(),
                sha256: "ab".repeat(32),
                file: "base.img.xz".into(),
            },
            files: vec![
                FileRecord {
                    partition: "system-boot".into(),
                    path: "/user-data".into(),
                    kind: "file".into(),
                    size: 120,
                    mode: format_mode(0o644),
                    uid: 0,
                    gid: 0,
                    sha256: None,
                    secret: true,
                },
                FileRecord {
                    partition: "writable".into(),
                    path: "/etc/hostname".into(),
                    kind: "file".into(),
                    size: 3,
                    mode: format_mode(0o100644),
                    uid: 0,
                    gid: 0,
                    sha256: Some("cd".repeat(32)),
                    secret: false,
                },
            ],
            growth: Some(GrowthRecord {
                partition: 2,
                old_size: 1 << 30,
                new_size: 2 << 30,
                image_old_size: 3 << 29,
                image_new_size: 5 << 29,
            }),
            contains_secrets: true,
            image: Some(OutputRecord {
                file: "n1.img".into(),
                size: 5 << 29,
                sha256: "ef".repeat(32),
            }),
            outputs: Vec::new(),
            known_hosts: Some("n1 ssh-ed25519 AAAA".into()),
        }
    }

    #[test]
    fn json_round_trip_and_shape() {
        let m = sample();
        let text = m.to_json();
        assert!(text.ends_with("}\n"));
        assert_eq!(Manifest::from_json(&text).unwrap(), m);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["tool"], "pikube-image");
        assert_eq!(v["base"]["file"], "base.img.xz");
        assert_eq!(v["files"][0]["sha256"], serde_json::Value::Null);
        assert_eq!(v["files"][1]["mode"], "0644");
        assert_eq!(v["growth"]["partition"], 2);
        assert_eq!(v["image"]["size"], 5u64 << 29);
    }

    #[test]
    fn mode_formatting() {
        assert_eq!(format_mode(0o755), "0755");
        assert_eq!(format_mode(0o4755), "4755");
        assert_eq!(format_mode(0o40700), "0700");
    }
}
