//! Writing an image's data ranges to a disk (or a file): large aligned writes with direct
//! I/O, the first MiB held back and written last, then a sync and a partition table reread.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel};

use anyhow::{Context, Result, bail};

use super::source::{Extent, Image, PIECE, Piece};
use crate::io::{AlignedBuf, DIRECT_ALIGN};
use crate::progress::Task;

/// The start of the image that is written last: partition table and boot code, so that
/// a card whose writing stopped half way does not boot (and is not taken for a good one).
pub const HOLD_BACK: u64 = 1 << 20;
/// Buffers in flight between the image reader and the writer.
const BUFFERS: usize = 4;

/// The disk or file being written, open for reading and writing.
pub struct Target {
    file: File,
    path: PathBuf,
    /// The descriptor has O_DIRECT set.
    direct: bool,
    /// Direct I/O works on it at all.
    direct_ok: bool,
    pub is_block: bool,
}

// BLKGETSIZE64 = _IOR(0x12, 114, size_t), BLKROGET = _IO(0x12, 94), BLKRRPART = _IO(0x12, 95).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKROGET: libc::c_ulong = 0x125e;
const BLKRRPART: libc::c_ulong = 0x125f;

impl Target {
    /// Opens the whole disk `path` exclusively (O_EXCL: fails while it or a partition is
    /// mounted or held by another program), with direct I/O where the device allows it.
    pub fn open_disk(path: &Path) -> Result<Target> {
        Target::open(path, libc::O_EXCL, false)
    }

    /// Opens (creating) the regular file `path`.
    pub fn open_file(path: &Path) -> Result<Target> {
        Target::open(path, 0, true)
    }

    fn open(path: &Path, flags: i32, create: bool) -> Result<Target> {
        let attempt = |direct: bool| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .custom_flags(flags | if direct { libc::O_DIRECT } else { 0 })
                .open(path)
        };
        let (file, direct) = match attempt(true) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                log::debug!(
                    "{}: no direct I/O ({e}); writing through the page cache",
                    path.display()
                );
                (attempt(false).map_err(|e| open_error(path, e))?, false)
            }
            Err(e) => return Err(open_error(path, e)),
        };
        let is_block = file
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?
            .file_type()
            .is_block_device();
        Ok(Target {
            file,
            path: path.to_path_buf(),
            direct,
            direct_ok: direct,
            is_block,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether reads and writes bypass the page cache.
    pub fn bypasses_cache(&self) -> bool {
        self.direct_ok
    }

    /// The device's size in bytes (a file's current length).
    pub fn size(&self) -> Result<u64> {
        if !self.is_block {
            return Ok(self.file.metadata()?.len());
        }
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKGETSIZE64, &mut size) };
        if r != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("cannot read the size of {}", self.path.display()));
        }
        Ok(size)
    }

    /// Whether the kernel holds the device read-only.
    pub fn read_only(&self) -> bool {
        if !self.is_block {
            return false;
        }
        let mut ro: libc::c_int = 0;
        // SAFETY: BLKROGET writes one int through the pointer.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKROGET, &mut ro) };
        r == 0 && ro != 0
    }

    fn set_direct(&mut self, on: bool) -> io::Result<()> {
        if self.direct == on {
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl on an open descriptor.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } != 0 {
            return Err(io::Error::last_os_error());
        }
        self.direct = on;
        Ok(())
    }

    fn aligned(buf: &[u8], offset: u64) -> bool {
        (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
            && buf.len().is_multiple_of(DIRECT_ALIGN)
            && offset.is_multiple_of(DIRECT_ALIGN as u64)
    }

    /// Writes `buf` at `offset`: directly when aligned and possible, else through the cache.
    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let want = self.direct_ok && Target::aligned(buf, offset);
        self.set_direct(want)?;
        match self.file.write_all_at(buf, offset) {
            Err(e) if want && e.raw_os_error() == Some(libc::EINVAL) => {
                // Accepted at open, refused per write (some filesystems).
                self.direct_ok = false;
                self.set_direct(false)?;
                self.file.write_all_at(buf, offset)
            }
            r => r,
        }
    }

    /// Reads `buf.len()` bytes at `offset` from the device, never from the page cache:
    /// directly when aligned, else after dropping the cached pages of the range.
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let want = self.direct_ok && Target::aligned(buf, offset);
        self.set_direct(want)?;
        if !want {
            self.drop_cache(offset, buf.len() as u64)?;
        }
        self.file.read_exact_at(buf, offset)
    }

    /// Writes back and drops the cached pages of a range (for reads that cannot be direct).
    fn drop_cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.file.sync_data()?;
        // SAFETY: posix_fadvise on an open descriptor has no memory effects.
        unsafe {
            libc::posix_fadvise(
                self.file.as_raw_fd(),
                offset as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            );
        }
        Ok(())
    }

    /// Waits until everything written is on the device.
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_all()
            .with_context(|| format!("cannot sync {} (was it removed?)", self.path.display()))
    }

    /// Asks the kernel to read the new partition table. Loop devices without partition
    /// scanning refuse, which is fine: nothing is there to update.
    pub fn reread_partitions(&self) {
        if !self.is_block {
            return;
        }
        // SAFETY: BLKRRPART takes no argument.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKRRPART, 0) };
        if r != 0 {
            log::debug!(
                "{}: the kernel did not reread the partition table ({}); loop devices without partition scanning refuse",
                self.path.display(),
                io::Error::last_os_error()
            );
        }
    }

    /// Grows a regular file to at least `size` bytes (an image file being written).
    pub fn grow_file(&self, size: u64) -> Result<()> {
        if !self.is_block && self.size()? < size {
            self.file
                .set_len(size)
                .with_context(|| format!("cannot extend {}", self.path.display()))?;
        }
        Ok(())
    }
}

