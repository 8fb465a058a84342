//! Partition tables of disk images and the filesystems inside them.
//!
//! Reads MBR (with logical partitions) and GPT tables with 512-byte sectors, and
//! recognises FAT and ext4 filesystems by their on-disk signatures, so the rest of the
//! pipeline can find partitions by what they contain (labels) rather than by position.

pub mod grow;
pub mod protect;

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Sector size assumed for every image (all supported boards use 512).
pub const SECTOR: u64 = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    Mbr,
    Gpt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    Fat,
    Ext4,
    Other,
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FsKind::Fat => "FAT",
            FsKind::Ext4 => "ext4",
            FsKind::Other => "unknown",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Partition number as Linux counts it (MBR logical partitions start at 5).
    pub number: u32,
    /// Byte offset in the image.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    pub fs: FsKind,
    /// FAT volume label (root directory label entry, else boot sector) or ext4 volume name.
    pub label: Option<String>,
    /// GPT partition name.
    pub gpt_name: Option<String>,
    /// MBR partition type byte.
    pub mbr_type: Option<u8>,
    /// GPT partition type GUID, upper-case.
    pub gpt_type: Option<String>,
    /// MBR boot flag, or the GPT "legacy BIOS bootable" attribute.
    pub bootable: bool,
    /// ext4 filesystem UUID, lower-case.
    pub uuid: Option<String>,
}

impl Partition {
    /// Byte offset just past the partition.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    pub table: TableKind,
    /// Image size in bytes.
    pub size: u64,
    /// MBR disk signature as 8 lower-case hex digits (as in `PARTUUID=<id>-02`), or the
    /// GPT disk GUID in lower case.
    pub disk_id: String,
    /// Used partitions, in table order.
    pub partitions: Vec<Partition>,
}

impl Disk {
    /// Reads the partition table of the image at `path` and probes each partition.
    pub fn read(path: &Path) -> Result<Disk> {
        let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let size = f.seek(SeekFrom::End(0))?;
        read_disk(&mut f, path, Some(size))
            .with_context(|| format!("cannot read the disk image {}", path.display()))
    }

    /// Reads the partition table of an image whose size is not known without reading it
    /// whole (a compressed one, decoded as far as it is read). Its size is then taken
    /// from the table: where the GPT says the disk ends, or where the last MBR partition
    /// ends. `path` names it in messages.
    pub fn read_unsized<R: Read + Seek>(r: &mut R, path: &Path) -> Result<Disk> {
        read_disk(r, path, None)
            .with_context(|| format!("cannot read the disk image {}", path.display()))
    }

    /// The partition with this FAT label (case-insensitive), ext4 label or GPT name.
    pub fn by_label(&self, label: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| {
            let fs_match = match (&p.label, p.fs) {
                (Some(l), FsKind::Fat) => l.eq_ignore_ascii_case(label),
                (Some(l), _) => l == label,
                (None, _) => false,
            };
            fs_match || p.gpt_name.as_deref() == Some(label)
        })
    }

    /// The partition that ends last in the image.
    pub fn last(&self) -> Option<&Partition> {
        self.partitions.iter().max_by_key(|p| p.end())
    }

    /// The partition with this number.
    pub fn number(&self, n: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.number == n)
    }
}

fn read_disk<R: Read + Seek>(f: &mut R, path: &Path, size: Option<u64>) -> Result<Disk> {
    if let Some(size) = size
        && size < SECTOR
    {
        bail!("the file is {size} bytes long, too small to hold a partition table");
    }
    let mut mbr = [0u8; 512];
    read_at(f, 0, &mut mbr)?;
    if mbr[510..512] != [0x55, 0xAA] {
        bail!(
            "no partition table: sector 0 lacks the 0x55AA signature (is {} a disk image, fully decompressed?)",
            path.display()
        );
    }
    let protective = (0..4).any(|i| mbr[446 + i * 16 + 4] == 0xEE);
    // The table readers ask for the disk's end; of an image of unknown size, it is where
    // the primary entries end (the extended partition holds the logical ones; a GPT's
    // protective entry covers the disk).
    let primary_end = (0..4)
        .map(|i| {
            let e = &mbr[446 + i * 16..446 + (i + 1) * 16];
            let start = u32::from_le_bytes(e[8..12].try_into().expect("4 bytes"));
            let sectors = u32::from_le_bytes(e[12..16].try_into().expect("4 bytes"));
            (u64::from(start) + u64::from(sectors)) * SECTOR
        })
        .max()
        .unwrap_or(SECTOR)
        .max(SECTOR);
    let mut sized = KnownEnd {
        inner: f,
        end: size.unwrap_or(primary_end),
    };
    let f = &mut sized;
    let (table, disk_id, mut parts, table_size) = if protective {
        let (t, id, parts, backup_lba) = read_gpt(f)?;
        (t, id, parts, (backup_lba + 1) * SECTOR)
    } else {
        let (t, id, parts) = read_mbr(f, &mbr)?;
        (t, id, parts, primary_end)
    };
    let size = size.unwrap_or(table_size);
    for p in &mut parts {
        if p.end() > size {
            bail!(
                "partition {} ends at byte {} but the image is only {size} bytes: the image is truncated; decompress or download it again",
                p.number,
                p.end()
            );
        }
    }
    check_overlaps(&parts)?;
    for p in &mut parts {
        probe(f, p).with_context(|| format!("cannot probe partition {}", p.number))?;
    }
    Ok(Disk {
        table,
        size,
        disk_id,
        partitions: parts,
    })
}

