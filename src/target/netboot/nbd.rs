//! The `nbd-server` configuration of a netboot tree: one export per node, its disk image.

use std::path::PathBuf;

use crate::config::Hostname;

#[derive(Debug, Clone, PartialEq)]
pub struct NbdConfig {
    pub port: u16,
    /// Let clients list the exports (`nbd-client -l`).
    pub allow_list: bool,
    pub exports: Vec<Export>,
}

/// One export: its name (the node's) and the image file served.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    pub name: Hostname,
    pub file: PathBuf,
}

impl NbdConfig {
    /// The INI file nbd-server reads (`nbd-server -C FILE`): `[generic]`, then a section per
    /// export. Values are never quoted; comments only on lines of their own.
    pub fn render(&self) -> String {
        let mut s = String::from(
            "# nbd-server configuration written by pikube-image build --netboot: each node's\n# disk image is its root block device. Run: nbd-server -d -C THIS_FILE\n[generic]\n",
        );
        s.push_str(&format!("port = {}\n", self.port));
        s.push_str(&format!("allowlist = {}\n", self.allow_list));
        for e in &self.exports {
            s.push_str(&format!(
                "[{}]\nexportname = {}\n",
                e.name,
                e.file.display()
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_section_per_export() {
        let c = NbdConfig {
            port: 10809,
            allow_list: true,
            exports: vec![Export {
                name: Hostname::try_from("cp1".to_string()).unwrap(),
                file: "/srv/images/cp1.img".into(),
            }],
        };
        assert!(c.render().ends_with(
            "[generic]\nport = 10809\nallowlist = true\n[cp1]\nexportname = /srv/images/cp1.img\n"
        ));
    }
}
