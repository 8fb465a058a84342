//! Making one node's image: decompress the base, grow it when the payload does not fit,
//! apply operations, or derive the node from its prepared base through a copy-on-write
//! overlay. The result is a [`BuiltNode`] for the output target.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use super::locale::LocaleCheck;
use super::prepared::Prepared;
use crate::boards::OsImage;
use crate::decompress;
use crate::disk::Disk;
use crate::disk::protect::{self, AreaDigest, BootArea};
use crate::emit::PendingFile;
use crate::fs::Image;
use crate::io::cow::CowImage;
use crate::manifest::{BaseRef, FileRecord, GrowthRecord};
use crate::plan::{Op, Plan};
use crate::progress::{Progress, human_bytes};
use crate::target::{BuiltNode, NodeImage};

pub(super) fn open_rw(path: &Path) -> Result<std::fs::File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// What [`prepare_image`] made: the files it wrote, the growth, and the digests of the boot
/// loader areas as the base image had them.
pub struct PreparedImage {
    pub files: Vec<FileRecord>,
    pub growth: Option<GrowthRecord>,
    pub boot_areas: Vec<AreaDigest>,
}

/// Decompresses `base` into `img`, runs `check` on it as decompressed, and writes `ops` into
/// it, growing it first when all of `room_for` would not fit (by the shortfall plus
/// `margin`). The boot loader `areas` must lie outside every partition, stay out of the
/// growth, and keep every byte.
#[allow(clippy::too_many_arguments)]
pub fn prepare_image(
    base: &Path,
    img: &Path,
    room_for: &[&Op],
    ops: &[&Op],
    os: &OsImage,
    margin: u64,
    check: &dyn Fn(&Path) -> Result<()>,
    progress: &Progress,
) -> Result<PreparedImage> {
    let areas = &os.bootloader;
    decompress::decompress_to(base, img, progress)?;
    check(img)?;
    let mut disk = Disk::read(img)?;
    protect::check_disk(areas, &disk).with_context(|| img.display().to_string())?;
    let file = open_rw(img)?;
    let boot_areas = protect::digests(&file, areas)?;
    let growth = make_room(&file, img, &disk, room_for, areas, margin, progress)?;
    if growth.is_some() {
        disk = Disk::read(img)?;
        protect::check_disk(areas, &disk).with_context(|| img.display().to_string())?;
    }
    let image: Image = Arc::new(file);
    let files = crate::fs::apply(&image, &disk, ops)?;
    protect::verify(&*image, &boot_areas)?;
    crate::boot::check_root(&open_rw(img)?, &disk, os)
        .with_context(|| format!("the boot configuration of {}", img.display()))?;
    Ok(PreparedImage {
        files,
        growth,
        boot_areas,
    })
}

/// What deriving a node needs: its plan, its base image (downloaded) and where output files
/// are made.
pub struct NodeInput<'a> {
    pub plan: &'a Plan,
    pub base_path: &'a Path,
    pub base: BaseRef,
    pub out_dir: &'a Path,
    pub grow_margin: u64,
    /// The inventory's locale, when the base image was not checked for it yet.
    pub locale: Option<LocaleCheck<'a>>,
}

