//! Writes files into a FAT filesystem that lives in a byte range of an image file.

use std::io::{self, Read, Seek, Write};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use fatfs::{FileSystem, FsOptions};
use fscommon::BufStream;

use crate::io::Slice;

/// An open FAT filesystem on one partition of `S` (a `&File`, or a [`ReadOnly`] one for
/// inspection). Call [`Fat::close`] after writing to flush FAT tables and FSInfo.
pub struct Fat<S: Read + Write + Seek> {
    fs: FileSystem<BufStream<Slice<S>>>,
    label: String,
}

/// Storage that refuses writes: lets fatfs read an image opened read-only.
pub struct ReadOnly<T>(pub T);

impl<T: Read> Read for ReadOnly<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<T> Write for ReadOnly<T> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the image is open read-only",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<T: Seek> Seek for ReadOnly<T> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

/// Timestamps for new and changed FAT entries: `$SOURCE_DATE_EPOCH` when set (reproducible
/// builds), else the current time, in UTC.
#[derive(Debug)]
struct BuildClock;

static CLOCK: BuildClock = BuildClock;
static EPOCH: OnceLock<i64> = OnceLock::new();

fn build_epoch() -> i64 {
    *EPOCH.get_or_init(crate::build_timestamp)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn fat_datetime(epoch: i64) -> fatfs::DateTime {
    // FAT dates run from 1980 to 2107.
    let epoch = epoch.clamp(315_532_800, 4_354_819_199);
    let (y, m, d) = civil_from_days(epoch.div_euclid(86_400));
    let secs = epoch.rem_euclid(86_400);
    fatfs::DateTime {
        date: fatfs::Date {
            year: y as u16,
            month: m as u16,
            day: d as u16,
        },
        time: fatfs::Time {
            hour: (secs / 3600) as u16,
            min: (secs / 60 % 60) as u16,
            sec: (secs % 60) as u16,
            millis: 0,
        },
    }
}

impl fatfs::TimeProvider for BuildClock {
    fn get_current_date(&self) -> fatfs::Date {
        fat_datetime(build_epoch()).date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        fat_datetime(build_epoch())
    }
}

fn split(path: &str) -> Vec<&str> {
    path.split('/').filter(|c| !c.is_empty()).collect()
}

impl<S: Read + Write + Seek> Fat<S> {
    /// Opens the FAT filesystem at `[start, start+len)` of `storage`. `label` names the
    /// partition in messages.
    pub fn open(storage: S, start: u64, len: u64, label: &str) -> Result<Fat<S>> {
        let slice = Slice::new(storage, start, len)
            .with_context(|| format!("cannot seek to partition '{label}'"))?;
        let fs = FileSystem::new(
            BufStream::new(slice),
            FsOptions::new()
                .update_accessed_date(false)
                .time_provider(&CLOCK),
        )
        .with_context(|| {
            format!("partition '{label}' is not a readable FAT filesystem (run fsck.fat on it)")
        })?;
        let flags = fs
            .read_status_flags()
            .with_context(|| format!("cannot read FAT status of partition '{label}'"))?;
        if flags.io_error() {
            bail!(
                "FAT partition '{label}' recorded disk errors: check it with fsck.fat before building"
            );
        }
        Ok(Fat {
            fs,
            label: label.to_string(),
        })
    }

    /// Reads a file, or `None` when it does not exist.
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let parts = split(path);
        let mut dir = self.fs.root_dir();
        for (i, c) in parts.iter().enumerate() {
            let entry = dir
                .iter()
                .filter_map(|e| e.ok())
                .find(|e| e.file_name().eq_ignore_ascii_case(c));
            let Some(entry) = entry else { return Ok(None) };
            if i + 1 == parts.len() {
                if entry.is_dir() {
                    bail!("{}:{path} is a directory", self.label);
                }
                let mut buf = Vec::new();
                entry
                    .to_file()
                    .read_to_end(&mut buf)
                    .with_context(|| format!("cannot read {}:{path}", self.label))?;
                return Ok(Some(buf));
            }
            if !entry.is_dir() {
                return Ok(None);
            }
            dir = entry.to_dir();
        }
        Ok(None)
    }

    /// Every regular file, as absolute paths (`/overlays/README`), directories first visited
    /// in on-disk order.
    pub fn files(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut stack = vec![(String::new(), self.fs.root_dir())];
        while let Some((prefix, dir)) = stack.pop() {
            for e in dir.iter() {
                let e = e.with_context(|| format!("cannot list {}:{prefix}/", self.label))?;
                let name = e.file_name();
                if name == "."
                    || name == ".."
                    || e.attributes().contains(fatfs::FileAttributes::VOLUME_ID)
                {
                    continue;
                }
                let path = format!("{prefix}/{name}");
                match e.is_dir() {
                    true => stack.push((path, e.to_dir())),
                    false => out.push(path),
                }
            }
        }
        Ok(out)
    }

    /// Creates or replaces `path` with the bytes of `data`. Its directory must exist: new FAT
    /// directories are not created, because fatfs 0.3 writes malformed `.`/`..` entries
    /// (long-name records before them) that fsck.fat rejects.
    pub fn write(&self, path: &str, data: &mut dyn Read) -> Result<u64> {
        let parts = split(path);
        let Some((name, parents)) = parts.split_last() else {
            bail!("cannot write the root directory of {}", self.label);
        };
        let mut dir = self.fs.root_dir();
        for (i, c) in parents.iter().enumerate() {
            dir = dir.open_dir(c).map_err(|_| {
                anyhow::anyhow!(
                    "directory /{} does not exist on FAT partition '{}': files are only written into existing directories of the boot partition",
                    parents[..=i].join("/"),
                    self.label
                )
            })?;
        }
        let mut f = dir
            .create_file(name)
            .with_context(|| format!("cannot create {}:{path}", self.label))?;
        f.truncate()
            .with_context(|| format!("cannot truncate {}:{path}", self.label))?;
        let n = io::copy(data, &mut f).map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::Other || e.to_string().contains("space") {
                " (the FAT partition may be full)"
            } else {
                ""
            };
            anyhow::anyhow!("cannot write {}:{path}{hint}: {e}", self.label)
        })?;
        f.flush()
            .with_context(|| format!("cannot flush {}:{path}", self.label))?;
        Ok(n)
    }

    /// Free bytes on the volume.
    pub fn free_bytes(&self) -> Result<u64> {
        let st = self
            .fs
            .stats()
            .with_context(|| format!("cannot read FAT statistics of {}", self.label))?;
        Ok(st.free_clusters() as u64 * st.cluster_size() as u64)
    }

    /// Flushes FAT tables and FSInfo and clears the dirty flag.
    pub fn close(self) -> Result<()> {
        let label = self.label;
        self.fs
            .unmount()
            .with_context(|| format!("cannot flush FAT partition '{label}'"))
    }
}

