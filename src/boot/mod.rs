//! Boot mechanisms: where each kind of OS image keeps its kernel command line, and the edit
//! that adds the arguments a board needs. One module per mechanism; the catalog names the
//! mechanism of each OS image (`boot: {kind: ...}`).

pub mod armbian_env;
pub mod extlinux;
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
    /// U-Boot's distro boot reads `extlinux.conf` from the root partition; kernel arguments
    /// go into its `append` lines and into the file `u-boot-update` rebuilds it from.
    Extlinux {
        partition: String,
        #[serde(default = "default_extlinux_conf")]
        path: String,
        /// The command line `u-boot-update` puts into `append` at every kernel update.
        #[serde(default = "default_kernel_cmdline")]
        cmdline: String,
    },
}

fn default_armbian_env() -> String {
    "/boot/armbianEnv.txt".into()
}

fn default_extlinux_conf() -> String {
    "/boot/extlinux/extlinux.conf".into()
}

fn default_kernel_cmdline() -> String {
    "/etc/kernel/cmdline".into()
}

impl BootConfig {
    pub fn partition(&self) -> &str {
        match self {
            BootConfig::RaspiFirmware { partition, .. } => partition,
            BootConfig::ArmbianEnv { partition, .. } => partition,
            BootConfig::Extlinux { partition, .. } => partition,
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
        BootConfig::RaspiFirmware { .. } | BootConfig::Extlinux { .. } => Ok(()),
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

/// The role-wide ops that add `args` to the kernel command line of an image booted by
/// `boot`, each at most once.
pub fn kernel_args(boot: &BootConfig, args: &[String]) -> Vec<Op> {
    let edit = |partition: &str, path: &str, edit: Action| {
        Op::new(
            partition,
            &format!("/{}", path.trim_start_matches('/')),
            edit,
            0o644,
        )
        .role_wide()
    };
    match boot {
        BootConfig::RaspiFirmware {
            partition,
            config_txt,
        } => vec![edit(
            partition,
            config_txt,
            Action::Edit(Arc::new(raspi::KernelArgs {
                args: args.to_vec(),
            })),
        )],
        BootConfig::ArmbianEnv { partition, path } => vec![edit(
            partition,
            path,
            Action::Edit(Arc::new(armbian_env::AppendWords {
                key: "extraargs".into(),
                words: args.to_vec(),
            })),
        )],
        BootConfig::Extlinux {
            partition,
            path,
            cmdline,
        } => vec![
            edit(
                partition,
                path,
                Action::Edit(Arc::new(extlinux::AppendArgs {
                    args: args.to_vec(),
                })),
            ),
            edit(
                partition,
                cmdline,
                Action::Edit(Arc::new(extlinux::CmdlineFile {
                    args: args.to_vec(),
                })),
            ),
        ],
    }
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
        BootConfig::ArmbianEnv { path, .. } | BootConfig::Extlinux { path, .. } => bail!(
            "the image boots through {path}, where cloud-init's datasource cannot be named on the kernel command line: remove `cmdline_datasource` from its firstboot"
        ),
    }
}
