//! Growing the last partition of a disk image (MBR or GPT) to the end of an enlarged image.
//!
//! Only the partition table bytes change: the 16-byte MBR entry (and, for GPT, the protective
//! entry), the primary GPT header in LBA 1 and the one changed entry of the primary array. The
//! backup GPT header and array are rewritten at the new end of the disk. Everything else before
//! the first partition (boot code, SPL, U-Boot, ...) is left byte for byte as it was.
//!
//! The partition tables are edited at the byte level rather than re-serialised so that nothing
//! outside those bytes can be touched; an MBR image never receives a GPT.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::protect::{BootArea, check_write};

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
const MBR_TABLE: usize = 446;
const MBR_ENTRY: usize = 16;
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";

/// How the last partition changed, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionGrowth {
    pub number: u32,
    pub old_start: u64,
    pub old_size: u64,
    pub new_size: u64,
}

/// CRC-32 (IEEE 802.3, reflected), as used by GPT headers and entry arrays.
/// CRC-32 (IEEE) of the GPT header and entry array.
fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}
fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

fn read_at(file: &File, path: &Path, pos: u64, len: usize, what: &str) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, pos).with_context(|| {
        format!(
            "{}: reading {what} at byte {pos} failed (is the image truncated?)",
            path.display()
        )
    })?;
    Ok(buf)
}

fn write_at(file: &File, path: &Path, pos: u64, data: &[u8], what: &str) -> Result<()> {
    file.write_all_at(data, pos)
        .with_context(|| format!("{}: writing {what} at byte {pos}", path.display()))
}

/// CHS address for an MBR entry; addresses past cylinder 1023 use the conventional maximum.
fn chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    let cyl = lba / (HEADS * SECTORS);
    if cyl > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let head = (lba / SECTORS) % HEADS;
    let sector = lba % SECTORS + 1;
    [
        head as u8,
        (sector as u8) | (((cyl >> 2) & 0xC0) as u8),
        (cyl & 0xFF) as u8,
    ]
}

/// Extends the image file to `new_disk_size` bytes (sparse) and grows its last partition (by
/// start offset), which must be `partition_number`, to the end of the disk: aligned down to
/// 1 MiB for MBR, up to the last usable LBA for GPT (whose backup header and entry array move to
/// the new end of the disk).
///
/// Refuses, leaving the file unchanged, when the last partition is another one, when the new
/// size is smaller than the image or the partition, or when the partition table is not a
/// well-formed MBR or GPT.
pub fn grow_last_partition(
    path: &Path,
    new_disk_size: u64,
    partition_number: u32,
) -> Result<PartitionGrowth> {
    grow_last_partition_around(path, new_disk_size, partition_number, &[])
}

/// [`grow_last_partition`], refusing (with the file unchanged) when a byte it would write, or
/// the grown partition, lies in one of the `protected` boot loader areas.
pub fn grow_last_partition_around(
    path: &Path,
    new_disk_size: u64,
    partition_number: u32,
    protected: &[BootArea],
) -> Result<PartitionGrowth> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening disk image {} to grow it", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("reading the size of {}", path.display()))?
        .len();
    if new_disk_size < len {
        bail!(
            "{}: the requested disk size {new_disk_size} bytes is smaller than the image ({len} bytes); shrinking is not supported, ask for at least {len} bytes",
            path.display()
        );
    }
    let mbr = read_at(&file, path, 0, SECTOR as usize, "the MBR")?;
    if mbr[510] != 0x55 || mbr[511] != 0xAA {
        bail!(
            "{}: no partition table (sector 0 lacks the 0x55AA signature); this is not a partitioned disk image",
            path.display()
        );
    }
    let protective = (0..4).any(|i| mbr[MBR_TABLE + i * MBR_ENTRY + 4] == 0xEE);
    if protective {
        grow_gpt(
            &file,
            path,
            &mbr,
            len,
            new_disk_size,
            partition_number,
            protected,
        )
    } else {
        grow_mbr(
            &file,
            path,
            &mbr,
            new_disk_size,
            partition_number,
            protected,
        )
    }
}

