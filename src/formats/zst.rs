//! zstd frames: each chunk of the image is one independent frame (content size and
//! checksum recorded); a `.zst` file is their concatenation, which `zstd -d` decodes as one
//! stream.

use anyhow::{Context, Result};
use zstd::zstd_safe::CParameter;

/// Compression level, the `zstd` command's default.
pub const LEVEL: i32 = 3;
/// Largest window a frame may need (log2): 4 MiB chunks need at most 2^22; the bound keeps
/// decoding within what every zstd decoder accepts by default.
const WINDOW_LOG: u32 = 22;

pub struct Encoder {
    c: zstd::bulk::Compressor<'static>,
}

impl Encoder {
    pub fn new() -> Result<Encoder> {
        let mut c = zstd::bulk::Compressor::new(LEVEL).context("cannot set up the zstd encoder")?;
        for p in [
            CParameter::ChecksumFlag(true),
            CParameter::ContentSizeFlag(true),
            CParameter::WindowLog(WINDOW_LOG),
            CParameter::NbWorkers(0),
        ] {
            c.set_parameter(p)
                .with_context(|| format!("cannot set the zstd parameter {p:?}"))?;
        }
        Ok(Encoder { c })
    }

    /// One complete frame holding `data`.
    pub fn frame(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        self.c
            .compress(data)
            .context("zstd could not compress a chunk of the image")
    }
}

pub fn describe() -> String {
    format!(
        "zstd {} level {LEVEL} window 2^{WINDOW_LOG} checksum",
        zstd::zstd_safe::version_string()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_concatenate_into_one_stream() {
        let mut e = Encoder::new().unwrap();
        let a: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let b = vec![0u8; 70_000];
        let mut file = e.frame(&a).unwrap();
        file.extend(e.frame(&b).unwrap());
        let out = zstd::stream::decode_all(&file[..]).unwrap();
        assert_eq!(out.len(), a.len() + b.len());
        assert_eq!(&out[..a.len()], &a[..]);
        assert!(out[a.len()..].iter().all(|&x| x == 0));
        // Deterministic: the same input gives the same frame.
        assert_eq!(e.frame(&a).unwrap(), file[..e.frame(&a).unwrap().len()]);
    }
}
