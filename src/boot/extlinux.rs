//! U-Boot's generic distro boot with `extlinux.conf` (Ubuntu for Rockchip): every `label`
//! gives its kernel command line in an `append` line. Debian's and Ubuntu's `u-boot-update`
//! (package u-boot-menu) writes that file again at every kernel update, from
//! `U_BOOT_PARAMETERS`, which these images set to the content of `/etc/kernel/cmdline`. So
//! kernel arguments go into both files: into extlinux.conf for the next boot, into
//! `/etc/kernel/cmdline` for every boot after a kernel update.

use anyhow::{Context, Result, bail};

use crate::op::{FileEdit, Meta, Tree};

/// One line of an extlinux.conf, as far as the edit needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// `label NAME`: starts an entry; kept byte for byte.
    Label { raw: String, name: String },
    /// `append ARGS`, with the text before the arguments kept as it was (indentation,
    /// keyword spelling, separator).
    Append {
        head: String,
        args: Vec<String>,
        /// A carriage return that ended the line.
        tail: &'static str,
    },
    /// Anything else (comments, menu settings, `linux`, `initrd`, `fdt`...), kept byte for
    /// byte.
    Other(String),
}

/// An extlinux.conf parsed into lines; renders back unchanged except for the `append` lines
/// an edit extended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtlinuxConf {
    lines: Vec<Line>,
    /// Whether the text ended with a line break.
    final_newline: bool,
}

/// The keyword of a line (the first word, lower case: extlinux keywords are
/// case-insensitive) and the rest after the separating whitespace.
fn keyword(line: &str) -> Option<(String, usize)> {
    let trimmed = line.trim_start();
    let indent = line.len() - trimmed.len();
    let word_len = trimmed
        .find(|c: char| c.is_whitespace())
        .unwrap_or(trimmed.len());
    if word_len == 0 {
        return None;
    }
    let rest = &trimmed[word_len..];
    let sep = rest.len() - rest.trim_start().len();
    Some((
        trimmed[..word_len].to_ascii_lowercase(),
        indent + word_len + sep,
    ))
}

impl ExtlinuxConf {
    pub fn parse(text: &str) -> ExtlinuxConf {
        let final_newline = text.ends_with('\n');
        let body = text.strip_suffix('\n').unwrap_or(text);
        let lines = if text.is_empty() {
            Vec::new()
        } else {
            body.split('\n').map(parse_line).collect()
        };
        ExtlinuxConf {
            lines,
            final_newline,
        }
    }

    /// The names of the entries, in order.
    pub fn labels(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                Line::Label { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The arguments of every `append` line, in order.
    pub fn appends(&self) -> Vec<&[String]> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                Line::Append { args, .. } => Some(args.as_slice()),
                _ => None,
            })
            .collect()
    }

    /// Adds each of `args` that an `append` line does not have yet to that line. Every
    /// entry must have its own `append` line: U-Boot boots an entry without one with
    /// whatever `bootargs` its environment holds, which an added line would replace.
    /// Returns whether anything changed.
    pub fn add_args(&mut self, args: &[String]) -> Result<bool> {
        let mut current: Option<(String, bool)> = None;
        let mut missing_append = Vec::new();
        let mut any_label = false;
        for line in &self.lines {
            match line {
                Line::Label { name, .. } => {
                    if let Some((previous, false)) = current.take() {
                        missing_append.push(previous);
                    }
                    current = Some((name.clone(), false));
                    any_label = true;
                }
                Line::Append { .. } => {
                    if let Some((_, seen)) = current.as_mut() {
                        *seen = true;
                    }
                }
                Line::Other(_) => {}
            }
        }
        if let Some((name, false)) = current {
            missing_append.push(name);
        }
        if !any_label {
            bail!("it has no `label` entry");
        }
        if !missing_append.is_empty() {
            bail!(
                "entry {} has no `append` line, so the kernel arguments cannot be added without \
                 replacing U-Boot's default bootargs; give it an `append` line with its full \
                 command line",
                missing_append.join(", ")
            );
        }
        let mut changed = false;
        for line in &mut self.lines {
            if let Line::Append { args: have, .. } = line {
                for a in args {
                    if !have.contains(a) {
                        have.push(a.clone());
                        changed = true;
                    }
                }
            }
        }
        Ok(changed)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            match line {
                Line::Label { raw, .. } | Line::Other(raw) => out.push_str(raw),
                Line::Append { head, args, tail } => {
                    out.push_str(head);
                    out.push_str(&args.join(" "));
                    out.push_str(tail);
                }
            }
        }
        if self.final_newline {
            out.push('\n');
        }
        out
    }
}

