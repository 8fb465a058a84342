//! Frame-wise compression of images, and splicing of a base's frames into node files.
//!
//! An image is cut into chunks of [`FRAME_SIZE`] bytes (the last may be shorter); each
//! chunk is compressed on its own (a zstd frame, an xz block), so a compressed chunk is a
//! pure function of the chunk's bytes and the encoder settings. Compressing a node from
//! scratch and copying the base's frame wherever the node's chunk holds the base's bytes
//! therefore give byte-identical files. Which chunks changed comes from the overlay the
//! node was written through ([`write_compressed_overlay`]: unchanged chunks are not even
//! read); [`write_compressed`] compresses a raw file whole.
//!
//! Why 4 MiB: a node differs from its base in a few KiB scattered over perhaps ten places
//! (boot partition seed, a few ext4 inode table, bitmap and file blocks), so every changed
//! place costs one chunk of compression (about 0.5 s for xz preset 6); smaller chunks would
//! cost compression ratio (a zstd/xz frame cannot refer to data before its start; at 4 MiB
//! the loss against one whole-image stream is a few percent) and index size, larger ones
//! more recompression per change and more memory per worker.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::sync::{Arc, LazyLock, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::emit::PendingFile;
use crate::io::cow::CowImage;
use crate::io::sha256_bytes;
use crate::progress::Progress;
use pikube_ext4::Storage;

use super::{Format, xz, zst};
use crate::io::data_ranges;

/// Uncompressed bytes per frame.
pub const FRAME_SIZE: u64 = 4 << 20;
const INDEX_VERSION: u32 = 1;
const INDEX_NAME: &str = "index.json";

/// Number of compression workers: one per core.
pub(crate) fn worker_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16)
}

/// Where one frame of a compressed file lies, and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameRecord {
    /// Offset of the frame (xz: the block) in the compressed file.
    pub offset: u64,
    /// Its length in the compressed file (xz: including block padding).
    pub length: u64,
    /// Uncompressed bytes it holds.
    pub uncompressed: u64,
    /// SHA-256 of the uncompressed bytes.
    pub sha256: String,
    /// SHA-256 of the compressed bytes (`length` bytes at `offset`).
    pub compressed_sha256: String,
    /// xz only: the block's unpadded size, as the stream index records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpadded: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    format: String,
    frame_size: u64,
    image_size: u64,
    /// Encoder and settings, for people.
    encoder: String,
    /// SHA-256 of a fixed sample compressed with the encoder: a different value means the
    /// encoder would no longer reproduce these frames.
    encoder_probe: String,
    frames_file: String,
    frames_size: u64,
    frames_sha256: String,
    frames: Vec<FrameRecord>,
}

/// A base image compressed once in independent frames: `<dir>/frames.zst` or
/// `<dir>/frames.xz` (itself a complete compressed image of the base) and
/// `<dir>/index.json`.
#[derive(Clone, Debug)]
pub struct FrameIndex {
    dir: PathBuf,
    format: Format,
    index: IndexFile,
}

/// What [`write_compressed_stats`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompressStats {
    /// Size of the written file.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: String,
    /// Frames in the file.
    pub frames: usize,
    /// Frames copied from the base.
    pub reused: usize,
    /// Frames compressed by this call.
    pub compressed: usize,
    /// Frames of zeros only (holes), written from one shared encoding.
    pub zero: usize,
}

fn frames_name(format: Format) -> Result<&'static str> {
    match format {
        Format::Zst => Ok("frames.zst"),
        Format::Xz => Ok("frames.xz"),
        _ => bail!("{format} is not a compressed format: frames exist for zst and xz only"),
    }
}

