//! The device tree overlays of an Armbian image as its boot script applies them, for the
//! `fdtoverlays` line of the node's pxelinux entry.
//!
//! Armbian's boot scripts (`config/bootscripts/boot-sun50i-next.cmd`, `boot-rockchip64.cmd`,
//! `boot-sunxi.cmd` of armbian/build) load, after armbianEnv.txt:
//! `/boot/dtb/<vendor>/overlay/${overlay_prefix}-<name>.dtbo` for each name of `overlays=`
//! (`<vendor>` is `allwinner`, `rockchip`..., none on 32-bit sunxi: the directory of the
//! device tree), then `/boot/overlay-user/<name>.dtbo` for each of `user_overlays=`, and apply
//! them in that order, skipping a file that is missing. U-Boot's `pxe boot` applies the files
//! of `fdtoverlays` in order to the device tree of `fdt`/`fdtdir`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};

/// An overlay the boot script applies, where it is in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlay {
    /// A file of the kernel's device trees: its path below `/boot/dtb/`.
    Kernel(String),
    /// `/boot/overlay-user/<name>.dtbo`: its name.
    User(String),
}

/// What the boot script would apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// In the order they are applied.
    pub overlays: Vec<Overlay>,
    /// Behaviour of the card's boot that a pxelinux entry does not reproduce.
    pub warnings: Vec<String>,
}

