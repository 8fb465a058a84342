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

/// Refuses a unit name that is not one file name of a unit (`ssh.service`).
pub fn check_unit_name(unit: &str) -> Result<()> {
    let ok = !unit.is_empty()
        && unit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@:\\".contains(c))
        && unit.rsplit_once('.').is_some_and(|(name, kind)| {
            !name.is_empty() && ["service", "socket", "timer", "target", "path"].contains(&kind)
        });
    if !ok {
        bail!(
            "'{unit}' is not a systemd unit name like ssh.service: fix enable_units in the OS image's definition"
        );
    }
    Ok(())
}