impl FrameIndex {
    /// Compresses `raw` in independent frames, in parallel, into `<dir>/frames.<ext>` and
    /// writes `<dir>/index.json` last (an index always describes a complete frames file).
    /// The output is deterministic.
    pub fn build(
        raw: &Path,
        format: Format,
        dir: &Path,
        progress: &Progress,
    ) -> Result<FrameIndex> {
        let name = frames_name(format)?;
        fs::create_dir_all(dir).with_context(|| {
            format!("cannot create the frame cache directory {}", dir.display())
        })?;
        let index_path = dir.join(INDEX_NAME);
        match fs::remove_file(&index_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot remove {}", index_path.display()));
            }
        }
        let src = Source::file(raw)?;
        // The frames hold the image, and so its secrets.
        let mut pending = PendingFile::create_private(dir, name)?;
        let (stats, frames) = encode(&src, None, format, true, &mut pending, progress)?;
        pending.commit()?;
        let image_size = frames.iter().map(|f| f.uncompressed).sum();
        let index = IndexFile {
            version: INDEX_VERSION,
            format: format.name().to_string(),
            frame_size: FRAME_SIZE,
            image_size,
            encoder: describe(format),
            encoder_probe: probe(format)?,
            frames_file: name.to_string(),
            frames_size: stats.size,
            frames_sha256: stats.sha256,
            frames,
        };
        let mut json =
            serde_json::to_string_pretty(&index).context("cannot serialise the frame index")?;
        json.push('\n');
        crate::emit::write_atomic(&index_path, json.as_bytes())?;
        Ok(FrameIndex {
            dir: dir.to_path_buf(),
            format,
            index,
        })
    }

    /// Loads the index in `dir`; fails (naming the fix) when it is missing, damaged, of
    /// another format, or made by an encoder that would not reproduce its frames.
    pub fn load(dir: &Path, format: Format) -> Result<FrameIndex> {
        let name = frames_name(format)?;
        let path = dir.join(INDEX_NAME);
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read the frame index {}: build it first",
                path.display()
            )
        })?;
        let stale = |why: String| {
            anyhow!(
                "the frame index {} cannot be used: {why}; delete {} and build it again",
                path.display(),
                dir.display()
            )
        };
        let index: IndexFile =
            serde_json::from_str(&text).map_err(|e| stale(format!("it is not valid ({e})")))?;
        if index.version != INDEX_VERSION {
            return Err(stale(format!("it has version {}", index.version)));
        }
        if index.format != format.name() || index.frames_file != name {
            return Err(stale(format!(
                "it holds {} frames, not {format}",
                index.format
            )));
        }
        if index.frame_size != FRAME_SIZE {
            return Err(stale(format!("its frames hold {} bytes", index.frame_size)));
        }
        if index.encoder_probe != probe(format)? {
            return Err(stale(format!(
                "it was made by another encoder ({}; this is {})",
                index.encoder,
                describe(format)
            )));
        }
        let mut expect = if format == Format::Xz { 12 } else { 0 };
        let mut image = 0;
        for (i, f) in index.frames.iter().enumerate() {
            let last = i + 1 == index.frames.len();
            if f.offset != expect
                || (f.uncompressed != FRAME_SIZE && !last)
                || f.uncompressed == 0
                || f.uncompressed > FRAME_SIZE
                || (format == Format::Xz) != f.unpadded.is_some()
            {
                return Err(stale(format!("frame {i} is inconsistent")));
            }
            expect += f.length;
            image += f.uncompressed;
        }
        if image != index.image_size {
            return Err(stale(
                "its frames do not add up to the image size".to_string(),
            ));
        }
        let frames_path = dir.join(name);
        let size = fs::metadata(&frames_path)
            .map_err(|e| stale(format!("{} is unreadable ({e})", frames_path.display())))?
            .len();
        if size != index.frames_size || expect > size {
            return Err(stale(format!(
                "{} has {size} bytes, the index says {}",
                frames_path.display(),
                index.frames_size
            )));
        }
        // Checked once here, so that frames copied into node files are known good.
        let digest = crate::emit::hash_file(&frames_path, &Progress::quiet())?;
        if digest != index.frames_sha256 {
            return Err(stale(format!(
                "{} is damaged (its SHA-256 is not the one the index records)",
                frames_path.display()
            )));
        }
        Ok(FrameIndex {
            dir: dir.to_path_buf(),
            format,
            index,
        })
    }

    /// [`FrameIndex::load`], or [`FrameIndex::build`] from `raw` when there is no usable
    /// index of an image of `raw`'s size in `dir`.
    pub fn load_or_build(
        raw: &Path,
        format: Format,
        dir: &Path,
        progress: &Progress,
    ) -> Result<FrameIndex> {
        let size = fs::metadata(raw)
            .with_context(|| format!("cannot stat {}", raw.display()))?
            .len();
        match FrameIndex::load(dir, format) {
            Ok(ix) if ix.image_size() == size => Ok(ix),
            _ => FrameIndex::build(raw, format, dir, progress),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn image_size(&self) -> u64 {
        self.index.image_size
    }

    pub fn frames(&self) -> &[FrameRecord] {
        &self.index.frames
    }

    /// The compressed base image (a complete `.zst` / `.xz` file).
    pub fn frames_path(&self) -> PathBuf {
        self.dir.join(&self.index.frames_file)
    }

    /// SHA-256 of the frames file.
    pub fn frames_sha256(&self) -> &str {
        &self.index.frames_sha256
    }
}

/// Writes `out`: the raw image `raw` compressed in `format` as one standard file, every
/// chunk compressed (the layout of a frame index, so the bytes are those a splice gives).
/// Returns the file's size and SHA-256.
pub fn write_compressed(
    raw: &Path,
    format: Format,
    out: &Path,
    progress: &Progress,
) -> Result<(u64, String)> {
    let s = write_compressed_stats(raw, format, out, progress)?;
    Ok((s.size, s.sha256))
}

/// [`write_compressed`], returning how many frames were compressed.
pub fn write_compressed_stats(
    raw: &Path,
    format: Format,
    out: &Path,
    progress: &Progress,
) -> Result<CompressStats> {
    write_to(out, format, |p| compress_into(raw, format, p, progress))
}

/// Writes `out`: the image seen through `node` compressed in `format`, copying the frames
/// of `base` (the index of the overlay's base image) for every chunk the overlay did not
/// write to. No unchanged byte is read or compressed.
pub fn write_compressed_overlay(
    node: &CowImage,
    base: Option<&FrameIndex>,
    format: Format,
    out: &Path,
    progress: &Progress,
) -> Result<CompressStats> {
    write_to(out, format, |p| {
        compress_overlay_into(node, base, format, p, progress)
    })
}

/// [`write_compressed_overlay`] into a file the caller commits.
pub fn compress_overlay_into(
    node: &CowImage,
    base: Option<&FrameIndex>,
    format: Format,
    out: &mut PendingFile,
    progress: &Progress,
) -> Result<CompressStats> {
    let (src, reuse) = overlay_source(node, base, format)?;
    encode_source(&src, reuse, format, out, progress)
}

/// [`write_compressed`] into a file the caller commits.
pub fn compress_into(
    raw: &Path,
    format: Format,
    out: &mut PendingFile,
    progress: &Progress,
) -> Result<CompressStats> {
    encode_source(&Source::file(raw)?, None, format, out, progress)
}

/// A frame index, with the chunks whose frames cannot be copied from it (the node changed them).
type Reuse<'a> = Option<(&'a FrameIndex, BTreeSet<usize>)>;

