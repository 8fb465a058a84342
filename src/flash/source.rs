//! The image being flashed: its size, which ranges hold data (from its block map, its own
//! holes, or the zero blocks of a compressed stream) and those ranges' bytes, in order.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::decompress::{self, Compression};
use crate::formats::Bmap;
use crate::io::AlignedBuf;
use crate::progress::{Progress, Task, human_bytes};

/// Bytes moved at a time.
pub const PIECE: usize = 4 << 20;
/// Writes and checks are aligned to this (bmap blocks, direct I/O).
pub const BLOCK: u64 = 4096;
/// Longest extent whose checksum this side computes: a mismatch is reported this closely.
const EXTENT_CAP: u64 = 16 << 20;
/// Granularity of zero detection in compressed images without a block map (the same as the
/// holes of the raw images builds write).
const ZERO_RUN: usize = crate::decompress::SPARSE_BLOCK;

/// A range of the image to write and check, bytes `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub end: u64,
    /// SHA-256 of the range's bytes: from the block map, or computed as they are read.
    pub sha256: Option<[u8; 32]>,
}

impl Extent {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Bytes of the image at `offset`, in `buf[run.0..run.1]` for each run: what the writer puts
/// on the target.
pub struct Piece {
    pub offset: u64,
    pub buf: AlignedBuf,
    pub runs: Vec<(usize, usize)>,
}

/// An image file to flash.
#[derive(Debug)]
pub struct Image {
    pub path: PathBuf,
    pub kind: Compression,
    pub size: u64,
    pub bmap: Option<(PathBuf, Bmap)>,
}

/// The block map that goes with `image`: `X.img.bmap` or `X.bmap` (the build's name) beside
/// `X.img`, `X.img.zst` or `X.img.xz`.
pub fn find_bmap(image: &Path) -> Option<PathBuf> {
    let name = image.file_name()?.to_str()?;
    let stem = [".img.zst", ".img.xz", ".img.gz", ".img"]
        .iter()
        .find_map(|s| name.strip_suffix(s))?;
    [format!("{stem}.img.bmap"), format!("{stem}.bmap")]
        .into_iter()
        .map(|n| image.with_file_name(n))
        .find(|p| p.is_file())
}

impl Image {
    /// Opens `path`, with the block map `bmap` (else the one beside it, if any). A
    /// compressed image without a block map is decompressed once to learn its size.
    pub fn open(path: &Path, bmap: Option<&Path>, progress: &Progress) -> Result<Image> {
        let kind = decompress::detect(path)?;
        let bmap_path = bmap.map(Path::to_path_buf).or_else(|| find_bmap(path));
        let bmap = match bmap_path {
            Some(p) => {
                let m = Bmap::load(&p)?;
                Some((p, m))
            }
            None => None,
        };
        let size = match (kind, &bmap) {
            (Compression::None, _) => std::fs::metadata(path)
                .with_context(|| format!("cannot stat {}", path.display()))?
                .len(),
            (_, Some((_, m))) => m.image_size,
            (_, None) => {
                progress.message(&format!(
                    "no block map beside {}: reading it once to learn its size (build with --format bmap to skip this)",
                    path.display()
                ));
                count_decompressed(path, progress)?
            }
        };
        if let Some((p, m)) = bmap.as_ref().filter(|(_, m)| m.image_size != size) {
            bail!(
                "the block map {} describes an image of {} bytes, but {} holds {size}: it belongs to another image; build again, or pass the right one with --bmap",
                p.display(),
                m.image_size,
                path.display()
            );
        }
        if size == 0 {
            bail!("{} is empty: there is nothing to flash", path.display());
        }
        Ok(Image {
            path: path.to_path_buf(),
            kind,
            size,
            bmap,
        })
    }

