//! Writing the outputs of a build: the image, its `.sha256` file and the manifest.
//!
//! Every output is first written under a hidden temporary name in the destination
//! directory and renamed into place only once complete and synced, so a build that
//! fails or is interrupted never leaves a file under a final name. A node's files are put
//! in place together ([`Replacement`]): the files that describe others (checksums, the
//! manifest, the directory's `SHA256SUMS` and `known_hosts`) never name a file that is not
//! there as described, wherever the build stops.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::manifest::Manifest;
use crate::progress::Progress;

/// Temporary paths of the running build (partial outputs, prepared bases being made), removed
/// by [`remove_temporaries`] when the build is interrupted.
static TEMPORARIES: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Registers a temporary file or directory to remove if the process is interrupted.
pub fn register_temporary(path: &Path) {
    if let Ok(mut t) = TEMPORARIES.lock() {
        t.push(path.to_path_buf());
    }
}

/// Forgets a temporary that was committed or cleaned up.
pub fn unregister_temporary(path: &Path) {
    if let Ok(mut t) = TEMPORARIES.lock() {
        t.retain(|p| p != path);
    }
}

/// Removes every registered temporary (from a signal handler, before exiting).
pub fn remove_temporaries() {
    if let Ok(mut t) = TEMPORARIES.lock() {
        for p in t.drain(..) {
            let _ = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
}

/// Creates `dir` (and its parents) if missing and makes it 0700, whatever the umask.
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set the mode of {}", dir.display()))
}

/// Refuses an output directory `dir` that is, or lies under, a symbolic link in the path as
/// given. A build writes and replaces files of fixed names there (`known_hosts`,
/// `SHA256SUMS`, images), so a link (say `images -> ~/.ssh`) would replace files elsewhere;
/// a warning would scroll by in a CI log after the harm is done, while naming the real
/// directory, which the error prints, costs one flag.
pub fn refuse_linked_dir(dir: &Path) -> Result<()> {
    let mut ancestors: Vec<&Path> = dir.ancestors().collect();
    ancestors.reverse();
    for p in ancestors.into_iter().filter(|p| !p.as_os_str().is_empty()) {
        let Ok(meta) = fs::symlink_metadata(p) else {
            continue;
        };
        if !meta.file_type().is_symlink() {
            continue;
        }
        let target = fs::read_link(p)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        let fix = match fs::canonicalize(dir) {
            Ok(real) => format!("pass the real directory: --out {}", real.display()),
            Err(_) => format!("{target} does not exist: create it and pass its real path to --out"),
        };
        bail!(
            "output directory {} goes through the symbolic link {} (to {target}): a build replaces files there (known_hosts, SHA256SUMS, images), so it writes only where the real directory is named; {fix}",
            dir.display(),
            p.display()
        );
    }
    Ok(())
}

/// Whether a process with this id still runs.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes leftovers named `.<anything>.<marker>-<pid>` in `dir` whose process is gone (a
/// build killed before it could clean up). Returns what was removed.
pub fn sweep_stale(dir: &Path, marker: &str) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return removed;
    };
    let suffix = format!(".{marker}-");
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            continue;
        }
        let Some(pos) = name.rfind(&suffix) else {
            continue;
        };
        let Ok(pid) = name[pos + suffix.len()..].parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() || alive(pid) {
            continue;
        }
        let p = e.path();
        let ok = if p.is_dir() {
            fs::remove_dir_all(&p).is_ok()
        } else {
            fs::remove_file(&p).is_ok()
        };
        if ok {
            removed.push(p);
        }
    }
    removed
}

/// A file being produced.
///
/// Created as `DIR/.NAME.partial-<pid>`; [`PendingFile::commit`] syncs it and renames it to
/// `DIR/NAME`. Dropping it without committing removes the partial file.
#[derive(Debug)]
pub struct PendingFile {
    dir: PathBuf,
    name: String,
    tmp: PathBuf,
    file: Option<File>,
    committed: bool,
}

