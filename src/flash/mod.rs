//! `flash`: writing node images to SD cards and USB disks.
//!
//! The target is classified from sysfs ([`device`]) and refused unless it is safe to
//! overwrite; the image's data ranges ([`source`]) are written with direct I/O, the first MiB
//! last ([`write`]); then every range is read back from the device and its SHA-256 compared
//! ([`verify`]). `--all --wait` flashes the nodes of an inventory one card at a time.

pub mod device;
pub mod source;
pub mod verify;
pub mod write;

use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::progress::{Progress, human_bytes};
use device::{Allow, Disk, Host, TargetKind};
use source::Image;
use write::Target;

/// What may be written and how.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Write without asking.
    pub yes: bool,
    pub allow: Allow,
    /// Write a regular file (tests, making image files).
    pub allow_file: bool,
    /// Read everything back and compare.
    pub verify: bool,
    /// The block map, instead of the one beside the image.
    pub bmap: Option<PathBuf>,
}

/// What one flash did (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct FlashReport {
    pub device: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub image: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bmap: Option<PathBuf>,
    pub image_size: u64,
    /// Bytes written to the device.
    pub written: u64,
    pub verified: bool,
    pub seconds: f64,
}

impl FlashReport {
    pub fn render(&self) -> String {
        let what = match &self.node {
            Some(n) => format!("node {n} ({})", self.image.display()),
            None => self.image.display().to_string(),
        };
        format!(
            "{} now holds {what}: {} of {} written in {:.1} s{}\n",
            self.device.display(),
            human_bytes(self.written),
            human_bytes(self.image_size),
            self.seconds,
            if self.verified {
                ", verified"
            } else {
                ", not verified (--no-verify)"
            }
        )
    }
}

/// Interrupt handling: a single flash stops at once (the card is left without its first MiB,
/// so it does not boot); `--all` finishes the card being written and stops before the next.
static BATCH: AtomicBool = AtomicBool::new(false);
static WRITING: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);
static DEVICE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// What Ctrl-C does now.
pub enum Interrupt {
    /// Nothing flashes: exit (the message says what was left behind, if anything).
    Exit(Option<String>),
    /// `--all` finishes the current card first.
    Deferred(String),
}

/// Called from the Ctrl-C handler.
pub fn interrupt() -> Interrupt {
    let device = DEVICE.lock().ok().and_then(|d| d.clone());
    let writing = WRITING.load(Ordering::SeqCst);
    if BATCH.load(Ordering::SeqCst) && writing && !STOP.swap(true, Ordering::SeqCst) {
        return Interrupt::Deferred(
            "interrupt: finishing this card, then stopping (press Ctrl-C again to stop at once)"
                .to_string(),
        );
    }
    match (writing, device) {
        (true, Some(d)) => Interrupt::Exit(Some(format!(
            "interrupted: {} is incomplete and does not boot (its first MiB is written last); flash it again",
            d.display()
        ))),
        _ => Interrupt::Exit(None),
    }
}

struct Writing;

impl Writing {
    fn start(device: &Path) -> Writing {
        if let Ok(mut d) = DEVICE.lock() {
            *d = Some(device.to_path_buf());
        }
        WRITING.store(true, Ordering::SeqCst);
        Writing
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        WRITING.store(false, Ordering::SeqCst);
    }
}

/// The image of `node` in the output directory `out`: the raw image its manifest lists,
/// else its `.img.zst`, else its `.img.xz` (without a manifest: the newest of them).
pub fn node_image(out: &Path, node: &str) -> Result<PathBuf> {
    let kinds = [".img", ".img.zst", ".img.xz"];
    let manifest = out.join(format!("{node}.manifest.json"));
    if let Ok(text) = std::fs::read_to_string(&manifest) {
        let m = crate::manifest::Manifest::from_json(&text)
            .with_context(|| format!("{} is not a manifest", manifest.display()))?;
        for k in kinds {
            let name = format!("{node}{k}");
            let Some(rec) = m.outputs.iter().find(|o| o.file == name) else {
                continue;
            };
            let p = out.join(&name);
            match std::fs::metadata(&p) {
                Ok(meta) if meta.len() == rec.size => return Ok(p),
                Ok(meta) => bail!(
                    "{} holds {} bytes but its manifest {} says {}: it was changed after the build; build node {node} again",
                    p.display(),
                    meta.len(),
                    manifest.display(),
                    rec.size
                ),
                Err(_) => continue,
            }
        }
    }
    let newest = kinds
        .iter()
        .map(|k| out.join(format!("{node}{k}")))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max_by_key(|(t, _)| *t);
    match newest {
        Some((_, p)) => Ok(p),
        None => bail!(
            "no image of node {node} in {}: build it with `pikube-image build --node {node}`, or pass --out DIR",
            out.display()
        ),
    }
}

