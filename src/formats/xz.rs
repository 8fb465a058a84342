//! The `.xz` container, written by hand around raw LZMA2 data from liblzma.
//!
//! A `.xz` file is: stream header (12 bytes), blocks, index, stream footer (12 bytes). Each
//! chunk of the image becomes one block whose header records its compressed and
//! uncompressed sizes (so multi-threaded decoders such as `xz -T0` decode blocks in
//! parallel) and whose check is the CRC64 of its uncompressed bytes. A block depends on
//! nothing outside itself, so blocks of the base image are copied verbatim into node files;
//! the index lists every block's unpadded size (header + compressed data + check) and
//! uncompressed size.

use anyhow::{Context, Result, bail};
use liblzma::stream::{Action, Filters, LzmaOptions, Status, Stream};

/// Preset of the `xz` command's default.
pub const PRESET: u32 = 6;
/// Dictionary size: a chunk cannot refer to anything before its start, so a dictionary as
/// large as a chunk loses nothing and keeps encoder and decoder memory small.
pub const DICT_SIZE: u32 = 4 << 20;
const CHECK_CRC64: u8 = 0x04;
const CHECK_SIZE: u64 = 8;
const LZMA2_ID: u8 = 0x21;
const HEADER_MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];
const FOOTER_MAGIC: [u8; 2] = [b'Y', b'Z'];

/// One encoded block: the bytes to write (header, data, padding, check) and the unpadded
/// size the index records.
pub struct Block {
    pub bytes: Vec<u8>,
    pub unpadded: u64,
}

pub struct Encoder {
    opts: LzmaOptions,
}

impl Encoder {
    pub fn new() -> Result<Encoder> {
        let mut opts =
            LzmaOptions::new_preset(PRESET).context("liblzma does not know xz preset 6")?;
        opts.dict_size(DICT_SIZE);
        Ok(Encoder { opts })
    }

    /// The block holding `data`.
    pub fn block(&mut self, data: &[u8]) -> Result<Block> {
        let mut filters = Filters::new();
        filters.lzma2(&self.opts);
        let mut s = Stream::new_raw_encoder(&filters).context("cannot set up the LZMA2 encoder")?;
        let mut packed = Vec::with_capacity(data.len() / 2 + 4096);
        let mut input = data;
        loop {
            if packed.capacity() - packed.len() < 64 << 10 {
                packed.reserve(data.len() / 4 + (64 << 10));
            }
            let before = s.total_in();
            let status = s
                .process_vec(input, &mut packed, Action::Finish)
                .context("liblzma could not compress a chunk of the image")?;
            input = &input[(s.total_in() - before) as usize..];
            if status == Status::StreamEnd {
                break;
            }
        }
        let mut header = vec![0u8]; // size byte, set below
        header.push(0xC0); // one filter; compressed and uncompressed sizes present
        put_varint(&mut header, packed.len() as u64);
        put_varint(&mut header, data.len() as u64);
        header.push(LZMA2_ID);
        header.push(1); // size of the filter properties
        header.push(dict_size_byte(DICT_SIZE));
        while (header.len() + 4) % 4 != 0 {
            header.push(0);
        }
        let total = header.len() + 4;
        header[0] = (total / 4 - 1) as u8;
        let crc = crc32(&header);
        header.extend_from_slice(&crc.to_le_bytes());

        let unpadded = header.len() as u64 + packed.len() as u64 + CHECK_SIZE;
        let mut bytes = header;
        bytes.extend_from_slice(&packed);
        while bytes.len() % 4 != 0 {
            bytes.push(0);
        }
        bytes.extend_from_slice(&crc64(data).to_le_bytes());
        Ok(Block { bytes, unpadded })
    }
}

pub fn describe() -> String {
    format!("xz lzma2 preset {PRESET} dict {DICT_SIZE} crc64")
}

/// The 12-byte stream header.
pub fn stream_header() -> Vec<u8> {
    let mut h = HEADER_MAGIC.to_vec();
    let flags = [0u8, CHECK_CRC64];
    h.extend_from_slice(&flags);
    h.extend_from_slice(&crc32(&flags).to_le_bytes());
    h
}

/// Index and stream footer for blocks of `(unpadded size, uncompressed size)`.
pub fn stream_tail(records: &[(u64, u64)]) -> Vec<u8> {
    let mut index = vec![0u8]; // index indicator
    put_varint(&mut index, records.len() as u64);
    for &(unpadded, uncompressed) in records {
        put_varint(&mut index, unpadded);
        put_varint(&mut index, uncompressed);
    }
    while index.len() % 4 != 0 {
        index.push(0);
    }
    let crc = crc32(&index);
    index.extend_from_slice(&crc.to_le_bytes());
    let backward = (index.len() / 4 - 1) as u32;
    let mut tail = index;
    let mut fields = backward.to_le_bytes().to_vec();
    fields.extend_from_slice(&[0u8, CHECK_CRC64]);
    tail.extend_from_slice(&crc32(&fields).to_le_bytes());
    tail.extend_from_slice(&fields);
    tail.extend_from_slice(&FOOTER_MAGIC);
    tail
}

/// Longest block header: what [`check_block`] needs of a block.
pub const MAX_HEADER: usize = 1024;

