//! Raspberry Pi firmware boot configuration: where the kernel command line lives and how to
//! add arguments to it.

use anyhow::{Context, Result, bail};

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
        edit_cmdlines(tree, config_path, meta, |line| {
            append_kernel_args(line, &self.args)
        })
    }
}

/// Sets one `key=value` kernel argument, replacing any other value of `key`: the node's own
/// `ds=nocloud;i=<instance-id>` on images whose cloud-init is told its datasource there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetKernelArg {
    pub key: String,
    pub value: String,
}

impl FileEdit for SetKernelArg {
    fn describe(&self) -> String {
        format!(
            "set on the kernel command line: {}={}",
            self.key, self.value
        )
    }

    fn apply(
        &self,
        tree: &mut dyn Tree,
        config_path: &str,
        meta: &Meta,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        edit_cmdlines(tree, config_path, meta, |line| {
            set_kernel_arg(line, &self.key, &self.value)
        })
    }
}

/// Applies `edit` to every command line file the firmware may read, as `config.txt` at
/// `config_path` names them: the one of a normal boot must exist; those only a conditional
/// section names (`[tryboot]` with `os_prefix=new/` on Ubuntu's A/B boot) are edited when
/// they exist, so a tried and promoted boot keeps the arguments too. `edit` returns `None`
/// when a file needs no change.
fn edit_cmdlines(
    tree: &mut dyn Tree,
    config_path: &str,
    meta: &Meta,
    edit: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let label = tree.name().to_string();
    let config = tree.read(config_path)?.with_context(|| {
        format!("{label}:{config_path} not found: the board expects a Raspberry Pi boot partition")
    })?;
    let files = cmdline_files(&String::from_utf8_lossy(&config));
    let mut out = Vec::new();
    for (i, rel) in std::iter::once(&files.main)
        .chain(&files.conditional)
        .enumerate()
    {
        let path = format!("/{rel}");
        let Some(cmdline) = tree.read(&path)? else {
            if i == 0 {
                bail!(
                    "{label}:{path} (named by {config_path}) not found: the image does not boot as its catalog entry says; check the board's `os` or the image given"
                );
            }
            continue;
        };
        let cmdline =
            String::from_utf8(cmdline).with_context(|| format!("{label}:{path} is not text"))?;
        let new = edit(&cmdline).unwrap_or(cmdline);
        tree.write(&path, &mut new.as_bytes(), new.len() as u64, meta)?;
        out.push((path, new.into_bytes()));
    }
    Ok(out)
}

/// The command line files `config.txt` names, relative to the root of the boot partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdlineFiles {
    /// The file of a normal boot: settings before any section and in `[all]` sections.
    pub main: String,
    /// Other files that settings under a conditional section (`[tryboot]`, `[pi4]`, ...)
    /// would make the firmware read, in the order they appear.
    pub conditional: Vec<String>,
}

/// The command line file named by config.txt, relative to the root of the boot partition.
pub fn cmdline_path(config_txt: &str) -> String {
    cmdline_files(config_txt).main
}