impl<S: Read + Write + Seek> crate::op::Tree for Fat<S> {
    fn name(&self) -> &str {
        &self.label
    }

    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>> {
        Fat::read(self, path)
    }

    fn write(
        &mut self,
        path: &str,
        data: &mut dyn Read,
        _: u64,
        _: &crate::op::Meta,
    ) -> Result<u64> {
        Fat::write(self, path, data)
    }

    fn mkdir(&mut self, path: &str, _: &crate::op::Meta) -> Result<()> {
        self.refuse(path)
    }

    fn symlink(&mut self, path: &str, _: &str, _: &crate::op::Meta) -> Result<()> {
        self.refuse(path)
    }

    fn remove(&mut self, path: &str) -> Result<bool> {
        self.refuse(path)
    }
}

impl<S: Read + Write + Seek> Fat<S> {
    /// FAT holds no owners, modes or links: the plans write only regular files there.
    fn refuse<T>(&self, path: &str) -> Result<T> {
        bail!(
            "{}:{path}: FAT partitions hold only regular files written by the plan",
            self.label
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        let dt = fat_datetime(1_700_000_000);
        assert_eq!((dt.date.year, dt.date.month, dt.date.day), (2023, 11, 14));
        assert_eq!((dt.time.hour, dt.time.min, dt.time.sec), (22, 13, 20));
        assert_eq!(fat_datetime(0).date.year, 1980, "clamped to FAT's epoch");
    }

    fn mkfs(dir: &std::path::Path) -> std::path::PathBuf {
        let img = dir.join("fat.img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(64 << 20).unwrap();
        drop(f);
        let st = std::process::Command::new("mkfs.vfat")
            .args(["-F", "32", "-n", "SYSTEM-BOOT"])
            .arg(&img)
            .output()
            .expect("mkfs.vfat runs (install dosfstools)");
        assert!(st.status.success(), "mkfs.vfat failed");
        img
    }

    #[test]
    fn read_only_storage_reads_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let img = mkfs(dir.path());
        let len = std::fs::metadata(&img).unwrap().len();
        {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&img)
                .unwrap();
            let fat = Fat::open(&f, 0, len, "boot").unwrap();
            fat.write("/config.txt", &mut &b"[all]\n"[..]).unwrap();
            fat.close().unwrap();
        }
        let before = std::fs::read(&img).unwrap();
        let f = std::fs::File::open(&img).unwrap();
        let fat = Fat::open(ReadOnly(&f), 0, len, "boot").unwrap();
        assert_eq!(fat.read("/config.txt").unwrap().unwrap(), b"[all]\n");
        assert!(fat.write("/x", &mut &b"1"[..]).is_err());
        drop(fat);
        assert!(
            std::fs::read(&img).unwrap() == before,
            "read-only use changed the image"
        );
    }