/// Parses the start of a block written by [`Encoder::block`] (`head`: its first
/// [`MAX_HEADER`] bytes, or all of it when shorter) far enough to check that its padded
/// `length`, `unpadded` and `uncompressed` sizes agree with its header (guards a stale or
/// damaged cache).
pub fn check_block(head: &[u8], length: u64, unpadded: u64, uncompressed: u64) -> Result<()> {
    let bytes = head;
    let Some(&size_byte) = bytes.first() else {
        bail!("empty block");
    };
    let hlen = (size_byte as usize + 1) * 4;
    if bytes.len() < hlen || !length.is_multiple_of(4) {
        bail!("block shorter than its header");
    }
    let crc = u32::from_le_bytes(bytes[hlen - 4..hlen].try_into().expect("4 bytes"));
    if crc32(&bytes[..hlen - 4]) != crc {
        bail!("block header CRC32 mismatch");
    }
    if bytes[1] != 0xC0 {
        bail!("unexpected block flags {:#x}", bytes[1]);
    }
    let mut pos = 2;
    let packed = get_varint(bytes, &mut pos)?;
    let size = get_varint(bytes, &mut pos)?;
    if size != uncompressed || hlen as u64 + packed + CHECK_SIZE != unpadded {
        bail!("block sizes do not match the index");
    }
    if (unpadded.div_ceil(4) * 4) != length {
        bail!("block length does not match its unpadded size");
    }
    Ok(())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], pos: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for i in 0..9 {
        let Some(&byte) = b.get(*pos) else {
            bail!("truncated number");
        };
        *pos += 1;
        v |= ((byte & 0x7F) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    bail!("number longer than 9 bytes")
}

/// LZMA2 dictionary size property: the smallest encoded size >= `dict`
/// (sizes are 2^n and 3 * 2^(n-1), from 4 KiB).
fn dict_size_byte(dict: u32) -> u8 {
    for b in 0u8..40 {
        let size = (2u64 | (b as u64 & 1)) << (b / 2 + 11);
        if size >= dict as u64 {
            return b;
        }
    }
    40
}

fn crc32(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(data);
    h.finalize()
}

const CRC64_POLY: u64 = 0xC96C_5795_D787_0F42;

// Indexing the tables by position in both dimensions is the clearest way to build them.
#[allow(clippy::needless_range_loop)]
static CRC64_TABLES: std::sync::LazyLock<[[u64; 256]; 8]> = std::sync::LazyLock::new(|| {
    let mut t = [[0u64; 256]; 8];
    for i in 0..256 {
        let mut c = i as u64;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ CRC64_POLY
            } else {
                c >> 1
            };
        }
        t[0][i] = c;
    }
    // Table k advances a CRC by k + 1 bytes.
    for i in 0..256 {
        for k in 1..8 {
            t[k][i] = (t[k - 1][i] >> 8) ^ t[0][(t[k - 1][i] & 0xFF) as usize];
        }
    }
    t
});

/// CRC64 (ECMA-182, reflected), the check `xz` uses by default; eight bytes per step.
pub fn crc64(data: &[u8]) -> u64 {
    let t = &*CRC64_TABLES;
    let mut c = !0u64;
    let mut chunks = data.chunks_exact(8);
    for w in &mut chunks {
        let v = c ^ u64::from_le_bytes(w.try_into().expect("8 bytes"));
        c = t[7][(v & 0xFF) as usize]
            ^ t[6][((v >> 8) & 0xFF) as usize]
            ^ t[5][((v >> 16) & 0xFF) as usize]
            ^ t[4][((v >> 24) & 0xFF) as usize]
            ^ t[3][((v >> 32) & 0xFF) as usize]
            ^ t[2][((v >> 40) & 0xFF) as usize]
            ^ t[1][((v >> 48) & 0xFF) as usize]
            ^ t[0][(v >> 56) as usize];
    }
    for &b in chunks.remainder() {
        c = t[0][((c ^ b as u64) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn crc64_check_value() {
        // The standard check value of CRC-64/XZ.
        assert_eq!(crc64(b"123456789"), 0x995D_C9BB_DF19_39FA);
        assert_eq!(crc64(b""), 0);
    }

    #[test]
    fn dict_size_encoding() {
        assert_eq!(dict_size_byte(4096), 0);
        assert_eq!(dict_size_byte(6144), 1);
        assert_eq!(dict_size_byte(4 << 20), 20);
        assert_eq!(dict_size_byte((4 << 20) + 1), 21);
    }

    #[test]
    fn hand_written_stream_decodes_with_liblzma() {
        let mut e = Encoder::new().unwrap();
        let a: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 253) as u8).collect();
        let b = vec![0u8; 5000];
        let mut file = stream_header();
        let mut records = Vec::new();
        for data in [&a[..], &b[..]] {
            let blk = e.block(data).unwrap();
            check_block(
                &blk.bytes,
                blk.bytes.len() as u64,
                blk.unpadded,
                data.len() as u64,
            )
            .unwrap();
            records.push((blk.unpadded, data.len() as u64));
            file.extend_from_slice(&blk.bytes);
        }
        file.extend(stream_tail(&records));
        let mut out = Vec::new();
        liblzma::read::XzDecoder::new(&file[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(&out[..a.len()], &a[..]);
        assert_eq!(&out[a.len()..], &b[..]);
        // A damaged block is detected by the decoder (check) and by check_block (sizes).
        let blk = e.block(&a).unwrap();
        assert!(
            check_block(
                &blk.bytes,
                blk.bytes.len() as u64,
                blk.unpadded + 1,
                a.len() as u64
            )
            .is_err()
        );
    }
}
