//! Boot loader areas: raw byte ranges outside every partition that a board's ROM reads its
//! boot loader from (Allwinner's SPL at 8 KiB, Rockchip's idbloader at sector 64 and
//! u-boot.itb at sector 16384). Each OS image definition declares them; a build refuses an
//! image whose partitions, or whose growth, would touch them, and checks their SHA-256 before
//! and after it writes, so not one of their bytes can change unnoticed.

use std::fmt;

use anyhow::{Result, bail};
use pikube_ext4::Storage;
use serde::{Deserialize, Serialize};

use super::Disk;

/// One boot loader area of an OS image, in bytes from the start of the disk.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BootArea {
    /// What lives there (`idbloader`, `u-boot.itb`, `u-boot-sunxi-with-spl`).
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

impl BootArea {
    /// The byte just past the area.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.size)
    }

    /// Whether the area shares a byte with `[start, end)`.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        start < self.end() && self.offset < end
    }
}

impl fmt::Display for BootArea {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "boot loader area '{}' (bytes {}..{})",
            self.name,
            self.offset,
            self.end()
        )
    }
}

/// Checks a list of areas on its own: each is non-empty, does not wrap around, and no two
/// share a byte.
pub fn check_areas(areas: &[BootArea]) -> Result<()> {
    for a in areas {
        if a.name.trim().is_empty() {
            bail!(
                "a boot loader area at byte {} has no name: give it the name of what lives there",
                a.offset
            );
        }
        if a.size == 0 || a.offset.checked_add(a.size).is_none() {
            bail!("{a}: the size must be at least 1 and the area must end inside 2^64 bytes");
        }
    }
    for (i, a) in areas.iter().enumerate() {
        for b in &areas[i + 1..] {
            if a.overlaps(b.offset, b.end()) {
                bail!("{a} and {b} overlap: declare each byte once");
            }
        }
    }
    Ok(())
}

/// Refuses an image whose partitions share a byte with an area, or that ends inside one:
/// writing a file there would overwrite the boot loader.
pub fn check_disk(areas: &[BootArea], disk: &Disk) -> Result<()> {
    for a in areas {
        if a.end() > disk.size {
            bail!(
                "{a} lies beyond the end of the image ({} bytes): the image is not the one the board definition describes (truncated, or another board's)",
                disk.size
            );
        }
        for p in &disk.partitions {
            if a.overlaps(p.start, p.end()) {
                bail!(
                    "partition {} (bytes {}..{}) overlaps {a}: writing into it could overwrite the boot loader; the image is not laid out as its board definition says (use the board's own image, or fix `bootloader:` in the definition)",
                    p.number,
                    p.start,
                    p.end()
                );
            }
        }
    }
    Ok(())
}

/// Refuses a write of `[start, end)` (`what` names it) that would touch an area.
pub fn check_write(areas: &[BootArea], start: u64, end: u64, what: &str) -> Result<()> {
    if let Some(a) = areas.iter().find(|a| a.overlaps(start, end)) {
        bail!(
            "{what} (bytes {start}..{end}) would overwrite {a}: refusing to change the boot loader; check `bootloader:` in the OS image definition"
        );
    }
    Ok(())
}

/// The SHA-256 of each area's bytes, in declaration order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct AreaDigest {
    pub name: String,
    pub offset: u64,
    pub size: u64,
    pub sha256: String,
}

/// Hashes every area of `image`.
pub fn digests(image: &dyn Storage, areas: &[BootArea]) -> Result<Vec<AreaDigest>> {
    let mut out = Vec::with_capacity(areas.len());
    for a in areas {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = a.offset;
        while at < a.end() {
            let n = (a.end() - at).min(buf.len() as u64) as usize;
            image
                .fetch_at(&mut buf[..n], at)
                .map_err(|e| anyhow::anyhow!("cannot read {a}: {e}"))?;
            h.update(&buf[..n]);
            at += n as u64;
        }
        out.push(AreaDigest {
            name: a.name.clone(),
            offset: a.offset,
            size: a.size,
            sha256: hex::encode(h.finalize()),
        });
    }
    Ok(out)
}

/// Fails when an area of `image` no longer has the digest it had before the build wrote.
pub fn verify(image: &dyn Storage, before: &[AreaDigest]) -> Result<()> {
    let areas: Vec<BootArea> = before
        .iter()
        .map(|d| BootArea {
            name: d.name.clone(),
            offset: d.offset,
            size: d.size,
        })
        .collect();
    let after = digests(image, &areas)?;
    for (b, a) in before.iter().zip(&after) {
        if b.sha256 != a.sha256 {
            bail!(
                "boot loader area '{}' (bytes {}..{}) changed during the build (SHA-256 {} became {}): the image would not boot as shipped, so nothing was written; if a cached prepared base is damaged, run `pikube-image cache prune --all`",
                b.name,
                b.offset,
                b.offset + b.size,
                b.sha256,
                a.sha256
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(name: &str, offset: u64, size: u64) -> BootArea {
        BootArea {
            name: name.into(),
            offset,
            size,
        }
    }

    #[test]
    fn areas_are_checked_on_their_own() {
        check_areas(&[
            area("idbloader", 32768, 100),
            area("u-boot.itb", 8 << 20, 10),
        ])
        .unwrap();
        let e = check_areas(&[area("a", 0, 10), area("b", 9, 10)]).unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
        assert!(check_areas(&[area("a", 5, 0)]).is_err());
        assert!(check_areas(&[area("a", u64::MAX, 2)]).is_err());
        assert!(check_areas(&[area(" ", 5, 1)]).is_err());
    }

    #[test]
    fn writes_that_touch_an_area_are_refused() {
        let areas = [area("spl", 8192, 4096)];
        check_write(&areas, 446, 462, "the MBR entry").unwrap();
        check_write(&areas, 12288, 12800, "x").unwrap();
        let e = check_write(&areas, 12287, 12288, "the GPT header").unwrap_err();
        assert!(
            e.to_string().contains("'spl'") && e.to_string().contains("GPT header"),
            "{e}"
        );
    }

    #[test]
    fn a_changed_byte_is_found() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.img");
        let mut data: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let areas = [
            area("one", 512, 1000),
            area("two", (1 << 20) + 7, (2 << 20) - 7),
        ];
        let f = std::fs::File::open(&p).unwrap();
        let before = digests(&f, &areas).unwrap();
        verify(&f, &before).unwrap();
        // A byte outside the areas changes nothing; one inside is named.
        data[511] ^= 1;
        data[(3 << 20) - 1] ^= 0xff;
        std::fs::write(&p, &data).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let e = verify(&f, &before).unwrap_err();
        assert!(e.to_string().contains("'two'"), "{e}");
        data[(3 << 20) - 1] ^= 0xff;
        std::fs::write(&p, &data).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        verify(&f, &before).unwrap();
    }
}
