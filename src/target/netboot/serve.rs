//! `pikube-image netboot serve DIR`: the installed dnsmasq and nbd-server, in the foreground,
//! with the tree's configuration, until one stops or the user presses Ctrl-C.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{DNSMASQ_CONF, NBD_CONF, TFTP_DIR, dnsmasq};

/// A server program and the Debian package that installs it.
#[derive(Debug, Clone, Copy)]
pub struct Program {
    pub name: &'static str,
    pub package: &'static str,
}

pub const DNSMASQ: Program = Program {
    name: "dnsmasq",
    package: "dnsmasq-base",
};
pub const NBD_SERVER: Program = Program {
    name: "nbd-server",
    package: "nbd-server",
};

/// What `netboot serve` is told besides the tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// The network interface dnsmasq answers on (DHCP and TFTP); the tree's
    /// `netboot.interface`, else every interface, when absent.
    pub interface: Option<String>,
}

/// How long a server gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The running servers. [`stop_children`] (the Ctrl-C handler) and the loop of [`serve`]
/// both reap them under this lock, so a process id is never signalled after it was reaped.
static CHILDREN: Mutex<Vec<Server>> = Mutex::new(Vec::new());

struct Server {
    program: Program,
    child: Child,
}

fn children() -> MutexGuard<'static, Vec<Server>> {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stops every server started by [`serve`] and waits for them to exit (from the Ctrl-C
/// handler). Returns the names of the servers it stopped.
pub fn stop_children() -> Vec<&'static str> {
    let mut c = children();
    let names = c.iter().map(|s| s.program.name).collect();
    stop_all(&mut c);
    names
}

