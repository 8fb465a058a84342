//! A copy-on-write view of an image file.
//!
//! A node image differs from its prepared base in a few KiB. Instead of copying the whole
//! base and then writing into the copy, the node's file operations are applied to a
//! [`CowImage`]: reads come from the base, except for blocks written through the overlay,
//! which live in an unlinked, sparse scratch file at the same offsets. The base is never
//! modified, and the overlay knows exactly which blocks changed, so outputs can be made
//! by touching only those: compressed frames are recompressed only where a block changed,
//! and a raw image is the base plus the changed blocks.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use pikube_ext4::Storage;

use crate::progress::Progress;

/// Granularity of change tracking: a write marks every block it touches.
pub const BLOCK: u64 = 4096;

/// A base image with writes kept aside; see the module documentation.
pub struct CowImage {
    base: File,
    base_path: PathBuf,
    size: u64,
    /// Where the base holds data; elsewhere it reads as zeros.
    base_ranges: Vec<(u64, u64)>,
    scratch: File,
    /// Blocks written through the overlay: their bytes are in `scratch`.
    dirty: Mutex<BTreeSet<u64>>,
}

impl CowImage {
    /// An overlay on the image at `base` (opened read-only), with its scratch file in
    /// `scratch_dir` (unlinked at once: nothing is left behind, whatever happens).
    pub fn open(base: &Path, scratch_dir: &Path) -> Result<CowImage> {
        let file = File::open(base).with_context(|| format!("cannot open {}", base.display()))?;
        let size = file
            .metadata()
            .with_context(|| format!("cannot stat {}", base.display()))?
            .len();
        let base_ranges = crate::io::data_ranges(&file, size)
            .with_context(|| format!("cannot map the data of {}", base.display()))?;
        let scratch = tempfile::tempfile_in(scratch_dir).with_context(|| {
            format!(
                "cannot create a scratch file in {}: check that it is writable",
                scratch_dir.display()
            )
        })?;
        Ok(CowImage {
            base: file,
            base_path: base.to_path_buf(),
            size,
            base_ranges,
            scratch,
            dirty: Mutex::new(BTreeSet::new()),
        })
    }

    /// Size of the image in bytes (that of the base: an overlay does not grow).
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn base_path(&self) -> &Path {
        &self.base_path
    }

    /// Byte ranges `[start, end)` written through the overlay, merged and in order.
    pub fn dirty_ranges(&self) -> Vec<(u64, u64)> {
        let dirty = self.dirty.lock().expect("overlay lock");
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &b in dirty.iter() {
            let (s, e) = (b * BLOCK, ((b + 1) * BLOCK).min(self.size));
            match out.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => out.push((s, e)),
            }
        }
        out
    }

    /// Where the image may hold non-zero bytes: the base's data ranges and the written
    /// blocks, merged and in order. Everything else reads as zeros.
    pub fn data_ranges(&self) -> Vec<(u64, u64)> {
        merge(&self.base_ranges, &self.dirty_ranges())
    }

    /// Writes the image into `out` (an empty file, `out_path` for messages) and returns its
    /// SHA-256: a reflink of the base plus the written blocks where the filesystem shares
    /// extents, else a sparse copy of the data ranges (preallocated, written with direct I/O
    /// where possible, while the same bytes are hashed). Holes stay holes; they are hashed
    /// as zeros without being read.
    /// `label` names the image on the progress display.
    pub fn write_image(
        &self,
        out: &File,
        out_path: &Path,
        label: &str,
        progress: &Progress,
    ) -> Result<String> {
        use std::os::unix::fs::FileExt;
        let at = |what: &str| format!("cannot {what} {}", out_path.display());
        let cloned = crate::io::reflink(&self.base, out);
        out.set_len(self.size).with_context(|| at("size"))?;
        let ranges = self.data_ranges();
        if cloned {
            for (s, e) in self.dirty_ranges() {
                let mut buf = vec![0u8; (e - s) as usize];
                self.scratch
                    .read_exact_at(&mut buf, s)
                    .context("cannot read the overlay's scratch file")?;
                out.write_all_at(&buf, s).with_context(|| at("write"))?;
            }
        } else {
            let need: u64 = ranges.iter().map(|(s, e)| e - s).sum();
            for &(s, e) in &ranges {
                crate::io::preallocate(out, s, e - s).with_context(|| {
                    format!(
                        "cannot allocate the {} of {}: free space there or choose another --out",
                        crate::progress::human_bytes(need),
                        out_path.display()
                    )
                })?;
            }
        }
        let direct = match cloned {
            false => crate::io::DirectFile::open(out_path),
            true => None,
        };
        let copy = |piece: &[u8], offset: u64| -> io::Result<()> {
            if let Some(d) = &direct
                && d.write_aligned(piece, offset)?
            {
                return Ok(());
            }
            out.write_all_at(piece, offset)
        };
        let task = progress.task(label, Some(self.size));
        let sha = crate::io::stream::hash_through(
            self,
            self.size,
            &ranges,
            (!cloned).then_some(&copy as crate::io::stream::Copy),
            &task,
        )
        .with_context(|| at("write"))?;
        task.finish("done");
        Ok(sha)
    }

    fn check(&self, offset: u64, len: usize, what: &str) -> io::Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{what} bytes {offset}..+{len} lie beyond the end of {} ({} bytes)",
                    self.base_path.display(),
                    self.size
                ),
            )),
        }
    }
}

