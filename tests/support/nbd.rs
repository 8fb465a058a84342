//! `nbd-server` on the host for tests that boot guests from a netboot tree's NBD exports.
//!
//! ```ignore
//! let port = nbd::free_port();                        // before the build: netboot.nbd_port
//! // ... pikube-image build --netboot DIR ...
//! let srv = NbdServer::start(&dir)?;                  // DIR/nbd-server.conf, or a .conf file
//! // a QEMU user-network guest reaches it as 10.0.2.2:srv.port()
//! drop(srv);                                          // stops it (also when a test panics)
//! ```
//!
//! nbd-server runs as a daemon (it forks a process per client, so several guests can use it at
//! once; in the foreground with `-d` it serves one client and exits when a negotiation fails)
//! with a pid file; dropping the handle stops it and its client processes (SIGTERM, then
//! SIGKILL).

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// What nbd-server sends first on a connection (newstyle negotiation).
const GREETING: &[u8; 16] = b"NBDMAGICIHAVEOPT";

/// A TCP port nobody listens on at the moment, for `netboot.nbd_port`.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port on 127.0.0.1")
}

/// The `port = N` of the `[generic]` section of an nbd-server configuration.
pub fn config_port(conf: &str) -> Option<u16> {
    let mut generic = false;
    for line in conf.lines().map(str::trim) {
        if line.starts_with('[') {
            generic = line == "[generic]";
        } else if generic
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == "port"
        {
            return v.trim().parse().ok();
        }
    }
    None
}

/// A running nbd-server; stopped on drop.
pub struct NbdServer {
    pid: i32,
    port: u16,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl NbdServer {
    /// Starts nbd-server on `config` (an `nbd-server.conf`, or a netboot tree holding one) and
    /// waits until it answers on 127.0.0.1 at the configuration's port.
    pub fn start(config: &Path) -> Result<NbdServer, String> {
        let config = if config.is_dir() {
            config.join("nbd-server.conf")
        } else {
            config.to_path_buf()
        };
        let text = std::fs::read_to_string(&config)
            .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
        let port = config_port(&text)
            .ok_or_else(|| format!("{} has no port in [generic]", config.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("pikube-nbd")
            .tempdir()
            .map_err(|e| format!("cannot create a directory for the pid file: {e}"))?;
        let pid_file = dir.path().join("nbd-server.pid");
        let out = Command::new("nbd-server")
            .arg("-C")
            .arg(&config)
            .arg("-p")
            .arg(&pid_file)
            .output()
            .map_err(|e| format!("cannot run nbd-server: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "nbd-server -C {} failed ({}): {}",
                config.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pid = None;
        while Instant::now() < deadline {
            pid = pid.or_else(|| {
                std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|p| p.trim().parse::<i32>().ok())
            });
            if let Some(p) = pid {
                if !alive(p) {
                    break;
                }
                if greets(port) {
                    eprintln!(
                        "nbd-server (pid {p}) serves {} on port {port}",
                        config.display()
                    );
                    return Ok(NbdServer {
                        pid: p,
                        port,
                        config,
                        _dir: dir,
                    });
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(p) = pid {
            stop(p);
        }
        Err(format!(
            "nbd-server -C {} did not answer on port {port} (it logs to syslog; is the port \
             taken?): {}",
            config.display(),
            foreground_error(&config)
        ))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn config(&self) -> &Path {
        &self.config
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        stop(self.pid);
    }
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next())
        })
        .flatten()
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Whether an NBD server greets on 127.0.0.1:`port`.
pub fn greets(port: u16) -> bool {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let Ok(mut s) = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 16];
    s.read_exact(&mut buf).is_ok() && &buf == GREETING
}

/// SIGTERM (nbd-server then ends its client processes), SIGKILL after 5 s.
fn stop(pid: i32) {
    let kill = |sig: &str| {
        let _ = Command::new("kill")
            .args([sig, &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    };
    kill("-TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if alive(pid) {
        kill("-KILL");
    }
}

/// What nbd-server says on stderr when run in the foreground for a moment.
fn foreground_error(config: &Path) -> String {
    let out = Command::new("timeout")
        .args(["2", "nbd-server", "-d", "-C"])
        .arg(config)
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("(cannot run it in the foreground: {e})"),
    }
}
