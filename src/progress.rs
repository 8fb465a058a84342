//! Progress reporting for long work.
//!
//! Three renderings of the same events: indicatif bars when stderr is a terminal,
//! plain log lines when it is not (CI logs), and JSON lines with `--json`.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress and status messages are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Interactive progress bars on stderr.
    Bars,
    /// Plain, timestamp-free log lines on stderr, at most one per few seconds per task.
    Plain,
    /// One JSON object per line on stderr.
    Json,
    /// Nothing (tests, library use).
    Quiet,
}

impl Mode {
    /// Bars when stderr is a terminal, plain lines otherwise; JSON when asked.
    pub fn detect(json: bool) -> Mode {
        if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Plain
        }
    }
}

/// Cheap to clone handle that creates tasks and prints messages.
#[derive(Clone, Debug)]
pub struct Progress {
    mode: Mode,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new(Mode::Quiet)
    }
}

impl Progress {
    pub fn new(mode: Mode) -> Progress {
        Progress { mode }
    }

    pub fn quiet() -> Progress {
        Progress::new(Mode::Quiet)
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A status line ("downloading X", "wrote Y").
    pub fn message(&self, msg: &str) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Json => emit_json(&serde_json::json!({"event": "message", "message": msg})),
            Mode::Bars | Mode::Plain => eprintln!("{msg}"),
        }
    }

    /// Starts a task of `total` units (bytes), or unknown length with `None`.
    pub fn task(&self, name: &str, total: Option<u64>) -> Task {
        let bar = match self.mode {
            Mode::Bars => {
                let bar = match total {
                    Some(t) => ProgressBar::new(t),
                    None => ProgressBar::new_spinner(),
                };
                bar.set_draw_target(ProgressDrawTarget::stderr());
                let style = if total.is_some() {
                    ProgressStyle::with_template(
                        "{msg:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                } else {
                    ProgressStyle::with_template("{msg:>24} {spinner} {bytes} {bytes_per_sec}")
                };
                bar.set_style(style.expect("static template").progress_chars("=> "));
                bar.set_message(name.to_string());
                bar.enable_steady_tick(Duration::from_millis(200));
                Some(bar)
            }
            _ => None,
        };
        let task = Task {
            inner: Arc::new(TaskInner {
                mode: self.mode,
                name: name.to_string(),
                total,
                bar,
                state: Mutex::new(TaskState {
                    pos: 0,
                    last_report: Instant::now(),
                }),
            }),
        };
        if matches!(self.mode, Mode::Json) {
            emit_json(&serde_json::json!({"event": "start", "task": name, "total": total}));
        }
        task
    }
}

#[derive(Debug)]
struct TaskState {
    pos: u64,
    last_report: Instant,
}

#[derive(Debug)]
struct TaskInner {
    mode: Mode,
    name: String,
    total: Option<u64>,
    bar: Option<ProgressBar>,
    state: Mutex<TaskState>,
}

/// One unit of long work. Clones share the same position.
#[derive(Clone, Debug)]
pub struct Task {
    inner: Arc<TaskInner>,
}

const REPORT_EVERY: Duration = Duration::from_secs(5);

impl Task {
    /// A task that reports nothing.
    pub fn hidden() -> Task {
        Progress::quiet().task("", None)
    }

    pub fn inc(&self, n: u64) {
        let mut st = self.inner.state.lock().expect("progress lock");
        st.pos += n;
        self.report(&mut st, false);
    }

    pub fn set_position(&self, pos: u64) {
        let mut st = self.inner.state.lock().expect("progress lock");
        st.pos = pos;
        self.report(&mut st, false);
    }

    pub fn position(&self) -> u64 {
        self.inner.state.lock().expect("progress lock").pos
    }

    fn report(&self, st: &mut TaskState, force: bool) {
        if let Some(bar) = &self.inner.bar {
            bar.set_position(st.pos);
            return;
        }
        if !force && st.last_report.elapsed() < REPORT_EVERY {
            return;
        }
        st.last_report = Instant::now();
        match self.inner.mode {
            Mode::Plain => match self.inner.total {
                Some(t) if t > 0 => eprintln!(
                    "{}: {} / {} ({}%)",
                    self.inner.name,
                    human_bytes(st.pos),
                    human_bytes(t),
                    st.pos * 100 / t
                ),
                _ => eprintln!("{}: {}", self.inner.name, human_bytes(st.pos)),
            },
            Mode::Json => emit_json(&serde_json::json!({
                "event": "progress", "task": self.inner.name, "position": st.pos, "total": self.inner.total
            })),
            _ => {}
        }
    }

    /// Ends the task with a closing message.
    pub fn finish(&self, msg: &str) {
        let st = self.inner.state.lock().expect("progress lock");
        match (&self.inner.bar, self.inner.mode) {
            (Some(bar), _) => {
                bar.finish_and_clear();
                eprintln!("{}: {msg}", self.inner.name);
            }
            (None, Mode::Plain) => eprintln!("{}: {msg}", self.inner.name),
            (None, Mode::Json) => emit_json(&serde_json::json!({
                "event": "finish", "task": self.inner.name, "position": st.pos, "message": msg
            })),
            _ => {}
        }
    }
}

impl Drop for TaskInner {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            if !bar.is_finished() {
                bar.finish_and_clear();
            }
        }
    }
}

fn emit_json(v: &serde_json::Value) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{v}");
}

/// Formats a byte count with binary units ("1.5 GiB").
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(4 << 30), "4.0 GiB");
    }

    #[test]
    fn clones_share_position() {
        let t = Task::hidden();
        let t2 = t.clone();
        t.inc(10);
        t2.inc(5);
        assert_eq!(t.position(), 15);
        t.set_position(3);
        assert_eq!(t2.position(), 3);
    }
}
