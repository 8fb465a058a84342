//! Holes of sparse files, and copies that keep them.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};

/// How [`clone_or_sparse_copy`] copied a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMethod {
    /// The destination shares the source's extents (FICLONE); no data was copied.
    Reflink,
    /// Only the data ranges were copied; holes stay holes.
    Sparse,
}

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

/// Copies `src` to `dst` (created or truncated): a reflink (FICLONE) when the filesystem
/// can share extents, else a sparse copy of the data ranges (copy_file_range, falling back
/// to reads and writes) with holes kept. Returns the method used.
pub fn clone_or_sparse_copy(src: &Path, dst: &Path) -> Result<CopyMethod> {
    let input = File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
    let len = input
        .metadata()
        .with_context(|| format!("cannot stat {}", src.display()))?
        .len();
    let output = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dst)
        .with_context(|| {
            format!(
                "cannot create {}: check that its directory exists and is writable",
                dst.display()
            )
        })?;
    if reflink(&input, &output) {
        return Ok(CopyMethod::Reflink);
    }
    let ranges = data_ranges(&input, len)
        .with_context(|| format!("cannot find the data ranges of {}", src.display()))?;
    output
        .set_len(len)
        .with_context(|| format!("cannot size {}", dst.display()))?;
    let mut use_cfr = true;
    for (start, end) in ranges {
        copy_range(&input, &output, start, end, &mut use_cfr).with_context(|| {
            format!(
                "cannot copy bytes {start}..{end} of {} to {}",
                src.display(),
                dst.display()
            )
        })?;
    }
    Ok(CopyMethod::Sparse)
}

/// Makes `dst` share all of `src`'s extents (FICLONE), when the filesystem can; false when
/// it cannot (then `dst` is unchanged).
pub fn reflink(src: &File, dst: &File) -> bool {
    // SAFETY: both descriptors are open for the duration of the call; FICLONE takes the
    // source descriptor as its integer argument.
    unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) == 0 }
}

fn copy_range(
    input: &File,
    output: &File,
    start: u64,
    end: u64,
    use_cfr: &mut bool,
) -> io::Result<()> {
    let mut pos = start;
    while *use_cfr && pos < end {
        let mut off_in = pos as libc::loff_t;
        let mut off_out = pos as libc::loff_t;
        let want = ((end - pos) as usize).min(1 << 30);
        // SAFETY: valid descriptors and offset pointers to locals for the duration of the call.
        let n = unsafe {
            libc::copy_file_range(
                input.as_raw_fd(),
                &mut off_in,
                output.as_raw_fd(),
                &mut off_out,
                want,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOSYS | libc::EXDEV | libc::EOPNOTSUPP | libc::EINVAL) => {
                    *use_cfr = false;
                }
                _ => return Err(e),
            }
        } else if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "source ended early (was it truncated during the copy?)",
            ));
        } else {
            pos += n as u64;
        }
    }
    let mut buf = vec![0u8; 1 << 20];
    while pos < end {
        let n = ((end - pos) as usize).min(buf.len());
        input.read_exact_at(&mut buf[..n], pos)?;
        output.write_all_at(&buf[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn ranges_and_copy_keep_holes() {
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

        let dst = dir.path().join("dst");
        let method = clone_or_sparse_copy(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        let md = std::fs::metadata(&dst).unwrap();
        assert_eq!(md.len(), 64 << 20);
        if method == CopyMethod::Sparse {
            assert!(
                md.blocks() * 512 < 1 << 20,
                "holes lost: {} blocks",
                md.blocks()
            );
        }
    }

    #[test]
    fn missing_source_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = clone_or_sparse_copy(&dir.path().join("nope"), &dir.path().join("d"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
