//! Block maps (bmap format 2.0) that `bmaptool copy` reads to flash only the mapped
//! blocks of a sparse image and to verify each mapped range on the way.
//!
//! The file's own checksum (`BmapFileChecksum`) is the SHA-256 of the whole file as it reads
//! with that field's value replaced by 64 ASCII `0`: it is computed over the file written
//! with the placeholder, then the placeholder is replaced.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::io::is_zero;
use crate::progress::{Progress, human_bytes};

use crate::io::data_ranges;

pub const BMAP_BLOCK: u64 = 4096;
const PLACEHOLDER: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Writes a bmap of `raw` to `out` (atomically): mapped ranges are the file's data ranges
/// (SEEK_DATA / SEEK_HOLE) rounded out to 4096-byte blocks, each with its SHA-256. Returns
/// the bmap's size and SHA-256.
pub fn write_bmap(raw: &Path, out: &Path, progress: &Progress) -> Result<(u64, String)> {
    write_bmap_with(raw, out, false, progress)
}

/// As [`write_bmap`]; with `zero_blocks_unmapped`, blocks of the data ranges that hold only
/// zeros are left out of the map too (flashing then leaves them untouched on the target,
/// like holes).
pub fn write_bmap_with(
    raw: &Path,
    out: &Path,
    zero_blocks_unmapped: bool,
    progress: &Progress,
) -> Result<(u64, String)> {
    let text = bmap_text(raw, zero_blocks_unmapped, progress)?;
    crate::emit::write_atomic(out, text.as_bytes())?;
    Ok((text.len() as u64, crate::io::sha256_bytes(text.as_bytes())))
}

/// Mapped block runs `(first, last, sha256)` of `raw`.
fn mapped_runs(
    file: &File,
    raw: &Path,
    size: u64,
    zero_blocks_unmapped: bool,
    progress: &Progress,
) -> Result<Vec<(u64, u64, String)>> {
    let ranges = data_ranges(file, size)
        .with_context(|| format!("cannot map the holes of {}", raw.display()))?;
    // Block-aligned, merged spans of blocks that hold data.
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        let first = s / BMAP_BLOCK;
        let end = e.div_ceil(BMAP_BLOCK);
        match spans.last_mut() {
            Some(last) if last.1 >= first => last.1 = last.1.max(end),
            _ => spans.push((first, end)),
        }
    }
    let total: u64 = spans.iter().map(|s| (s.1 - s.0) * BMAP_BLOCK).sum();
    let name = raw
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let task = progress.task(&format!("bmap {name}"), Some(total));
    let mut runs = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    // The run being built: first block, next block, hasher.
    let mut cur: Option<(u64, u64, Sha256)> = None;
    for (first, end) in spans {
        let mut block = first;
        while block < end {
            let off = block * BMAP_BLOCK;
            let want = ((end - block) * BMAP_BLOCK).min(buf.len() as u64);
            let n = want.min(size - off) as usize;
            file.read_exact_at(&mut buf[..n], off)
                .with_context(|| format!("cannot read {} at byte {off}", raw.display()))?;
            for piece in buf[..n].chunks(BMAP_BLOCK as usize) {
                let mapped = !(zero_blocks_unmapped && is_zero(piece));
                match (&mut cur, mapped) {
                    (Some((_, next, h)), true) if *next == block => {
                        h.update(piece);
                        *next += 1;
                    }
                    (_, true) => {
                        if let Some((f, next, h)) = cur.take() {
                            runs.push((f, next - 1, hex::encode(h.finalize())));
                        }
                        let mut h = Sha256::new();
                        h.update(piece);
                        cur = Some((block, block + 1, h));
                    }
                    (_, false) => {
                        if let Some((f, next, h)) = cur.take() {
                            runs.push((f, next - 1, hex::encode(h.finalize())));
                        }
                    }
                }
                block += 1;
            }
            task.inc(want);
        }
    }
    if let Some((f, next, h)) = cur.take() {
        runs.push((f, next - 1, hex::encode(h.finalize())));
    }
    task.finish("done");
    Ok(runs)
}

