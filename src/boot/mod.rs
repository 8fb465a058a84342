//! Boot mechanisms: where each kind of OS image keeps its kernel command line, and the edit
//! that adds the arguments a board needs. One module per mechanism; the catalog names the
//! mechanism of each OS image (`boot: {kind: ...}`).

pub mod armbian_env;
pub mod raspi;

use std::sync::Arc;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::op::{Action, Op};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
pub enum BootConfig {
    /// Raspberry Pi firmware: `config.txt` on a FAT partition; the kernel command line is
    /// `cmdline.txt` (or the file named by `cmdline=`) under `os_prefix`.
    RaspiFirmware {
        partition: String,
        config_txt: String,
    },
    /// Armbian's U-Boot script reads `armbianEnv.txt` (`key=value` lines) from `/boot` on the
    /// root partition; extra kernel arguments go into its `extraargs=` line.
    ArmbianEnv {
        partition: String,
        #[serde(default = "default_armbian_env")]
        path: String,
    },
}

fn default_armbian_env() -> String {
    "/boot/armbianEnv.txt".into()
}

impl BootConfig {
    pub fn partition(&self) -> &str {
        match self {
            BootConfig::RaspiFirmware { partition, .. } => partition,
            BootConfig::ArmbianEnv { partition, .. } => partition,
        }
    }
}

/// Checks what the boot configuration of `image` says about the root filesystem against the
/// image itself (after any growth): Armbian's `rootdev=UUID=` must be the root's UUID.
pub fn check_root(
    file: &std::fs::File,
    disk: &crate::disk::Disk,
    image: &crate::boards::OsImage,
) -> anyhow::Result<()> {
    use anyhow::Context;
    match &image.boot {
        BootConfig::RaspiFirmware { .. } => Ok(()),
        BootConfig::ArmbianEnv { partition, path } => {
            let part = crate::fs::partition(disk, partition)?;
            let root = crate::fs::partition(disk, &image.root.partition)?;
            let Some(uuid) = &root.uuid else {
                anyhow::bail!(
                    "partition '{}' holds no ext4 filesystem",
                    image.root.partition
                );
            };
            let fs = crate::fs::ext4_reader(file, part)?;
            let text = fs
                .read_to_string(path.as_str())
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| {
                    format!("cannot read {partition}:{path}, where Armbian keeps its boot settings")
                })?;
            armbian_env::check_rootdev(&text, &format!("{partition}:{path}"), uuid)
        }
    }
}

/// The role-wide op that adds `args` to the kernel command line of an image booted by
/// `boot`, each at most once.
pub fn kernel_args(boot: &BootConfig, args: &[String]) -> Op {
    let (partition, path, edit): (&str, &str, Action) = match boot {
        BootConfig::RaspiFirmware {
            partition,
            config_txt,
        } => (
            partition,
            config_txt,
            Action::Edit(Arc::new(raspi::KernelArgs {
                args: args.to_vec(),
            })),
        ),
        BootConfig::ArmbianEnv { partition, path } => (
            partition,
            path,
            Action::Edit(Arc::new(armbian_env::AppendWords {
                key: "extraargs".into(),
                words: args.to_vec(),
            })),
        ),
    };
    Op::new(
        partition,
        &format!("/{}", path.trim_start_matches('/')),
        edit,
        0o644,
    )
    .role_wide()
}

/// The node's own op that sets `key=value` on the kernel command line, replacing any other
/// value of `key` (cloud-init's `ds=nocloud;i=<instance-id>`). Only the Raspberry Pi
/// firmware's command line is a place for it.
pub fn set_kernel_arg(boot: &BootConfig, key: &str, value: &str) -> Result<Op> {
    match boot {
        BootConfig::RaspiFirmware {
            partition,
            config_txt,
        } => Ok(Op::new(
            partition,
            &format!("/{}", config_txt.trim_start_matches('/')),
            Action::Edit(Arc::new(raspi::SetKernelArg {
                key: key.into(),
                value: value.into(),
            })),
            0o644,
        )),
        BootConfig::ArmbianEnv { path, .. } => bail!(
            "the image boots through {path}, where cloud-init's datasource cannot be named on the kernel command line: remove `cmdline_datasource` from its firstboot"
        ),
    }
}