/// A reader whose end is given rather than found by seeking there.
struct KnownEnd<'a, R> {
    inner: &'a mut R,
    end: u64,
}

impl<R: Read> Read for KnownEnd<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<R: Seek> Seek for KnownEnd<'_, R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        match pos {
            SeekFrom::End(d) => {
                let at = self.end.checked_add_signed(d).ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
                })?;
                self.inner.seek(SeekFrom::Start(at))
            }
            other => self.inner.seek(other),
        }
    }
}

/// Refuses a table whose entries share bytes (or that starts a partition inside the table
/// itself): writing one partition's files would then damage another's.
fn check_overlaps(parts: &[Partition]) -> Result<()> {
    let mut by_start: Vec<&Partition> = parts.iter().collect();
    by_start.sort_by_key(|p| p.start);
    if let Some(first) = by_start.first()
        && first.start < SECTOR
    {
        bail!(
            "partition {} starts at byte {}, inside the partition table: the table is damaged",
            first.number,
            first.start
        );
    }
    for w in by_start.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b.start < a.end() {
            bail!(
                "partitions {} (bytes {}..{}) and {} (bytes {}..{}) overlap: the partition table is damaged, and writing either would corrupt the other; fix the table (sfdisk, gdisk) or use another image",
                a.number,
                a.start,
                a.end(),
                b.number,
                b.start,
                b.end()
            );
        }
    }
    Ok(())
}

fn blank(number: u32, start: u64, size: u64) -> Partition {
    Partition {
        number,
        start,
        size,
        fs: FsKind::Other,
        label: None,
        gpt_name: None,
        mbr_type: None,
        gpt_type: None,
        bootable: false,
        uuid: None,
    }
}

fn read_mbr<R: Read + Seek>(
    f: &mut R,
    sector0: &[u8; 512],
) -> Result<(TableKind, String, Vec<Partition>)> {
    let mbr = mbrman::MBR::read_from(f, SECTOR as u32)
        .map_err(|e| anyhow::anyhow!("invalid MBR: {e}"))?;
    let sig = u32::from_le_bytes(sector0[440..444].try_into().expect("4 bytes"));
    let mut parts = Vec::new();
    for (i, e) in mbr.iter() {
        if e.is_unused() || e.is_extended() || e.sectors == 0 {
            continue;
        }
        let mut p = blank(
            i as u32,
            u64::from(e.starting_lba) * SECTOR,
            u64::from(e.sectors) * SECTOR,
        );
        p.mbr_type = Some(e.sys);
        p.bootable = e.boot == 0x80;
        parts.push(p);
    }
    Ok((TableKind::Mbr, format!("{sig:08x}"), parts))
}

/// The table, with the sector of the backup GPT header (the disk's last).
fn read_gpt<R: Read + Seek>(f: &mut R) -> Result<(TableKind, String, Vec<Partition>, u64)> {
    let gpt = gptman::GPT::read_from(f, SECTOR)
        .map_err(|e| anyhow::anyhow!("the MBR announces a GPT but it cannot be read: {e}"))?;
    let mut parts = Vec::new();
    for (i, e) in gpt.iter() {
        if e.is_unused() {
            continue;
        }
        if e.ending_lba < e.starting_lba {
            bail!("GPT entry {i} ends before it starts");
        }
        let mut p = blank(
            i,
            e.starting_lba * SECTOR,
            (e.ending_lba - e.starting_lba + 1) * SECTOR,
        );
        let name = e.partition_name.as_str().trim_end_matches('\0').to_string();
        p.gpt_name = (!name.is_empty()).then_some(name);
        p.gpt_type = Some(guid_string(&e.partition_type_guid).to_ascii_uppercase());
        p.bootable = e.attribute_bits & (1 << 2) != 0;
        parts.push(p);
    }
    Ok((
        TableKind::Gpt,
        guid_string(&gpt.header.disk_guid),
        parts,
        gpt.header.backup_lba,
    ))
}

