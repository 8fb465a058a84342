//! Copies a host directory tree into an ext4 filesystem inside an image.
//!
//! Usage: write_tree IMAGE OFFSET LEN SRC_DIR DEST_DIR
//! (OFFSET and LEN in bytes: the partition's byte range inside IMAGE).

use pikube_ext4::{Ext4Fs, Meta};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn meta_of(md: &std::fs::Metadata) -> Meta {
    Meta {
        mode: (md.permissions().mode() & 0o7777) as u16,
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime(),
    }
}

fn copy(fs: &mut Ext4Fs, src: &Path, dest: &str, stats: &mut (u64, u64)) -> Result<(), String> {
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .map_err(|e| format!("{}: {e}", src.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", src.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let target = format!("{}/{name}", dest.trim_end_matches('/'));
        let md = std::fs::symlink_metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let m = meta_of(&md);
        if md.is_dir() {
            fs.mkdir_p(&target, &m)
                .map_err(|e| format!("{target}: {e}"))?;
            copy(fs, &p, &target, stats)?;
        } else if md.file_type().is_symlink() {
            let t = std::fs::read_link(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            fs.symlink(&target, &t.to_string_lossy(), &m)
                .map_err(|e| format!("{target}: {e}"))?;
        } else if md.is_file() {
            let mut f = std::fs::File::open(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            fs.write_file(&target, &mut f, md.len(), &m)
                .map_err(|e| format!("{target}: {e}"))?;
            stats.0 += 1;
            stats.1 += md.len();
        }
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: {} IMAGE OFFSET LEN SRC_DIR DEST_DIR", args[0]);
        std::process::exit(2);
    }
    let parse = |s: &str| -> u64 {
        s.parse().unwrap_or_else(|_| {
            eprintln!("not a number: {s}");
            std::process::exit(2)
        })
    };
    let (offset, len) = (parse(&args[2]), parse(&args[3]));
    let t = std::time::Instant::now();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&args[1])
        .unwrap_or_else(|e| {
            eprintln!("{}: {e}", args[1]);
            std::process::exit(1)
        });
    let result = (|| -> Result<(u64, u64), String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut fs = Ext4Fs::open(file, offset, len, now).map_err(|e| e.to_string())?;
        let root_meta = Meta {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
        };
        fs.mkdir_p(&args[5], &root_meta)
            .map_err(|e| e.to_string())?;
        let mut stats = (0, 0);
        copy(&mut fs, Path::new(&args[4]), &args[5], &mut stats)?;
        fs.close().map_err(|e| e.to_string())?;
        Ok(stats)
    })();
    match result {
        Ok((files, bytes)) => {
            let secs = t.elapsed().as_secs_f64();
            println!(
                "wrote {files} files, {bytes} bytes in {secs:.2} s ({:.1} MiB/s, fsync included)",
                bytes as f64 / secs / 1048576.0
            );
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