    /// The extents to write, when they are known before reading: the block map's ranges,
    /// or a raw image's data ranges (block-aligned). `None` for a compressed image without
    /// a block map, whose extents are its non-zero blocks, found while decoding.
    pub fn plan(&self) -> Result<Option<Vec<Extent>>> {
        if let Some((_, m)) = &self.bmap {
            return Ok(Some(
                m.ranges
                    .iter()
                    .map(|r| Extent {
                        start: r.start,
                        end: r.end,
                        sha256: r.sha256,
                    })
                    .collect(),
            ));
        }
        if self.kind != Compression::None {
            return Ok(None);
        }
        let f = File::open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        let ranges = crate::io::data_ranges(&f, self.size)
            .with_context(|| format!("cannot map the holes of {}", self.path.display()))?;
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, e) in ranges {
            let (s, e) = (
                s / BLOCK * BLOCK,
                e.div_ceil(BLOCK).saturating_mul(BLOCK).min(self.size),
            );
            match merged.last_mut() {
                Some(last) if last.1 >= s => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        let mut out = Vec::new();
        for (s, e) in merged {
            let mut p = s;
            while p < e {
                let end = (p + EXTENT_CAP).min(e);
                out.push(Extent {
                    start: p,
                    end,
                    sha256: None,
                });
                p = end;
            }
        }
        Ok(Some(out))
    }

    /// Bytes the planned extents cover (for compressed images without a map: the image size,
    /// an upper bound).
    pub fn planned_bytes(plan: &Option<Vec<Extent>>, size: u64) -> u64 {
        match plan {
            Some(p) => p.iter().map(Extent::len).sum(),
            None => size,
        }
    }

    /// Reads the image and sends its data pieces, in order, to `tx`, taking buffers from
    /// `free`. Returns the extents with every checksum (those the plan lacked computed on the
    /// way when `hash` is set). Stops early, without error, when the receiver is gone.
    pub fn produce(
        &self,
        plan: Option<Vec<Extent>>,
        hash: bool,
        tx: &SyncSender<Piece>,
        free: &Receiver<AlignedBuf>,
        task: &Task,
    ) -> Result<Vec<Extent>> {
        match (self.kind, plan) {
            (Compression::None, Some(plan)) => self.produce_raw(plan, hash, tx, free, task),
            (_, Some(plan)) => self.produce_stream(plan, hash, tx, free, task),
            (_, None) => self.produce_nonzero(hash, tx, free, task),
        }
    }

    fn produce_raw(
        &self,
        mut plan: Vec<Extent>,
        hash: bool,
        tx: &SyncSender<Piece>,
        free: &Receiver<AlignedBuf>,
        task: &Task,
    ) -> Result<Vec<Extent>> {
        let f = File::open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        for ext in plan.iter_mut() {
            let mut h = (hash && ext.sha256.is_none()).then(Sha256::new);
            let mut p = ext.start;
            while p < ext.end {
                let n = ((ext.end - p) as usize).min(PIECE);
                let Ok(mut buf) = free.recv() else {
                    return Ok(plan);
                };
                f.read_exact_at(&mut buf[..n], p)
                    .with_context(|| format!("cannot read {} at byte {p}", self.path.display()))?;
                if let Some(h) = h.as_mut() {
                    h.update(&buf[..n]);
                }
                task.inc(n as u64);
                if tx
                    .send(Piece {
                        offset: p,
                        buf,
                        runs: vec![(0, n)],
                    })
                    .is_err()
                {
                    return Ok(plan);
                }
                p += n as u64;
            }
            if let Some(h) = h {
                ext.sha256 = Some(h.finalize().into());
            }
        }
        Ok(plan)
    }

    /// The decoded stream (progress counts decoded bytes, so the decoder's own is hidden).
    fn decoder(&self) -> Result<Box<dyn Read>> {
        Ok(decompress::open_stream(&self.path, &Task::hidden())?.1)
    }

    fn read_full(&self, r: &mut dyn Read, buf: &mut [u8]) -> Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(decompress::read_error(e, self.kind, &self.path)),
            }
        }
        Ok(n)
    }

    fn short(&self, at: u64) -> anyhow::Error {
        anyhow::anyhow!(
            "{} ends after {at} bytes, before the {} its block map describes: the image is truncated; build or download it again",
            self.path.display(),
            self.size
        )
    }

    fn produce_stream(
        &self,
        mut plan: Vec<Extent>,
        hash: bool,
        tx: &SyncSender<Piece>,
        free: &Receiver<AlignedBuf>,
        task: &Task,
    ) -> Result<Vec<Extent>> {
        let mut r = self.decoder()?;
        let mut pos = 0u64;
        let mut skip = vec![0u8; 1 << 20];
        for ext in plan.iter_mut() {
            while pos < ext.start {
                let n = ((ext.start - pos) as usize).min(skip.len());
                let got = self.read_full(&mut r, &mut skip[..n])?;
                if got < n {
                    return Err(self.short(pos + got as u64));
                }
                pos += n as u64;
            }
            let mut h = (hash && ext.sha256.is_none()).then(Sha256::new);
            while pos < ext.end {
                let n = ((ext.end - pos) as usize).min(PIECE);
                let Ok(mut buf) = free.recv() else {
                    return Ok(plan);
                };
                let got = self.read_full(&mut r, &mut buf[..n])?;
                if got < n {
                    return Err(self.short(pos + got as u64));
                }
                if let Some(h) = h.as_mut() {
                    h.update(&buf[..n]);
                }
                task.inc(n as u64);
                if tx
                    .send(Piece {
                        offset: pos,
                        buf,
                        runs: vec![(0, n)],
                    })
                    .is_err()
                {
                    return Ok(plan);
                }
                pos += n as u64;
            }
            if let Some(h) = h {
                ext.sha256 = Some(h.finalize().into());
            }
        }
        Ok(plan)
    }

    /// A compressed image without a block map: every block of [`ZERO_RUN`] bytes that is
    /// not all zeros is written.
    fn produce_nonzero(
        &self,
        hash: bool,
        tx: &SyncSender<Piece>,
        free: &Receiver<AlignedBuf>,
        task: &Task,
    ) -> Result<Vec<Extent>> {
        let mut r = self.decoder()?;
        let mut extents: Vec<Extent> = Vec::new();
        // The extent being hashed.
        let mut cur: Option<(u64, u64, Sha256)> = None;
        let close = |cur: &mut Option<(u64, u64, Sha256)>, extents: &mut Vec<Extent>| {
            if let Some((s, e, h)) = cur.take() {
                extents.push(Extent {
                    start: s,
                    end: e,
                    sha256: hash.then(|| h.finalize().into()),
                });
            }
        };
        let mut pos = 0u64;
        // A buffer of all zeros is not sent: it is filled again.
        let mut spare: Option<AlignedBuf> = None;
        loop {
            let mut buf = match spare.take() {
                Some(b) => b,
                None => match free.recv() {
                    Ok(b) => b,
                    Err(_) => return Ok(extents),
                },
            };
            let n = self.read_full(&mut r, &mut buf[..PIECE])?;
            if n == 0 {
                break;
            }
            let mut runs: Vec<(usize, usize)> = Vec::new();
            for (i, block) in buf[..n].chunks(ZERO_RUN).enumerate() {
                if crate::io::is_zero(block) {
                    continue;
                }
                let (a, b) = (i * ZERO_RUN, i * ZERO_RUN + block.len());
                match runs.last_mut() {
                    Some(last) if last.1 == a => last.1 = b,
                    _ => runs.push((a, b)),
                }
            }
            for &(a, b) in &runs {
                let (s, e) = (pos + a as u64, pos + b as u64);
                let joins = matches!(&cur, Some((cs, ce, _)) if *ce == s && ce - cs < EXTENT_CAP);
                if !joins {
                    close(&mut cur, &mut extents);
                    cur = Some((s, s, Sha256::new()));
                }
                let c = cur.as_mut().expect("set above");
                if hash {
                    c.2.update(&buf[a..b]);
                }
                c.1 = e;
            }
            task.inc(n as u64);
            let full = n == PIECE;
            if runs.is_empty() {
                spare = Some(buf);
            } else if tx
                .send(Piece {
                    offset: pos,
                    buf,
                    runs,
                })
                .is_err()
            {
                return Ok(extents);
            }
            pos += n as u64;
            if !full {
                break;
            }
        }
        close(&mut cur, &mut extents);
        if pos != self.size {
            bail!(
                "{} decompressed to {pos} bytes this time and {} before: it changed while being flashed",
                self.path.display(),
                self.size
            );
        }
        Ok(extents)
    }
}

