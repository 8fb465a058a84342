//! Typed edits of system files that an image without cloud-init ships and a headless node must
//! not keep as they are: root's well-known password in `/etc/shadow`, and settings in
//! `KEY=value` files read both by the shell and by systemd's `EnvironmentFile=`
//! (`/etc/default/armbian-firstrun`). Every other line stays byte for byte.

use anyhow::{Context, Result, bail};

use crate::op::{FileEdit, Meta, Tree};

/// Group id of `shadow` on Debian and Ubuntu (fixed by base-passwd), which owns /etc/shadow.
pub const SHADOW_GID: u32 = 42;

/// Locks a user's password in `/etc/shadow` as `passwd -l` does: a `!` before the hash, which
/// keeps the hash but matches no password. Login by SSH key and `su` from root still work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockPassword {
    pub user: String,
}

impl FileEdit for LockPassword {
    fn describe(&self) -> String {
        format!("lock the password of {}", self.user)
    }

    fn apply(
        &self,
        tree: &mut dyn Tree,
        path: &str,
        meta: &Meta,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let label = tree.name().to_string();
        let old = tree.read(path)?.with_context(|| {
            format!("{label}:{path} not found: the image has no shadow password file, so its accounts cannot be checked; is it a Debian or Ubuntu root filesystem?")
        })?;
        let old = String::from_utf8(old).with_context(|| format!("{label}:{path} is not text"))?;
        let text =
            match lock_password(&old, &self.user).with_context(|| format!("{label}:{path}"))? {
                Some(new) => {
                    tree.write(path, &mut new.as_bytes(), new.len() as u64, meta)?;
                    new
                }
                None => old,
            };
        Ok(vec![(path.to_string(), text.into_bytes())])
    }
}

/// The shadow file with `user`'s password locked; `None` when it already was (a password
/// field starting with `!` or `*`). Fails when the user has no entry or the entry is not a
/// shadow line.
pub fn lock_password(text: &str, user: &str) -> Result<Option<String>> {
    let mut found = false;
    let mut changed = false;
    let mut out = String::with_capacity(text.len() + 1);
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let mut fields = body.splitn(3, ':');
        if fields.next() != Some(user) {
            out.push_str(line);
            continue;
        }
        let (Some(password), Some(rest)) = (fields.next(), fields.next()) else {
            bail!("the entry of {user} is not a shadow line (name:password:...)");
        };
        found = true;
        if password.starts_with('!') || password.starts_with('*') {
            out.push_str(line);
            continue;
        }
        changed = true;
        out.push_str(&format!("{user}:!{password}:{rest}"));
        if line.ends_with('\n') {
            out.push('\n');
        }
    }
    if !found {
        bail!("{user} has no entry: the image's accounts are not the ones expected");
    }
    Ok(changed.then_some(out))
}

/// Sets `key=value` in a file of `KEY=value` lines (shell and `EnvironmentFile=` syntax):
/// every assignment of the key gets the value, or one line is added when there is none. A
/// missing file is left missing: the setting belongs to a tool the image does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetVariable {
    pub key: String,
    pub value: String,
}

impl FileEdit for SetVariable {
    fn describe(&self) -> String {
        format!("set {}={}", self.key, self.value)
    }

    fn apply(
        &self,
        tree: &mut dyn Tree,
        path: &str,
        meta: &Meta,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let label = tree.name().to_string();
        let Some(old) = tree.read(path)? else {
            return Ok(Vec::new());
        };
        let old = String::from_utf8(old).with_context(|| format!("{label}:{path} is not text"))?;
        let text = match set_variable(&old, &self.key, &self.value)
            .with_context(|| format!("{label}:{path}"))?
        {
            Some(new) => {
                tree.write(path, &mut new.as_bytes(), new.len() as u64, meta)?;
                new
            }
            None => old,
        };
        Ok(vec![(path.to_string(), text.into_bytes())])
    }
}

/// The file with every assignment of `key` (`KEY=...`, `export KEY=...`) set to `value`, or
/// with `key=value` appended when the key is not assigned; `None` when nothing changes.
pub fn set_variable(text: &str, key: &str, value: &str) -> Result<Option<String>> {
    if key.is_empty()
        || key.starts_with(|c: char| c.is_ascii_digit())
        || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        bail!("'{key}' is not a variable name (letters, digits and '_')");
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:,+@".contains(c))
    {
        bail!("'{value}' would need quoting; only plain words are set");
    }
    let mut found = false;
    let mut out = String::with_capacity(text.len() + key.len() + value.len() + 2);
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let indent = &body[..body.len() - body.trim_start().len()];
        let stmt = body.trim_start();
        let (export, rest) = match stmt.strip_prefix("export ") {
            Some(r) => ("export ", r.trim_start()),
            None => ("", stmt),
        };
        if rest.strip_prefix(key).is_some_and(|r| r.starts_with('=')) {
            found = true;
            out.push_str(&format!("{indent}{export}{key}={value}"));
            out.push_str(&line[body.len()..]);
        } else {
            out.push_str(line);
        }
    }
    if !found {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("{key}={value}\n"));
    }
    Ok((out != text).then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHADOW: &str = "root:$y$j9T$salt$hash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\nops:!:19000::::::\n";

    #[test]
    fn locks_once_and_keeps_the_hash_and_other_lines() {
        let locked = lock_password(SHADOW, "root").unwrap().unwrap();
        assert_eq!(
            locked,
            SHADOW.replace("root:$y$", "root:!$y$"),
            "only root's field changes"
        );
        assert_eq!(lock_password(&locked, "root").unwrap(), None);
        assert_eq!(lock_password(SHADOW, "daemon").unwrap(), None);
        assert_eq!(lock_password(SHADOW, "ops").unwrap(), None);
        // An empty password (no password needed) becomes a lock too.
        assert_eq!(
            lock_password("root::1:0:99999:7:::", "root").unwrap(),
            Some("root:!:1:0:99999:7:::".into())
        );
        // A name that merely starts the same is another user.
        let e = lock_password("rootkit:x:1::::::\n", "root").unwrap_err();
        assert!(e.to_string().contains("no entry"), "{e}");
        assert!(lock_password("root\n", "root").is_err());
    }

    #[test]
    fn sets_every_assignment_or_adds_one() {
        let text = "# comment\nOPENSSHD_REGENERATE_HOST_KEYS=true\nOTHER=1\r\n";
        let out = set_variable(text, "OPENSSHD_REGENERATE_HOST_KEYS", "false")
            .unwrap()
            .unwrap();
        assert_eq!(
            out,
            "# comment\nOPENSSHD_REGENERATE_HOST_KEYS=false\nOTHER=1\r\n"
        );
        assert_eq!(
            set_variable(&out, "OPENSSHD_REGENERATE_HOST_KEYS", "false").unwrap(),
            None
        );
        assert_eq!(
            set_variable("  export OTHER=1\nOTHER=2", "OTHER", "3").unwrap(),
            Some("  export OTHER=3\nOTHER=3".into())
        );
        assert_eq!(
            set_variable("A=1", "B", "2").unwrap(),
            Some("A=1\nB=2\n".into())
        );
        // A key that merely starts the same is another key.
        assert_eq!(
            set_variable("AB=1\n", "A", "2").unwrap(),
            Some("AB=1\nA=2\n".into())
        );
        assert!(set_variable("", "A B", "1").is_err());
        assert!(set_variable("", "A", "x; rm -rf /").is_err());
    }
}
