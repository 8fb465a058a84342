//! Looking inside an initramfs: which files it holds, to tell whether it can mount a root
//! filesystem over NBD before a node tries to boot from it.
//!
//! An initramfs is one or more `newc` cpio archives, each possibly compressed (gzip, zstd,
//! xz), concatenated (early microcode first); U-Boot's `uInitrd` wraps it in a 64-byte legacy
//! image header.

use std::io::Read;

use anyhow::{Context, Result, bail};

/// Magic of U-Boot's legacy image header (`mkimage -T ramdisk`).
const UIMAGE_MAGIC: [u8; 4] = [0x27, 0x05, 0x19, 0x56];
const UIMAGE_HEADER: usize = 64;
const CPIO_HEADER: usize = 110;

/// The paths of every entry, without the leading `./` or `/`.
pub fn entries(data: &[u8]) -> Result<Vec<String>> {
    let data = match data.starts_with(&UIMAGE_MAGIC) && data.len() > UIMAGE_HEADER {
        true => &data[UIMAGE_HEADER..],
        false => data,
    };
    let mut names = Vec::new();
    collect(data, &mut names, 0)?;
    Ok(names)
}

fn collect(mut data: &[u8], names: &mut Vec<String>, depth: u8) -> Result<()> {
    loop {
        // Archives are padded with zeros between one another.
        let skip = data.iter().take_while(|&&b| b == 0).count();
        data = &data[skip..];
        if data.is_empty() {
            return Ok(());
        }
        if data.starts_with(b"07070") {
            data = &data[read_cpio(data, names)?..];
            continue;
        }
        if depth > 2 {
            bail!("compressed archives nested too deep");
        }
        // A compressed archive runs to the end of the file.
        let plain = decompress(data)?;
        return collect(&plain, names, depth + 1);
    }
}

/// Reads one cpio archive up to its trailer; returns the bytes it takes.
fn read_cpio(data: &[u8], names: &mut Vec<String>) -> Result<usize> {
    let mut pos = 0usize;
    loop {
        let h = data
            .get(pos..pos + CPIO_HEADER)
            .context("cpio archive ends inside a header")?;
        if !(h.starts_with(b"070701") || h.starts_with(b"070702")) {
            bail!("not a newc cpio header at byte {pos}");
        }
        let field = |i: usize| -> Result<usize> {
            let s = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i])
                .ok()
                .and_then(|s| usize::from_str_radix(s, 16).ok());
            s.context("cpio header field is not hexadecimal")
        };
        let file_size = field(6)?;
        let name_size = field(11)?;
        let name_end = pos + CPIO_HEADER + name_size;
        let name = data
            .get(pos + CPIO_HEADER..name_end)
            .context("cpio archive ends inside a name")?;
        let name = String::from_utf8_lossy(name.strip_suffix(&[0]).unwrap_or(name)).to_string();
        let data_start = name_end.next_multiple_of(4);
        pos = (data_start + file_size).next_multiple_of(4);
        if pos > data.len() + 3 {
            bail!("cpio archive ends inside the data of {name}");
        }
        if name == "TRAILER!!!" {
            return Ok(pos.min(data.len()));
        }
        names.push(
            name.trim_start_matches("./")
                .trim_start_matches('/')
                .to_string(),
        );
    }
}

fn decompress(data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match data {
        [0x1f, 0x8b, ..] => flate2::read::MultiGzDecoder::new(data)
            .read_to_end(&mut out)
            .context("gzip data is damaged")?,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => zstd::stream::read::Decoder::new(data)?
            .read_to_end(&mut out)
            .context("zstd data is damaged")?,
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => liblzma::read::XzDecoder::new_multi_decoder(data)
            .read_to_end(&mut out)
            .context("xz data is damaged")?,
        _ => bail!(
            "compression not recognised (first bytes {}): only gzip, zstd and xz are read",
            hex::encode(&data[..data.len().min(4)])
        ),
    };
    Ok(out)
}

/// What an initramfs lacks to mount a root filesystem over NBD (`nbdroot=`), as Debian's
/// `nbd-client` package adds it through its initramfs-tools hook: the `nbd-client` binary
/// and the `local-top/nbd` script that reads `nbdroot=`. Empty when it has both.
pub fn missing_for_nbd(entries: &[String]) -> Vec<&'static str> {
    let has = |pred: &dyn Fn(&str) -> bool| entries.iter().any(|e| pred(e));
    let mut missing = Vec::new();
    if !has(&|e| e.ends_with("bin/nbd-client")) {
        missing.push("the nbd-client binary");
    }
    if !has(&|e| e == "scripts/local-top/nbd" || e.ends_with("/nbdroot.sh")) {
        missing.push("the scripts/local-top/nbd boot script (nbdroot=)");
    }
    missing
}

/// A `newc` cpio archive of `files` (path, contents), for tests and fixtures.
pub fn newc(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut entry = |name: &str, mode: u32, data: &[u8]| {
        let name_size = name.len() + 1;
        out.extend_from_slice(
            format!(
                "070701{:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{name_size:08x}{:08x}",
                0, 0, 0, 1, 0, data.len(), 0, 0, 0, 0, 0
            )
            .as_bytes(),
        );
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(4), 0);
    };
    for (name, data) in files {
        entry(name, 0o100644, data);
    }
    entry("TRAILER!!!", 0, &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn reads_concatenated_and_compressed_archives() {
        let early = newc(&[("kernel/x86/microcode/GenuineIntel.bin", b"ucode")]);
        let main = newc(&[
            ("./usr/sbin/nbd-client", b"\x7fELF"),
            ("scripts/local-top/nbd", b"#!/bin/sh\n"),
        ]);
        let mut image = early.clone();
        image.extend_from_slice(&[0; 512]);
        image.extend_from_slice(&zstd::encode_all(&main[..], 3).unwrap());
        let names = entries(&image).unwrap();
        assert_eq!(
            names,
            [
                "kernel/x86/microcode/GenuineIntel.bin",
                "usr/sbin/nbd-client",
                "scripts/local-top/nbd"
            ]
        );
        assert!(missing_for_nbd(&names).is_empty());
        // The same behind a U-Boot legacy header, gzip-compressed.
        let mut uinitrd = UIMAGE_MAGIC.to_vec();
        uinitrd.resize(UIMAGE_HEADER, 0);
        uinitrd.extend_from_slice(&gzip(&main));
        assert_eq!(entries(&uinitrd).unwrap().len(), 2);
    }

    #[test]
    fn an_initramfs_without_nbd_support_says_what_it_lacks() {
        let plain = gzip(&newc(&[("init", b"#!/bin/sh\n"), ("scripts/nfs", b"")]));
        let names = entries(&plain).unwrap();
        assert_eq!(missing_for_nbd(&names).len(), 2);
    }

    #[test]
    fn unknown_compression_and_damage_are_errors() {
        let e = entries(b"\x02\x21\x4c\x18lz4 data").unwrap_err();
        assert!(format!("{e:#}").contains("not recognised"), "{e:#}");
        let mut cut = newc(&[("a", &[7u8; 100])]);
        cut.truncate(150);
        assert!(entries(&cut).is_err());
    }
}