/// The partitions line of a disk, for the confirmation.
fn partitions_line(d: &Disk) -> String {
    if d.partitions.is_empty() {
        return "no partitions".to_string();
    }
    d.partitions
        .iter()
        .map(|p| {
            let mounted = match p.mountpoints.is_empty() {
                true => String::new(),
                false => format!(", mounted on {}", p.mountpoints.join(", ")),
            };
            format!("{} {}{mounted}", p.name, human_bytes(p.size))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Asks the user to type the device's name.
fn confirm(device: &Path, name: &str, details: &str, what: &str) -> Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "refusing to write {} without confirmation: standard input is not a terminal; pass --yes to write without asking",
            device.display()
        );
    }
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "about to overwrite {details}\n  it will hold {what}\neverything on {} will be lost. Type its name ({name}) to go on: ",
        device.display()
    );
    let _ = err.flush();
    drop(err);
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let answer = line.trim();
    if answer != name && Path::new(answer) != device {
        bail!(
            "not confirmed ({answer:?} is not {name}): nothing was written to {}",
            device.display()
        );
    }
    Ok(())
}

/// Test hook, read only here: with `PIKUBE_TEST_PAUSE_BEFORE_VERIFY` set, flash says so on
/// stderr once everything is written and waits for a line on standard input before it
/// reads the device back, so a test can change the device in between. Not for users.
fn test_pause_before_verify() {
    if std::env::var_os("PIKUBE_TEST_PAUSE_BEFORE_VERIFY").is_some() {
        eprintln!("test hook: paused before verifying");
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    }
}