/// The image seen through `node`, and what of `base`'s frames it can reuse.
fn overlay_source<'a>(
    node: &'a CowImage,
    base: Option<&'a FrameIndex>,
    format: Format,
) -> Result<(Source<'a>, Reuse<'a>)> {
    let src = Source {
        store: Box::new(node),
        size: node.size(),
        ranges: node.data_ranges(),
        name: file_name(node.base_path()),
    };
    let reuse = match base {
        Some(ix) => {
            ix.check_describes(node.base_path(), format)?;
            let mut changed = BTreeSet::new();
            for (s, e) in node.dirty_ranges() {
                changed.extend(chunks_of(s, e));
            }
            Some((ix, changed))
        }
        None => None,
    };
    Ok((src, reuse))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Indexes of the chunks that bytes `[s, e)` fall in.
fn chunks_of(s: u64, e: u64) -> std::ops::Range<usize> {
    (s / FRAME_SIZE) as usize..e.div_ceil(FRAME_SIZE) as usize
}

/// Writes `out`, a compressed image in `format`, with what `fill` puts into it.
fn write_to(
    out: &Path,
    format: Format,
    fill: impl FnOnce(&mut PendingFile) -> Result<CompressStats>,
) -> Result<CompressStats> {
    frames_name(format)?;
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no usable file name", out.display()))?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // A compressed image holds what the image holds: the node's secrets.
    let mut pending = PendingFile::create_private(dir, name)?;
    let stats = fill(&mut pending)?;
    pending.commit()?;
    Ok(stats)
}

fn encode_source(
    src: &Source,
    reuse: Reuse<'_>,
    format: Format,
    out: &mut PendingFile,
    progress: &Progress,
) -> Result<CompressStats> {
    frames_name(format)?;
    Ok(encode(src, reuse, format, false, out, progress)?.0)
}

/// An image to compress: where its bytes come from, its size, and its data ranges
/// (everything else reads as zeros).
struct Source<'a> {
    store: Box<dyn Storage + 'a>,
    size: u64,
    ranges: Vec<(u64, u64)>,
    name: String,
}