fn parse_line(line: &str) -> Line {
    match keyword(line) {
        Some((k, at)) if k == "append" => {
            let (value, tail) = match line[at..].strip_suffix('\r') {
                Some(v) => (v, "\r"),
                None => (&line[at..], ""),
            };
            let mut head = line[..at].to_string();
            if !head.ends_with(char::is_whitespace) {
                // `append` alone: the arguments need a separator.
                head.push(' ');
            }
            Line::Append {
                head,
                args: value.split_whitespace().map(str::to_string).collect(),
                tail,
            }
        }
        Some((k, at)) if k == "label" => Line::Label {
            raw: line.to_string(),
            name: line[at..].trim().to_string(),
        },
        _ => Line::Other(line.to_string()),
    }
}

/// Checks that each argument is one word that keeps the line intact.
fn check_args(args: &[String]) -> Result<()> {
    for a in args {
        if a.is_empty() || a.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("kernel argument '{a}' is empty or contains whitespace");
        }
    }
    Ok(())
}

/// Adds kernel arguments to every `append` line of the extlinux.conf the op names, each at
/// most once; the file must exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendArgs {
    pub args: Vec<String>,
}

impl FileEdit for AppendArgs {
    fn describe(&self) -> String {
        format!(
            "append to every extlinux.conf entry's command line: {}",
            self.args.join(" ")
        )
    }

    fn apply(
        &self,
        tree: &mut dyn Tree,
        path: &str,
        meta: &Meta,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let label = tree.name().to_string();
        check_args(&self.args).with_context(|| format!("{label}:{path}"))?;
        let old = tree.read(path)?.with_context(|| {
            format!(
                "{label}:{path} not found: the OS image is expected to boot through U-Boot's \
                 extlinux.conf there (run u-boot-update in the image, or check the catalog's \
                 boot.path)"
            )
        })?;
        let old = String::from_utf8(old).with_context(|| format!("{label}:{path} is not text"))?;
        let mut conf = ExtlinuxConf::parse(&old);
        let changed = conf
            .add_args(&self.args)
            .with_context(|| format!("cannot add kernel arguments to {label}:{path}"))?;
        let text = if changed {
            let new = conf.render();
            tree.write(path, &mut new.as_bytes(), new.len() as u64, meta)?;
            new
        } else {
            old
        };
        Ok(vec![(path.to_string(), text.into_bytes())])
    }
}

/// Adds kernel arguments to a command line file such as `/etc/kernel/cmdline` (the op's
/// path; one line of arguments), each at most once; the file must exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdlineFile {
    pub args: Vec<String>,
}

impl FileEdit for CmdlineFile {
    fn describe(&self) -> String {
        format!(
            "append to the command line u-boot-update uses: {}",
            self.args.join(" ")
        )
    }

