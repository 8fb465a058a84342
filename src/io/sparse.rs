//! Holes of sparse files, zero blocks, and sharing a file's extents (reflinks).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

fn lseek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: lseek on a valid, open descriptor has no memory effects.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

/// The data ranges `[start, end)` of the first `len` bytes of `file`, from SEEK_DATA /
/// SEEK_HOLE. Everything outside them reads as zeros. Filesystems without SEEK_DATA report
/// the whole file as data.
pub fn data_ranges(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let start = match lseek(file, pos, libc::SEEK_DATA) {
            Ok(Some(s)) => s,
            Ok(None) => break,
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP))
                    && pos == 0 =>
            {
                return Ok(vec![(0, len)]);
            }
            Err(e) => return Err(e),
        };
        if start >= len {
            break;
        }
        let end = lseek(file, start, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        if end <= start {
            break;
        }
        out.push((start, end));
        pos = end;
    }
    Ok(out)
}

/// Makes `dst` share all of `src`'s extents (FICLONE), when the filesystem can; false when
/// it cannot (then `dst` is unchanged).
pub fn reflink(src: &File, dst: &File) -> bool {
    // SAFETY: both descriptors are open for the duration of the call; FICLONE takes the
    // source descriptor as its integer argument.
    unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) == 0 }
}

/// True when every byte is zero. Checks 256-byte pieces word-wise so data blocks (which
/// usually have a non-zero byte early) are rejected quickly and zero blocks are scanned
/// at memory speed.
pub fn is_zero(b: &[u8]) -> bool {
    // SAFETY: any bit pattern is a valid u128; align_to only reinterprets the aligned middle.
    let (head, body, tail) = unsafe { b.align_to::<u128>() };
    if !head.iter().all(|&x| x == 0) || !tail.iter().all(|&x| x == 0) {
        return false;
    }
    body.chunks(16)
        .all(|c| c.iter().fold(0u128, |acc, &x| acc | x) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn ranges_find_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[7u8; 8192], 1 << 20).unwrap();
        f.write_all_at(&[9u8; 4096], 40 << 20).unwrap();
        drop(f);
        let f = File::open(&src).unwrap();
        let ranges = data_ranges(&f, 64 << 20).unwrap();
        assert_eq!(ranges.len(), 2, "{ranges:?}");
        assert!(ranges[0].0 <= 1 << 20 && ranges[0].1 >= (1 << 20) + 8192);
        assert!(ranges[1].0 <= 40 << 20 && ranges[1].1 >= (40 << 20) + 4096);
        assert!(ranges.iter().map(|r| r.1 - r.0).sum::<u64>() < 1 << 20);
    }

    #[test]
    fn zero_check() {
        assert!(is_zero(&[]));
        assert!(is_zero(&vec![0u8; 65536]));
        for pos in [0, 1, 15, 16, 255, 256, 4097, 65536 - 1] {
            let mut v = vec![0u8; 65536];
            v[pos] = 1;
            assert!(!is_zero(&v), "non-zero byte at {pos} missed");
            assert!(!is_zero(&v[pos..]), "unaligned slice at {pos}");
        }
    }
}
