//! Reading back what was written, from the device itself (direct I/O, never the page
//! cache), and comparing each range's SHA-256 with the image's.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{channel, sync_channel};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::source::{Extent, Image, PIECE};
use super::write::Target;
use crate::decompress::Compression;
use crate::io::AlignedBuf;
use crate::progress::Task;

const BUFFERS: usize = 4;

/// Where the device and the image part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The first range whose checksum differs.
    pub extent: Extent,
    /// The first differing byte, when the image could be compared byte by byte.
    pub byte: Option<u64>,
    /// The device holds what the image holds, but the block map's checksum says otherwise:
    /// the image or its map is damaged.
    pub image_differs_from_map: bool,
}

/// Reads every extent back from `target` and compares its SHA-256; the first range that
/// differs, if any.
pub fn verify(target: &mut Target, extents: &[Extent], task: &Task) -> Result<Option<usize>> {
    let (tx, rx) = sync_channel::<(usize, AlignedBuf, usize)>(BUFFERS);
    let (free_tx, free_rx) = channel::<AlignedBuf>();
    for _ in 0..BUFFERS + 1 {
        free_tx
            .send(AlignedBuf::new(PIECE))
            .expect("receiver alive");
    }
    std::thread::scope(|s| {
        let target = &mut *target;
        let reader = s.spawn(move || -> Result<()> {
            for (i, ext) in extents.iter().enumerate() {
                let mut p = ext.start;
                while p < ext.end {
                    let n = ((ext.end - p) as usize).min(PIECE);
                    let Ok(mut buf) = free_rx.recv() else {
                        return Ok(());
                    };
                    target.read_at(&mut buf[..n], p).with_context(|| {
                        format!("cannot read {} back at byte {p}", target.path().display())
                    })?;
                    if tx.send((i, buf, n)).is_err() {
                        return Ok(());
                    }
                    p += n as u64;
                }
            }
            Ok(())
        });
        let mut cur: Option<(usize, Sha256, u64)> = None;
        let mut bad = None;
        for (i, buf, n) in rx {
            let (ci, h, left) = match cur.take() {
                Some(c) if c.0 == i => c,
                _ => (i, Sha256::new(), extents[i].len()),
            };
            let mut h = h;
            h.update(&buf[..n]);
            task.inc(n as u64);
            let left = left - n as u64;
            let _ = free_tx.send(buf);
            if left > 0 {
                cur = Some((ci, h, left));
                continue;
            }
            let got: [u8; 32] = h.finalize().into();
            if extents[i].sha256.is_some_and(|want| want != got) {
                bad = Some(i);
                break;
            }
        }
        drop(free_tx);
        let read = reader.join().expect("reader thread panicked");
        match bad {
            Some(i) => Ok(Some(i)),
            None => read.map(|()| None),
        }
    })
}

/// Finds the first differing byte of `extent` between the device and a raw image (a
/// compressed one is not read again: the range is reported).
pub fn locate(target: &mut Target, image: &Image, extent: &Extent) -> Result<Mismatch> {
    let mut m = Mismatch {
        extent: extent.clone(),
        byte: None,
        image_differs_from_map: false,
    };
    if image.kind != Compression::None {
        return Ok(m);
    }
    let f =
        File::open(&image.path).with_context(|| format!("cannot open {}", image.path.display()))?;
    let mut dev = AlignedBuf::new(PIECE);
    let mut src = vec![0u8; PIECE];
    let mut p = extent.start;
    while p < extent.end {
        let n = ((extent.end - p) as usize).min(PIECE);
        target.read_at(&mut dev[..n], p)?;
        f.read_exact_at(&mut src[..n], p)
            .with_context(|| format!("cannot read {} at byte {p}", image.path.display()))?;
        if let Some(i) = (0..n).find(|&i| dev[i] != src[i]) {
            m.byte = Some(p + i as u64);
            return Ok(m);
        }
        p += n as u64;
    }
    m.image_differs_from_map = true;
    Ok(m)
}