/// Formats a GUID stored in the GPT mixed-endian layout as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn guid_string(g: &[u8; 16]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{}-{}",
        u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
        u16::from_le_bytes([g[4], g[5]]),
        u16::from_le_bytes([g[6], g[7]]),
        hex::encode(&g[8..10]),
        hex::encode(&g[10..16])
    )
}

/// Formats a UUID stored in byte order (ext4) as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn read_at<R: Read + Seek>(f: &mut R, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
    f.seek(SeekFrom::Start(off))?;
    f.read_exact(buf)
}

fn probe<R: Read + Seek>(f: &mut R, p: &mut Partition) -> Result<()> {
    if p.size < 2048 {
        return Ok(());
    }
    let mut head = [0u8; 2048];
    read_at(f, p.start, &mut head)?;
    if let Some((label, uuid)) = ext4_identity(&head) {
        p.fs = FsKind::Ext4;
        p.label = label;
        p.uuid = Some(uuid);
        return Ok(());
    }
    if let Some(bpb) = Bpb::parse(&head[..512]) {
        p.fs = FsKind::Fat;
        p.label = match fat_root_label(f, p, &bpb) {
            Ok(Some(l)) => Some(l),
            _ => bpb.label,
        };
    }
    Ok(())
}

/// ext4 (and ext2/3) superblock at byte 1024: magic 0xEF53 at +0x38, UUID at +0x68,
/// volume name at +0x78.
fn ext4_identity(head: &[u8; 2048]) -> Option<(Option<String>, String)> {
    let sb = &head[1024..2048];
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
        return None;
    }
    let uuid = uuid_string(sb[0x68..0x78].try_into().expect("16 bytes"));
    let name = &sb[0x78..0x88];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let label = String::from_utf8_lossy(&name[..end]).into_owned();
    Some(((!label.is_empty()).then_some(label), uuid))
}

/// The parts of a FAT boot sector needed to find the root directory.
#[derive(Debug)]
struct Bpb {
    bytes_per_sector: u64,
    sectors_per_cluster: u64,
    reserved: u64,
    fats: u64,
    root_entries: u64,
    fat_size: u64,
    root_cluster: Option<u64>,
    label: Option<String>,
}

impl Bpb {
    fn parse(bs: &[u8]) -> Option<Bpb> {
        if bs[510..512] != [0x55, 0xAA] || !(bs[0] == 0xEB || bs[0] == 0xE9) {
            return None;
        }
        let u16at = |o: usize| u64::from(u16::from_le_bytes([bs[o], bs[o + 1]]));
        let u32at = |o: usize| u64::from(u32::from_le_bytes(bs[o..o + 4].try_into().expect("4")));
        let bytes_per_sector = u16at(11);
        let sectors_per_cluster = u64::from(bs[13]);
        let reserved = u16at(14);
        let fats = u64::from(bs[16]);
        let root_entries = u16at(17);
        if ![512, 1024, 2048, 4096].contains(&bytes_per_sector)
            || !sectors_per_cluster.is_power_of_two()
            || reserved == 0
            || !(1..=2).contains(&fats)
        {
            return None;
        }
        let fat16_size = u16at(22);
        let (fat32, fat_size, sig_off, label_off, type_off) = if fat16_size == 0 {
            (true, u32at(36), 0x42, 0x47, 0x52)
        } else {
            (false, fat16_size, 0x26, 0x2B, 0x36)
        };
        // The type string is informative only, but every formatter writes it; a FAT32 volume
        // without it is still accepted when its FAT16-only fields are zero.
        let type_ok = bs[type_off..type_off + 3] == *b"FAT";
        if fat_size == 0 || !(type_ok || (fat32 && root_entries == 0)) {
            return None;
        }
        let label = if bs[sig_off] == 0x29 {
            clean_label(&bs[label_off..label_off + 11])
        } else {
            None
        };
        Some(Bpb {
            bytes_per_sector,
            sectors_per_cluster,
            reserved,
            fats,
            root_entries,
            fat_size,
            root_cluster: fat32.then(|| u32at(44)),
            label,
        })
    }
}