/// The bmap of `raw`, as [`write_bmap_with`] writes it.
pub fn bmap_text(raw: &Path, zero_blocks_unmapped: bool, progress: &Progress) -> Result<String> {
    let file = File::open(raw).with_context(|| format!("cannot open {}", raw.display()))?;
    let size = file
        .metadata()
        .with_context(|| format!("cannot stat {}", raw.display()))?
        .len();
    if size == 0 {
        bail!("{} is empty: there is no image to map", raw.display());
    }
    let blocks = size.div_ceil(BMAP_BLOCK);
    let runs = mapped_runs(&file, raw, size, zero_blocks_unmapped, progress)?;
    let mapped: u64 = runs.iter().map(|r| r.1 - r.0 + 1).sum();
    let pct = mapped as f64 * 100.0 / blocks as f64;

    let mut t = String::new();
    t.push_str("<?xml version=\"1.0\" ?>\n");
    t.push_str("<!-- Block map of a sparse disk image, written by pikube-image.\n");
    t.push_str("     Only the listed block ranges hold data; `bmaptool copy` writes just those\n");
    t.push_str("     and checks each against its chksum (SHA-256). -->\n");
    t.push_str("<bmap version=\"2.0\">\n");
    t.push_str(&format!("    <!-- {} -->\n", human_bytes(size)));
    t.push_str(&format!("    <ImageSize> {size} </ImageSize>\n"));
    t.push_str(&format!("    <BlockSize> {BMAP_BLOCK} </BlockSize>\n"));
    t.push_str(&format!("    <BlocksCount> {blocks} </BlocksCount>\n"));
    t.push_str(&format!(
        "    <!-- mapped: {} ({pct:.1}%) -->\n",
        human_bytes(mapped * BMAP_BLOCK)
    ));
    t.push_str(&format!(
        "    <MappedBlocksCount> {mapped} </MappedBlocksCount>\n"
    ));
    t.push_str("    <ChecksumType> sha256 </ChecksumType>\n");
    t.push_str("    <!-- SHA-256 of this file with the value below replaced by 64 zeros. -->\n");
    t.push_str(&format!(
        "    <BmapFileChecksum> {PLACEHOLDER} </BmapFileChecksum>\n"
    ));
    t.push_str("    <BlockMap>\n");
    for (first, last, sha) in &runs {
        if first == last {
            t.push_str(&format!(
                "        <Range chksum=\"{sha}\"> {first} </Range>\n"
            ));
        } else {
            t.push_str(&format!(
                "        <Range chksum=\"{sha}\"> {first}-{last} </Range>\n"
            ));
        }
    }
    t.push_str("    </BlockMap>\n");
    t.push_str("</bmap>\n");
    let digest = crate::io::sha256_bytes(t.as_bytes());
    // The placeholder is the first run of 64 zeros in the text: everything before it is
    // fixed text and numbers far shorter than 64 digits.
    let at = t.find(PLACEHOLDER).expect("placeholder written above");
    t.replace_range(at..at + PLACEHOLDER.len(), &digest);
    Ok(t)
}

/// A block map read back: which byte ranges of an image hold data, and their SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    pub image_size: u64,
    pub block_size: u64,
    /// Mapped ranges in bytes, sorted and disjoint; the last may end at `image_size` inside a
    /// block.
    pub ranges: Vec<MappedRange>,
}

/// One `<Range>` of a bmap, in bytes `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedRange {
    pub start: u64,
    pub end: u64,
    /// SHA-256 of the range's bytes, when the map gives one.
    pub sha256: Option<[u8; 32]>,
}