    fn apply(
        &self,
        tree: &mut dyn Tree,
        path: &str,
        meta: &Meta,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let label = tree.name().to_string();
        check_args(&self.args).with_context(|| format!("{label}:{path}"))?;
        let old = tree.read(path)?.with_context(|| {
            format!(
                "{label}:{path} not found: u-boot-update rebuilds extlinux.conf from it at every \
                 kernel update, so without it the kernel arguments would be lost (check the \
                 catalog's boot.cmdline)"
            )
        })?;
        let old = String::from_utf8(old).with_context(|| format!("{label}:{path} is not text"))?;
        let text = match super::raspi::append_kernel_args(&old, &self.args) {
            Some(new) => {
                tree.write(path, &mut new.as_bytes(), new.len() as u64, meta)?;
                new
            }
            None => old,
        };
        Ok(vec![(path.to_string(), text.into_bytes())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    /// What u-boot-update writes on Ubuntu for Rockchip (tab indented, a rescue entry).
    const CONF: &str = "## /boot/extlinux/extlinux.conf\n\
##\n\
## IMPORTANT WARNING\n\
##\n\
## The configuration of this file is generated automatically.\n\
## Do not edit this file manually, use: u-boot-update\n\
\n\
default l0\n\
menu title U-Boot menu\n\
prompt 1\n\
timeout 20\n\
\n\
\n\
label l0\n\
\tmenu label Ubuntu 24.04.2 LTS 6.1.0-1025-rockchip\n\
\tlinux /boot/vmlinuz-6.1.0-1025-rockchip\n\
\tinitrd /boot/initrd.img-6.1.0-1025-rockchip\n\
\tfdtdir /lib/firmware/6.1.0-1025-rockchip/device-tree/\n\
\tappend root=UUID=3c7d0a4e rootwait rw console=ttyS2,1500000 console=tty1 cgroup_enable=cpuset cgroup_memory=1 cgroup_enable=memory\n\
\n\
label l0r\n\
\tmenu label Ubuntu 24.04.2 LTS 6.1.0-1025-rockchip (rescue target)\n\
\tlinux /boot/vmlinuz-6.1.0-1025-rockchip\n\
\tinitrd /boot/initrd.img-6.1.0-1025-rockchip\n\
\tfdtdir /lib/firmware/6.1.0-1025-rockchip/device-tree/\n\
\tappend root=UUID=3c7d0a4e rootwait rw console=ttyS2,1500000 console=tty1 cgroup_enable=cpuset cgroup_memory=1 cgroup_enable=memory single\n\
\t\n";

    #[test]
    fn every_entry_gets_each_argument_once() {
        let mut conf = ExtlinuxConf::parse(CONF);
        assert_eq!(conf.labels(), ["l0", "l0r"]);
        assert!(
            conf.add_args(&args(&["cgroup_memory=1", "quiet", "quiet"]))
                .unwrap()
        );
        let out = conf.render();
        for a in ExtlinuxConf::parse(&out).appends() {
            assert_eq!(a.iter().filter(|w| *w == "quiet").count(), 1, "{a:?}");
            assert_eq!(a.iter().filter(|w| *w == "cgroup_memory=1").count(), 1);
        }
        assert!(
            out.contains("cgroup_enable=memory quiet\n\nlabel l0r\n"),
            "{out}"
        );
        assert!(
            out.contains("cgroup_enable=memory single quiet\n\t\n"),
            "{out}"
        );
        // Only the two append lines changed.
        let changed: Vec<_> = CONF
            .lines()
            .zip(out.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(changed.len(), 2);
        assert_eq!(CONF.lines().count(), out.lines().count());
        // Again: nothing to do.
        let mut again = ExtlinuxConf::parse(&out);
        assert!(!again.add_args(&args(&["quiet"])).unwrap());
        assert_eq!(again.render(), out);
    }

    #[test]
    fn keywords_any_case_crlf_and_bare_append() {
        let text =
            "LABEL one\r\n  KERNEL /vmlinuz\r\n  APPEND root=/dev/sda2\r\nlabel two\n append\n";
        let mut conf = ExtlinuxConf::parse(text);
        assert!(conf.add_args(&args(&["a=1"])).unwrap());
        assert_eq!(
            conf.render(),
            "LABEL one\r\n  KERNEL /vmlinuz\r\n  APPEND root=/dev/sda2 a=1\r\nlabel two\n append a=1\n"
        );
        // A word that merely starts like the keyword is not one.
        let conf = ExtlinuxConf::parse("label x\nappendix y\n");
        assert!(conf.appends().is_empty());
    }

    #[test]
    fn refuses_entries_it_cannot_extend() {
        let e = ExtlinuxConf::parse("label a\n linux /v\nlabel b\n append x\n")
            .add_args(&args(&["q"]))
            .unwrap_err();
        assert!(e.to_string().contains("entry a has no `append`"), "{e}");
        let e = ExtlinuxConf::parse("# nothing\n")
            .add_args(&args(&["q"]))
            .unwrap_err();
        assert!(e.to_string().contains("no `label`"), "{e}");
        assert!(check_args(&args(&["a b"])).is_err());
        assert!(check_args(&args(&["a\nlabel x"])).is_err());
    }
}
