//! What a test does when an oracle it checks against (an external tool, root, a loop mount,
//! a service it starts) is not available here.
//!
//! Such a test calls [`skip`], or one of the `require_*` checks that call it, and returns.
//! Without `PIKUBE_REQUIRE_ORACLES` that prints `skipping <test>: <reason>` to stderr and the
//! test passes, so a developer without the tools still gets the rest of the suite. With
//! `PIKUBE_REQUIRE_ORACLES=1`, as `.ci/run` sets it, it panics with the reason, which names the
//! Debian package to install: a run can never pass by skipping an oracle.
//!
//! ```no_run
//! if !pikube_test_oracles::require_tool("visudo", "sudo") {
//!     return;
//! }
//! ```

use std::ffi::{OsStr, OsString};
use std::fmt::Display;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The environment variable that turns a skipped oracle into a failure.
pub const REQUIRE_VAR: &str = "PIKUBE_REQUIRE_ORACLES";

/// Whether a missing oracle fails, and where tools are looked for.
#[derive(Clone, Debug)]
pub struct Oracles {
    /// A missing oracle fails the test instead of skipping it.
    pub required: bool,
    /// The directories searched for tools, as in `$PATH`.
    pub path: OsString,
}

impl Oracles {
    /// This process's `$PIKUBE_REQUIRE_ORACLES` and `$PATH`.
    pub fn from_env() -> Oracles {
        Oracles {
            required: required(std::env::var_os(REQUIRE_VAR).as_deref()),
            path: std::env::var_os("PATH").unwrap_or_default(),
        }
    }

    /// The executable `tool` on the search path: what `Command::new(tool)` runs.
    pub fn find(&self, tool: &str) -> Option<PathBuf> {
        std::env::split_paths(&self.path)
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(|dir| dir.join(tool))
            .find(|p| is_executable(p))
    }

    /// Whether every one of `tools`, which the Debian package `package` installs, is here.
    /// The first missing one goes to [`Oracles::skip`].
    pub fn package(&self, package: &str, tools: &[&str]) -> bool {
        match tools.iter().find(|t| self.find(t).is_none()) {
            None => true,
            Some(t) => {
                self.skip(format_args!(
                    "{t} is not installed (apt-get install {package})"
                ));
                false
            }
        }
    }

    /// A check that cannot run here: panics with `reason` when oracles are required,
    /// otherwise prints `skipping <test>: <reason>` to stderr and returns.
    pub fn skip(&self, reason: impl Display) {
        let test = current_test();
        if self.required {
            panic!("{test}: {reason}; with {REQUIRE_VAR}=1 a missing oracle fails the test");
        }
        eprintln!("skipping {test}: {reason}");
    }
}

/// Whether a value of `PIKUBE_REQUIRE_ORACLES` asks for failures: `1` does (so does any
/// value but an empty one or `0`).
fn required(value: Option<&OsStr>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0")
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The running test's name (libtest names each test's thread after it).
fn current_test() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => "this test".to_string(),
    }
}

/// Whether `tool` is on `$PATH`, for a test that chooses between ways to check.
pub fn have_tool(tool: &str) -> bool {
    Oracles::from_env().find(tool).is_some()
}

/// Whether `tool` is on `$PATH`; if not, [`skip`] names it and the Debian `package`.
pub fn require_tool(tool: &str, package: &str) -> bool {
    Oracles::from_env().package(package, &[tool])
}

/// Whether every one of `tools` of the Debian `package` is on `$PATH`; if not, [`skip`]
/// names the first missing one.
pub fn require_package(package: &str, tools: &[&str]) -> bool {
    Oracles::from_env().package(package, tools)
}

/// Whether this process runs as root; if not, [`skip`] says that `what` needs root.
pub fn require_root(what: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(format_args!("{what} needs root"));
    false
}

/// A check that cannot run here: with `PIKUBE_REQUIRE_ORACLES=1` it panics with `reason`;
/// otherwise it prints `skipping <test>: <reason>` to stderr and the caller returns.
pub fn skip(reason: impl Display) {
    Oracles::from_env().skip(reason)
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let ids = s.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            ids.split_whitespace().nth(1).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_path(required: bool) -> Oracles {
        Oracles {
            required,
            path: OsString::new(),
        }
    }

    #[test]
    fn a_missing_tool_is_skipped_without_the_variable() {
        assert!(!empty_path(false).package("e2fsprogs", &["e2fsck"]));
    }

    #[test]
    #[should_panic(expected = "e2fsck is not installed (apt-get install e2fsprogs)")]
    fn a_missing_tool_fails_with_the_variable() {
        empty_path(true).package("e2fsprogs", &["e2fsck"]);
    }

    #[test]
    fn the_failure_names_the_test_and_the_variable() {
        let panic = std::panic::catch_unwind(|| empty_path(true).skip("no loop device"))
            .expect_err("a required oracle that is missing panics");
        let msg = panic.downcast_ref::<String>().unwrap();
        assert!(
            msg.starts_with("tests::the_failure_names_the_test_and_the_variable: no loop device"),
            "{msg}"
        );
        assert!(msg.contains("PIKUBE_REQUIRE_ORACLES=1"), "{msg}");
    }

    #[test]
    fn tools_are_found_on_the_path_when_executable() {
        let dir = tempfile::tempdir().unwrap();
        for (name, mode) in [("oracle", 0o755), ("plain-file", 0o644)] {
            let p = dir.path().join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let o = Oracles {
            required: true,
            path: std::env::join_paths(["/nonexistent".as_ref(), dir.path()]).unwrap(),
        };
        assert_eq!(o.find("oracle"), Some(dir.path().join("oracle")));
        assert_eq!(o.find("plain-file"), None);
        assert!(o.package("test-oracle", &["oracle"]));
        let missing = std::panic::catch_unwind(|| o.package("test-oracle", &["oracle", "other"]));
        assert!(missing.is_err(), "the second tool is missing");
    }

    #[test]
    fn the_variable_asks_for_failures_when_set_to_1() {
        assert!(!required(None));
        assert!(!required(Some(OsStr::new(""))));
        assert!(!required(Some(OsStr::new("0"))));
        assert!(required(Some(OsStr::new("1"))));
    }
}
