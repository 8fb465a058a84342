//! Raspberry Pi firmware boot configuration: where the kernel command line lives and how to
//! add arguments to it.

use anyhow::{Context, Result};

use crate::op::{FileEdit, Meta, Tree};

/// Adds kernel arguments to the command line file that `config.txt` (the op's path) names,
/// each at most once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelArgs {
    pub args: Vec<String>,
}

impl FileEdit for KernelArgs {
    fn describe(&self) -> String {
        format!("append to the kernel command line: {}", self.args.join(" "))
    }

    fn apply(
        &self,
        tree: &mut dyn Tree,
        config_path: &str,
        meta: &Meta,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let label = tree.name().to_string();
        let config = tree.read(config_path)?.with_context(|| {
            format!(
                "{label}:{config_path} not found: the board expects a Raspberry Pi boot partition"
            )
        })?;
        let config = String::from_utf8_lossy(&config);
        let cmdline_path = format!("/{}", cmdline_path(&config));
        let cmdline = tree.read(&cmdline_path)?.with_context(|| {
            format!("{label}:{cmdline_path} (named by {config_path}) not found")
        })?;
        let cmdline = String::from_utf8(cmdline)
            .with_context(|| format!("{label}:{cmdline_path} is not text"))?;
        let new = append_kernel_args(&cmdline, &self.args).unwrap_or(cmdline);
        tree.write(&cmdline_path, &mut new.as_bytes(), new.len() as u64, meta)?;
        Ok(vec![(cmdline_path, new.into_bytes())])
    }
}

/// The command line file named by config.txt, relative to the root of the boot partition.
///
/// Honours `cmdline=` (default `cmdline.txt`) and `os_prefix=` (prepended as is, as the firmware
/// does: `os_prefix=current/` gives `current/cmdline.txt`). Only settings that apply to every
/// model are considered: lines before any section and in `[all]` sections. Later lines win.
pub fn cmdline_path(config_txt: &str) -> String {
    let mut cmdline = "cmdline.txt".to_string();
    let mut prefix = String::new();
    let mut applies = true;
    for raw in config_txt.lines() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            applies = line.eq_ignore_ascii_case("[all]");
            continue;
        }
        if !applies {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            match k.trim() {
                "cmdline" => cmdline = v.trim().to_string(),
                "os_prefix" => prefix = v.trim().to_string(),
                _ => {}
            }
        }
    }
    let cmdline = cmdline.trim_start_matches('/');
    format!("{}{}", prefix.trim_start_matches('/'), cmdline)
}

/// Appends each argument that is not already present, keeping the command line on one line.
/// Returns `None` when nothing had to change.
pub fn append_kernel_args(cmdline: &str, args: &[String]) -> Option<String> {
    let line = cmdline.trim_end_matches(['\n', '\r']);
    if line.contains('\n') {
        // The firmware reads only the first line; join any others into it.
        let joined = line.lines().collect::<Vec<_>>().join(" ");
        return Some(append_kernel_args(&joined, args).unwrap_or(joined + "\n"));
    }
    let present: Vec<&str> = line.split_whitespace().collect();
    let missing: Vec<&String> = args
        .iter()
        .filter(|a| !present.contains(&a.as_str()))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let mut out = line.trim_end().to_string();
    for a in missing {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(a);
    }
    out.push('\n');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_prefixed_paths() {
        assert_eq!(cmdline_path(""), "cmdline.txt");
        assert_eq!(
            cmdline_path("[all]\nkernel=vmlinuz\ncmdline=cmdline.txt\n"),
            "cmdline.txt"
        );
        assert_eq!(
            cmdline_path("[all]\nos_prefix=current/\ncmdline=cmdline.txt\n"),
            "current/cmdline.txt"
        );
        assert_eq!(
            cmdline_path("cmdline=boot/args.txt # comment\n"),
            "boot/args.txt"
        );
    }

    #[test]
    fn model_sections_do_not_apply() {
        let cfg = "[pi4]\nos_prefix=pi4/\n[all]\ncmdline=c.txt\n[pi5]\ncmdline=x.txt\n";
        assert_eq!(cmdline_path(cfg), "c.txt");
    }

    #[test]
    fn args_are_appended_once_on_one_line() {
        let args = vec![
            "cgroup_memory=1".to_string(),
            "cgroup_enable=memory".to_string(),
        ];
        let base = "console=tty1 root=LABEL=writable rootwait fixrtc\n";
        let once = append_kernel_args(base, &args).unwrap();
        assert_eq!(
            once,
            "console=tty1 root=LABEL=writable rootwait fixrtc cgroup_memory=1 cgroup_enable=memory\n"
        );
        assert_eq!(append_kernel_args(&once, &args), None, "idempotent");
        let partial = append_kernel_args("a cgroup_memory=1", &args).unwrap();
        assert_eq!(partial, "a cgroup_memory=1 cgroup_enable=memory\n");
        let two_lines = append_kernel_args("a\nb\n", &args).unwrap();
        assert_eq!(two_lines.lines().count(), 1);
        assert!(two_lines.starts_with("a b "));
    }
}
