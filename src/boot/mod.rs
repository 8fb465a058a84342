//! Boot mechanisms: where each kind of OS image keeps its kernel command line, and the edit
//! that adds the arguments a board needs. One module per mechanism; the catalog names the
//! mechanism of each OS image (`boot: {kind: ...}`).

pub mod armbian_env;
pub mod extlinux;
pub mod raspi;

use std::sync::Arc;

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