/// SIGTERM to every server still running, then waits for each; one still running after
/// [`STOP_GRACE`] is killed. Empties the list: nothing is left running or unreaped.
fn stop_all(servers: &mut Vec<Server>) {
    for s in servers.iter_mut() {
        if let Ok(None) = s.child.try_wait() {
            // SAFETY: kill(2) on a child this process started and has not reaped.
            unsafe {
                libc::kill(s.child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for s in servers.iter_mut() {
        while let Ok(None) = s.child.try_wait() {
            if Instant::now() > deadline {
                let _ = s.child.kill();
                let _ = s.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    servers.clear();
}

/// The program's path on `$PATH`, or an error naming the Debian package that installs it.
pub fn find(p: Program) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(p.name))
        .find(|f| f.is_file())
        .with_context(|| {
            format!(
                "{} is not on PATH ({}): install Debian's {} package (sudo apt-get install {}), \
                 or add the directory holding {} to PATH",
                p.name,
                std::env::var("PATH").unwrap_or_default(),
                p.package,
                p.package,
                p.name
            )
        })
}

/// The command that runs dnsmasq in the foreground, logging to stderr, answering on
/// `interface` when given (the tree's configuration names none).
pub fn dnsmasq_command(bin: &Path, dir: &Path, interface: Option<&str>) -> Command {
    let mut c = Command::new(bin);
    c.arg("--keep-in-foreground")
        .arg("--log-facility=-")
        .arg(format!("--conf-file={}", dir.join(DNSMASQ_CONF).display()));
    if let Some(i) = interface {
        for d in dnsmasq::listen_on(i) {
            c.arg(format!("--{d}"));
        }
    }
    c
}

/// The command that runs nbd-server without forking.
pub fn nbd_command(bin: &Path, dir: &Path) -> Command {
    let mut c = Command::new(bin);
    c.arg("-d").arg("-C").arg(dir.join(NBD_CONF));
    c
}

/// The interface to add to dnsmasq's command line: `--interface` unless the tree's
/// dnsmasq.conf names that one already; refused when it names another (dnsmasq would
/// answer on both).
fn extra_interface<'a>(conf: &str, asked: Option<&'a str>) -> Result<Option<&'a str>> {
    let named = dnsmasq::interfaces(conf);
    match asked {
        None => Ok(None),
        Some(i) if named.is_empty() => Ok(Some(i)),
        Some(i) if named.iter().any(|n| n == i) => Ok(None),
        Some(i) => bail!(
            "the tree's {DNSMASQ_CONF} answers on {} (netboot.interface in cluster.yaml): \
             leave out --interface {i}, or export the tree again with interface: {i}",
            named.join(", ")
        ),
    }
}

/// dnsmasq serves TFTP as an unprivileged user: every directory above the TFTP root must be
/// searchable by others, or dnsmasq fails to start.
fn check_tftp_access(tftp: &Path) -> Result<()> {
    for d in tftp.ancestors() {
        let mode = std::fs::metadata(d)
            .with_context(|| format!("cannot read {}", d.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            bail!(
                "dnsmasq serves TFTP as an unprivileged user, which cannot enter {} (mode {:o}) \
                 to reach {}: `chmod o+x {}`, or export the tree below a directory others can \
                 enter",
                d.display(),
                mode & 0o777,
                tftp.display(),
                d.display()
            );
        }
    }
    Ok(())
}

/// Starts a server in its own process group, so Ctrl-C in the terminal reaches only this
/// process, which stops the servers in order; the kernel sends it SIGTERM should this
/// process die first.
fn spawn(program: Program, mut cmd: Command) -> Result<Child> {
    // SAFETY: getpid before fork; the closure runs in the child between fork and exec and
    // only calls the async-signal-safe prctl(2) and getppid(2).
    let parent = unsafe { libc::getpid() };
    unsafe {
        cmd.process_group(0).pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 || libc::getppid() != parent
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("cannot start {}", program.name))
}

/// Runs both servers until one exits; stops the other then.
pub fn serve(dir: &Path, opts: &Options) -> Result<()> {
    for f in [DNSMASQ_CONF, NBD_CONF] {
        if !dir.join(f).is_file() {
            bail!(
                "{} has no {f}: give the directory written by `pikube-image build --netboot DIR`",
                dir.display()
            );
        }
    }
    let dir = std::path::absolute(dir)?;
    let dnsmasq_bin = find(DNSMASQ)?;
    let nbd_bin = find(NBD_SERVER)?;
    let conf = std::fs::read_to_string(dir.join(DNSMASQ_CONF))
        .with_context(|| format!("cannot read {}", dir.join(DNSMASQ_CONF).display()))?;
    let interface = extra_interface(&conf, opts.interface.as_deref())?;
    check_tftp_access(&dir.join(TFTP_DIR))?;
    {
        let mut running = children();
        for (program, cmd) in [
            (DNSMASQ, dnsmasq_command(&dnsmasq_bin, &dir, interface)),
            (NBD_SERVER, nbd_command(&nbd_bin, &dir)),
        ] {
            match spawn(program, cmd) {
                Ok(child) => running.push(Server { program, child }),
                Err(e) => {
                    stop_all(&mut running);
                    return Err(e);
                }
            }
        }
    }
    eprintln!(
        "serving {} (dnsmasq: DHCP and TFTP{}, nbd-server: root disks); Ctrl-C stops both",
        dir.display(),
        interface.map(|i| format!(" on {i}")).unwrap_or_default()
    );
    loop {
        if let Some((program, status)) = stopped()? {
            bail!(
                "{} stopped ({status}); the other server was stopped too. {}",
                program.name,
                match program.name {
                    "dnsmasq" =>
                        "Its messages above say why: ports 67 and 69 need root (sudo), no other \
                         DHCP/TFTP server may hold them, and an --interface must exist",
                    _ => "Its messages above say why: its port needs to be free",
                }
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The first server that exited, after stopping the others; `None` while all run.
fn stopped() -> Result<Option<(Program, ExitStatus)>> {
    let mut running = children();
    for s in running.iter_mut() {
        if let Some(status) = s.child.try_wait()? {
            let program = s.program;
            stop_all(&mut running);
            return Ok(Some((program, status)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interface_is_added_unless_the_tree_names_one() {
        let none = "port=0\nenable-tftp\n";
        let eth1 = "port=0\ninterface=eth1\nbind-interfaces\n";
        assert_eq!(extra_interface(none, Some("veth0")).unwrap(), Some("veth0"));
        assert_eq!(extra_interface(none, None).unwrap(), None);
        assert_eq!(extra_interface(eth1, Some("eth1")).unwrap(), None);
        let e = extra_interface(eth1, Some("veth0"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("answers on eth1") && e.contains("--interface veth0"),
            "{e}"
        );
    }

    #[test]
    fn a_tftp_root_others_cannot_reach_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let tftp = t.path().join("nb/tftp");
        std::fs::create_dir_all(&tftp).unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        check_tftp_access(&tftp).unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = check_tftp_access(&tftp).unwrap_err().to_string();
        assert!(e.contains("chmod o+x") && e.contains("mode 700"), "{e}");
    }
}
