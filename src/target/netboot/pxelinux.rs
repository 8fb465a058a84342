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
        if let Some(i) = &self.initrd {
            s.push_str(&format!("    initrd /{i}\n"));
        }
        s.push_str(&format!("    append {}\n", self.append.join(" ")));
        s
    }
}