impl PendingFile {
    /// A file others may read: mode 0644 (a umask can narrow it, never widen it).
    pub fn create(dir: &Path, name: &str) -> Result<Self> {
        PendingFile::with_mode(dir, name, 0o644)
    }

    /// A file holding secrets (a node image): mode 0600 whatever the umask.
    pub fn create_private(dir: &Path, name: &str) -> Result<Self> {
        PendingFile::with_mode(dir, name, 0o600)
    }

    fn with_mode(dir: &Path, name: &str, mode: u32) -> Result<Self> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            bail!("invalid output file name {name:?}: it must be a plain file name");
        }
        let tmp = dir.join(format!(".{name}.partial-{}", std::process::id()));
        let file = create_new(&tmp, mode)?;
        register_temporary(&tmp);
        Ok(PendingFile {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            tmp,
            file: Some(file),
            committed: false,
        })
    }

    /// Where the content is being written (the temporary name).
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// The final path the file gets on commit.
    pub fn final_path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file is open until commit")
    }

    /// A file others may read holding `bytes`, to be put at `path` on commit.
    pub fn with_bytes(path: &Path, bytes: &[u8]) -> Result<PendingFile> {
        let (dir, name) = split_path(path)?;
        let mut p = PendingFile::create(&dir, &name)?;
        let tmp = p.path().to_path_buf();
        p.file()
            .write_all(bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        Ok(p)
    }

    /// Puts the content on disk (under the temporary name).
    fn sync(&mut self) -> Result<()> {
        let tmp = self.tmp.display().to_string();
        self.file()
            .sync_all()
            .with_context(|| format!("cannot sync {tmp} to disk"))
    }

    /// Syncs the content, renames the file to its final name and syncs the directory.
    pub fn commit(mut self) -> Result<PathBuf> {
        let file = self.file.take().expect("file is open until commit");
        file.sync_all()
            .with_context(|| format!("cannot sync {} to disk", self.tmp.display()))?;
        drop(file);
        let dest = self.final_path();
        fs::rename(&self.tmp, &dest).with_context(|| {
            format!("cannot rename {} to {}", self.tmp.display(), dest.display())
        })?;
        self.committed = true;
        unregister_temporary(&self.tmp);
        // Make the rename itself durable; failing to open a directory for sync is not fatal.
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(dest)
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            self.file.take();
            let _ = fs::remove_file(&self.tmp);
            unregister_temporary(&self.tmp);
        }
    }
}

/// Creates `path` as a new file, never opening what is already there: a file or link left at
/// that name (by a dead process with the same id, or planted) is removed, not written
/// through, and a second one fails. `mode` is the file's mode, which the umask can only
/// narrow.
fn create_new(path: &Path, mode: u32) -> Result<File> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    };
    let file = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            fs::remove_file(path).with_context(|| {
                format!(
                    "{} is in the way of a temporary file: remove it",
                    path.display()
                )
            })?;
            open()
        }
        r => r,
    };
    file.with_context(|| {
        format!(
            "cannot create {}: check that the output directory exists and is writable",
            path.display()
        )
    })
}

fn split_path(path: &Path) -> Result<(PathBuf, String)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no usable file name", path.display()))?
        .to_string();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name))
}

/// Writes `bytes` to `path` atomically, mode 0644 (for files that hold no secret).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    PendingFile::with_bytes(path, bytes)?.commit()
}

/// `NAME.sha256` next to `path`, in `sha256sum` format (`<hex>  <name>\n`), so that
/// `sha256sum -c NAME.sha256` run in that directory verifies the file; put in place on commit.
pub fn sha256_file(path: &Path, sha256: &str) -> Result<PendingFile> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("not a SHA-256 digest: {sha256:?}");
    }
    let (dir, name) = split_path(path)?;
    if name.contains('\n') || name.contains('\\') {
        bail!("cannot write a checksum line for the file name {name:?}");
    }
    let line = format!("{}  {name}\n", sha256.to_ascii_lowercase());
    PendingFile::with_bytes(&dir.join(format!("{name}.sha256")), line.as_bytes())
}

