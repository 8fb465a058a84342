//! Streaming decompression of base images into sparse raw image files.
//!
//! The compressed file is read and decoded on the calling thread (liblzma decodes the
//! blocks of a multi-block `.xz` on its own worker threads); full output buffers go to a
//! writer thread that hashes them and writes only the blocks that are not all zeros,
//! so the raw image takes disk space only for its data. Memory stays bounded by a fixed
//! number of buffers plus the decoder's own limit.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;

use anyhow::{Context, Result};
use liblzma::stream::{Action, MtStreamBuilder, Status, Stream};
use sha2::{Digest, Sha256};

use crate::io::ProgressReader;
use crate::progress::{Progress, Task};

/// Compression format of a file, detected from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Gzip,
    Zstd,
}

impl Compression {
    /// Usual file name suffix, for messages.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "raw image",
            Compression::Xz => ".xz",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }

    /// Recognises the magic bytes at the start of a file.
    pub fn from_magic(head: &[u8]) -> Compression {
        if head.starts_with(&XZ_MAGIC) {
            Compression::Xz
        } else if head.starts_with(&[0x1F, 0x8B]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

/// Detects the compression of `path` by its magic bytes (the name is not looked at).
pub fn detect(path: &Path) -> Result<Compression> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut head = [0u8; 6];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    Ok(Compression::from_magic(&head[..n]))
}

/// Result of [`decompress_to`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decompressed {
    /// Size of the raw image.
    pub bytes: u64,
    /// SHA-256 of the decompressed stream (lower-case hex), when it was computed.
    pub sha256: Option<String>,
}

/// Options of [`decompress_with`].
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Hash the decompressed stream with SHA-256 on the writer thread.
    pub hash: bool,
    /// Decoder threads for `.xz`; 0 means one per available core.
    pub threads: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            hash: true,
            threads: 0,
        }
    }
}

/// Streams `src` (compressed or raw) into `dst` (created or truncated), writing sparse:
/// aligned all-zero blocks of [`SPARSE_BLOCK`] bytes are skipped, and the file is sized
/// with `set_len` at the end. Progress counts compressed bytes read. On any error the
/// output file is removed.
pub fn decompress_to(src: &Path, dst: &Path, progress: &Progress) -> Result<Decompressed> {
    decompress_with(src, dst, progress, Options::default())
}

/// [`decompress_to`] with explicit options.
pub fn decompress_with(
    src: &Path,
    dst: &Path,
    progress: &Progress,
    opts: Options,
) -> Result<Decompressed> {
    let kind = detect(src)?;
    let input = File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
    let in_len = input
        .metadata()
        .with_context(|| format!("cannot stat {}", src.display()))?
        .len();
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dst)
        .with_context(|| format!("cannot create {}", dst.display()))?;
    let name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let task = progress.task(&format!("decompress {name}"), Some(in_len));
    match run(kind, input, out, &task, opts) {
        Ok(d) => {
            task.finish(&format!(
                "{} -> {} bytes",
                crate::progress::human_bytes(in_len),
                d.bytes
            ));
            Ok(d)
        }
        Err(e) => {
            let _ = fs::remove_file(dst);
            Err(describe(e, kind, src, dst))
        }
    }
}

/// The decompressed bytes of `src` (xz, gzip, zstd, or a raw image read as it is), as a
/// stream; `task` advances by the bytes of `src` read. Errors of its reads go through
/// [`read_error`] to name the file, the cause and the fix.
pub fn open_stream(src: &Path, task: &Task) -> Result<(Compression, Box<dyn Read + Send>)> {
    let kind = detect(src)?;
    let input = File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
    match decoder(kind, ProgressReader::new(input, task.clone()), 0) {
        Ok(r) => Ok((kind, r)),
        Err(f) => Err(describe(f, kind, src, src)),
    }
}

/// What an error of a [`decoder`] of `src` means: a damaged file or a failed read.
pub fn read_error(e: io::Error, kind: Compression, src: &Path) -> anyhow::Error {
    describe(classify(e), kind, src, src)
}

