//! systemd units the images get: rendering a unit file and enabling it.

use anyhow::{Result, bail};

use crate::op::Op;

/// Where units the build adds are installed.
pub const UNIT_DIR: &str = "/etc/systemd/system";

/// A systemd unit file: sections of `key=value` lines, rendered in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub sections: Vec<(&'static str, Vec<(&'static str, String)>)>,
}

impl Unit {
    pub fn render(&self) -> Result<String> {
        let mut out = String::new();
        for (i, (name, entries)) in self.sections.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&format!("[{name}]\n"));
            for (k, v) in entries {
                if v.contains('\n') || v.contains('\r') {
                    bail!("unit value for {k} spans lines");
                }
                out.push_str(&format!("{k}={v}\n"));
            }
        }
        Ok(out)
    }
}

/// Enables the unit at `unit_path` (named `unit`) for boot: the link in
/// `multi-user.target.wants`.
pub fn enable(partition: &str, unit: &str, unit_path: &str) -> Op {
    Op::symlink(
        partition,
        &format!("{UNIT_DIR}/multi-user.target.wants/{unit}"),
        unit_path,
    )
}
