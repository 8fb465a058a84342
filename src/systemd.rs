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

/// The file name of a systemd unit (`ssh.service`), checked when it is read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct UnitName(String);

impl UnitName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UnitName {
    type Error = String;

    fn try_from(unit: String) -> std::result::Result<UnitName, String> {
        let ok = unit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@:".contains(c))
            && unit.rsplit_once('.').is_some_and(|(name, kind)| {
                !name.is_empty() && ["service", "socket", "timer", "target", "path"].contains(&kind)
            });
        match ok {
            true => Ok(UnitName(unit)),
            false => Err(format!(
                "'{unit}' is not a systemd unit name like ssh.service (a name, a dot and service, socket, timer, target or path)"
            )),
        }
    }
}

impl From<UnitName> for String {
    fn from(u: UnitName) -> String {
        u.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_are_checked() {
        for good in ["ssh.service", "getty@tty1.service", "k3s-agent.service"] {
            assert!(UnitName::try_from(good.to_string()).is_ok(), "{good}");
        }
        for bad in [
            "ssh",
            ".service",
            "../x.service",
            "a b.service",
            "ssh.conf",
            "",
        ] {
            let e = UnitName::try_from(bad.to_string()).unwrap_err();
            assert!(e.contains("not a systemd unit name"), "{bad}: {e}");
        }
    }
}