fn grow_mbr(
    file: &File,
    path: &Path,
    mbr: &[u8],
    new_disk_size: u64,
    partition_number: u32,
    protected: &[BootArea],
) -> Result<PartitionGrowth> {
    struct Entry {
        index: usize,
        kind: u8,
        start: u64,
        sectors: u64,
    }
    let entries: Vec<Entry> = (0..4)
        .map(|i| {
            let e = &mbr[MBR_TABLE + i * MBR_ENTRY..MBR_TABLE + (i + 1) * MBR_ENTRY];
            Entry {
                index: i,
                kind: e[4],
                start: u64::from(le32(e, 8)),
                sectors: u64::from(le32(e, 12)),
            }
        })
        .filter(|e| e.kind != 0 && e.sectors != 0)
        .collect();
    if entries.is_empty() {
        bail!("{}: the MBR has no partitions", path.display());
    }
    if let Some(ext) = entries
        .iter()
        .find(|e| matches!(e.kind, 0x05 | 0x0F | 0x85))
    {
        bail!(
            "{}: partition {} is an extended partition; growing logical partitions is not supported",
            path.display(),
            ext.index + 1
        );
    }
    let last = entries
        .iter()
        .max_by_key(|e| e.start)
        .expect("at least one entry");
    let number = last.index as u32 + 1;
    if number != partition_number {
        bail!(
            "{}: the last partition on the disk is partition {number}, not partition {partition_number}; only the last partition can grow",
            path.display()
        );
    }
    // The MBR cannot describe sectors past 2^32; stay below that, on a MiB boundary.
    let mbr_limit = (u64::from(u32::MAX) + 1) * SECTOR / MIB * MIB;
    let end_bytes = (new_disk_size / MIB * MIB).min(mbr_limit);
    let end_sector = end_bytes / SECTOR;
    let old_end = last.start + last.sectors;
    if end_sector < old_end {
        bail!(
            "{}: growing partition {number} to end at byte {end_bytes} would make it smaller than it is (it ends at byte {}); ask for a larger disk size",
            path.display(),
            old_end * SECTOR
        );
    }
    let new_sectors = end_sector - last.start;
    let new_sectors32 = u32::try_from(new_sectors).with_context(|| {
        format!(
            "{}: {new_sectors} sectors do not fit an MBR entry",
            path.display()
        )
    })?;

    let pos = MBR_TABLE + last.index * MBR_ENTRY;
    let guard = |start: u64, end: u64, what: &str| {
        check_write(
            protected,
            start,
            end,
            &format!("{}: {what}", path.display()),
        )
    };
    guard(
        pos as u64,
        (pos + MBR_ENTRY) as u64,
        "the MBR partition entry",
    )?;
    guard(
        last.start * SECTOR,
        end_sector * SECTOR,
        &format!("grown partition {number}"),
    )?;

    file.set_len(new_disk_size.max(file_len(file, path)?))
        .with_context(|| {
            format!(
                "{}: extending the image to {new_disk_size} bytes (is the disk full?)",
                path.display()
            )
        })?;
    let mut entry = mbr[pos..pos + MBR_ENTRY].to_vec();
    entry[5..8].copy_from_slice(&chs(end_sector - 1));
    put32(&mut entry, 12, new_sectors32);
    write_at(file, path, pos as u64, &entry, "the MBR partition entry")?;
    file.sync_data()
        .with_context(|| format!("{}: flushing the partition table", path.display()))?;
    Ok(PartitionGrowth {
        number,
        old_start: last.start * SECTOR,
        old_size: last.sectors * SECTOR,
        new_size: new_sectors * SECTOR,
    })
}

fn file_len(file: &File, path: &Path) -> Result<u64> {
    Ok(file
        .metadata()
        .with_context(|| format!("reading the size of {}", path.display()))?
        .len())
}