/// The manifest as pretty JSON with a trailing newline, put at `path` on commit.
pub fn manifest_file(path: &Path, m: &Manifest) -> Result<PendingFile> {
    PendingFile::with_bytes(path, m.to_json().as_bytes())
}

/// Test hook, read only here: when `PIKUBE_TEST_PAUSE_BEFORE_RENAME` is the file name
/// `name`, the build says so on stderr and waits for good before renaming that file into
/// place, so a test can interrupt or kill it there. Not for users.
fn test_pause_before_rename(name: &str) {
    if std::env::var_os("PIKUBE_TEST_PAUSE_BEFORE_RENAME").is_some_and(|v| v == name) {
        eprintln!("test hook: paused before renaming {name}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// Files put in place together, so that whenever the build stops (an error, Ctrl-C, a kill)
/// every file that describes others names only files that are there as it describes them.
/// Everything is synced first; then the files of the directory that describe what is being
/// replaced are removed; then the files are renamed into place, then their descriptions.
pub struct Replacement {
    /// The files themselves (the image first), renamed in this order.
    pub files: Vec<PendingFile>,
    /// What describes them (checksums, then the manifest), renamed after them in this order;
    /// an older file under one of these names is removed before anything is renamed.
    pub descriptions: Vec<PendingFile>,
    /// Other files that describe what is being replaced and are written again later (the
    /// directory's `SHA256SUMS`, `known_hosts`): removed before anything is renamed.
    pub stale: Vec<PathBuf>,
}

impl Replacement {
    /// Puts every file in place; returns their final paths, in order.
    pub fn commit(mut self) -> Result<Vec<PathBuf>> {
        for p in self.files.iter_mut().chain(&mut self.descriptions) {
            p.sync()?;
        }
        let old = self.descriptions.iter().map(PendingFile::final_path);
        for path in self.stale.iter().cloned().chain(old) {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot remove {}, which describes files being replaced: check that its directory is writable",
                            path.display()
                        )
                    });
                }
            }
        }
        let mut done = Vec::new();
        for p in self.files.into_iter().chain(self.descriptions) {
            test_pause_before_rename(&p.name);
            done.push(p.commit()?);
        }
        Ok(done)
    }
}

/// SHA-256 of a (possibly sparse) file, read in large pieces by a reader thread while
/// the calling thread hashes (holes are not read), with a progress task.
pub fn hash_file(path: &Path, progress: &Progress) -> Result<String> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let task = progress.task(&format!("sha256 {name}"), Some(len));
    let ranges = crate::io::data_ranges(&f, len)
        .with_context(|| format!("cannot map the data of {}", path.display()))?;
    let sha = crate::io::stream::hash_through(&f, len, &ranges, None, &task)
        .with_context(|| format!("cannot read {}", path.display()))?;
    task.finish("done");
    Ok(sha)
}

#[cfg(test)]
mod sweep_tests {
    use super::*;

    #[test]
    fn stale_temporaries_of_dead_processes_are_swept() {
        let d = tempfile::tempdir().unwrap();
        // A pid that cannot exist (above pid_max).
        let dead = d.path().join(".n1.img.partial-4294967");
        let mine = d
            .path()
            .join(format!(".n2.img.partial-{}", std::process::id()));
        let other = d.path().join("n3.img");
        for p in [&dead, &mine, &other] {
            fs::write(p, b"x").unwrap();
        }
        let removed = sweep_stale(d.path(), "img.partial");
        assert_eq!(removed, vec![dead.clone()]);
        assert!(mine.exists() && other.exists() && !dead.exists());
    }

    #[test]
    fn registered_temporaries_are_removed_on_interrupt() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("t");
        let sub = d.path().join("dir");
        fs::write(&f, b"x").unwrap();
        fs::create_dir_all(sub.join("a")).unwrap();
        register_temporary(&f);
        register_temporary(&sub);
        remove_temporaries();
        assert!(!f.exists() && !sub.exists());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sha256_bytes;