fn open_error(path: &Path, e: io::Error) -> anyhow::Error {
    let p = path.display();
    match e.raw_os_error() {
        Some(libc::EBUSY) => anyhow::anyhow!(
            "refusing to write {p}: it is in use (a partition is mounted, or another program holds it open); unmount it and close what uses it"
        ),
        Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM) => anyhow::anyhow!(
            "refusing to write {p}: it cannot be opened for writing ({e}); it is read-only, or you need root (sudo)"
        ),
        _ => anyhow::Error::new(e).context(format!("cannot open {p}")),
    }
}

/// What was written.
pub struct Written {
    /// Every range written, with its SHA-256 where known.
    pub extents: Vec<Extent>,
    pub bytes: u64,
}

/// Test hook, read only here: with `PIKUBE_TEST_PAUSE_AFTER_FIRST_RANGE` set, the writer
/// says so on stderr once the first range past the held-back start is on the device, and
/// waits for good, so a test can kill it there. Not for users.
fn test_pause_after_first_range(target: &Target) {
    if std::env::var_os("PIKUBE_TEST_PAUSE_AFTER_FIRST_RANGE").is_some() {
        let _ = target.sync();
        eprintln!("test hook: paused after writing the first range");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// Writes the data of `image` (its `plan`, or its non-zero blocks) to `target`, the first
/// MiB last, with syncs before and after it. `hash` computes the checksums the plan lacks,
/// for verification.
pub fn write(
    image: &Image,
    plan: Option<Vec<Extent>>,
    target: &mut Target,
    hash: bool,
    task: &Task,
) -> Result<Written> {
    let (tx, rx) = sync_channel::<Piece>(BUFFERS);
    let (free_tx, free_rx) = channel::<AlignedBuf>();
    for _ in 0..BUFFERS + 1 {
        free_tx
            .send(AlignedBuf::new(PIECE))
            .expect("receiver alive");
    }
    let mut held = AlignedBuf::new(HOLD_BACK as usize);
    let mut held_runs: Vec<(u64, u64)> = Vec::new();
    let mut bytes = 0u64;
    let (produced, written) = std::thread::scope(|s| {
        let target = &mut *target;
        let (held, held_runs, bytes) = (&mut held, &mut held_runs, &mut bytes);
        let writer = s.spawn(move || -> Result<()> {
            let mut paused = false;
            for piece in rx {
                for &(a, b) in &piece.runs {
                    let (mut start, end) = (piece.offset + a as u64, piece.offset + b as u64);
                    if start < HOLD_BACK {
                        let cut = end.min(HOLD_BACK);
                        held[start as usize..cut as usize]
                            .copy_from_slice(&piece.buf[a..a + (cut - start) as usize]);
                        match held_runs.last_mut() {
                            Some(last) if last.1 == start => last.1 = cut,
                            _ => held_runs.push((start, cut)),
                        }
                        start = cut;
                    }
                    if start < end {
                        let bytes_here = &piece.buf[(start - piece.offset) as usize..b];
                        target.write_at(bytes_here, start).with_context(|| {
                            format!("cannot write {} at byte {start}", target.path().display())
                        })?;
                        *bytes += bytes_here.len() as u64;
                        if !paused {
                            paused = true;
                            test_pause_after_first_range(target);
                        }
                    }
                }
                let _ = free_tx.send(piece.buf);
            }
            Ok(())
        });
        let produced = image.produce(plan, hash, &tx, &free_rx, task);
        drop(tx);
        drop(free_rx);
        (produced, writer.join().expect("writer thread panicked"))
    });
    // A failed write explains a producer that stopped early; report it first.
    written?;
    let extents = produced?;
    target.sync()?;
    for &(s, e) in &held_runs {
        target
            .write_at(&held[s as usize..e as usize], s)
            .with_context(|| format!("cannot write {} at byte {s}", target.path().display()))?;
        bytes += e - s;
    }
    target.sync()?;
    if bytes == 0 && image.size > 0 && extents.is_empty() {
        bail!(
            "{} holds no data at all: it is not a disk image",
            image.path.display()
        );
    }
    Ok(Written { extents, bytes })
}