impl Source<'static> {
    /// A raw image file.
    fn file(path: &Path) -> Result<Source<'static>> {
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let size = f
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len();
        if size == 0 {
            bail!("{} is empty: there is no image to compress", path.display());
        }
        let ranges = data_ranges(&f, size)
            .with_context(|| format!("cannot map the holes of {}", path.display()))?;
        Ok(Source {
            store: Box::new(f),
            size,
            ranges,
            name: path.display().to_string(),
        })
    }
}

impl Source<'_> {
    /// Reads bytes `[s, e)` into `buf` when any data range overlaps them; false (and
    /// `buf` untouched) when they lie entirely in a hole.
    fn read_chunk(&self, s: u64, e: u64, buf: &mut [u8]) -> Result<bool> {
        let i = self.ranges.partition_point(|r| r.1 <= s);
        if self.ranges.get(i).is_none_or(|r| r.0 >= e) {
            return Ok(false);
        }
        self.store
            .fetch_at(buf, s)
            .with_context(|| format!("cannot read {} at byte {s}", self.name))?;
        Ok(true)
    }
}

impl FrameIndex {
    /// Fails unless this index holds `format` frames of an image of `raw`'s size.
    fn check_describes(&self, raw: &Path, format: Format) -> Result<()> {
        if self.format != format {
            bail!(
                "the frame index in {} holds {} frames, but {format} was asked for",
                self.dir.display(),
                self.format
            );
        }
        let size = fs::metadata(raw)
            .with_context(|| format!("cannot stat {}", raw.display()))?
            .len();
        if size != self.image_size() {
            bail!(
                "the frame index in {} describes an image of {} bytes, not {} ({size} bytes): delete it and build it again from that image",
                self.dir.display(),
                self.image_size(),
                raw.display()
            );
        }
        Ok(())
    }
}

fn describe(format: Format) -> String {
    let enc = match format {
        Format::Xz => xz::describe(),
        _ => zst::describe(),
    };
    format!("{enc}, frames of {FRAME_SIZE} bytes")
}

/// One chunk compressed.
struct Encoded {
    bytes: Vec<u8>,
    unpadded: Option<u64>,
}

enum Encoder {
    Zst(zst::Encoder),
    Xz(xz::Encoder),
}

impl Encoder {
    fn new(format: Format) -> Result<Encoder> {
        match format {
            Format::Zst => Ok(Encoder::Zst(zst::Encoder::new()?)),
            Format::Xz => Ok(Encoder::Xz(xz::Encoder::new()?)),
            _ => bail!("{format} is not a compressed format"),
        }
    }

    fn encode(&mut self, data: &[u8]) -> Result<Encoded> {
        Ok(match self {
            Encoder::Zst(e) => Encoded {
                bytes: e.frame(data)?,
                unpadded: None,
            },
            Encoder::Xz(e) => {
                let b = e.block(data)?;
                Encoded {
                    bytes: b.bytes,
                    unpadded: Some(b.unpadded),
                }
            }
        })
    }
}

