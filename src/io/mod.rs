//! Small Read/Write adaptors that the pipeline stages compose.

pub mod overlay;

use std::io::{self, Read, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};

use crate::progress::Task;

/// Passes reads through and hashes every byte with SHA-256.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Lower-case hex SHA-256 of everything read, and the inner reader.
    pub fn finish(self) -> (String, R) {
        (hex::encode(self.hasher.finalize()), self.inner)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Passes writes through and hashes every byte written with SHA-256.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn finish(self) -> (String, W) {
        (hex::encode(self.hasher.finalize()), self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Advances a progress task by the bytes read.
pub struct ProgressReader<R> {
    inner: R,
    task: Task,
}

impl<R: Read> ProgressReader<R> {
    pub fn new(inner: R, task: Task) -> Self {
        ProgressReader { inner, task }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.task.inc(n as u64);
        Ok(n)
    }
}

/// A window `[start, start+len)` of a seekable stream, seen as a stream of its own.
///
/// Reads stop at the end of the window and writes past it fail, so a filesystem
/// writer given a partition slice can never touch bytes of another partition.
pub struct Slice<T> {
    inner: T,
    start: u64,
    len: u64,
    pos: u64,
}

impl<T: Seek> Slice<T> {
    pub fn new(mut inner: T, start: u64, len: u64) -> io::Result<Self> {
        inner.seek(SeekFrom::Start(start))?;
        Ok(Slice {
            inner,
            start,
            len,
            pos: 0,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: Read + Seek> Read for Slice<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.inner.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl<T: Write + Seek> Write for Slice<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        if buf.is_empty() {
            return Ok(0);
        }
        if left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let n = (buf.len() as u64).min(left) as usize;
        let put = self.inner.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<T: Seek> Seek for Slice<T> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target: i128 = match pos {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
        };
        if target < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the partition",
            ));
        }
        let target = target as u64;
        self.inner.seek(SeekFrom::Start(self.start + target))?;
        self.pos = target;
        Ok(target)
    }
}

/// Allocates the blocks of bytes `[offset, offset + len)` of `file` before they are
/// written (extending the file when they lie past its end). Writing into allocated blocks
/// is several times cheaper than having the filesystem allocate them page by page (ext4's
/// delayed allocation). Filesystems that cannot preallocate are left to allocate as usual.
pub fn preallocate(file: &std::fs::File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: fallocate on a valid, open descriptor has no memory effects.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            0,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => Ok(()),
        _ => Err(e),
    }
}

/// SHA-256 of a whole reader, in lower-case hex.
pub fn sha256_reader<R: Read>(r: R) -> io::Result<String> {
    let mut h = HashingReader::new(r);
    io::copy(&mut h, &mut io::sink())?;
    Ok(h.finish().0)
}

/// SHA-256 of a byte slice, in lower-case hex.
pub fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn hashing_reader_matches_known_digest() {
        let (hex, _) = {
            let mut r = HashingReader::new(&b"abc"[..]);
            io::copy(&mut r, &mut io::sink()).unwrap();
            assert_eq!(r.count(), 3);
            r.finish()
        };
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256_bytes(b"abc"), hex);
    }

    #[test]
    fn hashing_writer_counts_and_hashes() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"abc").unwrap();
        let (hex, out) = w.finish();
        assert_eq!(out, b"abc");
        assert_eq!(hex, sha256_bytes(b"abc"));
    }

    #[test]
    fn slice_confines_reads_writes_and_seeks() {
        let mut data = Cursor::new(vec![0u8; 32]);
        {
            let mut s = Slice::new(&mut data, 8, 8).unwrap();
            s.write_all(b"12345678").unwrap();
            assert!(s.write(b"9").is_err(), "write past the end must fail");
            s.seek(SeekFrom::Start(2)).unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).unwrap();
            assert_eq!(buf, b"345678");
            assert_eq!(s.seek(SeekFrom::End(-1)).unwrap(), 7);
            assert!(s.seek(SeekFrom::Current(-9)).is_err());
        }
        let v = data.into_inner();
        assert_eq!(&v[8..16], b"12345678");
        assert!(v[..8].iter().all(|&b| b == 0));
        assert!(v[16..].iter().all(|&b| b == 0));
    }

    #[test]
    fn preallocation_keeps_contents_and_extends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        preallocate(&f, 0, 8192).unwrap();
        drop(f);
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), 8192);
        assert_eq!(&got[..3], b"abc");
        assert!(got[3..].iter().all(|&b| b == 0));
    }

    #[test]
    fn progress_reader_counts_bytes() {
        let task = Task::hidden();
        let mut r = ProgressReader::new(&[1u8; 100][..], task.clone());
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(task.position(), 100);
    }
}