/// A file under a path that is the image (or its map) itself.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Writes `image` (of `node`, for messages) to `device` after every check, and reads it back.
pub fn flash(
    host: &Host,
    image: &Path,
    node: Option<&str>,
    device: &Path,
    opts: &Options,
    progress: &Progress,
) -> Result<FlashReport> {
    let started = Instant::now();
    let img = Image::open(image, opts.bmap.as_deref(), progress)?;
    let bmap_path = img.bmap.as_ref().map(|(p, _)| p.clone());
    let plan = img.plan()?;
    let planned = Image::planned_bytes(&plan, img.size);
    let what = {
        let data = match &plan {
            Some(_) => format!("{} of data", human_bytes(planned)),
            None => "data found while decompressing".to_string(),
        };
        match node {
            Some(n) => format!(
                "node {n}: {} ({}, {data})",
                image.display(),
                human_bytes(img.size)
            ),
            None => format!("{} ({}, {data})", image.display(), human_bytes(img.size)),
        }
    };
    let sources: Vec<&Path> = std::iter::once(image).chain(bmap_path.as_deref()).collect();
    let disk = match device::target_kind(host, device)? {
        TargetKind::Disk(name) => {
            let disk = device::disk(host, &name)?;
            let holding: BTreeSet<String> = sources
                .iter()
                .flat_map(|p| device::disks_holding(host, p))
                .collect();
            device::check(&disk, img.size, &holding, opts.allow)?;
            Some(disk)
        }
        TargetKind::File => {
            if !opts.allow_file {
                bail!(
                    "refusing to write {}: it is not a block device but a regular file (or nothing yet); pass --allow-file to write an image file",
                    device.display()
                );
            }
            if let Some(s) = sources.iter().find(|s| same_file(s, device)) {
                bail!(
                    "refusing to write {}: it is {}, which is being flashed",
                    device.display(),
                    s.display()
                );
            }
            None
        }
    };
    if !opts.yes {
        let (name, details) = match &disk {
            Some(d) => (
                d.name.clone(),
                format!("{}\n  partitions: {}", d.describe(), partitions_line(d)),
            ),
            None => (
                device
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                format!("the file {}", device.display()),
            ),
        };
        confirm(device, &name, &details, &what)?;
    }
    if let Some(d) = disk.as_ref().filter(|d| !d.all_mountpoints().is_empty()) {
        device::unmount_all(d)?;
        progress.message(&format!("unmounted {}", d.all_mountpoints().join(", ")));
    }
    let mut target = match &disk {
        Some(_) => Target::open_disk(device)?,
        None => Target::open_file(device)?,
    };
    if target.is_block {
        if target.read_only() {
            bail!("refusing to write {}: it is read-only", device.display());
        }
        let size = target.size()?;
        if size < img.size {
            bail!(
                "refusing to write {}: it holds {size} bytes but the image needs {}; use a larger card",
                device.display(),
                img.size
            );
        }
    } else {
        target.grow_file(img.size)?;
    }
    let short = device
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let guard = Writing::start(device);
    let task = progress.task(&format!("write {short}"), Some(planned));
    let t0 = Instant::now();
    let written = write::write(&img, plan, &mut target, opts.verify, &task)?;
    task.finish(&rate(written.bytes, t0));
    target.reread_partitions();
    drop(guard);
    if opts.verify {
        test_pause_before_verify();
        let total: u64 = written.extents.iter().map(|e| e.len()).sum();
        let task = progress.task(&format!("verify {short}"), Some(total));
        let t0 = Instant::now();
        if let Some(i) = verify::verify(&mut target, &written.extents, &task)? {
            let m = verify::locate(&mut target, &img, &written.extents[i])?;
            task.finish("FAILED");
            let range = format!("bytes {}..{}", m.extent.start, m.extent.end);
            if m.image_differs_from_map {
                bail!(
                    "verification failed: {} does not match its block map {} in {range}: the image or the map is damaged; build it again",
                    image.display(),
                    bmap_path.as_deref().unwrap_or(Path::new("?")).display()
                );
            }
            let at = match m.byte {
                Some(b) => format!("first at byte {b}, in the range of {range}"),
                None => format!("in the range of {range}"),
            };
            bail!(
                "verification failed: {} reads back different from the image, {at}; the card may be failing or fake: flash again, or use another card",
                device.display()
            );
        }
        let how = match target.bypasses_cache() {
            true => "read back with direct I/O",
            false => "read back after dropping the page cache",
        };
        task.finish(&format!("{}, every range matches ({how})", rate(total, t0)));
    }
    Ok(FlashReport {
        device: device.to_path_buf(),
        node: node.map(str::to_string),
        image: image.to_path_buf(),
        bmap: bmap_path,
        image_size: img.size,
        written: written.bytes,
        verified: opts.verify,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn rate(bytes: u64, since: Instant) -> String {
    let s = since.elapsed().as_secs_f64().max(1e-3);
    format!(
        "{} in {s:.1} s ({}/s)",
        human_bytes(bytes),
        human_bytes((bytes as f64 / s) as u64)
    )
}

/// Waits until a disk appears that was not in `known` (a card inserted, a USB disk plugged
/// in), polling sysfs every `poll`; `known` follows what is present, so a card taken out and
/// put back counts as new. `None` when `stop` says so.
pub fn wait_for_new_disk(
    host: &Host,
    known: &mut BTreeSet<String>,
    allow_fixed: bool,
    poll: Duration,
    stop: &dyn Fn() -> bool,
) -> Option<String> {
    loop {
        if stop() {
            return None;
        }
        let now = device::present(host, allow_fixed);
        let new = now.difference(known).next().cloned();
        *known = now;
        if let Some(n) = new {
            return Some(n);
        }
        std::thread::sleep(poll);
    }
}

/// How long `--wait` sleeps between looks at sysfs.
pub const POLL: Duration = Duration::from_millis(300);

/// `flash --all --wait`: every node of `nodes` in turn, each on the next card that appears.
/// A card that is refused or fails verification is reported and the node waits for another.
pub fn flash_all(
    host: &Host,
    nodes: &[String],
    out: &Path,
    opts: &Options,
    poll: Duration,
    progress: &Progress,
) -> Result<Vec<FlashReport>> {
    let images: Vec<(String, PathBuf)> = nodes
        .iter()
        .map(|n| node_image(out, n).map(|p| (n.clone(), p)))
        .collect::<Result<_>>()?;
    BATCH.store(true, Ordering::SeqCst);
    let stop = || STOP.load(Ordering::SeqCst);
    let mut known = device::present(host, opts.allow.fixed);
    let mut done = Vec::new();
    for (i, (node, image)) in images.iter().enumerate() {
        loop {
            progress.message(&format!(
                "insert the card for node {node} ({} of {}); Ctrl-C stops",
                i + 1,
                images.len()
            ));
            let Some(name) = wait_for_new_disk(host, &mut known, opts.allow.fixed, poll, &stop)
            else {
                return Ok(done);
            };
            // Let the kernel finish reading the new disk's partitions.
            std::thread::sleep(poll);
            let dev = host.dev.join(&name);
            match flash(host, image, Some(node), &dev, opts, progress) {
                Ok(r) => {
                    progress.message(&format!(
                        "{} now holds node {node}: take it out{}",
                        dev.display(),
                        match images.get(i + 1) {
                            Some((next, _)) => format!(" and insert the card for node {next}"),
                            None => String::new(),
                        }
                    ));
                    done.push(r);
                    break;
                }
                Err(e) => {
                    progress.message(&format!("{} was not flashed: {e:#}", dev.display()));
                }
            }
            if stop() {
                return Ok(done);
            }
        }
        if stop() {
            progress.message(&format!(
                "stopped: {} of {} nodes flashed",
                done.len(),
                images.len()
            ));
            return Ok(done);
        }
    }
    Ok(done)
}

/// A removable disk as `flash --list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub path: PathBuf,
    pub model: String,
    pub size: u64,
    pub transport: device::Transport,
    pub read_only: bool,
    pub mounted: bool,
    pub mountpoints: Vec<String>,
}

pub fn list(host: &Host) -> Result<Vec<Listed>> {
    Ok(device::removable_disks(host)?
        .into_iter()
        .map(|d| Listed {
            mountpoints: d.all_mountpoints(),
            mounted: !d.all_mountpoints().is_empty(),
            path: d.path,
            model: d.model,
            size: d.size,
            transport: d.transport,
            read_only: d.read_only,
        })
        .collect())
}

pub fn render_list(disks: &[Listed]) -> String {
    if disks.is_empty() {
        return "no removable disks (insert a card or plug in a USB disk)\n".to_string();
    }
    let mut s = format!(
        "{:<16} {:<28} {:>10}  {:<9} {}\n",
        "DEVICE", "MODEL", "SIZE", "TRANSPORT", "MOUNTED"
    );
    for d in disks {
        s.push_str(&format!(
            "{:<16} {:<28} {:>10}  {:<9} {}\n",
            d.path.display(),
            d.model,
            human_bytes(d.size),
            d.transport.name(),
            match d.mounted {
                true => d.mountpoints.join(", "),
                false => "no".to_string(),
            }
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::device::fake::FakeHost;
    use super::*;

    #[test]
    fn waiting_sees_a_card_appear() {
        let f = FakeHost::new();
        f.add_disk("platform/mmc0", "mmcblk0", 0, false);
        let host = f.host.clone();
        let mut known = device::present(&host, false);
        assert!(known.is_empty());
        let stop = AtomicBool::new(false);
        let first = std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                wait_for_new_disk(&host, &mut known, false, Duration::from_millis(10), &|| {
                    stop.load(Ordering::SeqCst)
                })
            });
            std::thread::sleep(Duration::from_millis(50));
            // The card goes into the reader.
            f.set("mmcblk0", "size", "4096\n");
            waiter.join().unwrap()
        });
        assert_eq!(first.as_deref(), Some("mmcblk0"));
        // Taken out, then another disk plugged in: that one.
        f.set("mmcblk0", "size", "0\n");
        let again = std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                wait_for_new_disk(&host, &mut known, false, Duration::from_millis(10), &|| {
                    stop.load(Ordering::SeqCst)
                })
            });
            std::thread::sleep(Duration::from_millis(50));
            f.add_disk("usb1/1-1/host3", "sdd", 2048, false);
            waiter.join().unwrap()
        });
        assert_eq!(again.as_deref(), Some("sdd"));
        // A fixed disk appearing is not taken; stop ends the wait.
        let mut known = device::present(&host, false);
        f.add_disk("virtual", "loop9", 2048, false);
        stop.store(true, Ordering::SeqCst);
        assert_eq!(
            wait_for_new_disk(&host, &mut known, false, Duration::from_millis(10), &|| {
                stop.load(Ordering::SeqCst)
            }),
            None
        );
        assert!(!known.contains("loop9"));
    }

    #[test]
    fn a_nodes_image_is_found_by_its_manifest_or_its_age() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let err = node_image(out, "n1").unwrap_err().to_string();
        assert!(err.contains("build --node n1"), "{err}");
        std::fs::write(out.join("n1.img.xz"), b"x").unwrap();
        assert_eq!(node_image(out, "n1").unwrap(), out.join("n1.img.xz"));
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(out.join("n1.img.zst"), b"zz").unwrap();
        assert_eq!(node_image(out, "n1").unwrap(), out.join("n1.img.zst"));
    }
}