/// GPT header field offsets.
const H_SIZE: usize = 12;
const H_CRC: usize = 16;
const H_MY_LBA: usize = 24;
const H_ALT_LBA: usize = 32;
const H_FIRST_USABLE: usize = 40;
const H_LAST_USABLE: usize = 48;
const H_ENTRIES_LBA: usize = 72;
const H_NUM_ENTRIES: usize = 80;
const H_ENTRY_SIZE: usize = 84;
const H_ENTRIES_CRC: usize = 88;

fn header_crc(h: &[u8]) -> u32 {
    let mut copy = h.to_vec();
    put32(&mut copy, H_CRC, 0);
    crc32(&copy)
}

fn grow_gpt(
    file: &File,
    path: &Path,
    mbr: &[u8],
    len: u64,
    new_disk_size: u64,
    partition_number: u32,
    protected: &[BootArea],
) -> Result<PartitionGrowth> {
    let lba1 = read_at(file, path, SECTOR, SECTOR as usize, "the GPT header")?;
    if &lba1[..8] != GPT_SIGNATURE {
        bail!(
            "{}: the MBR announces a GPT (type 0xEE) but LBA 1 holds no GPT header",
            path.display()
        );
    }
    let hsize = le32(&lba1, H_SIZE) as usize;
    if !(92..=SECTOR as usize).contains(&hsize) {
        bail!("{}: GPT header size {hsize} is invalid", path.display());
    }
    let mut header = lba1[..hsize].to_vec();
    if header_crc(&header) != le32(&header, H_CRC) {
        bail!(
            "{}: the primary GPT header checksum is wrong; repair the table (e.g. `sgdisk -v`/`gdisk`) before growing",
            path.display()
        );
    }
    if le64(&header, H_MY_LBA) != 1 {
        bail!(
            "{}: the primary GPT header does not point to itself",
            path.display()
        );
    }
    let entries_lba = le64(&header, H_ENTRIES_LBA);
    let count = le32(&header, H_NUM_ENTRIES) as usize;
    let esize = le32(&header, H_ENTRY_SIZE) as usize;
    if esize < 128 || !esize.is_multiple_of(8) || count == 0 || count * esize > 4 * MIB as usize {
        bail!(
            "{}: GPT entry array of {count} x {esize} bytes is invalid",
            path.display()
        );
    }
    let array_bytes = count * esize;
    if entries_lba < 2 || entries_lba >= len / SECTOR {
        bail!(
            "{}: the GPT entry array at LBA {entries_lba} lies outside the image",
            path.display()
        );
    }
    let mut array = read_at(
        file,
        path,
        entries_lba * SECTOR,
        array_bytes,
        "the GPT entry array",
    )?;
    if crc32(&array) != le32(&header, H_ENTRIES_CRC) {
        bail!(
            "{}: the GPT entry array checksum is wrong; repair the table before growing",
            path.display()
        );
    }
    let used: Vec<(usize, u64, u64)> = (0..count)
        .filter_map(|i| {
            let e = &array[i * esize..(i + 1) * esize];
            if e[..16].iter().all(|&b| b == 0) {
                None
            } else {
                Some((i, le64(e, 32), le64(e, 40)))
            }
        })
        .collect();
    let Some(&(index, first, last)) = used.iter().max_by_key(|e| e.1) else {
        bail!("{}: the GPT has no partitions", path.display());
    };
    let number = index as u32 + 1;
    if number != partition_number {
        bail!(
            "{}: the last partition on the disk is partition {number}, not partition {partition_number}; only the last partition can grow",
            path.display()
        );
    }
    let array_sectors = (array_bytes as u64).div_ceil(SECTOR);
    let old_alt = le64(&lba1, H_ALT_LBA);
    let disk_sectors = new_disk_size / SECTOR;
    let backup_lba = disk_sectors - 1;
    let backup_array_lba = backup_lba
        .checked_sub(array_sectors)
        .context("disk too small")?;
    let last_usable = backup_array_lba - 1;
    let old_last_usable = le64(&header, H_LAST_USABLE);
    if last_usable < old_last_usable || last_usable < last || last < first {
        bail!(
            "{}: a disk of {new_disk_size} bytes would leave less room than partition {number} already has; ask for a larger size",
            path.display()
        );
    }
    if entries_lba + array_sectors > le64(&header, H_FIRST_USABLE) {
        bail!(
            "{}: the primary GPT entry array overlaps the first usable LBA",
            path.display()
        );
    }

    // The new tables, computed before anything is written.
    let epos = index * esize;
    put64(&mut array[epos..epos + esize], 40, last_usable);
    let array_crc = crc32(&array);
    put64(&mut header, H_ALT_LBA, backup_lba);
    put64(&mut header, H_LAST_USABLE, last_usable);
    put32(&mut header, H_ENTRIES_CRC, array_crc);
    let crc = header_crc(&header);
    put32(&mut header, H_CRC, crc);
    let mut backup = header.clone();
    put64(&mut backup, H_MY_LBA, backup_lba);
    put64(&mut backup, H_ALT_LBA, 1);
    put64(&mut backup, H_ENTRIES_LBA, backup_array_lba);
    let crc = header_crc(&backup);
    put32(&mut backup, H_CRC, crc);
    let mut backup_sector = vec![0u8; SECTOR as usize];
    backup_sector[..hsize].copy_from_slice(&backup);

    // The old backup header, if it sits at the old end of the disk, is stale from now on.
    let old_backup_valid = old_alt > last
        && old_alt != backup_lba
        && (old_alt + 1) * SECTOR <= len
        && read_at(file, path, old_alt * SECTOR, 8, "the old backup GPT header")? == GPT_SIGNATURE;

    // Protective MBR entry that covered the whole old disk: make it cover the new one.
    let mut pmbr_update = None;
    for i in 0..4 {
        let pos = MBR_TABLE + i * MBR_ENTRY;
        let e = &mbr[pos..pos + MBR_ENTRY];
        // It covered the whole disk as the file or as the old GPT saw it.
        let size = u64::from(le32(e, 12));
        let covered_all = size == (len / SECTOR - 1).min(u64::from(u32::MAX))
            || size == old_alt.min(u64::from(u32::MAX));
        if e[4] == 0xEE && le32(e, 8) == 1 && covered_all {
            let mut ne = e.to_vec();
            let sectors = (disk_sectors - 1).min(u64::from(u32::MAX));
            put32(&mut ne, 12, sectors as u32);
            ne[5..8].copy_from_slice(&chs(sectors));
            pmbr_update = Some((pos, ne));
        }
    }

    // Every byte about to be written, and the grown partition, stay out of the boot loader.
    let guard = |start: u64, end: u64, what: &str| {
        check_write(
            protected,
            start,
            end,
            &format!("{}: {what}", path.display()),
        )
    };
    guard(
        first * SECTOR,
        (last_usable + 1) * SECTOR,
        &format!("grown partition {number}"),
    )?;
    guard(
        backup_array_lba * SECTOR,
        backup_array_lba * SECTOR + array.len() as u64,
        "the backup GPT entry array",
    )?;
    guard(
        backup_lba * SECTOR,
        (backup_lba + 1) * SECTOR,
        "the backup GPT header",
    )?;
    guard(
        entries_lba * SECTOR + epos as u64,
        entries_lba * SECTOR + (epos + esize) as u64,
        "the GPT partition entry",
    )?;
    guard(SECTOR, SECTOR + hsize as u64, "the primary GPT header")?;
    if let Some((pos, e)) = &pmbr_update {
        guard(
            *pos as u64,
            (*pos + e.len()) as u64,
            "the protective MBR entry",
        )?;
    }
    if old_backup_valid {
        guard(
            old_alt * SECTOR,
            (old_alt + 1) * SECTOR,
            "the old backup GPT header",
        )?;
    }

    file.set_len(new_disk_size.max(len)).with_context(|| {
        format!(
            "{}: extending the image to {new_disk_size} bytes (is the disk full?)",
            path.display()
        )
    })?;
    write_at(
        file,
        path,
        backup_array_lba * SECTOR,
        &array,
        "the backup GPT entry array",
    )?;
    write_at(
        file,
        path,
        backup_lba * SECTOR,
        &backup_sector,
        "the backup GPT header",
    )?;
    write_at(
        file,
        path,
        entries_lba * SECTOR + epos as u64,
        &array[epos..epos + esize],
        "the GPT partition entry",
    )?;
    write_at(file, path, SECTOR, &header, "the primary GPT header")?;
    if let Some((pos, e)) = pmbr_update {
        write_at(file, path, pos as u64, &e, "the protective MBR entry")?;
    }
    if old_backup_valid {
        write_at(
            file,
            path,
            old_alt * SECTOR,
            &[0u8; SECTOR as usize],
            "the old backup GPT header",
        )?;
    }
    file.sync_data()
        .with_context(|| format!("{}: flushing the partition table", path.display()))?;
    Ok(PartitionGrowth {
        number,
        old_start: first * SECTOR,
        old_size: (last - first + 1) * SECTOR,
        new_size: (last_usable - first + 1) * SECTOR,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_reference_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn chs_encoding() {
        assert_eq!(chs(0), [0, 1, 0]);
        assert_eq!(chs(2048), [32, 33, 0]);
        // Cylinder 300: high bits of the cylinder go to the top of the sector byte.
        let lba = 300 * 255 * 63;
        assert_eq!(chs(lba), [0, 1 | 0x40, (300 & 0xFF) as u8]);
        assert_eq!(chs(1 << 30), [0xFE, 0xFF, 0xFF]);
    }

    fn temp_image(len: u64) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk.img");
        let f = File::create(&p).unwrap();
        f.set_len(len).unwrap();
        (d, p)
    }

    #[test]
    fn mbr_round_trip_with_mbrman() {
        let (_d, p) = temp_image(64 * MIB);
        {
            let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
            let mut mbr = mbrman::MBR::new_from(&mut f, 512, [1, 2, 3, 4]).unwrap();
            mbr[1] = mbrman::MBRPartitionEntry {
                boot: mbrman::BOOT_ACTIVE,
                first_chs: mbrman::CHS::empty(),
                sys: 0x0c,
                last_chs: mbrman::CHS::empty(),
                starting_lba: 2048,
                sectors: 16 * 2048,
            };
            mbr[2] = mbrman::MBRPartitionEntry {
                boot: mbrman::BOOT_INACTIVE,
                first_chs: mbrman::CHS::empty(),
                sys: 0x83,
                last_chs: mbrman::CHS::empty(),
                starting_lba: 17 * 2048,
                sectors: 40 * 2048,
            };
            mbr.write_into(&mut f).unwrap();
        }
        let err = grow_last_partition(&p, 128 * MIB, 1).unwrap_err();
        assert!(format!("{err:#}").contains("partition 2"), "{err:#}");
        let g = grow_last_partition(&p, 128 * MIB + 1000, 2).unwrap();
        assert_eq!(g.old_start, 17 * MIB);
        assert_eq!(g.new_size, (128 - 17) * MIB);
        let mut f = File::open(&p).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 128 * MIB + 1000);
        let mbr = mbrman::MBR::read_from(&mut f, 512).unwrap();
        assert_eq!(mbr[2].sectors, 111 * 2048);
        assert_eq!(mbr[1].sectors, 16 * 2048);
    }

    #[test]
    fn gpt_round_trip_with_gptman() {
        let (_d, p) = temp_image(64 * MIB);
        {
            let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
            let mut gpt = gptman::GPT::new_from(&mut f, 512, [7; 16]).unwrap();
            gpt[1] = gptman::GPTPartitionEntry {
                partition_type_guid: [0x11; 16],
                unique_partition_guid: [0x22; 16],
                starting_lba: 2048,
                ending_lba: 20479,
                attribute_bits: 0,
                partition_name: "root".into(),
            };
            gpt.write_into(&mut f).unwrap();
            gptman::GPT::write_protective_mbr_into(&mut f, 512).unwrap();
        }
        let g = grow_last_partition(&p, 256 * MIB, 1).unwrap();
        assert_eq!(g.old_size, (20480 - 2048) * 512);
        let mut f = File::open(&p).unwrap();
        let gpt = gptman::GPT::find_from(&mut f).unwrap();
        let sectors = 256 * MIB / 512;
        assert_eq!(gpt.header.backup_lba, sectors - 1);
        assert_eq!(gpt.header.last_usable_lba, sectors - 34);
        assert_eq!(gpt[1].ending_lba, sectors - 34);
        assert_eq!(g.new_size, (sectors - 34 - 2048 + 1) * 512);
        // The backup header at the new end is valid on its own.
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::Start((sectors - 1) * 512)).unwrap();
        let backup = gptman::GPTHeader::read_from(&mut f).unwrap();
        assert_eq!(backup.primary_lba, sectors - 1);
        assert_eq!(backup.backup_lba, 1);
    }

    #[test]
    fn protected_areas_stay_untouched_or_growth_is_refused() {
        let area = |name: &str, offset: u64, size: u64| BootArea {
            name: name.into(),
            offset,
            size,
        };
        // Allwinner: MBR, SPL from 8 KiB up to the partition at 4 MiB.
        let (_d, p) = temp_image(16 * MIB);
        {
            let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
            let mut mbr = mbrman::MBR::new_from(&mut f, 512, [1, 2, 3, 4]).unwrap();
            mbr[1] = mbrman::MBRPartitionEntry {
                boot: mbrman::BOOT_INACTIVE,
                first_chs: mbrman::CHS::empty(),
                sys: 0x83,
                last_chs: mbrman::CHS::empty(),
                starting_lba: 8192,
                sectors: 12 * 2048,
            };
            mbr.write_into(&mut f).unwrap();
        }
        let spl = [area("spl", 8192, 4 * MIB - 8192)];
        let before = std::fs::read(&p).unwrap();
        // An area the grown partition would cover, or the table entry itself: refused.
        for bad in [area("tail", 20 * MIB, 4096), area("mbr", 400, 100)] {
            let e = grow_last_partition_around(&p, 32 * MIB, 1, &[spl[0].clone(), bad.clone()])
                .unwrap_err();
            assert!(
                format!("{e:#}").contains(&format!("'{}'", bad.name)),
                "{e:#}"
            );
            assert_eq!(std::fs::read(&p).unwrap(), before, "left as it was");
        }
        grow_last_partition_around(&p, 32 * MIB, 1, &spl).unwrap();

        // Rockchip: GPT; an area where the primary header lives is refused.
        let (_d, p) = temp_image(64 * MIB);
        {
            let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
            let mut gpt = gptman::GPT::new_from(&mut f, 512, [7; 16]).unwrap();
            gpt[1] = gptman::GPTPartitionEntry {
                partition_type_guid: [0x11; 16],
                unique_partition_guid: [0x22; 16],
                starting_lba: 32768,
                ending_lba: 100_000,
                attribute_bits: 0,
                partition_name: "rootfs".into(),
            };
            gpt.write_into(&mut f).unwrap();
            gptman::GPT::write_protective_mbr_into(&mut f, 512).unwrap();
        }
        let before = std::fs::read(&p).unwrap();
        let e =
            grow_last_partition_around(&p, 128 * MIB, 1, &[area("lba1", 512, 512)]).unwrap_err();
        assert!(format!("{e:#}").contains("primary GPT header"), "{e:#}");
        assert_eq!(std::fs::read(&p).unwrap(), before);
        let rk = [
            area("idbloader", 64 * 512, 16320 * 512),
            area("u-boot.itb", 16384 * 512, 16384 * 512),
        ];
        grow_last_partition_around(&p, 128 * MIB, 1, &rk).unwrap();
        let after = std::fs::read(&p).unwrap();
        assert!(after[64 * 512..32768 * 512] == before[64 * 512..32768 * 512]);
    }

    #[test]
    fn refuses_disk_without_partition_table() {
        let (_d, p) = temp_image(MIB);
        let err = grow_last_partition(&p, 2 * MIB, 1).unwrap_err();
        assert!(format!("{err:#}").contains("no partition table"));
        assert_eq!(std::fs::metadata(&p).unwrap().len(), MIB);
    }
}