impl Bmap {
    /// Reads and checks the bmap at `path` (its own checksum, the ranges within the image).
    pub fn load(path: &Path) -> Result<Bmap> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the block map {}", path.display()))?;
        Bmap::parse(&text).with_context(|| {
            format!(
                "{} is not a usable block map: build the image again with --format bmap, or flash without it",
                path.display()
            )
        })
    }

    /// Parses bmap text (format 1.x or 2.x with SHA-256 checksums, as bmaptool and
    /// [`bmap_text`] write it).
    pub fn parse(text: &str) -> Result<Bmap> {
        let field = |name: &str| -> Result<&str> {
            let open = format!("<{name}>");
            let close = format!("</{name}>");
            let at = text
                .find(&open)
                .with_context(|| format!("no <{name}> element"))?
                + open.len();
            let end = text[at..]
                .find(&close)
                .with_context(|| format!("<{name}> is not closed"))?;
            Ok(text[at..at + end].trim())
        };
        let number = |name: &str| -> Result<u64> {
            let v = field(name)?;
            v.parse()
                .with_context(|| format!("<{name}> holds {v:?}, not a number"))
        };
        let image_size = number("ImageSize")?;
        let block_size = number("BlockSize")?;
        if block_size == 0 || !block_size.is_multiple_of(512) {
            bail!("<BlockSize> {block_size} is not a multiple of 512");
        }
        let checksum_type = field("ChecksumType").unwrap_or("sha256");
        if checksum_type != "sha256" {
            bail!("checksums of type {checksum_type:?}: only sha256 block maps are read");
        }
        if let Ok(sum) = field("BmapFileChecksum") {
            let zeroed = text.replacen(sum, &"0".repeat(sum.len()), 1);
            let want = crate::io::sha256_bytes(zeroed.as_bytes());
            if sum.len() != 64 || !sum.eq_ignore_ascii_case(&want) {
                bail!("its own checksum does not match its contents: the file is damaged");
            }
        }
        let map = field("BlockMap")?;
        let mut ranges: Vec<MappedRange> = Vec::new();
        let mut rest = map;
        while let Some(at) = rest.find("<Range") {
            rest = &rest[at + "<Range".len()..];
            let gt = rest.find('>').context("a <Range> element is not closed")?;
            let attrs = &rest[..gt];
            let body_end = rest.find("</Range>").context("a <Range> is not closed")?;
            let body = rest[gt + 1..body_end].trim();
            rest = &rest[body_end..];
            let (first, last) = match body.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (body, body),
            };
            let block = |v: &str| -> Result<u64> {
                v.parse()
                    .with_context(|| format!("range {body:?} is not block numbers"))
            };
            let (first, last) = (block(first)?, block(last)?);
            let start = first
                .checked_mul(block_size)
                .context("a range lies beyond any disk")?;
            let end = last
                .checked_add(1)
                .and_then(|l| l.checked_mul(block_size))
                .context("a range lies beyond any disk")?
                .min(image_size);
            if last < first || start >= image_size {
                bail!("range {body:?} lies outside the image of {image_size} bytes");
            }
            if ranges.last().is_some_and(|r| r.end > start) {
                bail!("range {body:?} overlaps or precedes the one before it");
            }
            let sha256 = match attrs.split_once("chksum=\"") {
                Some((_, v)) => {
                    let hex_sum = v.split('"').next().unwrap_or_default();
                    let mut sum = [0u8; 32];
                    hex::decode_to_slice(hex_sum, &mut sum).with_context(|| {
                        format!("range {body:?} has the checksum {hex_sum:?}, not a SHA-256")
                    })?;
                    Some(sum)
                }
                None => None,
            };
            ranges.push(MappedRange { start, end, sha256 });
        }
        Ok(Bmap {
            image_size,
            block_size,
            ranges,
        })
    }

    /// Bytes the map says hold data.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("img");
        let f = File::create(&p).unwrap();
        // Not a multiple of the block size: the last block is partial.
        f.set_len((8 << 20) + 1000).unwrap();
        f.write_all_at(&[1u8; 4096], 0).unwrap();
        f.write_all_at(&[0u8; 4096], 4096).unwrap();
        f.write_all_at(&[2u8; 100], 4 << 20).unwrap();
        f.write_all_at(&[3u8; 10], (8 << 20) + 990).unwrap();
        p
    }

    #[test]
    fn bmap_checksum_and_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let img = sample(dir.path());
        let text = bmap_text(&img, false, &Progress::quiet()).unwrap();
        assert!(text.contains("<BlocksCount> 2049 </BlocksCount>"), "{text}");
        // The file checksum follows the rule bmaptool verifies.
        let start = text.find("<BmapFileChecksum> ").unwrap() + 19;
        let digest = &text[start..start + 64];
        let zeroed = text.replacen(digest, PLACEHOLDER, 1);
        assert_eq!(crate::io::sha256_bytes(zeroed.as_bytes()), digest);
        // The range of block 2048 (partial) hashes the bytes up to the end of the file.
        let data = std::fs::read(&img).unwrap();
        let last = crate::io::sha256_bytes(&data[2048 * 4096..]);
        assert!(
            text.contains(&format!("<Range chksum=\"{last}\"> 2048 </Range>")),
            "{text}"
        );
        let first = crate::io::sha256_bytes(&data[..8192]);
        assert!(
            text.contains(&format!("<Range chksum=\"{first}\"> 0-1 </Range>")),
            "{text}"
        );

        let skipped = bmap_text(&img, true, &Progress::quiet()).unwrap();
        let first = crate::io::sha256_bytes(&data[..4096]);
        assert!(
            skipped.contains(&format!("<Range chksum=\"{first}\"> 0 </Range>")),
            "{skipped}"
        );
        assert!(
            skipped.contains("<MappedBlocksCount> 3 </MappedBlocksCount>"),
            "{skipped}"
        );
    }

    #[test]
    fn bmap_reads_back_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let img = sample(dir.path());
        let data = std::fs::read(&img).unwrap();
        let text = bmap_text(&img, false, &Progress::quiet()).unwrap();
        let map = Bmap::parse(&text).unwrap();
        assert_eq!(map.image_size, data.len() as u64);
        assert_eq!(map.block_size, 4096);
        let last = map.ranges.last().unwrap();
        assert_eq!(
            last.end,
            data.len() as u64,
            "the partial block ends with the image"
        );
        for r in &map.ranges {
            let want = Sha256::digest(&data[r.start as usize..r.end as usize]);
            assert_eq!(r.sha256.unwrap(), want.as_slice(), "{r:?}");
        }
        assert_eq!(map.ranges[0].start, 0);
        assert_eq!(map.ranges[0].end, 8192);
        // A changed byte breaks the file's own checksum.
        let damaged = text.replacen("<ImageSize> ", "<ImageSize> 1", 1);
        let err = Bmap::parse(&damaged).unwrap_err().to_string();
        assert!(err.contains("own checksum"), "{err}");
        // Ranges out of order are refused.
        let bad = "<bmap><ImageSize> 100000 </ImageSize><BlockSize> 4096 </BlockSize>\
                   <BlockMap><Range> 5 </Range><Range> 2-3 </Range></BlockMap></bmap>";
        assert!(Bmap::parse(bad).is_err());
    }
}