/// Granularity of hole detection; output offsets of skipped blocks are multiples of it.
pub const SPARSE_BLOCK: usize = 64 << 10;
/// Size of the buffers passed from the decoder to the writer thread.
const BUF: usize = 4 << 20;
/// Buffers in flight between decoder and writer.
const NBUF: usize = 4;
const XZ_MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];
/// Read size for compressed input.
const IN_BUF: usize = 1 << 20;

/// Errors of the pipeline before they are given file names.
enum Failure {
    /// The compressed stream ended early.
    Truncated,
    /// The decoder rejected the data.
    Corrupt(String),
    /// The compressed stream ended, but the file goes on with something else.
    Trailing,
    /// Reading the source failed.
    Read(io::Error),
    /// Writing the output failed.
    Write(io::Error),
    /// liblzma could not be set up.
    Setup(String),
}

fn describe(f: Failure, kind: Compression, src: &Path, dst: &Path) -> anyhow::Error {
    let s = src.display();
    let fix = || advice(kind, src);
    match f {
        Failure::Truncated => anyhow::anyhow!(
            "truncated {kind}: {s} ends before the end of the compressed stream; {}",
            fix()
        ),
        Failure::Corrupt(why) => {
            anyhow::anyhow!("corrupt {kind}: {s} cannot be decoded ({why}); {}", fix())
        }
        Failure::Trailing => anyhow::anyhow!(
            "trailing data in {kind}: {s} goes on after the end of the compressed stream; {}",
            fix()
        ),
        Failure::Read(e) => anyhow::Error::new(e).context(format!("cannot read {s}")),
        Failure::Write(e) => anyhow::Error::new(e).context(format!(
            "cannot write {} (is the disk full?)",
            dst.display()
        )),
        Failure::Setup(why) => anyhow::anyhow!("cannot start the .xz decoder for {s}: {why}"),
    }
}

/// What to do about a compressed file that cannot be decoded: a download in the cache is
/// fetched again; a file the user gave is theirs to replace.
fn advice(kind: Compression, src: &Path) -> String {
    if crate::source::layout::Layout::is_blob(src) {
        "the file is a download kept in the download cache: delete it to download again with \
         the next build (if it fails the same way, the file as published is damaged)"
            .to_string()
    } else {
        format!("the file is damaged or not a {kind} image: download again or use another file")
    }
}

/// How a decoder found the data broken.
#[derive(Clone, Copy, Debug)]
enum Broken {
    Truncated,
    Corrupt,
    Trailing,
}

/// Marker wrapped in io::Error by decoders so that [`classify`] can tell decoding
/// problems from I/O problems.
#[derive(Debug)]
struct DecodeError {
    broken: Broken,
    why: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.why)
    }
}

impl std::error::Error for DecodeError {}

fn decode_err(broken: Broken, why: impl Into<String>) -> io::Error {
    io::Error::other(DecodeError {
        broken,
        why: why.into(),
    })
}

/// Wraps errors of the source file so they stay distinguishable from decoder errors.
#[derive(Debug)]
struct SourceError(io::Error);

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceError {}

struct TagSource<R>(R);

impl<R: Read> Read for TagSource<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io::Error::other(SourceError(e))),
                ok => return ok,
            }
        }
    }
}

fn classify(e: io::Error) -> Failure {
    if e.get_ref().is_some_and(|i| i.is::<SourceError>()) {
        let inner = e.into_inner().expect("checked");
        let src = inner.downcast::<SourceError>().expect("checked");
        return Failure::Read(src.0);
    }
    if let Some(d) = e.get_ref().and_then(|i| i.downcast_ref::<DecodeError>()) {
        return match d.broken {
            Broken::Truncated => Failure::Truncated,
            Broken::Corrupt => Failure::Corrupt(d.why.clone()),
            Broken::Trailing => Failure::Trailing,
        };
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => Failure::Truncated,
        _ => Failure::Corrupt(e.to_string()),
    }
}

fn run(
    kind: Compression,
    input: File,
    out: File,
    task: &Task,
    opts: Options,
) -> Result<Decompressed, Failure> {
    if kind == Compression::None {
        return copy_sparse(&input, &out, task).map_err(|e| match e {
            CopyError::Read(e) => Failure::Read(e),
            CopyError::Write(e) => Failure::Write(e),
        });
    }
    let mut reader = decoder(kind, ProgressReader::new(input, task.clone()), opts.threads)?;
    pipeline(&mut reader, out, opts.hash)
}