fn clean_label(raw: &[u8]) -> Option<String> {
    let s: String = raw.iter().map(|&b| b as char).collect();
    let s = s.trim_end_matches([' ', '\0']).to_string();
    (!s.is_empty() && s != "NO NAME").then_some(s)
}

/// Looks for the volume-label entry in the root directory (first cluster on FAT32).
fn fat_root_label<R: Read + Seek>(f: &mut R, p: &Partition, b: &Bpb) -> Result<Option<String>> {
    let bps = b.bytes_per_sector;
    let fat_area = b.reserved + b.fats * b.fat_size;
    let (off, len) = match b.root_cluster {
        None => (fat_area * bps, b.root_entries * 32),
        Some(c) => {
            let root_dir_sectors = (b.root_entries * 32).div_ceil(bps);
            let data = fat_area + root_dir_sectors;
            let sector = data + c.saturating_sub(2) * b.sectors_per_cluster;
            (sector * bps, b.sectors_per_cluster * bps)
        }
    };
    if len == 0 || off + len > p.size {
        return Ok(None);
    }
    let mut dir = vec![0u8; len.min(1 << 20) as usize];
    read_at(f, p.start + off, &mut dir)?;
    for e in dir.chunks_exact(32) {
        match e[0] {
            0x00 => break,
            0xE5 => continue,
            _ => {}
        }
        let attr = e[11];
        if attr & 0x0F == 0x0F {
            continue; // long file name entry
        }
        if attr & 0x08 != 0 {
            return Ok(clean_label(&e[..11]));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_formatting_is_mixed_endian() {
        // EFI System Partition type GUID as stored on disk.
        let esp = [
            0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
            0xC9, 0x3B,
        ];
        assert_eq!(guid_string(&esp), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        let mut u = [0u8; 16];
        u[0] = 0x12;
        u[15] = 0xab;
        assert_eq!(uuid_string(&u), "12000000-0000-0000-0000-0000000000ab");
    }

    #[test]
    fn labels_are_trimmed_and_no_name_ignored() {
        assert_eq!(clean_label(b"SYSTEM-BOOT"), Some("SYSTEM-BOOT".into()));
        assert_eq!(clean_label(b"bootfs     "), Some("bootfs".into()));
        assert_eq!(clean_label(b"NO NAME    "), None);
        assert_eq!(clean_label(b"           "), None);
    }

    #[test]
    fn garbage_is_not_fat() {
        let mut bs = [0u8; 512];
        assert!(Bpb::parse(&bs).is_none());
        bs[510] = 0x55;
        bs[511] = 0xAA;
        bs[0] = 0xEB;
        assert!(Bpb::parse(&bs).is_none(), "zero BPB must be rejected");
    }

    #[test]
    fn overlapping_entries_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.img");
        let mut img = vec![0u8; 8 << 20];
        img[510] = 0x55;
        img[511] = 0xAA;
        // Two entries: sectors 2048..10240 and 8192..16384 share 2048 sectors.
        for (i, (start, len)) in [(2048u32, 8192u32), (8192, 8192)].into_iter().enumerate() {
            let e = 446 + i * 16;
            img[e + 4] = 0x83;
            img[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
            img[e + 12..e + 16].copy_from_slice(&len.to_le_bytes());
        }
        std::fs::write(&p, &img).unwrap();
        let e = format!("{:#}", Disk::read(&p).unwrap_err());
        assert!(e.contains("partitions 1") && e.contains("overlap"), "{e}");
        assert_eq!(
            std::fs::read(&p).unwrap(),
            img,
            "the image is left as it was"
        );
        // Apart, they are accepted.
        img[446 + 16 + 8..446 + 16 + 12].copy_from_slice(&10240u32.to_le_bytes());
        img[446 + 16 + 12..446 + 16 + 16].copy_from_slice(&4096u32.to_le_bytes());
        std::fs::write(&p, &img).unwrap();
        assert_eq!(Disk::read(&p).unwrap().partitions.len(), 2);
    }

    #[test]
    fn non_image_is_rejected_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notadisk.img");
        std::fs::write(&p, vec![7u8; 4096]).unwrap();
        let err = format!("{:#}", Disk::read(&p).unwrap_err());
        assert!(err.contains("notadisk.img"), "{err}");
        assert!(err.contains("0x55AA"), "{err}");
        std::fs::write(&p, b"tiny").unwrap();
        assert!(Disk::read(&p).is_err());
    }
}