/// Size of the decompressed stream of `path`.
fn count_decompressed(path: &Path, progress: &Progress) -> Result<u64> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let task = progress.task(&format!("size of {name}"), Some(len));
    let (kind, mut r) = decompress::open_stream(path, &task)?;
    let n = io::copy(&mut r, &mut io::sink()).map_err(|e| decompress::read_error(e, kind, path))?;
    task.finish(&human_bytes(n));
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, sync_channel};

    /// Runs `produce` and collects what it sends, as (offset, bytes) runs.
    fn collect(img: &Image) -> (Vec<(u64, Vec<u8>)>, Vec<Extent>) {
        let plan = img.plan().unwrap();
        let (tx, rx) = sync_channel::<Piece>(2);
        let (free_tx, free_rx) = channel::<AlignedBuf>();
        for _ in 0..3 {
            free_tx.send(AlignedBuf::new(PIECE)).unwrap();
        }
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                let mut got = Vec::new();
                for p in rx {
                    for (a, b) in &p.runs {
                        got.push((p.offset + *a as u64, p.buf[*a..*b].to_vec()));
                    }
                    free_tx.send(p.buf).unwrap();
                }
                got
            });
            let ext = img
                .produce(plan, true, &tx, &free_rx, &Task::hidden())
                .unwrap();
            drop(tx);
            (h.join().unwrap(), ext)
        })
    }

    fn sample(dir: &Path) -> (PathBuf, Vec<u8>) {
        let p = dir.join("n.img");
        let f = File::create(&p).unwrap();
        let size = (24 << 20) + 512;
        f.set_len(size).unwrap();
        let mut want = vec![0u8; size as usize];
        for (off, len, v) in [
            (0u64, 4096usize, 1u8),
            (5 << 20, 100_000, 2),
            ((24 << 20) + 100, 10, 3),
        ] {
            let bytes = vec![v; len];
            f.write_all_at(&bytes, off).unwrap();
            want[off as usize..off as usize + len].copy_from_slice(&bytes);
        }
        (p, want)
    }

    fn check(got: &[(u64, Vec<u8>)], ext: &[Extent], want: &[u8]) {
        let mut image = vec![0u8; want.len()];
        for (off, b) in got {
            image[*off as usize..*off as usize + b.len()].copy_from_slice(b);
        }
        assert!(image == want, "the pieces rebuild the image");
        for e in ext {
            let s = Sha256::digest(&want[e.start as usize..e.end as usize]);
            assert_eq!(e.sha256.unwrap(), s.as_slice(), "{e:?}");
        }
        let covered: u64 = ext.iter().map(Extent::len).sum();
        assert!(covered < 1 << 20, "only the data is written: {covered}");
    }

    #[test]
    fn raw_images_give_their_data_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let (p, want) = sample(dir.path());
        let img = Image::open(&p, None, &Progress::quiet()).unwrap();
        assert!(img.bmap.is_none());
        let (got, ext) = collect(&img);
        check(&got, &ext, &want);
        assert_eq!(ext.last().unwrap().end, want.len() as u64);
    }

    #[test]
    fn compressed_images_with_and_without_a_map() {
        let dir = tempfile::tempdir().unwrap();
        let (p, want) = sample(dir.path());
        let zst = dir.path().join("n.img.zst");
        std::fs::write(&zst, zstd::encode_all(&want[..], 1).unwrap()).unwrap();
        // Without a map: decompressed once for the size, non-zero blocks written.
        let img = Image::open(&zst, None, &Progress::quiet()).unwrap();
        assert_eq!(img.size, want.len() as u64);
        let (got, ext) = collect(&img);
        check(&got, &ext, &want);
        // With the build's map beside it.
        crate::formats::write_bmap(&p, &dir.path().join("n.bmap"), &Progress::quiet()).unwrap();
        assert_eq!(find_bmap(&zst), Some(dir.path().join("n.bmap")));
        let img = Image::open(&zst, None, &Progress::quiet()).unwrap();
        assert!(img.bmap.is_some());
        let (got, ext) = collect(&img);
        check(&got, &ext, &want);
        // A map of another image is refused.
        let other = dir.path().join("o.img");
        std::fs::write(&other, vec![1u8; 8192]).unwrap();
        let err = Image::open(&other, Some(&dir.path().join("n.bmap")), &Progress::quiet())
            .unwrap_err()
            .to_string();
        assert!(err.contains("another image"), "{err}");
    }
}