/// The overlays `env` (armbianEnv.txt, named `env_file` in messages) asks for. `dtb_files`
/// are the files below `/boot/dtb/` (`allwinner/overlay/x.dtbo`), `user_files` the names
/// present in `/boot/overlay-user/` (without `.dtbo`). Fails naming every overlay that is
/// missing: the card's boot skips it silently, an exported tree would boot without it
/// just as silently.
pub fn resolve(
    env: &BTreeMap<String, String>,
    dtb_files: &BTreeSet<String>,
    user_files: &BTreeSet<String>,
    env_file: &str,
) -> Result<Resolved> {
    let names = |key: &str| -> Vec<String> {
        env.get(key)
            .map(|v| v.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    };
    let prefix = env.get("overlay_prefix").map(String::as_str).unwrap_or("");
    // The overlay directory of the device tree's vendor; without fdtfile= (U-Boot's own
    // default names the device tree) every overlay directory of the image is a candidate.
    let dirs: Vec<String> = match env.get("fdtfile").filter(|f| !f.is_empty()) {
        Some(f) => vec![match f.rsplit_once('/') {
            Some((vendor, _)) => format!("{vendor}/overlay"),
            None => "overlay".to_string(),
        }],
        None => dtb_files
            .iter()
            .filter_map(|f| f.rsplit_once('/').map(|(d, _)| d))
            .filter(|d| *d == "overlay" || d.ends_with("/overlay"))
            .map(str::to_string)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    let mut out = Resolved::default();
    let mut problems = Vec::new();
    let kernel = names("overlays");
    for name in &kernel {
        let file = format!("{prefix}-{name}.dtbo");
        let found: Vec<String> = dirs
            .iter()
            .map(|d| format!("{d}/{file}"))
            .filter(|p| dtb_files.contains(p))
            .collect();
        match found.as_slice() {
            [one] => out.overlays.push(Overlay::Kernel(one.clone())),
            [] => problems.push(format!(
                "overlays= names '{name}', but the image has no {file} in {}: Armbian's boot \
                 script skips it silently; remove '{name}' from overlays= (armbian-config, or \
                 edit armbianEnv.txt), or fix overlay_prefix= ('{prefix}')",
                match dirs.as_slice() {
                    [] => "/boot/dtb/ (it has no overlay directory)".to_string(),
                    ds => ds
                        .iter()
                        .map(|d| format!("/boot/dtb/{d}/"))
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            )),
            many => problems.push(format!(
                "overlays= names '{name}', found as {}: add fdtfile=<vendor>/<board>.dtb to \
                 armbianEnv.txt so the vendor's overlay is the one applied",
                many.iter()
                    .map(|p| format!("/boot/dtb/{p}"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            )),
        }
    }
    for name in names("user_overlays") {
        if user_files.contains(&name) {
            out.overlays.push(Overlay::User(name));
        } else {
            problems.push(format!(
                "user_overlays= names '{name}', but the image has no \
                 /boot/overlay-user/{name}.dtbo: Armbian's boot script skips it silently; add \
                 it (armbian-add-overlay {name}.dts) or remove it from user_overlays="
            ));
        }
    }
    if !problems.is_empty() {
        bail!("{env_file}:\n  - {}", problems.join("\n  - "));
    }
    // After the overlays the script runs the vendor's fixup script, which applies the
    // param_* settings; a pxelinux entry runs no script.
    let params: Vec<&str> = env
        .keys()
        .filter(|k| k.starts_with("param_"))
        .map(String::as_str)
        .collect();
    let fixups: Vec<String> = dirs
        .iter()
        .map(|d| format!("{d}/{prefix}-fixup.scr"))
        .filter(|p| dtb_files.contains(p))
        .collect();
    if !kernel.is_empty() && !params.is_empty() && !fixups.is_empty() {
        out.warnings.push(format!(
            "{env_file} sets {} for the overlays, which Armbian's boot script applies with \
             /boot/dtb/{}; U-Boot's pxe runs no script, so the network boot applies the \
             overlays with their default parameters",
            params.join(", "),
            fixups[0]
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    const DTBS: &[&str] = &[
        "allwinner/sun50i-h618-orangepi-zero3.dtb",
        "allwinner/overlay/sun50i-h616-uart5.dtbo",
        "allwinner/overlay/sun50i-h616-i2c3.dtbo",
        "allwinner/overlay/sun50i-h616-fixup.scr",
    ];

    #[test]
    fn overlays_then_user_overlays_in_the_boot_scripts_order() {
        let e = env(
            "overlay_prefix=sun50i-h616\noverlays=uart5 i2c3\nuser_overlays=mine\nfdtfile=allwinner/sun50i-h618-orangepi-zero3.dtb",
        );
        let r = resolve(&e, &set(DTBS), &set(&["mine"]), "armbianEnv.txt").unwrap();
        assert_eq!(
            r.overlays,
            [
                Overlay::Kernel("allwinner/overlay/sun50i-h616-uart5.dtbo".into()),
                Overlay::Kernel("allwinner/overlay/sun50i-h616-i2c3.dtbo".into()),
                Overlay::User("mine".into()),
            ]
        );
        assert!(r.warnings.is_empty());
        // Without fdtfile= the only overlay directory holding the file is used.
        let e = env("overlay_prefix=sun50i-h616\noverlays=uart5");
        let r = resolve(&e, &set(DTBS), &set(&[]), "armbianEnv.txt").unwrap();
        assert_eq!(
            r.overlays,
            [Overlay::Kernel(
                "allwinner/overlay/sun50i-h616-uart5.dtbo".into()
            )]
        );
        // None asked, none applied.
        let r = resolve(&env("overlay_prefix=x"), &set(DTBS), &set(&[]), "e").unwrap();
        assert_eq!(r, Resolved::default());
    }

    #[test]
    fn a_missing_overlay_is_refused_naming_the_file_and_the_fix() {
        let e = env(
            "overlay_prefix=sun50i-h616\noverlays=uart5 spi-spidev\nuser_overlays=gone\nfdtfile=allwinner/sun50i-h618-orangepi-zero3.dtb",
        );
        let err = resolve(&e, &set(DTBS), &set(&[]), "armbi_root:/boot/armbianEnv.txt")
            .unwrap_err()
            .to_string();
        for part in [
            "armbi_root:/boot/armbianEnv.txt",
            "no sun50i-h616-spi-spidev.dtbo in /boot/dtb/allwinner/overlay/",
            "remove 'spi-spidev' from overlays=",
            "no /boot/overlay-user/gone.dtbo",
        ] {
            assert!(err.contains(part), "{part} not in {err}");
        }
        assert!(!err.contains("'uart5'"), "{err}");
        // Two vendors ship it and fdtfile= does not say which.
        let two = set(&["allwinner/overlay/p-x.dtbo", "rockchip/overlay/p-x.dtbo"]);
        let err = resolve(&env("overlay_prefix=p\noverlays=x"), &two, &set(&[]), "e")
            .unwrap_err()
            .to_string();
        assert!(err.contains("add fdtfile="), "{err}");
    }

    #[test]
    fn parameters_of_the_fixup_script_are_warned_about() {
        let e = env("overlay_prefix=sun50i-h616\noverlays=uart5\nparam_uart5_rtscts=1");
        let r = resolve(&e, &set(DTBS), &set(&[]), "armbianEnv.txt").unwrap();
        assert_eq!(r.warnings.len(), 1);
        assert!(
            r.warnings[0].contains("param_uart5_rtscts")
                && r.warnings[0].contains("allwinner/overlay/sun50i-h616-fixup.scr"),
            "{:?}",
            r.warnings
        );
    }
}
