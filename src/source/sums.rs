//! Checksum list parsing.
//!
//! Accepted line shapes (one entry per line, LF or CRLF):
//!
//! * GNU coreutils text mode: `<hex>  <name>` (two spaces; k3s `sha256sum-*.txt`,
//!   Raspberry Pi OS `*.sha256`)
//! * GNU coreutils binary mode: `<hex> *<name>` (Ubuntu `SHA256SUMS`)
//! * one space: `<hex> <name>` (Armbian `.sha`)
//! * BSD tag style: `SHA256 (<name>) = <hex>`
//! * a file holding only `<hex>`: a checksum for whatever file it sits beside.
//!
//! Names match on the file name: a `*` or `./` prefix and any directory part are ignored,
//! an exact path match is preferred over a file-name-only match.

use super::cache::is_sha256_hex;

/// Returns the lower-case hex digest listed for `name` in a checksum file, if any.
pub fn lookup_checksum(sums: &str, name: &str) -> Option<String> {
    let want = clean_name(name);
    let want_base = base_name(want);
    let mut base_hit: Option<String> = None;
    let mut bare: Vec<String> = Vec::new();
    let mut entries = 0usize;
    for raw in sums.lines() {
        let line = raw.trim_end_matches(['\r', '\n']).trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((hex, entry)) = parse_line(line) else {
            continue;
        };
        let hex = hex.to_ascii_lowercase();
        match entry {
            None => bare.push(hex),
            Some(entry) => {
                entries += 1;
                let entry = clean_name(entry);
                if entry == want {
                    return Some(hex);
                }
                if base_hit.is_none() && base_name(entry) == want_base {
                    base_hit = Some(hex);
                }
            }
        }
    }
    if base_hit.is_some() {
        return base_hit;
    }
    // A digest without a name only answers when it is the whole file.
    if entries == 0 && bare.len() == 1 {
        return bare.pop();
    }
    None
}

/// Splits one line into its digest and (optional) file name.
fn parse_line(line: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = line
        .strip_prefix("SHA256 (")
        .or_else(|| line.strip_prefix("SHA256("))
    {
        let (name, hex) = rest.rsplit_once(')')?;
        let hex = hex.trim().strip_prefix('=')?.trim();
        return is_sha256_hex(hex).then_some((hex, Some(name)));
    }
    let (hex, rest) = match line.split_once([' ', '\t']) {
        Some((h, r)) => (h, Some(r)),
        None => (line, None),
    };
    if !is_sha256_hex(hex) {
        return None;
    }
    match rest {
        None => Some((hex, None)),
        Some(r) => {
            // One or two separators; a `*` marks binary mode in coreutils output.
            let name = r.strip_prefix([' ', '\t']).unwrap_or(r);
            let name = name.strip_prefix('*').unwrap_or(name);
            if name.is_empty() {
                Some((hex, None))
            } else {
                Some((hex, Some(name)))
            }
        }
    }
}

fn clean_name(n: &str) -> &str {
    let mut n = n.trim();
    n = n.strip_prefix('*').unwrap_or(n);
    while let Some(rest) = n.strip_prefix("./") {
        n = rest;
    }
    n
}

fn base_name(n: &str) -> &str {
    n.rsplit('/').next().unwrap_or(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn ubuntu_binary_mode() {
        let s = format!(
            "{A} *ubuntu-24.04.3-preinstalled-server-arm64+raspi.img.xz\n\
             {B} *ubuntu-24.04.3-preinstalled-desktop-arm64+raspi.img.xz\n"
        );
        assert_eq!(
            lookup_checksum(&s, "ubuntu-24.04.3-preinstalled-server-arm64+raspi.img.xz"),
            Some(A.into())
        );
        assert_eq!(
            lookup_checksum(&s, "ubuntu-24.04.3-preinstalled-desktop-arm64+raspi.img.xz"),
            Some(B.into())
        );
        assert_eq!(lookup_checksum(&s, "ubuntu.img.xz"), None);
    }

    #[test]
    fn raspios_two_spaces_and_crlf() {
        let s = format!(
            "{}  2025-05-13-raspios-bookworm-arm64-lite.img.xz\r\n",
            C.to_uppercase()
        );
        assert_eq!(
            lookup_checksum(&s, "2025-05-13-raspios-bookworm-arm64-lite.img.xz"),
            Some(C.into())
        );
    }

    #[test]
    fn ubuntu_rockchip_sha256_file() {
        // `sha256sum NAME > NAME.sha256` in ubuntu-rockchip's build-image.sh; binary mode too.
        let name = "ubuntu-24.04-preinstalled-server-arm64-orangepi-5.img.xz";
        assert_eq!(
            lookup_checksum(&format!("{A}  {name}\n"), name),
            Some(A.into())
        );
        assert_eq!(
            lookup_checksum(&format!("{B} *{name}\n"), name),
            Some(B.into())
        );
        assert_eq!(
            lookup_checksum(&format!("{A}  {name}\n"), "other.img.xz"),
            None
        );
    }

    #[test]
    fn armbian_one_space() {
        let s = format!("{A} Armbian_25.8.1_Orangepi5_noble_vendor_6.1.115_minimal.img.xz\n");
        assert_eq!(
            lookup_checksum(
                &s,
                "Armbian_25.8.1_Orangepi5_noble_vendor_6.1.115_minimal.img.xz"
            ),
            Some(A.into())
        );
    }

    #[test]
    fn k3s_list_picks_the_right_asset() {
        let s = format!(
            "{A}  k3s-airgap-images-arm64.tar.zst\n{B}  k3s-arm64\n{C}  k3s-airgap-images-arm64.tar\n"
        );
        assert_eq!(lookup_checksum(&s, "k3s-arm64"), Some(B.into()));
        assert_eq!(
            lookup_checksum(&s, "k3s-airgap-images-arm64.tar"),
            Some(C.into())
        );
        assert_eq!(lookup_checksum(&s, "k3s"), None);
    }

    #[test]
    fn dot_slash_paths_and_directories() {
        let s = format!("{A}  ./images/x.img.xz\n{B}  other/x.img.xz\n");
        assert_eq!(lookup_checksum(&s, "x.img.xz"), Some(A.into()));
        assert_eq!(lookup_checksum(&s, "other/x.img.xz"), Some(B.into()));
        assert_eq!(lookup_checksum(&s, "./other/x.img.xz"), Some(B.into()));
    }

    #[test]
    fn bsd_tag_style() {
        let s = format!("SHA256 (file.img.xz) = {C}\n");
        assert_eq!(lookup_checksum(&s, "file.img.xz"), Some(C.into()));
    }

    #[test]
    fn bare_digest_file() {
        assert_eq!(
            lookup_checksum(&format!("{C}\n"), "anything"),
            Some(C.into())
        );
        // Two bare digests are ambiguous.
        assert_eq!(lookup_checksum(&format!("{A}\n{B}\n"), "anything"), None);
        // A named list never answers for a name it does not list.
        assert_eq!(lookup_checksum(&format!("{A}  a\n{B}\n"), "b"), None);
    }

    #[test]
    fn garbage_is_ignored() {
        let s = format!("# comment\n\nnot a line\n{}  short\n{A}  good\n", &A[..10]);
        assert_eq!(lookup_checksum(&s, "short"), None);
        assert_eq!(lookup_checksum(&s, "good"), Some(A.into()));
        assert_eq!(lookup_checksum("", "good"), None);
    }
}