impl Storage for CowImage {
    fn fetch_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.check(offset, buf.len(), "reading")?;
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        let dirty = self.dirty.lock().expect("overlay lock");
        let first = offset / BLOCK;
        let last = (end - 1) / BLOCK;
        // Runs of written blocks inside the range, as byte ranges clipped to it.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &b in dirty.range(first..=last) {
            let (s, e) = ((b * BLOCK).max(offset), ((b + 1) * BLOCK).min(end));
            match runs.last_mut() {
                Some(r) if r.1 == s => r.1 = e,
                _ => runs.push((s, e)),
            }
        }
        drop(dirty);
        let mut pos = offset;
        for (s, e) in runs.into_iter().chain([(end, end)]) {
            if pos < s {
                self.base.read_exact_at(
                    &mut buf[(pos - offset) as usize..(s - offset) as usize],
                    pos,
                )?;
            }
            if s < e {
                self.scratch
                    .read_exact_at(&mut buf[(s - offset) as usize..(e - offset) as usize], s)?;
            }
            pos = e;
        }
        Ok(())
    }

    fn store_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.check(offset, buf.len(), "writing")?;
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        let mut dirty = self.dirty.lock().expect("overlay lock");
        // A block written only in part gets the rest of its bytes from the base first.
        for b in [offset / BLOCK, (end - 1) / BLOCK] {
            let (s, e) = (b * BLOCK, ((b + 1) * BLOCK).min(self.size));
            let covered = offset <= s && end >= e;
            if !covered && !dirty.contains(&b) {
                let mut block = vec![0u8; (e - s) as usize];
                self.base.read_exact_at(&mut block, s)?;
                self.scratch.write_all_at(&block, s)?;
                dirty.insert(b);
            }
        }
        self.scratch.write_all_at(buf, offset)?;
        dirty.extend(offset / BLOCK..=(end - 1) / BLOCK);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        // The scratch file is temporary: outputs made from the overlay are synced as files.
        Ok(())
    }
}

