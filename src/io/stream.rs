//! One pass over an image: every byte hashed, the data copied elsewhere at the same time.
//!
//! Three threads share the work: one reads the data ranges into a small pool of buffers,
//! the caller's thread hashes them in order (holes are hashed as zeros without being read),
//! and, when a copy is wanted, a third writes each buffer out before it returns to the pool.
//! Hashing, the slowest of the three, never waits for the others once the pool is full.

use std::io;
use std::sync::mpsc::{channel, sync_channel};

use pikube_ext4::Storage;
use sha2::{Digest, Sha256};

use super::AlignedBuf;
use crate::progress::Task;

/// Bytes read, hashed and written at a time.
const PIECE: usize = 4 << 20;
/// Buffers in flight.
const BUFFERS: usize = 4;

/// Where copied data goes: `(bytes, offset)`.
pub type Copy<'a> = &'a (dyn Fn(&[u8], u64) -> io::Result<()> + Sync);

/// The pieces of `[0, size)` in order: `(offset, len, is_data)`; data pieces are at most
/// [`PIECE`] bytes and start where their range does or a whole number of pieces into it.
fn pieces(size: u64, ranges: &[(u64, u64)]) -> Vec<(u64, u64, bool)> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    for &(s, e) in ranges {
        let (s, e) = (s.max(pos), e.min(size));
        if s >= e {
            continue;
        }
        if pos < s {
            out.push((pos, s - pos, false));
        }
        let mut p = s;
        while p < e {
            let n = (e - p).min(PIECE as u64);
            out.push((p, n, true));
            p += n;
        }
        pos = e;
    }
    if pos < size {
        out.push((pos, size - pos, false));
    }
    out
}

/// SHA-256 (lower-case hex) of the `size` bytes of `src`, whose data lies in `ranges`
/// (sorted; everything else reads as zeros and is not read). Each data piece is also given
/// to `copy`, when there is one. Advances `task` by the bytes hashed.
pub fn hash_through(
    src: &dyn Storage,
    size: u64,
    ranges: &[(u64, u64)],
    copy: Option<Copy>,
    task: &Task,
) -> io::Result<String> {
    let pieces = pieces(size, ranges);
    let (free_tx, free_rx) = channel::<AlignedBuf>();
    for _ in 0..BUFFERS {
        free_tx
            .send(AlignedBuf::new(PIECE))
            .expect("receiver alive");
    }
    let (full_tx, full_rx) = sync_channel::<(Option<AlignedBuf>, u64, u64)>(BUFFERS);
    let (copy_tx, copy_rx) = sync_channel::<(AlignedBuf, u64, usize)>(BUFFERS);
    let zeros = vec![0u8; PIECE];
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> io::Result<()> {
            for (offset, len, data) in pieces {
                let buf = match data {
                    true => {
                        let Ok(mut b) = free_rx.recv() else {
                            return Ok(());
                        };
                        src.fetch_at(&mut b[..len as usize], offset)?;
                        Some(b)
                    }
                    false => None,
                };
                if full_tx.send((buf, offset, len)).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        });
        let writer = copy.map(|copy| {
            let free_tx = free_tx.clone();
            s.spawn(move || -> io::Result<()> {
                for (buf, offset, len) in copy_rx {
                    copy(&buf[..len], offset)?;
                    let _ = free_tx.send(buf);
                }
                Ok(())
            })
        });
        let mut hasher = Sha256::new();
        for (buf, offset, len) in full_rx {
            match buf {
                Some(b) => {
                    let n = len as usize;
                    hasher.update(&b[..n]);
                    if writer.is_some() {
                        if copy_tx.send((b, offset, n)).is_err() {
                            break;
                        }
                    } else {
                        let _ = free_tx.send(b);
                    }
                }
                None => {
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(PIECE as u64) as usize;
                        hasher.update(&zeros[..n]);
                        left -= n as u64;
                    }
                }
            }
            task.inc(len);
        }
        // Whatever stopped early, nobody waits for a buffer any more.
        drop(copy_tx);
        drop(free_tx);
        let written = writer.map_or(Ok(()), |w| w.join().expect("copy thread panicked"));
        reader.join().expect("read thread panicked")?;
        written?;
        Ok(hex::encode(hasher.finalize()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn pieces_cover_everything_in_order() {
        let p = PIECE as u64;
        let got = pieces(3 * p, &[(10, 20), (p, 2 * p + 5), (3 * p - 1, 4 * p)]);
        assert_eq!(
            got,
            vec![
                (0, 10, false),
                (10, 10, true),
                (20, p - 20, false),
                (p, p, true),
                (2 * p, 5, true),
                (2 * p + 5, p - 6, false),
                (3 * p - 1, 1, true),
            ]
        );
        assert_eq!(pieces(100, &[]), vec![(0, 100, false)]);
    }

    /// The digest is that of the whole file, holes included, and the copy receives every
    /// data byte at its offset.
    #[test]
    fn hashes_all_and_copies_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let size = 3 * PIECE as u64 + 777;
        f.set_len(size).unwrap();
        let data: Vec<u8> = (0..PIECE + 4096).map(|i| (i % 251) as u8 + 1).collect();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&data, PIECE as u64 / 2).unwrap();
        f.write_all_at(b"tail", size - 4).unwrap();
        let ranges = crate::io::data_ranges(&f, size).unwrap();
        let copied = Mutex::new(vec![0u8; size as usize]);
        let copy = |b: &[u8], at: u64| -> io::Result<()> {
            copied.lock().unwrap()[at as usize..][..b.len()].copy_from_slice(b);
            Ok(())
        };
        let sha = hash_through(&f, size, &ranges, Some(&copy), &Task::hidden()).unwrap();
        let whole = std::fs::read(&path).unwrap();
        assert_eq!(sha, crate::io::sha256_bytes(&whole));
        assert!(*copied.lock().unwrap() == whole);
        let failing = |_: &[u8], _: u64| -> io::Result<()> { Err(io::Error::other("disk full")) };
        let err = hash_through(&f, size, &ranges, Some(&failing), &Task::hidden()).unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        // A data range past the end of the file (it shrank) is a read error.
        let beyond = [(size - 4, size + 4096)];
        let err = hash_through(&f, size + 4096, &beyond, None, &Task::hidden()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }
}