/// Fingerprint of the encoder: the SHA-256 of a fixed, mildly compressible sample.
fn probe(format: Format) -> Result<String> {
    static SAMPLE: LazyLock<Vec<u8>> = LazyLock::new(|| {
        let words: [&[u8]; 8] = [
            b"kernel ",
            b"cluster ",
            b"\x7fELF\x02\x01",
            b"node-",
            b"\0\0\0\0",
            b"/usr/lib/",
            b"0123",
            b"\n",
        ];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut out = Vec::with_capacity(300 << 10);
        while out.len() < 256 << 10 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(words[(x & 7) as usize]);
            out.push((x >> 32) as u8);
        }
        out
    });
    static ZST: Mutex<Option<String>> = Mutex::new(None);
    static XZ: Mutex<Option<String>> = Mutex::new(None);
    let slot = if format == Format::Xz { &XZ } else { &ZST };
    let mut g = slot.lock().expect("probe lock");
    if let Some(p) = &*g {
        return Ok(p.clone());
    }
    let p = sha256_bytes(&Encoder::new(format)?.encode(&SAMPLE)?.bytes);
    *g = Some(p.clone());
    Ok(p)
}

enum Kind {
    Reused,
    Compressed,
    Zero,
}

/// A frame to write: compressed here, or the base's, copied from its frames file straight
/// into the output.
enum Frame {
    Encoded(Arc<Encoded>),
    Base {
        offset: u64,
        length: u64,
        unpadded: Option<u64>,
    },
}

impl Frame {
    fn length(&self) -> u64 {
        match self {
            Frame::Encoded(e) => e.bytes.len() as u64,
            Frame::Base { length, .. } => *length,
        }
    }

    fn unpadded(&self) -> Option<u64> {
        match self {
            Frame::Encoded(e) => e.unpadded,
            Frame::Base { unpadded, .. } => *unpadded,
        }
    }
}

struct Done {
    i: usize,
    frame: Frame,
    uncompressed: u64,
    /// SHA-256 of the chunk and of its frame, when records are wanted (else empty).
    sha256: String,
    frame_sha256: String,
    kind: Kind,
}

enum Job {
    /// A chunk the base's frame stands for.
    Reuse(usize),
    /// A chunk lying entirely in a hole.
    Hole(usize),
    Data(usize, Vec<u8>),
}

/// The frame of a chunk of zeros, the chunk's SHA-256 and the frame's.
type ZeroFrame = (Arc<Encoded>, String, String);

/// Shared state of the workers.
struct Ctx<'a> {
    format: Format,
    size: u64,
    /// The base's frames to copy, and its open frames file.
    base: Option<(&'a FrameIndex, File)>,
    /// Whether frame records (with their digests) are wanted: only for a frame index.
    records: bool,
    /// Per chunk length: the frame of zeros.
    zero_frames: Mutex<HashMap<u64, ZeroFrame>>,
}

impl Ctx<'_> {
    fn chunk_len(&self, i: usize) -> u64 {
        (self.size - i as u64 * FRAME_SIZE).min(FRAME_SIZE)
    }

    fn zero(&self, i: usize, enc: &mut Encoder) -> Result<Done> {
        let len = self.chunk_len(i);
        let (frame, sha256, frame_sha256) = {
            let mut g = self.zero_frames.lock().expect("zero frame lock");
            match g.get(&len) {
                Some(z) => z.clone(),
                None => {
                    let e = enc.encode(&vec![0u8; len as usize])?;
                    let fsha = sha256_bytes(&e.bytes);
                    let z = (Arc::new(e), zero_sha(len), fsha);
                    g.insert(len, z.clone());
                    z
                }
            }
        };
        Ok(Done {
            i,
            frame: Frame::Encoded(frame),
            uncompressed: len,
            sha256,
            frame_sha256,
            kind: Kind::Zero,
        })
    }

    fn work(&self, job: Job, enc: &mut Encoder) -> Result<Done> {
        match job {
            Job::Hole(i) => self.zero(i, enc),
            Job::Data(i, data) if crate::io::is_zero(&data) => self.zero(i, enc),
            Job::Data(i, data) => {
                let frame = enc.encode(&data)?;
                let (sha256, frame_sha256) = if self.records {
                    (sha256_bytes(&data), sha256_bytes(&frame.bytes))
                } else {
                    (String::new(), String::new())
                };
                Ok(Done {
                    i,
                    frame: Frame::Encoded(Arc::new(frame)),
                    uncompressed: data.len() as u64,
                    sha256,
                    frame_sha256,
                    kind: Kind::Compressed,
                })
            }
            Job::Reuse(i) => {
                let (ix, file) = self.base.as_ref().expect("reuse only with a base");
                let rec = &ix.index.frames[i];
                if let Format::Xz = self.format {
                    let path = ix.frames_path();
                    let mut head = vec![0u8; (rec.length as usize).min(xz::MAX_HEADER)];
                    file.read_exact_at(&mut head, rec.offset)
                        .with_context(|| format!("cannot read frame {i} of {}", path.display()))?;
                    let checked = rec
                        .unpadded
                        .context("no unpadded size")
                        .and_then(|u| xz::check_block(&head, rec.length, u, rec.uncompressed));
                    if let Err(e) = checked {
                        bail!(
                            "frame {i} of {} does not match its index ({e}: the cache is damaged): delete {} and build it again",
                            path.display(),
                            ix.dir.display()
                        );
                    }
                }
                let zero = zero_sha(rec.uncompressed) == rec.sha256;
                Ok(Done {
                    i,
                    frame: Frame::Base {
                        offset: rec.offset,
                        length: rec.length,
                        unpadded: rec.unpadded,
                    },
                    uncompressed: rec.uncompressed,
                    sha256: rec.sha256.clone(),
                    frame_sha256: rec.compressed_sha256.clone(),
                    kind: if zero { Kind::Zero } else { Kind::Reused },
                })
            }
        }
    }
}

