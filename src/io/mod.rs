//! Small Read/Write adaptors that the pipeline stages compose.

pub mod cow;
mod sparse;
pub mod stream;

pub use sparse::{data_ranges, is_zero, reflink};

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

/// Starts writing bytes `[offset, offset + len)` of `file` to the device, without waiting:
/// the disk works while the caller goes on, and a final sync finds little left to do.
/// Advisory; filesystems that cannot are left alone.
pub fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range on a valid, open descriptor has no memory effects.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Alignment that direct I/O needs, for every logical block size up to 4 KiB.
pub const DIRECT_ALIGN: usize = 4096;

/// A second handle on a file being written, opened for direct I/O (O_DIRECT): large
/// aligned pieces written through it go straight to the device, without a copy into the
/// page cache and the writeback work that follows. On filesystems that refuse direct
/// I/O, [`DirectFile::open`] gives `None` and writes go through the page cache as usual.
pub struct DirectFile(std::fs::File);

impl DirectFile {
    pub fn open(path: &std::path::Path) -> Option<DirectFile> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()
            .map(DirectFile)
    }

    /// Writes `buf` at `offset` directly when both are aligned (and `buf`'s length is a
    /// whole number of blocks); returns false, having written nothing, otherwise.
    pub fn write_aligned(&self, buf: &[u8], offset: u64) -> io::Result<bool> {
        use std::os::unix::fs::FileExt;
        let a = DIRECT_ALIGN;
        if buf.is_empty()
            || !(buf.as_ptr() as usize).is_multiple_of(a)
            || !buf.len().is_multiple_of(a)
            || !offset.is_multiple_of(a as u64)
        {
            return Ok(false);
        }
        match self.0.write_all_at(buf, offset) {
            Ok(()) => Ok(true),
            // Some filesystems accept O_DIRECT at open and refuse it per write.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A zeroed buffer of `len` bytes whose start is aligned for direct I/O.
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let storage = vec![0u8; len + DIRECT_ALIGN];
        let start = storage.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf {
            storage,
            start,
            len,
        }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// Appends to a file in large pieces written by a thread of its own, so the caller goes
/// on (hashing, say) while the bytes go out; whole pieces are written with direct I/O
/// where the filesystem allows it ([`DirectFile`]), the rest through the page cache.
pub struct Appender {
    jobs: Option<std::sync::mpsc::SyncSender<(AlignedBuf, usize, u64)>>,
    free: std::sync::mpsc::Receiver<AlignedBuf>,
    cur: AlignedBuf,
    fill: usize,
    /// File offset of `cur`'s first byte.
    offset: u64,
    writer: Option<std::thread::JoinHandle<io::Result<()>>>,
}

/// Bytes an [`Appender`] gathers before it writes them.
const APPEND_PIECE: usize = 4 << 20;

impl Appender {
    /// Appends from byte 0 of `file`, which is open on `path`.
    pub fn new(file: std::fs::File, path: &std::path::Path) -> Appender {
        use std::os::unix::fs::FileExt;
        let direct = DirectFile::open(path);
        let (jobs, rx) = std::sync::mpsc::sync_channel::<(AlignedBuf, usize, u64)>(1);
        let (free_tx, free) = std::sync::mpsc::channel::<AlignedBuf>();
        free_tx
            .send(AlignedBuf::new(APPEND_PIECE))
            .expect("receiver alive");
        let writer = std::thread::spawn(move || -> io::Result<()> {
            for (buf, len, offset) in rx {
                let piece = &buf[..len];
                let done = match &direct {
                    Some(d) => d.write_aligned(piece, offset)?,
                    None => false,
                };
                if !done {
                    file.write_all_at(piece, offset)?;
                }
                let _ = free_tx.send(buf);
            }
            Ok(())
        });
        Appender {
            jobs: Some(jobs),
            free,
            cur: AlignedBuf::new(APPEND_PIECE),
            fill: 0,
            offset: 0,
            writer: Some(writer),
        }
    }

    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = bytes.len().min(APPEND_PIECE - self.fill);
            self.cur[self.fill..self.fill + n].copy_from_slice(&bytes[..n]);
            self.fill += n;
            bytes = &bytes[n..];
            if self.fill == APPEND_PIECE {
                self.send()?;
            }
        }
        Ok(())
    }

    /// Appends `len` bytes that `fill` writes in place (in one or more consecutive
    /// pieces: `fill(piece, offset of the piece within the len bytes)`), and shows each
    /// piece to `inspect` once filled: no copy of them is made on the way.
    pub fn write_with(
        &mut self,
        len: usize,
        mut fill: impl FnMut(&mut [u8], usize) -> io::Result<()>,
        mut inspect: impl FnMut(&[u8]),
    ) -> io::Result<()> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(APPEND_PIECE - self.fill);
            let piece = &mut self.cur[self.fill..self.fill + n];
            fill(piece, done)?;
            inspect(piece);
            self.fill += n;
            done += n;
            if self.fill == APPEND_PIECE {
                self.send()?;
            }
        }
        Ok(())
    }

    fn send(&mut self) -> io::Result<()> {
        let next = match self.free.recv() {
            Ok(b) => b,
            Err(_) => return Err(self.writer_error()),
        };
        let full = std::mem::replace(&mut self.cur, next);
        let jobs = self.jobs.as_ref().expect("open until finish");
        if jobs.send((full, self.fill, self.offset)).is_err() {
            return Err(self.writer_error());
        }
        self.offset += self.fill as u64;
        self.fill = 0;
        Ok(())
    }

    /// The writer thread's error, once it has stopped.
    fn writer_error(&mut self) -> io::Error {
        self.jobs = None;
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(Err(e))) => e,
            _ => io::Error::other("the file writer stopped"),
        }
    }

    /// Writes what is left and waits for every write; returns the bytes appended.
    pub fn finish(mut self) -> io::Result<u64> {
        if self.fill > 0 {
            self.send()?;
        }
        self.jobs = None;
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(r)) => r?,
            _ => return Err(io::Error::other("the file writer panicked")),
        }
        Ok(self.offset)
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

    /// Pieces of every size, crossing the appender's piece boundaries, land in order.
    #[test]
    fn appender_writes_everything_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let f = std::fs::File::create(&path).unwrap();
        let mut a = Appender::new(f, &path);
        let mut want = Vec::new();
        let mut x = 1u32;
        for len in [
            1usize,
            4095,
            APPEND_PIECE,
            3 << 20,
            7,
            APPEND_PIECE * 2 + 13,
            0,
            5000,
        ] {
            let piece: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            a.write(&piece).unwrap();
            want.extend_from_slice(&piece);
            // The same bytes again, filled in place, and seen exactly once.
            let mut seen = Vec::new();
            a.write_with(
                piece.len(),
                |buf, at| {
                    buf.copy_from_slice(&piece[at..at + buf.len()]);
                    Ok(())
                },
                |b| seen.extend_from_slice(b),
            )
            .unwrap();
            assert!(seen == piece);
            want.extend_from_slice(&piece);
        }
        assert_eq!(a.finish().unwrap(), want.len() as u64);
        assert!(std::fs::read(&path).unwrap() == want);
    }

    #[test]
    fn aligned_buffers_are_aligned() {
        for len in [1, 4096, 100_000] {
            let b = AlignedBuf::new(len);
            assert_eq!(b.len(), len);
            assert!((b.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN));
        }
    }

    #[test]
    fn progress_reader_counts_bytes() {
        let task = Task::hidden();
        let mut r = ProgressReader::new(&[1u8; 100][..], task.clone());
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(task.position(), 100);
    }
}