/// One node image. With a prepared base, the node's own ops are written to an overlay on
/// it (the base is shared and never copied for that). Without one (a single node whose base
/// is not cached, or a node whose own files do not fit in the prepared base), the base is
/// decompressed straight into the output with every op applied, which writes the image
/// only once. `overlay` holds the overlay for as long as the returned node lives.
pub fn derive<'a>(
    input: &NodeInput<'_>,
    prepared: Option<&'a Prepared>,
    overlay: &'a mut Option<Arc<CowImage>>,
    progress: &Progress,
) -> Result<BuiltNode<'a>> {
    let plan = input.plan;
    let node_ops = plan.node_ops();
    let built = |files, growth, image| BuiltNode {
        node: plan.node.clone(),
        board: plan.board.clone(),
        role: plan.role,
        base: input.base.clone(),
        files,
        growth,
        image,
        known_host: plan.known_host.clone(),
    };
    if let Some(p) = prepared {
        let o = Arc::new(CowImage::open(&p.path, input.out_dir)?);
        let image: Image = o.clone();
        let disk = Disk::read(&p.path)?;
        if crate::fs::ext4_shortfall(&image, &disk, &node_ops)?.is_empty() {
            let mut files = p.files.clone();
            files.extend(crate::fs::apply(&image, &disk, &node_ops)?);
            protect::verify(&*image, &p.boot_areas)?;
            let o: &'a CowImage = overlay.insert(o);
            return Ok(built(
                files,
                p.growth.clone(),
                NodeImage::Cow {
                    overlay: o,
                    frames: &p.frames,
                },
            ));
        }
        progress.message(&format!(
            "the files of node '{}' do not fit in its prepared base: building it from the base image",
            plan.node
        ));
    }
    let pending = PendingFile::create_private(input.out_dir, &format!("{}.img", plan.node))?;
    let all: Vec<&Op> = plan.ops.iter().collect();
    let PreparedImage {
        mut files,
        growth,
        boot_areas,
    } = prepare_image(
        input.base_path,
        pending.path(),
        &all,
        &plan.shared_ops(),
        &plan.image,
        input.grow_margin,
        &|img| match input.locale {
            Some(c) => c.check(img, plan, &input.base.file),
            None => Ok(()),
        },
        progress,
    )?;
    let disk = Disk::read(pending.path())?;
    let image: Image = Arc::new(open_rw(pending.path())?);
    files.extend(crate::fs::apply(&image, &disk, &node_ops)?);
    protect::verify(&*image, &boot_areas)?;
    // Synced when it gets its final name.
    Ok(built(files, growth, NodeImage::File(pending)))
}

/// Grows the image, its last partition and the ext4 filesystem in it when the plan's payload
/// does not fit, by the shortfall plus `margin`, rounded up to whole MiB.
fn make_room(
    file: &std::fs::File,
    path: &Path,
    disk: &Disk,
    ops: &[&Op],
    areas: &[BootArea],
    margin: u64,
    progress: &Progress,
) -> Result<Option<GrowthRecord>> {
    let image: Image = Arc::new(
        file.try_clone()
            .with_context(|| format!("cannot reopen {}", path.display()))?,
    );
    let short = crate::fs::ext4_shortfall(&image, disk, ops)?;
    let Some(&crate::fs::Shortfall {
        partition: number,
        missing,
        free,
    }) = short.first()
    else {
        return Ok(None);
    };
    let last = disk.last().context("the image has no partitions")?;
    if short.len() > 1 || last.number != number {
        bail!(
            "partition {number} needs {} more but is not the last partition of the image, so it cannot grow: make the payload smaller (overlays, k3s.airgap)",
            human_bytes(missing)
        );
    }
    const MIB: u64 = 1 << 20;
    // The new block groups' own metadata takes part of any growth: ask the filesystem what
    // size leaves the missing bytes free, and grow by at least that (and, as before, by at
    // least the shortfall plus the margin).
    let fs_len =
        pikube_ext4::grow::size_for_free(file, last.start, free + missing).map_err(|e| {
            anyhow::anyhow!(
                "cannot plan the growth of the ext4 filesystem of partition {number}: {e}"
            )
        })?;
    let grow_by = ((missing + margin).div_ceil(MIB) * MIB)
        .max(fs_len.saturating_sub(last.size).div_ceil(MIB) * MIB);
    let old_len = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    let new_len = old_len.div_ceil(MIB) * MIB + grow_by;
    let part = crate::disk::grow::grow_last_partition_around(path, new_len, number, areas)?;
    let now = crate::build_timestamp();
    let fs = pikube_ext4::grow::grow_fs(file, part.old_start, part.new_size, now).map_err(|e| {
        anyhow::anyhow!("cannot grow the ext4 filesystem of partition {number}: {e}")
    })?;
    progress.message(&format!(
        "grew partition {number} from {} to {} ({} to {} block groups) to fit the payload",
        human_bytes(part.old_size),
        human_bytes(part.new_size),
        fs.old_groups,
        fs.new_groups,
    ));
    Ok(Some(GrowthRecord {
        partition: number,
        old_size: part.old_size,
        new_size: part.new_size,
        image_old_size: old_len,
        image_new_size: new_len,
    }))
}