/// Honours `cmdline=` (default `cmdline.txt`) and `os_prefix=` (prepended as is, as the
/// firmware does: `os_prefix=current/` gives `current/cmdline.txt`). Lines before any section
/// and in `[all]` sections apply to every boot; later lines win. A conditional section that
/// sets either names another file: its own value with the unconditional other one. `[none]`
/// sections never apply.
pub fn cmdline_files(config_txt: &str) -> CmdlineFiles {
    #[derive(Default)]
    struct Section {
        never: bool,
        cmdline: Option<String>,
        prefix: Option<String>,
    }
    let mut cmdline = "cmdline.txt".to_string();
    let mut prefix = String::new();
    // None while no filter is active.
    let mut section: Option<Section> = None;
    let mut conditional: Vec<Section> = Vec::new();
    for raw in config_txt.lines() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            conditional.extend(section.take());
            if !line.eq_ignore_ascii_case("[all]") {
                section = Some(Section {
                    never: line.eq_ignore_ascii_case("[none]"),
                    ..Section::default()
                });
            }
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().to_string();
        match (k.trim(), &mut section) {
            ("cmdline", None) => cmdline = v,
            ("os_prefix", None) => prefix = v,
            ("cmdline", Some(s)) => s.cmdline = Some(v),
            ("os_prefix", Some(s)) => s.prefix = Some(v),
            _ => {}
        }
    }
    conditional.extend(section);
    let join = |prefix: &str, cmdline: &str| {
        format!(
            "{}{}",
            prefix.trim_start_matches('/'),
            cmdline.trim_start_matches('/')
        )
    };
    let main = join(&prefix, &cmdline);
    let mut others: Vec<String> = Vec::new();
    for s in conditional {
        if s.never || (s.cmdline.is_none() && s.prefix.is_none()) {
            continue;
        }
        let path = join(
            s.prefix.as_deref().unwrap_or(&prefix),
            s.cmdline.as_deref().unwrap_or(&cmdline),
        );
        if path != main && !others.contains(&path) {
            others.push(path);
        }
    }
    CmdlineFiles {
        main,
        conditional: others,
    }
}

/// Sets `key=value` on the command line, removing every other `key=...` word; `None` when it
/// is already there exactly once.
pub fn set_kernel_arg(cmdline: &str, key: &str, value: &str) -> Option<String> {
    let word = format!("{key}={value}");
    let prefix = format!("{key}=");
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    let same: Vec<&&str> = words.iter().filter(|w| w.starts_with(&prefix)).collect();
    if same.len() == 1 && *same[0] == word && !cmdline.trim_end_matches(['\n', '\r']).contains('\n')
    {
        return None;
    }
    let mut kept: Vec<&str> = words
        .into_iter()
        .filter(|w| !w.starts_with(&prefix))
        .collect();
    kept.push(&word);
    Some(kept.join(" ") + "\n")
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

    /// config.txt of Ubuntu 25.10 and later (A/B boot).
    const AB_CONFIG: &str = "[all]\nkernel=vmlinuz\ncmdline=cmdline.txt\ninitramfs initrd.img followkernel\n\n[pi4]\narm_boost=1\n\n[all]\nos_prefix=current/\n\n[tryboot]\nos_prefix=new/\n\n[all]\ndtparam=watchdog=on\n";

    #[test]
    fn ab_boot_reads_current_and_tries_new() {
        let f = cmdline_files(AB_CONFIG);
        assert_eq!(f.main, "current/cmdline.txt");
        assert_eq!(f.conditional, vec!["new/cmdline.txt".to_string()]);
    }

    #[test]
    fn conditional_sections_name_other_files_and_none_never_applies() {
        let f = cmdline_files(
            "[pi4]\nos_prefix=pi4/\n[none]\ncmdline=never.txt\n[all]\ncmdline=c.txt\n[pi5]\ncmdline=x.txt\n",
        );
        assert_eq!(f.main, "c.txt");
        assert_eq!(
            f.conditional,
            vec!["pi4/c.txt".to_string(), "x.txt".to_string()]
        );
        assert!(cmdline_files("cmdline=a.txt\n").conditional.is_empty());
    }

    #[test]
    fn a_kernel_arg_is_set_once_replacing_other_values() {
        let line = "console=tty1 root=PARTUUID=abcd-02 rootwait ds=nocloud;i=old resize\n";
        let set = set_kernel_arg(line, "ds", "nocloud;i=new").unwrap();
        assert_eq!(
            set,
            "console=tty1 root=PARTUUID=abcd-02 rootwait resize ds=nocloud;i=new\n"
        );
        assert_eq!(set_kernel_arg(&set, "ds", "nocloud;i=new"), None);
        let added = set_kernel_arg("a b", "ds", "nocloud;i=x").unwrap();
        assert_eq!(added, "a b ds=nocloud;i=x\n");
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