    #[test]
    fn pending_file_is_removed_on_drop_and_renamed_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let tmp_path;
        {
            let mut p = PendingFile::create(dir.path(), "a.img").unwrap();
            p.file().write_all(b"hello").unwrap();
            tmp_path = p.path().to_path_buf();
            assert!(tmp_path.exists());
            assert!(
                tmp_path
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with(".a.img.partial-")
            );
            assert!(!dir.path().join("a.img").exists());
        }
        assert!(!tmp_path.exists(), "dropped pending file must be removed");
        assert!(!dir.path().join("a.img").exists());

        let mut p = PendingFile::create(dir.path(), "a.img").unwrap();
        p.file().write_all(b"hello").unwrap();
        let tmp_path = p.path().to_path_buf();
        let out = p.commit().unwrap();
        assert_eq!(out, dir.path().join("a.img"));
        assert_eq!(fs::read(&out).unwrap(), b"hello");
        assert!(!tmp_path.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_link_planted_at_the_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let tmp = dir
            .path()
            .join(format!(".a.img.partial-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        let mut p = PendingFile::create(dir.path(), "a.img").unwrap();
        p.file().write_all(b"new").unwrap();
        let out = p.commit().unwrap();
        assert_eq!(
            fs::read(&victim).unwrap(),
            b"keep",
            "the link's target is untouched"
        );
        assert!(fs::symlink_metadata(&out).unwrap().is_file());
        assert_eq!(fs::read(&out).unwrap(), b"new");
    }

    #[test]
    fn pending_file_rejects_paths_and_missing_dirs() {
        let dir = tempfile::tempdir().unwrap();
        assert!(PendingFile::create(dir.path(), "a/b").is_err());
        let err = PendingFile::create(&dir.path().join("missing"), "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn sha256_file_format() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("n1.img");
        fs::write(&img, b"abc").unwrap();
        let digest = sha256_bytes(b"abc");
        let out = sha256_file(&img, &digest).unwrap().commit().unwrap();
        assert_eq!(out, dir.path().join("n1.img.sha256"));
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            format!("{digest}  n1.img\n")
        );
        assert!(sha256_file(&img, "xyz").is_err());
    }

    #[test]
    fn manifest_written_atomically_as_pretty_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n1.manifest.json");
        let m = crate::manifest::tests::sample();
        manifest_file(&path, &m).unwrap().commit().unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n'));
        assert!(text.contains("\n  \"tool\": \"pikube-image\""));
        assert_eq!(Manifest::from_json(&text).unwrap(), m);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn hash_file_matches_in_memory_digest() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        // Crosses chunk boundaries and ends in a partial chunk.
        let data: Vec<u8> = (0..((4 << 20) * 2 + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        fs::write(&path, &data).unwrap();
        assert_eq!(
            hash_file(&path, &Progress::quiet()).unwrap(),
            sha256_bytes(&data)
        );
        let empty = dir.path().join("e");
        fs::write(&empty, b"").unwrap();
        assert_eq!(
            hash_file(&empty, &Progress::quiet()).unwrap(),
            sha256_bytes(b"")
        );
        // Sparse: holes at the start, between data and at the end, across chunks.
        let sparse = dir.path().join("s");
        let sf = File::create(&sparse).unwrap();
        let total = 3 * (4 << 20) as u64 + 777;
        sf.set_len(total).unwrap();
        sf.write_all_at(&data[..100_000], (4 << 20) as u64 - 50_000)
            .unwrap();
        sf.write_all_at(&data[..5000], 2 * (4 << 20) as u64 + 3)
            .unwrap();
        drop(sf);
        let all = fs::read(&sparse).unwrap();
        assert_eq!(all.len() as u64, total);
        assert_eq!(
            hash_file(&sparse, &Progress::quiet()).unwrap(),
            sha256_bytes(&all)
        );
        // Exactly one chunk.
        fs::write(&path, &data[..(4 << 20)]).unwrap();
        assert_eq!(
            hash_file(&path, &Progress::quiet()).unwrap(),
            sha256_bytes(&data[..(4 << 20)])
        );
    }
}
