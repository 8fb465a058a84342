//! One list of test packages: `.ci/packages.txt`. `.ci/run` installs what it lists, and the
//! `apt-get install` block after README's `<!-- packages` marker names the same packages in
//! the same order.

mod support;

use std::process::Command;

use support::readme;

const README: &str = include_str!("../README.md");
const PACKAGES: &str = include_str!("../.ci/packages.txt");
const CI_RUN: &str = include_str!("../.ci/run");

/// The packages of `.ci/packages.txt`: one per line, `#` starts a comment.
fn package_file() -> Vec<String> {
    let mut out = Vec::new();
    for (n, line) in PACKAGES.lines().enumerate() {
        let words: Vec<&str> = line.split('#').next().unwrap().split_whitespace().collect();
        assert!(
            words.len() <= 1,
            ".ci/packages.txt line {}: one package per line, not {words:?}",
            n + 1
        );
        out.extend(words.iter().map(|w| w.to_string()));
    }
    out
}

/// The block README should show for `packages`.
fn readme_block(packages: &[String]) -> String {
    let mut text = String::from("sudo apt-get install --no-install-recommends \\\n");
    let mut line = String::from(" ");
    for p in packages {
        if line.len() + p.len() > 88 {
            text.push_str(&line);
            text.push_str(" \\\n");
            line = String::from(" ");
        }
        line.push(' ');
        line.push_str(p);
    }
    text.push_str(&line);
    text.push('\n');
    text
}

#[test]
fn readme_shows_the_packages_ci_installs() {
    let want = package_file();
    assert!(want.len() > 10, "{want:?}");
    let blocks = readme::blocks(readme::after_marker(README, "packages"));
    let block = blocks
        .first()
        .expect("a code block after the packages marker");
    assert_eq!(block.lang, "sh");
    let words: Vec<&str> = block
        .text
        .split_whitespace()
        .filter(|w| *w != "\\")
        .collect();
    let at = words
        .windows(2)
        .position(|w| w == ["apt-get", "install"])
        .expect("README's package block runs apt-get install");
    let shown: Vec<String> = words[at + 2..]
        .iter()
        .filter(|w| !w.starts_with('-'))
        .map(|w| w.to_string())
        .collect();
    assert_eq!(
        shown,
        want,
        "README's package list differs from .ci/packages.txt; make README's block:\n```sh\n{}```",
        readme_block(&want)
    );
}

#[test]
fn ci_run_installs_the_package_file() {
    let line = CI_RUN
        .lines()
        .find(|l| l.starts_with("mapfile -t packages"))
        .expect(".ci/run reads its packages with `mapfile -t packages`");
    assert!(line.contains(".ci/packages.txt"), "{line}");
    assert!(
        !CI_RUN.contains("packages=("),
        ".ci/run lists no packages of its own"
    );
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -euo pipefail\n{line}\nprintf '%s\\n' \"${{packages[@]}}\""
        ))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: Vec<String> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(got, package_file());
}

/// README's "Supported boards" table is the catalog's own rendering, so adding a board or an
/// OS image without updating README fails here (the message shows the table to paste).
#[test]
fn readme_lists_the_boards_of_the_catalog() {
    let catalog = pikube_image::boards::Catalog::load().expect("built-in catalog");
    let want = catalog.render_markdown().expect("render");
    let section = README
        .split_once("\n## Supported boards\n\n")
        .expect("README has a '## Supported boards' section")
        .1;
    let table: String = section
        .lines()
        .take_while(|l| l.starts_with('|'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        table, want,
        "README's supported-boards table differs from the catalog; replace it with:\n{want}"
    );
}

/// README's example of a catalog image's `checksum` parses as one, and README's key table
/// shows every built-in key with its recorded fingerprint.
#[test]
fn readme_shows_the_checksum_schema_and_the_keys() {
    use pikube_image::source::base::ImageChecksum;
    use pikube_image::source::keys::{BUILTIN, group_fingerprint};
    use pikube_image::source::{Keyring, Signs};

    let example = README
        .split_once("An OS image says how its download is verified in `checksum`:\n\n```yaml\n")
        .expect("README shows the checksum schema")
        .1
        .split_once("```")
        .unwrap()
        .0;
    #[derive(serde::Deserialize)]
    struct Entry {
        checksum: ImageChecksum,
    }
    let entry: Entry = serde_saphyr::from_str(example).expect("README's example parses");
    let sig = entry.checksum.signature().expect("the example is signed");
    assert_eq!(sig.signs, Signs::ChecksumList);
    sig.resolve(&Keyring::builtin().unwrap())
        .expect("the example names a built-in key");
    for key in BUILTIN {
        let row = format!(
            "| `{}` | `{}` |",
            key.name,
            group_fingerprint(key.fingerprint)
        );
        assert!(README.contains(&row), "README's key table lacks {row}");
    }
}
