//! `pxelinux.cfg/` entries as U-Boot's `pxe get` reads them: one label that boots a kernel,
//! its device tree and initramfs with a command line.

/// The device tree: a file, or a directory where U-Boot picks `$fdtfile` itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fdt {
    File(String),
    Dir(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PxeEntry {
    pub label: String,
    /// Paths relative to the TFTP root.
    pub kernel: String,
    pub fdt: Fdt,
    /// Device tree overlays applied in order to the device tree (U-Boot's `fdtoverlays`,
    /// which needs `fdtoverlay_addr_r` in its environment).
    pub fdtoverlays: Vec<String>,
    pub initrd: Option<String>,
    pub append: Vec<String>,
}

impl PxeEntry {
    pub fn render(&self) -> String {
        let mut s = format!(
            "# written by pikube-image build --netboot\ndefault {l}\nprompt 0\ntimeout 1\n\nlabel {l}\n",
            l = self.label
        );
        s.push_str(&format!("    kernel /{}\n", self.kernel));
        match &self.fdt {
            Fdt::File(f) => s.push_str(&format!("    fdt /{f}\n")),
            Fdt::Dir(d) => s.push_str(&format!("    fdtdir /{d}\n")),
        }
        if !self.fdtoverlays.is_empty() {
            let paths: Vec<String> = self.fdtoverlays.iter().map(|o| format!("/{o}")).collect();
            s.push_str(&format!("    fdtoverlays {}\n", paths.join(" ")));
        }
        if let Some(i) = &self.initrd {
            s.push_str(&format!("    initrd /{i}\n"));
        }
        s.push_str(&format!("    append {}\n", self.append.join(" ")));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlays_follow_the_device_tree() {
        let mut e = PxeEntry {
            label: "opi1".into(),
            kernel: "boot/a/vmlinuz".into(),
            fdt: Fdt::Dir("boot/a/dtb/".into()),
            fdtoverlays: vec![
                "boot/a/dtb/x/overlay/p-u.dtbo".into(),
                "overlay-user/opi1/m.dtbo".into(),
            ],
            initrd: None,
            append: vec!["ip=dhcp".into()],
        };
        assert!(e.render().ends_with(
            "    kernel /boot/a/vmlinuz\n    fdtdir /boot/a/dtb/\n    fdtoverlays /boot/a/dtb/x/overlay/p-u.dtbo /overlay-user/opi1/m.dtbo\n    append ip=dhcp\n"
        ));
        e.fdtoverlays.clear();
        assert!(!e.render().contains("fdtoverlays"));
    }
}
