//! `key=value` boot environment files, like Armbian's `/boot/armbianEnv.txt` (imported by its
//! U-Boot script with `env import -t`): adding words to one key's value, each at most once.

use anyhow::{Context, Result, bail};

use crate::op::{FileEdit, Meta, Tree};

/// Adds words to the value of `key` in the `key=value` file the op names, each at most
/// once; the file must exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendWords {
    pub key: String,
    pub words: Vec<String>,
}

impl FileEdit for AppendWords {
    fn describe(&self) -> String {
        format!("append to {}=: {}", self.key, self.words.join(" "))
    }

    fn apply(
        &self,
        tree: &mut dyn Tree,
        path: &str,
        meta: &Meta,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let label = tree.name().to_string();
        let old = tree.read(path)?.with_context(|| {
            format!(
                "{label}:{path} not found: the board expects an Armbian image, which keeps its boot settings there"
            )
        })?;
        let old = String::from_utf8(old).with_context(|| format!("{label}:{path} is not text"))?;
        let new = append_words(&old, &self.key, &self.words)
            .with_context(|| format!("{label}:{path}"))?;
        let text = match new {
            Some(new) => {
                tree.write(path, &mut new.as_bytes(), new.len() as u64, meta)?;
                new
            }
            None => old,
        };
        Ok(vec![(path.to_string(), text.into_bytes())])
    }
}

/// Appends each of `words` that is not already among the space-separated words of `key`'s
/// value. When the key appears more than once the last line wins (as `env import` does) and
/// is the one edited; when it is absent a `key=...` line is added at the end. Every other
/// line is kept byte for byte. Returns `None` when nothing had to change.
pub fn append_words(text: &str, key: &str, words: &[String]) -> Result<Option<String>> {
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("'{key}' is not a boot environment key (letters, digits and '_')");
    }
    for w in words {
        if w.is_empty() || w.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("kernel argument '{w}' is empty or contains whitespace");
        }
    }
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let prefix = format!("{key}=");
    let found = lines.iter().rposition(|l| l.starts_with(&prefix));
    let value = found.map(|i| lines[i][prefix.len()..].to_string());
    let present: Vec<&str> = value
        .as_deref()
        .map(|v| v.split_whitespace().collect())
        .unwrap_or_default();
    let mut missing: Vec<&str> = Vec::new();
    for w in words {
        if !present.contains(&w.as_str()) && !missing.contains(&w.as_str()) {
            missing.push(w);
        }
    }
    if missing.is_empty() {
        return Ok(None);
    }
    let mut new_value = value.as_deref().unwrap_or("").trim_end().to_string();
    for w in missing {
        if !new_value.is_empty() {
            new_value.push(' ');
        }
        new_value.push_str(w);
    }
    let line = format!("{prefix}{new_value}");
    match found {
        Some(i) => lines[i] = line,
        None => lines.push(line),
    }
    let mut out = lines.join("\n");
    out.push('\n');
    Ok(Some(out))
}

/// The value of `key` as U-Boot's `env import` leaves it: the last `key=` line wins.
pub fn value<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    let prefix = format!("{key}=");
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim_end_matches('\r'))
}

/// Checks that the `rootdev=` of `text` (the image's armbianEnv.txt at `path`) names the root
/// filesystem by the UUID it has: the kernel would otherwise look for a root that is not
/// there. Device names (`/dev/mmcblk0p1`) are accepted as they are.
pub fn check_rootdev(text: &str, path: &str, fs_uuid: &str) -> Result<()> {
    let Some(rootdev) = value(text, "rootdev") else {
        bail!(
            "{path} has no rootdev= line: the boot script would not find the root filesystem; is this an Armbian image?"
        );
    };
    if let Some(uuid) = rootdev.strip_prefix("UUID=")
        && !uuid.eq_ignore_ascii_case(fs_uuid)
    {
        bail!(
            "{path} says rootdev=UUID={uuid} but the root filesystem's UUID is {fs_uuid}: the image would not boot; use an unmodified download"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootdev_must_name_the_root_filesystem() {
        let uuid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        check_rootdev(&format!("a=1\nrootdev=UUID={uuid}\r\n"), "env", uuid).unwrap();
        check_rootdev("rootdev=/dev/mmcblk0p1\n", "env", uuid).unwrap();
        let e = check_rootdev(
            &format!("rootdev=UUID={uuid}\nrootdev=UUID=1234\n"),
            "/boot/armbianEnv.txt",
            uuid,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("rootdev=UUID=1234") && e.to_string().contains(uuid),
            "{e}"
        );
        assert!(check_rootdev("x=1\n", "env", uuid).is_err());
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    const ENV: &str = "verbosity=1\nbootlogo=false\nrootdev=UUID=1234\nrootfstype=ext4\n";

    #[test]
    fn adds_the_key_when_absent_and_only_once() {
        let a = args(&["cgroup_enable=memory", "swapaccount=1"]);
        let once = append_words(ENV, "extraargs", &a).unwrap().unwrap();
        assert_eq!(
            once,
            format!("{ENV}extraargs=cgroup_enable=memory swapaccount=1\n")
        );
        assert_eq!(append_words(&once, "extraargs", &a).unwrap(), None);
    }

    #[test]
    fn extends_an_existing_value_keeping_other_lines() {
        let text = "a=1\nextraargs=quiet cgroup_enable=memory\r\nz=2";
        let out = append_words(text, "extraargs", &args(&["cgroup_enable=memory", "x=1"]))
            .unwrap()
            .unwrap();
        assert_eq!(out, "a=1\nextraargs=quiet cgroup_enable=memory x=1\nz=2\n");
        // Only the last occurrence counts, like `env import`.
        let dup = "extraargs=x=1\nextraargs=quiet\n";
        let out = append_words(dup, "extraargs", &args(&["x=1"]))
            .unwrap()
            .unwrap();
        assert_eq!(out, "extraargs=x=1\nextraargs=quiet x=1\n");
        // A key that merely starts the same is another key.
        let out = append_words("extraargs_x=1\n", "extraargs", &args(&["a"]))
            .unwrap()
            .unwrap();
        assert_eq!(out, "extraargs_x=1\nextraargs=a\n");
    }

    #[test]
    fn empty_file_empty_value_and_duplicates_in_the_request() {
        assert_eq!(
            append_words("", "extraargs", &args(&["a", "a"])).unwrap(),
            Some("extraargs=a\n".into())
        );
        assert_eq!(
            append_words("extraargs=\n", "extraargs", &args(&["a"])).unwrap(),
            Some("extraargs=a\n".into())
        );
        assert_eq!(append_words(ENV, "extraargs", &[]).unwrap(), None);
    }

    #[test]
    fn refuses_words_that_would_break_the_line() {
        for bad in ["a b", "a\nrootdev=x", "", "tab\there"] {
            let e = append_words(ENV, "extraargs", &args(&[bad])).unwrap_err();
            assert!(e.to_string().contains("whitespace"), "{e}");
        }
        assert!(append_words(ENV, "extra args", &args(&["a"])).is_err());
    }
}