/// The decoded stream of a compressed `input` (`threads` for `.xz`, 0: one per core).
fn decoder<R: Read + Send + 'static>(
    kind: Compression,
    input: R,
    threads: u32,
) -> Result<Box<dyn Read + Send>, Failure> {
    let src = TagSource(input);
    Ok(match kind {
        Compression::None => Box::new(src),
        Compression::Gzip => Box::new(Members::<_, flate2::bufread::GzDecoder<_>>::new(
            io::BufReader::with_capacity(IN_BUF, src),
        )?),
        Compression::Zstd => Box::new(Members::<_, zstd::stream::read::Decoder<_>>::new(
            io::BufReader::with_capacity(IN_BUF, src),
        )?),
        Compression::Xz => Box::new(XzReader::new(src, threads)?),
    })
}

/// A compressed image decoded only as far as it is read: reads are served from a sparse
/// scratch file that the decoder fills, from the start, up to the furthest byte asked for
/// so far (`inspect` reads a partition table and a few files, near the start of a mostly
/// empty image). Nothing beyond that is decoded, so what comes after, even a damaged end,
/// is never looked at.
pub struct Lazy {
    src: std::path::PathBuf,
    kind: Compression,
    reader: Box<dyn Read + Send>,
    scratch: File,
    /// Bytes decoded into `scratch` so far.
    decoded: u64,
    /// The stream ended: `decoded` is the image's size.
    ended: bool,
}

impl Lazy {
    /// Opens `src` (compressed or raw) for reading through `scratch`, a new file.
    pub fn open(src: &Path, scratch: &Path) -> Result<Lazy> {
        let kind = detect(src)?;
        let input = File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
        let reader = decoder(kind, input, 0).map_err(|f| describe(f, kind, src, scratch))?;
        let scratch_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(scratch)
            .with_context(|| format!("cannot create {}", scratch.display()))?;
        Ok(Lazy {
            src: src.to_path_buf(),
            kind,
            reader,
            scratch: scratch_file,
            decoded: 0,
            ended: false,
        })
    }

    /// Bytes of the image decoded so far.
    pub fn decoded(&self) -> u64 {
        self.decoded
    }

    /// The image's size, once the whole stream was decoded.
    pub fn size(&self) -> Option<u64> {
        self.ended.then_some(self.decoded)
    }