/// Merges two sorted lists of ranges into one sorted list of disjoint ranges.
fn merge(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(all.len());
    for (s, e) in all {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// A [`Storage`] seen as a seekable stream (what fatfs and other stream-based writers
/// take), from byte 0 to `len`.
pub struct StorageStream<'a> {
    store: &'a dyn Storage,
    len: u64,
    pos: u64,
}

impl<'a> StorageStream<'a> {
    pub fn new(store: &'a dyn Storage, len: u64) -> Self {
        StorageStream { store, len, pos: 0 }
    }
}

impl Read for StorageStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        self.store.fetch_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for StorageStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.store.store_at(buf, self.pos)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for StorageStream<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        let target = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.pos = target;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn base(dir: &Path) -> PathBuf {
        let p = dir.join("base.img");
        let f = File::create(&p).unwrap();
        f.set_len(10 * BLOCK + 100).unwrap();
        f.write_all_at(&[7u8; 3 * BLOCK as usize], BLOCK).unwrap();
        f.write_all_at(&[9u8; 50], 10 * BLOCK + 50).unwrap();
        p
    }

    /// The same writes to a plain copy and to an overlay read back the same everywhere,
    /// and leave the base alone.
    #[test]
    fn overlay_reads_like_a_copy_written_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let b = base(dir.path());
        let copy = dir.path().join("copy.img");
        std::fs::copy(&b, &copy).unwrap();
        let copy = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&copy)
            .unwrap();
        let before = std::fs::read(&b).unwrap();
        let o = CowImage::open(&b, dir.path()).unwrap();
        let writes: [(u64, &[u8]); 5] = [
            (BLOCK + 10, b"partial start"),
            (2 * BLOCK - 3, b"straddles two blocks"),
            (5 * BLOCK, &[1u8; BLOCK as usize]),
            (BLOCK + 12, b"again"),
            (10 * BLOCK + 90, b"tail end"),
        ];
        for (at, data) in writes {
            o.store_at(data, at).unwrap();
            Storage::store_at(&copy, data, at).unwrap();
        }
        let size = o.size();
        let mut got = vec![0u8; size as usize];
        o.fetch_at(&mut got, 0).unwrap();
        let want = std::fs::read(dir.path().join("copy.img")).unwrap();
        assert_eq!(got, want);
        for (at, len) in [
            (0, 1),
            (BLOCK + 5, 20),
            (2 * BLOCK - 10, 30),
            (10 * BLOCK, 100),
        ] {
            let mut part = vec![0u8; len];
            o.fetch_at(&mut part, at).unwrap();
            assert_eq!(part, want[at as usize..at as usize + len]);
        }
        assert_eq!(std::fs::read(&b).unwrap(), before, "the base is untouched");
        assert_eq!(
            o.dirty_ranges(),
            vec![
                (BLOCK, 3 * BLOCK),
                (5 * BLOCK, 6 * BLOCK),
                (10 * BLOCK, size)
            ]
        );
        let mut past = [0u8; 2];
        assert!(o.fetch_at(&mut past, size - 1).is_err());
        assert!(o.store_at(b"xx", size - 1).is_err());
    }

    /// The raw image written from an overlay equals a copy written in place, holes and all.
    #[test]
    fn write_image_equals_the_written_copy() {
        let dir = tempfile::tempdir().unwrap();
        let b = base(dir.path());
        let o = CowImage::open(&b, dir.path()).unwrap();
        o.store_at(b"node", 7 * BLOCK + 1).unwrap();
        o.store_at(b"boot", 2 * BLOCK).unwrap();
        let mut want = std::fs::read(&b).unwrap();
        want[7 * BLOCK as usize + 1..][..4].copy_from_slice(b"node");
        want[2 * BLOCK as usize..][..4].copy_from_slice(b"boot");
        let out_path = dir.path().join("node.img");
        let out = File::create(&out_path).unwrap();
        let sha = o
            .write_image(&out, &out_path, "node.img", &Progress::quiet())
            .unwrap();
        assert_eq!(std::fs::read(&out_path).unwrap(), want);
        assert_eq!(sha, crate::io::sha256_bytes(&want));
        let ranges = crate::io::data_ranges(&out, want.len() as u64).unwrap();
        assert!(
            ranges
                .iter()
                .all(|&(s, e)| !(s <= 8 * BLOCK && e >= 10 * BLOCK)),
            "the hole between the written block and the tail stays a hole: {ranges:?}"
        );
    }

    #[test]
    fn ranges_merge() {
        assert_eq!(
            merge(&[(0, 10), (20, 30)], &[(5, 12), (30, 31), (40, 41)]),
            vec![(0, 12), (20, 31), (40, 41)]
        );
    }

    #[test]
    fn stream_reads_writes_and_seeks() {
        let dir = tempfile::tempdir().unwrap();
        let o = CowImage::open(&base(dir.path()), dir.path()).unwrap();
        let mut s = StorageStream::new(&o, o.size());
        s.seek(SeekFrom::Start(BLOCK)).unwrap();
        s.write_all(b"hello").unwrap();
        s.seek(SeekFrom::Current(-5)).unwrap();
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello\x07\x07");
        s.seek(SeekFrom::End(-2)).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, [9, 9]);
        assert!(s.seek(SeekFrom::Current(-(o.size() as i64) - 1)).is_err());
    }
}