    #[test]
    fn write_read_replace_and_fsck() {
        let dir = tempfile::tempdir().unwrap();
        let img = mkfs(dir.path());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        let len = file.metadata().unwrap().len();
        {
            let fat = Fat::open(&file, 0, len, "system-boot").unwrap();
            assert!(fat.read("/user-data").unwrap().is_none());
            fat.write("/user-data", &mut &b"long content here"[..])
                .unwrap();
            fat.write("/user-data", &mut &b"short"[..]).unwrap();
            let e = fat
                .write("/current/cmdline.txt", &mut &b"x\n"[..])
                .unwrap_err();
            assert!(e.to_string().contains("/current does not exist"), "{e}");
            assert_eq!(fat.read("/USER-DATA").unwrap().unwrap(), b"short");
            assert!(fat.free_bytes().unwrap() > 30 << 20);
            fat.close().unwrap();
        }
        let o = std::process::Command::new("fsck.fat")
            .arg("-n")
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "fsck.fat: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let o = std::process::Command::new("mtype")
            .args(["-i"])
            .arg(&img)
            .arg("::user-data")
            .output()
            .expect("mtype (mtools) is installed");
        assert_eq!(o.stdout, b"short");
    }

    /// `mkfs.vfat -F 32` on a 4 MiB partition (the `CIDATA` seed of Ubuntu for Rockchip):
    /// FAT32 by its BPB with only ~8000 clusters. Linux and mtools read it as FAT32; so must
    /// we, and what we write must stay FAT32 for them.
    #[test]
    fn small_fat32_volumes_are_fat32() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("cidata.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let o = std::process::Command::new("mkfs.vfat")
            .args(["-F", "32", "-n", "CIDATA"])
            .arg(&img)
            .output()
            .expect("mkfs.vfat runs (install dosfstools)");
        assert!(o.status.success(), "mkfs.vfat failed");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        {
            let fat = Fat::open(&file, 0, 4 << 20, "CIDATA").unwrap();
            fat.write("/user-data", &mut &b"#cloud-config\n"[..])
                .unwrap();
            fat.write("/meta-data", &mut &vec![b'm'; 70_000][..])
                .unwrap();
            fat.close().unwrap();
        }
        let o = std::process::Command::new("fsck.fat")
            .arg("-nv")
            .arg(&img)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "fsck.fat: {report}");
        assert!(report.contains("32 bit entries"), "still FAT32: {report}");
        // mtools misreads such volumes (it goes by cluster count too), so read back through
        // a fresh open; the Linux kernel's reading is checked by the build tests as root.
        let fat = Fat::open(&file, 0, 4 << 20, "CIDATA").unwrap();
        assert_eq!(fat.read("/meta-data").unwrap().unwrap().len(), 70_000);
    }
}
