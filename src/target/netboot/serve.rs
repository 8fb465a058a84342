//! `pikube-image netboot serve DIR`: the installed dnsmasq and nbd-server, in the foreground,
//! with the tree's configuration, until one stops or the user presses Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{DNSMASQ_CONF, NBD_CONF};

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

/// Process ids of the running servers, stopped by [`stop_children`] on Ctrl-C.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Sends SIGTERM to every server started by [`serve`] (from the signal handler).
pub fn stop_children() {
    if let Ok(mut c) = CHILDREN.lock() {
        for pid in c.drain(..) {
            // SAFETY: kill(2) on a pid this process started; no memory is touched.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
}

/// The program's path: `$PATH`, then the sbin directories an unprivileged `$PATH` lacks.
pub fn find(p: Program) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(p.name))
        .find(|f| f.is_file())
        .with_context(|| {
            format!(
                "{} not found: install the {} package (sudo apt-get install {})",
                p.name, p.package, p.package
            )
        })
}

/// The command that runs dnsmasq in the foreground, logging to stderr.
pub fn dnsmasq_command(bin: &Path, dir: &Path) -> Command {
    let mut c = Command::new(bin);
    c.arg("--keep-in-foreground")
        .arg("--log-facility=-")
        .arg(format!("--conf-file={}", dir.join(DNSMASQ_CONF).display()));
    c
}

/// The command that runs nbd-server without forking.
pub fn nbd_command(bin: &Path, dir: &Path) -> Command {
    let mut c = Command::new(bin);
    c.arg("-d").arg("-C").arg(dir.join(NBD_CONF));
    c
}

/// Runs both servers until one exits; stops the other then.
pub fn serve(dir: &Path) -> Result<()> {
    for f in [DNSMASQ_CONF, NBD_CONF] {
        if !dir.join(f).is_file() {
            bail!(
                "{} has no {f}: give the directory written by `pikube-image build --netboot DIR`",
                dir.display()
            );
        }
    }
    let dir = std::path::absolute(dir)?;
    let dnsmasq = find(DNSMASQ)?;
    let nbd = find(NBD_SERVER)?;
    let mut children: Vec<(&str, Child)> = Vec::new();
    for (name, mut cmd) in [
        ("dnsmasq", dnsmasq_command(&dnsmasq, &dir)),
        ("nbd-server", nbd_command(&nbd, &dir)),
    ] {
        match cmd.spawn() {
            Ok(child) => {
                if let Ok(mut c) = CHILDREN.lock() {
                    c.push(child.id());
                }
                children.push((name, child));
            }
            Err(e) => {
                stop_children();
                for (_, c) in &mut children {
                    let _ = c.wait();
                }
                bail!("cannot start {name}: {e}");
            }
        }
    }
    eprintln!(
        "serving {} (dnsmasq: DHCP and TFTP, nbd-server: root disks); Ctrl-C stops both",
        dir.display()
    );
    loop {
        for i in 0..children.len() {
            if let Some(status) = children[i].1.try_wait()? {
                let name = children[i].0;
                stop_children();
                for (_, c) in &mut children {
                    let _ = c.wait();
                }
                bail!(
                    "{name} stopped ({status}); the other server was stopped too. {}",
                    match name {
                        "dnsmasq" =>
                            "Ports 67 and 69 need root (sudo), and no other DHCP/TFTP server may hold them",
                        _ => "Its port needs to be free; check the messages above",
                    }
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
