//! The inventory's `locale` against each base image: once per base image, on the image as
//! decompressed, before any node image is written.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;

use crate::config::Locale;
use crate::disk::Disk;
use crate::firstboot::locale::{self, Refusal};
use crate::plan::Plan;

/// What a check names in its message: the setting, where it is, and the node whose base
/// image it reads.
#[derive(Clone, Copy)]
pub struct LocaleCheck<'a> {
    pub locale: &'a Locale,
    pub config: &'a Path,
}

impl LocaleCheck<'_> {
    /// Checks the decompressed image at `img` (the base of `plan`, downloaded as `base_file`).
    pub fn check(&self, img: &Path, plan: &Plan, base_file: &str) -> Result<()> {
        let disk = Disk::read(img)?;
        let part = crate::fs::partition(&disk, &plan.image.root.partition)?;
        let file = std::fs::File::open(img)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", img.display()))?;
        let fs = crate::fs::ext4_reader(&file, part)?;
        let found = locale::read(&fs).map_err(|e| {
            e.context(format!(
                "reading the locales of the OS image '{}' ({base_file})",
                plan.image.name
            ))
        })?;
        found
            .honours(self.locale, &plan.image.firstboot)
            .map_err(|r| self.refusal(r, plan, base_file))
    }

    fn refusal(&self, r: Refusal, plan: &Plan, base_file: &str) -> anyhow::Error {
        let instead = match r.instead.is_empty() {
            true => String::new(),
            false => format!(", or name one it can honour: {}", r.instead.join(", ")),
        };
        anyhow::anyhow!(
            "`locale: {}` in {}: the OS image '{}' ({base_file}) of node '{}' (board {}) cannot honour it: {}. Leave `locale` out to keep the image's own locale{instead}",
            self.locale,
            self.config.display(),
            plan.image.name,
            plan.node,
            plan.board,
            r.reason,
        )
    }
}

/// The base images whose locales were checked, by digest: each is read once.
#[derive(Default)]
pub struct Checked(BTreeSet<String>);

impl Checked {
    /// Checks the base with digest `base_sha256` unless it was checked already.
    pub fn once(
        &mut self,
        check: Option<LocaleCheck<'_>>,
        base_sha256: &str,
        img: &Path,
        plan: &Plan,
        base_file: &str,
    ) -> Result<()> {
        if let Some(c) = check
            && !self.0.contains(base_sha256)
        {
            c.check(img, plan, base_file)?;
            self.0.insert(base_sha256.to_string());
        }
        Ok(())
    }

    pub fn contains(&self, base_sha256: &str) -> bool {
        self.0.contains(base_sha256)
    }
}
