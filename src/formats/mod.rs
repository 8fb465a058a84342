//! Output formats of fleet builds.
//!
//! Node images of one cluster share a base and differ in a few KiB to MiB of identity, so
//! publishing every node compressed from scratch repeats the same work many times. Here
//! the base is compressed once in independent frames ([`FrameIndex`]), and every node is
//! written as one standard `.zst` or `.xz` file in which each frame of a chunk the node did
//! not change is copied verbatim from the base; only changed chunks are compressed again
//! ([`write_compressed_overlay`], [`write_compressed`]). Besides: bmaptool block maps
//! ([`write_bmap`]), a directory `SHA256SUMS` ([`write_sha256sums`]), data ranges of sparse
//! files and reflinks ([`data_ranges`], [`reflink`]).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};

use crate::progress::Progress;

mod bmap;
mod frames;
mod xz;
mod zst;

pub use bmap::{Bmap, MappedRange, bmap_text, write_bmap, write_bmap_with};
pub use frames::{
    CompressStats, FRAME_SIZE, FrameIndex, FrameRecord, compress_into, compress_overlay_into,
    write_compressed, write_compressed_overlay, write_compressed_stats,
};

/// An artifact format a build can publish for each node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// The raw, sparse image (`NODE.img`).
    Raw,
    /// zstd, independent frames (`NODE.img.zst`).
    Zst,
    /// xz, one stream of independent blocks (`NODE.img.xz`).
    Xz,
    /// bmaptool block map of the raw image (`NODE.img.bmap`).
    Bmap,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Raw, Format::Zst, Format::Xz, Format::Bmap];

    /// The name used on the command line and in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Zst => "zst",
            Format::Xz => "xz",
            Format::Bmap => "bmap",
        }
    }

    /// What the artifact's file name adds to `NODE.img` (`""` for the raw image).
    pub fn suffix(self) -> &'static str {
        match self {
            Format::Raw => "",
            Format::Zst => ".zst",
            Format::Xz => ".xz",
            Format::Bmap => ".bmap",
        }
    }

    /// True for the formats [`write_compressed`] and [`FrameIndex`] handle.
    pub fn is_compressed(self) -> bool {
        matches!(self, Format::Zst | Format::Xz)
    }
}

impl serde::Serialize for Format {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Format {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Format, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e| serde::de::Error::custom(format!("{e:#}")))
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Format> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "raw" | "img" => Ok(Format::Raw),
            "zst" | "zstd" => Ok(Format::Zst),
            "xz" => Ok(Format::Xz),
            "bmap" => Ok(Format::Bmap),
            _ => bail!(
                "unknown output format {s:?}: use one or more of raw, zst, xz, bmap separated by commas"
            ),
        }
    }
}

/// Parses a comma separated list ("raw,zst,bmap"); the result is sorted and without
/// duplicates. An empty list is an error.
pub fn parse_formats(s: &str) -> Result<Vec<Format>> {
    let mut out: Vec<Format> = Vec::new();
    for part in s.split(',') {
        if part.trim().is_empty() {
            continue;
        }
        out.push(part.parse()?);
    }
    if out.is_empty() {
        bail!("no output format given in {s:?}: use one or more of raw, zst, xz, bmap");
    }
    out.sort();
    out.dedup();
    Ok(out)
}

pub const SHA256SUMS: &str = "SHA256SUMS";

/// Writes `DIR/SHA256SUMS` covering every regular file of `dir` except `SHA256SUMS` itself
/// and hidden files (names starting with `.`, such as files still being written), sorted by
/// name, one line `<hex>  <name>` each, so that `sha256sum -c SHA256SUMS` run in `dir`
/// verifies them. Written atomically.
pub fn write_sha256sums(dir: &Path) -> Result<PathBuf> {
    write_sha256sums_known(dir, &BTreeMap::new())
}

/// As [`write_sha256sums`], trusting the digests in `known` (file name -> hex SHA-256)
/// for the files it names, which spares hashing images the build has just hashed.
pub fn write_sha256sums_known(dir: &Path, known: &BTreeMap<String, String>) -> Result<PathBuf> {
    let mut names = Vec::new();
    let rd = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in rd {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let ty = entry
            .file_type()
            .with_context(|| format!("cannot stat {}", entry.path().display()))?;
        if !ty.is_file() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            bail!(
                "{} has a file name that is not UTF-8: rename it or move it out of the output directory",
                entry.path().display()
            );
        };
        if name == SHA256SUMS || name.starts_with('.') {
            continue;
        }
        if name.contains('\n') || name.contains('\\') {
            bail!(
                "cannot list {} in {SHA256SUMS}: its name contains a newline or backslash; rename it",
                entry.path().display()
            );
        }
        names.push(name);
    }
    names.sort();
    let digests = hash_files_parallel(dir, &names, known)?;
    let mut text = String::new();
    for (name, digest) in names.iter().zip(digests) {
        text.push_str(&format!("{digest}  {name}\n"));
    }
    crate::emit::write_atomic(&dir.join(SHA256SUMS), text.as_bytes())
}

fn hash_files_parallel(
    dir: &Path,
    names: &[String],
    known: &BTreeMap<String, String>,
) -> Result<Vec<String>> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<String>>>> =
        Mutex::new((0..names.len()).map(|_| None).collect());
    let workers = frames::worker_count().min(names.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= names.len() {
                        break;
                    }
                    let r = match known.get(&names[i]) {
                        Some(d) if d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()) => {
                            Ok(d.to_ascii_lowercase())
                        }
                        _ => crate::emit::hash_file(&dir.join(&names[i]), &Progress::quiet()),
                    };
                    results.lock().expect("hash results lock")[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .expect("hash results lock")
        .into_iter()
        .map(|r| r.expect("every file hashed"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().unwrap(), f);
            assert_eq!(f.to_string(), f.name());
        }
        assert_eq!("ZSTD".parse::<Format>().unwrap(), Format::Zst);
        let err = "gz".parse::<Format>().unwrap_err().to_string();
        assert!(
            err.contains("gz") && err.contains("raw, zst, xz, bmap"),
            "{err}"
        );
    }

    #[test]
    fn format_lists() {
        assert_eq!(
            parse_formats("bmap, raw,zst,raw").unwrap(),
            vec![Format::Raw, Format::Zst, Format::Bmap]
        );
        assert!(parse_formats("").is_err());
        assert!(parse_formats(" , ").is_err());
        assert!(parse_formats("raw,tar").is_err());
    }

    #[test]
    fn sha256sums_lists_regular_files_sorted() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("b.img"), b"bb").unwrap();
        fs::write(dir.path().join("a.img"), b"a").unwrap();
        fs::write(dir.path().join(".a.img.partial-1"), b"x").unwrap();
        fs::write(dir.path().join(SHA256SUMS), b"stale").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        let p = write_sha256sums(dir.path()).unwrap();
        let text = fs::read_to_string(p).unwrap();
        assert_eq!(
            text,
            format!(
                "{}  a.img\n{}  b.img\n",
                crate::io::sha256_bytes(b"a"),
                crate::io::sha256_bytes(b"bb")
            )
        );
    }
}