    /// Decodes until `end` bytes are available or the stream ends.
    fn fill(&mut self, end: u64) -> Result<()> {
        let mut buf = vec![0u8; BUF];
        while self.decoded < end && !self.ended {
            let mut n = 0;
            while n < buf.len() {
                match self.reader.read(&mut buf[n..]) {
                    Ok(0) => {
                        self.ended = true;
                        break;
                    }
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(describe(classify(e), self.kind, &self.src, Path::new("")));
                    }
                }
            }
            write_sparse(&self.scratch, self.decoded, &buf[..n]).context(
                "cannot write the scratch file of a partly decoded image (is the disk full?)",
            )?;
            self.decoded += n as u64;
        }
        // Zero blocks at the end were skipped: the file reaches as far as what was decoded.
        if self.scratch.metadata()?.len() < self.decoded {
            self.scratch.set_len(self.decoded)?;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`, decoding as far as needed first.
    pub fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        self.fill(end)
            .map_err(|e| io::Error::other(format!("{e:#}")))?;
        if end > self.decoded {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the image is {} bytes long; byte {end} was asked for (is it truncated?)",
                    self.decoded
                ),
            ));
        }
        self.scratch.read_exact_at(buf, offset)
    }
}

/// Decodes on this thread, writes (and hashes) on a writer thread.
fn pipeline(reader: &mut dyn Read, out: File, hash: bool) -> Result<Decompressed, Failure> {
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(NBUF);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..NBUF + 1 {
        free_tx.send(vec![0u8; BUF]).expect("receiver alive");
    }
    let writer = std::thread::spawn(move || -> io::Result<(u64, Option<String>)> {
        let mut hasher = hash.then(Sha256::new);
        let mut offset = 0u64;
        for (buf, n) in full_rx {
            if let Some(h) = hasher.as_mut() {
                h.update(&buf[..n]);
            }
            write_sparse(&out, offset, &buf[..n])?;
            crate::io::start_writeback(&out, offset, n as u64);
            offset += n as u64;
            let _ = free_tx.send(buf);
        }
        out.set_len(offset)?;
        Ok((offset, hasher.map(|h| hex::encode(h.finalize()))))
    });

    let mut failure = None;
    while let Ok(mut buf) = free_rx.recv() {
        let mut n = 0;
        let mut end = false;
        while n < buf.len() {
            match reader.read(&mut buf[n..]) {
                Ok(0) => {
                    end = true;
                    break;
                }
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failure = Some(classify(e));
                    break;
                }
            }
        }
        if failure.is_some() {
            break;
        }
        if n > 0 && full_tx.send((buf, n)).is_err() {
            // The writer stopped: its error is reported below.
            break;
        }
        if end {
            break;
        }
    }
    drop(full_tx);
    let written = writer.join().expect("writer thread panicked");
    if let Some(f) = failure {
        return Err(f);
    }
    let (bytes, sha256) = written.map_err(Failure::Write)?;
    Ok(Decompressed { bytes, sha256 })
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies a raw image: only the data extents of `input` are read (holes are found with
/// `SEEK_DATA`/`SEEK_HOLE`), and zero blocks inside them are skipped too. The SHA-256 is
/// not computed: it would cost reading every hole as zeros.
fn copy_sparse(input: &File, out: &File, task: &Task) -> Result<Decompressed, CopyError> {
    let len = input.metadata().map_err(CopyError::Read)?.len();
    let mut buf = vec![0u8; BUF];
    for extent in crate::io::data_ranges(input, len).map_err(CopyError::Read)? {
        let (start, end) = extent;
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(BUF);
            input
                .read_exact_at(&mut buf[..n], pos)
                .map_err(CopyError::Read)?;
            write_sparse(out, pos, &buf[..n]).map_err(CopyError::Write)?;
            pos += n as u64;
            task.set_position(pos);
        }
    }
    out.set_len(len).map_err(CopyError::Write)?;
    task.set_position(len);
    Ok(Decompressed {
        bytes: len,
        sha256: None,
    })
}

/// Writes `data` at `offset`, skipping aligned all-zero blocks (the file is assumed to
/// read as zeros there, i.e. freshly truncated). Runs of data blocks go out in one write,
/// into blocks allocated for the run first.
fn write_sparse(out: &File, offset: u64, data: &[u8]) -> io::Result<()> {
    let write_run = |run: &[u8], at: u64| -> io::Result<()> {
        crate::io::preallocate(out, at, run.len() as u64)?;
        out.write_all_at(run, at)
    };
    let mut pos = 0usize;
    let mut run_start: Option<usize> = None;
    while pos < data.len() {
        // Blocks are aligned to the file offset, so a skipped block is a whole block.
        let block_end = {
            let abs = offset + pos as u64;
            let next = (abs / SPARSE_BLOCK as u64 + 1) * SPARSE_BLOCK as u64;
            ((next - offset) as usize).min(data.len())
        };
        let zero = crate::io::is_zero(&data[pos..block_end]);
        match (zero, run_start) {
            (true, Some(s)) => {
                write_run(&data[s..pos], offset + s as u64)?;
                run_start = None;
            }
            (false, None) => run_start = Some(pos),
            _ => {}
        }
        pos = block_end;
    }
    if let Some(s) = run_start {
        write_run(&data[s..], offset + s as u64)?;
    }
    Ok(())
}

/// One unit of a compressed file that can be followed by another: a gzip member, a zstd
/// frame. Its decoder reads only its own bytes and hands the rest of the input back.
trait Member<R: BufRead>: Read + Sized {
    fn start(input: R) -> io::Result<Self>;
    fn into_input(self) -> R;
    /// Whether `head` (the next bytes, maybe fewer than a header) can begin another unit.
    fn begins(head: &[u8]) -> bool;
}

impl<R: BufRead> Member<R> for flate2::bufread::GzDecoder<R> {
    fn start(input: R) -> io::Result<Self> {
        Ok(flate2::bufread::GzDecoder::new(input))
    }
    fn into_input(self) -> R {
        self.into_inner()
    }
    fn begins(head: &[u8]) -> bool {
        let magic = [0x1F, 0x8B];
        magic.starts_with(&head[..head.len().min(2)])
    }
}

impl<R: BufRead> Member<R> for zstd::stream::read::Decoder<'static, R> {
    fn start(input: R) -> io::Result<Self> {
        Ok(zstd::stream::read::Decoder::with_buffer(input)?.single_frame())
    }
    fn into_input(self) -> R {
        self.finish()
    }
    fn begins(head: &[u8]) -> bool {
        let head = &head[..head.len().min(4)];
        let frame = [0x28, 0xB5, 0x2F, 0xFD];
        // A skippable frame: magic 0x184D2A50..=0x184D2A5F, little-endian.
        let skippable = match head.split_first() {
            Some((first, rest)) => first & 0xF0 == 0x50 && [0x2A, 0x4D, 0x18].starts_with(rest),
            None => false,
        };
        frame.starts_with(head) || skippable
    }
}

/// Decodes unit after unit, like `gzip -d` and `zstd -d` do; whatever follows the last one
/// and cannot begin another is trailing data, not a truncated stream.
struct Members<R, M> {
    current: Option<M>,
    input: std::marker::PhantomData<R>,
}

impl<R: BufRead, M: Member<R>> Members<R, M> {
    fn new(input: R) -> Result<Self, Failure> {
        let first = M::start(input).map_err(|e| Failure::Setup(e.to_string()))?;
        Ok(Members {
            current: Some(first),
            input: std::marker::PhantomData,
        })
    }
}

impl<R: BufRead, M: Member<R>> Read for Members<R, M> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(m) = self.current.as_mut() else {
                return Ok(0);
            };
            let n = m.read(out)?;
            if n > 0 || out.is_empty() {
                return Ok(n);
            }
            let mut input = self.current.take().expect("checked above").into_input();
            let head = input.fill_buf()?;
            if head.is_empty() {
                return Ok(0);
            }
            if !M::begins(head) {
                return Err(decode_err(
                    Broken::Trailing,
                    "data after the end of the compressed stream",
                ));
            }
            self.current = Some(M::start(input)?);
        }
    }
}

/// Decoder of `.xz` files: liblzma's multi-threaded stream decoder, restarted after each
/// stream so that concatenated streams (and the zero padding allowed between them) are
/// decoded like `xz -d` does.
struct XzReader<R> {
    inner: R,
    inbuf: Vec<u8>,
    pos: usize,
    end: usize,
    eof: bool,
    stream: Option<Stream>,
    threads: u32,
    memlimit: u64,
}

impl<R: Read> XzReader<R> {
    fn new(inner: R, threads: u32) -> Result<Self, Failure> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
        } else {
            threads
        };
        let mut r = XzReader {
            inner,
            inbuf: vec![0u8; IN_BUF],
            pos: 0,
            end: 0,
            eof: false,
            stream: None,
            threads,
            memlimit: threading_memlimit(),
        };
        r.stream = Some(r.new_stream()?);
        Ok(r)
    }

    fn new_stream(&self) -> Result<Stream, Failure> {
        MtStreamBuilder::new()
            .threads(self.threads)
            // Above this the decoder falls back to one thread instead of failing.
            .memlimit_threading(self.memlimit)
            .memlimit_stop(u64::MAX)
            .timeout_ms(0)
            .decoder()
            .map_err(|e| Failure::Setup(e.to_string()))
    }

    fn refill(&mut self) -> io::Result<()> {
        if self.pos == self.end && !self.eof {
            self.pos = 0;
            self.end = self.inner.read(&mut self.inbuf)?;
            if self.end == 0 {
                self.eof = true;
            }
        }
        Ok(())
    }

    /// Between streams: skips padding and reports whether another stream follows.
    fn next_stream(&mut self) -> io::Result<bool> {
        let mut padding = 0u64;
        loop {
            self.refill()?;
            if self.pos == self.end {
                break;
            }
            let rest = &self.inbuf[self.pos..self.end];
            let zeros = rest.iter().take_while(|&&b| b == 0).count();
            padding += zeros as u64;
            self.pos += zeros;
            if zeros < rest.len() {
                break;
            }
        }
        if !padding.is_multiple_of(4) {
            return Err(decode_err(
                Broken::Corrupt,
                "stream padding is not a multiple of four bytes",
            ));
        }
        if self.pos == self.end {
            return Ok(false);
        }
        // Something follows: it must be another stream, starting with the magic bytes.
        while self.end - self.pos < XZ_MAGIC.len() && !self.eof {
            self.inbuf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
            let n = self.inner.read(&mut self.inbuf[self.end..])?;
            if n == 0 {
                self.eof = true;
            }
            self.end += n;
        }
        let head = &self.inbuf[self.pos..self.end];
        let n = head.len().min(XZ_MAGIC.len());
        if head[..n] != XZ_MAGIC[..n] {
            return Err(decode_err(
                Broken::Trailing,
                "data after the end of the .xz stream",
            ));
        }
        if n < XZ_MAGIC.len() {
            return Err(decode_err(
                Broken::Truncated,
                "input ends inside an .xz stream header",
            ));
        }
        let stream = self.new_stream().map_err(|_| {
            decode_err(
                Broken::Corrupt,
                "cannot start a decoder for the next stream",
            )
        })?;
        self.stream = Some(stream);
        Ok(true)
    }
}

impl<R: Read> Read for XzReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.stream.is_none() && !self.next_stream()? {
                return Ok(0);
            }
            self.refill()?;
            let stream = self.stream.as_mut().expect("stream set above");
            let finishing = self.eof && self.pos == self.end;
            let action = if finishing {
                Action::Finish
            } else {
                Action::Run
            };
            let (in0, out0) = (stream.total_in(), stream.total_out());
            let status = stream
                .process(&self.inbuf[self.pos..self.end], out, action)
                .map_err(|e| match e {
                    liblzma::stream::Error::Data => {
                        decode_err(Broken::Corrupt, "compressed data is corrupt")
                    }
                    liblzma::stream::Error::Format => {
                        decode_err(Broken::Corrupt, "not in the .xz format")
                    }
                    liblzma::stream::Error::Options => {
                        decode_err(Broken::Corrupt, "unsupported compression options")
                    }
                    liblzma::stream::Error::Mem => io::Error::from(io::ErrorKind::OutOfMemory),
                    other => decode_err(Broken::Corrupt, other.to_string()),
                })?;
            let consumed = (stream.total_in() - in0) as usize;
            let produced = (stream.total_out() - out0) as usize;
            self.pos += consumed;
            if status == Status::StreamEnd {
                self.stream = None;
            }
            if produced > 0 {
                return Ok(produced);
            }
            if self.stream.is_some() && finishing && consumed == 0 {
                return Err(decode_err(
                    Broken::Truncated,
                    "input ends inside an .xz stream",
                ));
            }
        }
    }
}

/// Memory above which liblzma decodes with fewer threads: a quarter of RAM, like `xz -T0`.
fn threading_memlimit() -> u64 {
    let total = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(4 << 30);
    (total / 4).max(256 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sha256_bytes;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    fn sample(len: usize) -> Vec<u8> {
        // Data, a long zero run, more data, an unaligned zero tail.
        let mut v = vec![0u8; len];
        for (i, b) in v.iter_mut().enumerate().take(300_000) {
            *b = (i % 253) as u8 | 1;
        }
        for (i, b) in v.iter_mut().enumerate().skip(len / 2).take(70_000) {
            *b = (i % 7) as u8 + 1;
        }
        v
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn magic_detection() {
        assert_eq!(Compression::from_magic(&xz(b"x")), Compression::Xz);
        assert_eq!(
            Compression::from_magic(&[0x1f, 0x8b, 8, 0]),
            Compression::Gzip
        );
        assert_eq!(
            Compression::from_magic(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Compression::Zstd
        );
        assert_eq!(Compression::from_magic(&[0; 512]), Compression::None);
        assert_eq!(Compression::from_magic(&[]), Compression::None);
    }

    #[test]
    fn sparse_writer_keeps_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o");
        let f = File::create(&path).unwrap();
        let data = sample(3 * BUF + 1234);
        // Odd chunking so blocks straddle calls.
        let mut off = 0;
        for piece in data.chunks(BUF - 777) {
            write_sparse(&f, off as u64, piece).unwrap();
            off += piece.len();
        }
        f.set_len(data.len() as u64).unwrap();
        assert_eq!(fs::read(&path).unwrap(), data);
        let used = fs::metadata(&path).unwrap().blocks() * 512;
        assert!(used < 2 << 20, "{used} bytes allocated");
    }

    #[test]
    fn xz_concatenated_streams_with_padding() {
        let dir = tempfile::tempdir().unwrap();
        let a = sample(BUF + 99);
        let b = b"second stream".to_vec();
        let mut comp = xz(&a);
        comp.extend_from_slice(&[0u8; 8]);
        comp.extend(xz(&b));
        let src = dir.path().join("in.bin");
        fs::write(&src, &comp).unwrap();
        let dst = dir.path().join("out.img");
        let d = decompress_to(&src, &dst, &Progress::quiet()).unwrap();
        let mut want = a.clone();
        want.extend_from_slice(&b);
        assert_eq!(d.bytes, want.len() as u64);
        assert_eq!(d.sha256.as_deref(), Some(sha256_bytes(&want).as_str()));
        assert_eq!(fs::read(&dst).unwrap(), want);

        // Padding that is not a multiple of 4 is corrupt.
        let mut bad = xz(&b);
        bad.extend_from_slice(&[0u8; 3]);
        fs::write(&src, &bad).unwrap();
        let err = decompress_to(&src, &dst, &Progress::quiet()).unwrap_err();
        assert!(format!("{err:#}").contains("corrupt .xz"), "{err:#}");
        assert!(!dst.exists());

        // Trailing garbage is an error, not silently ignored.
        let mut bad = xz(&b);
        bad.extend_from_slice(b"garbage!");
        fs::write(&src, &bad).unwrap();
        let err = decompress_to(&src, &dst, &Progress::quiet()).unwrap_err();
        assert!(
            format!("{err:#}").contains("trailing data in .xz"),
            "{err:#}"
        );
        assert!(!dst.exists());
    }

    #[test]
    fn truncated_and_corrupt_xz() {
        let dir = tempfile::tempdir().unwrap();
        let comp = xz(&sample(2 * BUF));
        let src = dir.path().join("t.img.xz");
        let dst = dir.path().join("out.img");
        for cut in [7usize, 100, comp.len() / 2, comp.len() - 1] {
            fs::write(&src, &comp[..cut]).unwrap();
            let err = decompress_to(&src, &dst, &Progress::quiet()).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains("truncated .xz"), "cut {cut}: {msg}");
            assert!(msg.contains(&src.display().to_string()), "{msg}");
            assert!(msg.contains("download again"), "{msg}");
            assert!(!dst.exists(), "output left behind after cut {cut}");
        }
        let mut bad = comp.clone();
        let mid = bad.len() / 2;
        for b in &mut bad[mid..mid + 64] {
            *b ^= 0x5a;
        }
        fs::write(&src, &bad).unwrap();
        let err = decompress_to(&src, &dst, &Progress::quiet()).unwrap_err();
        assert!(format!("{err:#}").contains("corrupt .xz"), "{err:#}");
        assert!(!dst.exists());
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn zst(data: &[u8]) -> Vec<u8> {
        zstd::encode_all(data, 1).unwrap()
    }

    fn failure(dir: &Path, name: &str, bytes: &[u8]) -> String {
        let src = dir.join(name);
        fs::create_dir_all(src.parent().unwrap()).unwrap();
        fs::write(&src, bytes).unwrap();
        let dst = dir.join("out.img");
        let err = decompress_to(&src, &dst, &Progress::quiet()).unwrap_err();
        assert!(!dst.exists());
        let msg = format!("{err:#}");
        assert!(msg.contains(&src.display().to_string()), "{msg}");
        msg
    }

    #[test]
    fn trailing_data_is_not_called_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let data = sample(BUF + 99);
        type Compress = fn(&[u8]) -> Vec<u8>;
        let cases: [(&str, Compress); 3] = [("gz", gz), ("zst", zst), ("xz", xz)];
        for (ext, compress) in cases {
            // Short and long junk after a complete stream.
            for junk in [&b"junk"[..], &b"some more junk after the end"[..]] {
                let mut bytes = compress(&data);
                bytes.extend_from_slice(junk);
                let msg = failure(dir.path(), &format!("a.img.{ext}"), &bytes);
                assert!(
                    msg.contains("trailing data"),
                    "{ext} + {} bytes: {msg}",
                    junk.len()
                );
                assert!(!msg.contains("truncated"), "{ext}: {msg}");
            }
        }
        // Several complete gzip members, or zstd frames (skippable ones too), are one image,
        // as with gzip -d and zstd -d.
        let mut two_gz = gz(&data[..1000]);
        two_gz.extend(gz(&data[1000..]));
        let mut two_zst = zst(&data[..1000]);
        two_zst.extend([0x5A, 0x2A, 0x4D, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        two_zst.extend(zst(&data[1000..]));
        for (name, bytes) in [("two.img.gz", two_gz), ("two.img.zst", two_zst)] {
            let src = dir.path().join(name);
            fs::write(&src, &bytes).unwrap();
            let d = decompress_to(&src, &dir.path().join("o"), &Progress::quiet()).unwrap();
            assert_eq!(
                d.sha256.as_deref(),
                Some(sha256_bytes(&data).as_str()),
                "{name}"
            );
        }
    }

    #[test]
    fn a_damaged_local_file_is_not_sent_to_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let comp = xz(&sample(BUF));
        // The user's own --image file: damaged, or not an image at all.
        for bytes in [
            &comp[..comp.len() / 2],
            b"\xfd7zXZ\0 this is not xz data at all",
        ] {
            let msg = failure(dir.path(), "mine/node.img.xz", bytes);
            assert!(msg.contains("damaged or not a .xz image"), "{msg}");
            assert!(!msg.contains("cache"), "{msg}");
        }
        // A download in the cache is named as such, with the way to fetch it again.
        let blob = format!("cache/blobs/sha256/{}", sha256_bytes(b"x"));
        let msg = failure(dir.path(), &blob, &comp[..comp.len() / 2]);
        assert!(msg.contains("download cache"), "{msg}");
        assert!(msg.contains("download again"), "{msg}");
    }

    #[test]
    fn raw_input_is_copied_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let data = sample(BUF + 5);
        let src = dir.path().join("raw.img");
        fs::write(&src, &data).unwrap();
        let dst = dir.path().join("out.img");
        let d = decompress_to(&src, &dst, &Progress::quiet()).unwrap();
        assert_eq!(d.bytes, data.len() as u64);
        assert_eq!(d.sha256, None, "raw copies are not hashed");
        assert_eq!(fs::read(&dst).unwrap(), data);

        // A sparse input with data after a hole and a hole at the end.
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(&data[..300_000], 20 << 20).unwrap();
        drop(f);
        let extents = crate::io::data_ranges(&File::open(&src).unwrap(), 64 << 20).unwrap();
        assert!(extents.len() >= 2, "{extents:?}");
        assert!(extents.iter().all(|&(a, b)| a < b && b <= 64 << 20));
        decompress_to(&src, &dst, &Progress::quiet()).unwrap();
        assert_eq!(fs::read(&dst).unwrap(), fs::read(&src).unwrap());
        assert!(fs::metadata(&dst).unwrap().blocks() * 512 < 2 << 20);
    }

    #[test]
    fn extents_of_a_dense_and_an_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dense");
        fs::write(&p, vec![1u8; 100_000]).unwrap();
        assert_eq!(
            crate::io::data_ranges(&File::open(&p).unwrap(), 100_000).unwrap(),
            vec![(0, 100_000)]
        );
        let e = dir.path().join("empty");
        File::create(&e).unwrap().set_len(10 << 20).unwrap();
        assert_eq!(
            crate::io::data_ranges(&File::open(&e).unwrap(), 10 << 20).unwrap(),
            vec![]
        );
    }

    #[test]
    fn missing_input_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("nope.img.xz");
        let err = decompress_to(&src, &dir.path().join("o"), &Progress::quiet()).unwrap_err();
        assert!(format!("{err:#}").contains("nope.img.xz"));
    }
}