/// SHA-256 of `len` zero bytes, computed once per length (an image has at most two chunk
/// lengths).
fn zero_sha(len: u64) -> String {
    static CACHE: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
    let mut g = CACHE.lock().expect("zero digest lock");
    if let Some((_, s)) = g.iter().find(|(l, _)| *l == len) {
        return s.clone();
    }
    let s = sha256_bytes(&vec![0u8; len as usize]);
    g.push((len, s.clone()));
    s
}

/// Compresses `src` into `out` frame by frame: a reader thread, one compression worker per
/// core, and this thread writing frames in order. With `reuse`, every chunk not in its set
/// of changed chunks is the base's frame, copied without reading the image. At most a few
/// chunks per worker are in memory at once.
fn encode(
    src: &Source,
    reuse: Reuse<'_>,
    format: Format,
    records: bool,
    out: &mut PendingFile,
    progress: &Progress,
) -> Result<(CompressStats, Vec<FrameRecord>)> {
    let size = src.size;
    let chunks = size.div_ceil(FRAME_SIZE) as usize;
    let (base, changed) = match reuse {
        Some((ix, changed)) => {
            let path = ix.frames_path();
            let f = File::open(&path).with_context(|| {
                format!(
                    "cannot open {}: delete {} and build the frame index again",
                    path.display(),
                    ix.dir.display()
                )
            })?;
            (Some((ix, f)), Some(changed))
        }
        None => (None, None),
    };
    // A node's file is about as large as the base's: allocating that much up front makes
    // the writes cheaper (trimmed to the real size at the end).
    let expected = base.as_ref().map(|(ix, _)| ix.index.frames_size);
    if let Some(len) = expected {
        crate::io::preallocate(out.file(), 0, len).with_context(|| {
            format!(
                "cannot allocate the {} of {}: free space there or choose another --out",
                crate::progress::human_bytes(len),
                out.path().display()
            )
        })?;
    }
    let ctx = Ctx {
        format,
        size,
        base,
        records,
        zero_frames: Mutex::new(HashMap::new()),
    };
    let workers = worker_count().min(chunks);
    let in_flight = workers * 3;
    let out_path = out.path().to_path_buf();
    // Named after what is being written (node outputs share one base).
    let task = progress.task(&file_name(&out.final_path()), Some(size));

    let (tok_tx, tok_rx) = sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        tok_tx.send(()).expect("token receiver alive");
    }
    let (job_tx, job_rx) = sync_channel::<Job>(workers);
    // Shared by the workers only: when they all stop, the reader's sends fail and it stops.
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (done_tx, done_rx) = channel::<Result<Done>>();

    let result = std::thread::scope(|s| {
        let reader = s.spawn(|| read_chunks(src, changed.as_ref(), tok_rx, job_tx));
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let (ctx, job_rx) = (&ctx, job_rx.clone());
            s.spawn(move || {
                let mut enc = match Encoder::new(format) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = done_tx.send(Err(e));
                        return;
                    }
                };
                loop {
                    let job = match job_rx.lock().expect("job lock").recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    };
                    if done_tx.send(ctx.work(job, &mut enc)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        drop(job_rx);
        let written = write_frames(
            out,
            ctx.base.as_ref().map(|(_, f)| f),
            format,
            chunks,
            done_rx,
            tok_tx,
            &task,
        );
        let read = reader.join().expect("reader thread panicked");
        // A reading error explains a short write; report it first.
        read?;
        written
    })?;
    if expected.is_some() {
        out.file()
            .set_len(result.0.size)
            .with_context(|| format!("cannot size {}", out_path.display()))?;
    }
    task.finish("done");
    Ok(result)
}

/// Hands out the chunks of `src` in order: the base's frame for unchanged chunks (when
/// `changed` is given), holes, or the chunk's bytes.
fn read_chunks(
    src: &Source,
    changed: Option<&BTreeSet<usize>>,
    tokens: Receiver<()>,
    jobs: SyncSender<Job>,
) -> Result<()> {
    for i in 0..src.size.div_ceil(FRAME_SIZE) as usize {
        if tokens.recv().is_err() {
            return Ok(());
        }
        let start = i as u64 * FRAME_SIZE;
        let end = (start + FRAME_SIZE).min(src.size);
        let job = if changed.is_some_and(|c| !c.contains(&i)) {
            Job::Reuse(i)
        } else {
            let mut buf = vec![0u8; (end - start) as usize];
            if src.read_chunk(start, end, &mut buf)? {
                Job::Data(i, buf)
            } else {
                Job::Hole(i)
            }
        };
        if jobs.send(job).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

fn write_frames(
    out: &mut PendingFile,
    base: Option<&File>,
    format: Format,
    chunks: usize,
    done: Receiver<Result<Done>>,
    tokens: SyncSender<()>,
    task: &crate::progress::Task,
) -> Result<(CompressStats, Vec<FrameRecord>)> {
    let mut hasher = Sha256::new();
    let mut pos = 0u64;
    let out_path = &out.path().to_path_buf();
    let handle = out
        .file()
        .try_clone()
        .with_context(|| format!("cannot reopen {}", out_path.display()))?;
    let mut appender = crate::io::Appender::new(handle, out_path);
    let failed = || format!("cannot write {}", out_path.display());
    // Frames of the base go from its frames file straight into the output buffer.
    let mut put = |frame: &Frame, pos: &mut u64| -> Result<()> {
        match frame {
            Frame::Encoded(e) => {
                appender.write(&e.bytes).with_context(failed)?;
                hasher.update(&e.bytes);
            }
            Frame::Base { offset, length, .. } => {
                let file = base.expect("base frames come with their file");
                appender
                    .write_with(
                        *length as usize,
                        |buf, at| file.read_exact_at(buf, offset + at as u64),
                        |b| hasher.update(b),
                    )
                    .with_context(failed)?;
            }
        }
        *pos += frame.length();
        Ok(())
    };
    let raw = |bytes: Vec<u8>| {
        Frame::Encoded(Arc::new(Encoded {
            bytes,
            unpadded: None,
        }))
    };
    if format == Format::Xz {
        put(&raw(xz::stream_header()), &mut pos)?;
    }
    let mut stats = CompressStats {
        size: 0,
        sha256: String::new(),
        frames: chunks,
        reused: 0,
        compressed: 0,
        zero: 0,
    };
    let mut records = Vec::with_capacity(chunks);
    let mut waiting: BTreeMap<usize, Done> = BTreeMap::new();
    while records.len() < chunks {
        let d = match done.recv() {
            Ok(d) => d?,
            Err(_) => bail!("compression of {} stopped early", out_path.display()),
        };
        waiting.insert(d.i, d);
        while let Some(d) = waiting.remove(&records.len()) {
            let offset = pos;
            put(&d.frame, &mut pos)?;
            match d.kind {
                Kind::Reused => stats.reused += 1,
                Kind::Compressed => stats.compressed += 1,
                Kind::Zero => stats.zero += 1,
            }
            records.push(FrameRecord {
                offset,
                length: d.frame.length(),
                uncompressed: d.uncompressed,
                sha256: d.sha256,
                compressed_sha256: d.frame_sha256,
                unpadded: d.frame.unpadded(),
            });
            task.inc(d.uncompressed);
            let _ = tokens.send(());
        }
    }
    if format == Format::Xz {
        let recs: Vec<(u64, u64)> = records
            .iter()
            .map(|r| {
                (
                    r.unpadded.expect("xz blocks have an unpadded size"),
                    r.uncompressed,
                )
            })
            .collect();
        put(&raw(xz::stream_tail(&recs)), &mut pos)?;
    }
    appender
        .finish()
        .with_context(|| format!("cannot write {}", out_path.display()))?;
    stats.size = pos;
    stats.sha256 = hex::encode(hasher.finalize());
    Ok((stats, records))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn image(dir: &Path) -> PathBuf {
        let p = dir.join("base.img");
        let f = File::create(&p).unwrap();
        f.set_len(2 * FRAME_SIZE + 777).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 241) as u8).collect();
        f.write_all_at(&data, 1000).unwrap();
        f.write_all_at(b"tail", 2 * FRAME_SIZE + 700).unwrap();
        p
    }

    #[test]
    fn zst_round_trip_and_index_checks() {
        let dir = tempfile::tempdir().unwrap();
        let raw = image(dir.path());
        let q = Progress::quiet();
        let cache = dir.path().join("cache");
        let ix = FrameIndex::build(&raw, Format::Zst, &cache, &q).unwrap();
        assert_eq!(ix.frames().len(), 3);
        assert_eq!(ix.frames()[2].uncompressed, 777);
        let mut out = Vec::new();
        zstd::stream::read::Decoder::new(File::open(ix.frames_path()).unwrap())
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, fs::read(&raw).unwrap());

        // The image seen through an overlay with nothing written: everything reused or zero.
        let node = dir.path().join("n.img.zst");
        let same = CowImage::open(&raw, dir.path()).unwrap();
        let st = write_compressed_overlay(&same, Some(&ix), Format::Zst, &node, &q).unwrap();
        assert_eq!((st.compressed, st.reused, st.zero), (0, 2, 1));
        assert_eq!(
            fs::read(&node).unwrap(),
            fs::read(ix.frames_path()).unwrap()
        );

        // A frames file that does not match the index is refused on load.
        fs::OpenOptions::new()
            .append(true)
            .open(ix.frames_path())
            .unwrap()
            .write_all(b"x")
            .unwrap();
        let err = FrameIndex::load(&cache, Format::Zst)
            .unwrap_err()
            .to_string();
        assert!(err.contains("build it again"), "{err}");
        // load_or_build repairs it.
        let ix = FrameIndex::load_or_build(&raw, Format::Zst, &cache, &q).unwrap();
        assert_eq!(
            fs::read(&node).unwrap(),
            fs::read(ix.frames_path()).unwrap()
        );
    }

    #[test]
    fn bad_inputs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let q = Progress::quiet();
        let raw = image(dir.path());
        let err = FrameIndex::build(&raw, Format::Bmap, dir.path(), &q).unwrap_err();
        assert!(err.to_string().contains("not a compressed format"), "{err}");
        let err = FrameIndex::load(&dir.path().join("none"), Format::Xz).unwrap_err();
        assert!(format!("{err:#}").contains("build it first"), "{err:#}");
        let empty = dir.path().join("empty.img");
        File::create(&empty).unwrap();
        let err = write_compressed(&empty, Format::Zst, &dir.path().join("e.zst"), &q).unwrap_err();
        assert!(err.to_string().contains("empty.img"), "{err}");
        assert!(!dir.path().join("e.zst").exists());
        let err = write_compressed(
            &dir.path().join("missing.img"),
            Format::Xz,
            &dir.path().join("m.xz"),
            &q,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("missing.img"), "{err:#}");
    }
}
