//! Whether an OS image can honour the inventory's `locale`: generated in the image, or
//! generated at first boot by what sets it there. Read once per base image from its root
//! filesystem, before any node image is written.
//!
//! What sets the locale at first boot, and so what "generatable" means:
//! - cloud-init's `debian` and `ubuntu` distros run `locale-gen NAME` (not for C, C.UTF-8
//!   and POSIX) and then `update-locale LANG=NAME`, which refuses a locale that is not
//!   generated. Ubuntu's locale-gen (it keeps `/var/lib/locales/supported.d/`) generates a
//!   name `/usr/share/i18n/SUPPORTED` lists; Debian's ignores the name and generates what
//!   `/etc/locale.gen` enables.
//! - cloud-init's `raspberry_pi_os` distro runs `raspi-config nonint do_change_locale NAME`,
//!   which takes the name only as SUPPORTED spells it, enables it in `/etc/locale.gen` and
//!   generates it.
//! - Without cloud-init the build writes `/etc/default/locale` itself, and nothing
//!   generates a locale at first boot.
//!
//! glibc finds a generated locale in `/usr/lib/locale/locale-archive` or in a directory
//! `/usr/lib/locale/<name>`, under the name with its codeset normalised (`en_US.UTF-8` is
//! `en_US.utf8`). C and POSIX are built into glibc; C.UTF-8 is not (Debian's libc-bin and
//! Ubuntu's libc-bin ship it as `/usr/lib/locale/C.utf8`).

use std::collections::BTreeSet;
use std::fmt;

use anyhow::{Context, Result};
use serde::Deserialize;

use super::Firstboot;
use crate::config::Locale;

/// A locale name as glibc splits it, `language[_territory][.codeset][@modifier]`, with the
/// codeset normalised.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocaleName {
    /// `language[_territory]`.
    base: String,
    /// Normalised: lower case letters and digits only (`utf8`, `iso88591`).
    codeset: Option<String>,
    modifier: Option<String>,
}

impl LocaleName {
    pub fn parse(name: &str) -> LocaleName {
        let (rest, modifier) = match name.split_once('@') {
            Some((r, m)) => (r, Some(m.to_string())),
            None => (name, None),
        };
        let (base, codeset) = match rest.split_once('.') {
            Some((b, c)) => (b, Some(normalise_codeset(c))),
            None => (rest, None),
        };
        LocaleName {
            base: base.to_string(),
            codeset,
            modifier,
        }
    }

    /// The language: what comes before `_`, `.` or `@`.
    pub fn language(&self) -> &str {
        self.base.split('_').next().unwrap_or(&self.base)
    }

    /// The name as glibc stores and looks it up (`en_US.utf8`).
    pub fn normalised(&self) -> String {
        let mut s = self.base.clone();
        if let Some(c) = &self.codeset {
            s.push('.');
            s.push_str(c);
        }
        if let Some(m) = &self.modifier {
            s.push('@');
            s.push_str(m);
        }
        s
    }

    /// Whether it is one of glibc's built-in locales, C and POSIX.
    pub fn is_builtin(&self) -> bool {
        self.codeset.is_none()
            && self.modifier.is_none()
            && matches!(self.base.as_str(), "C" | "POSIX")
    }
}

/// How a locale is written in settings: UTF-8 spelled as everyone spells it.
impl fmt::Display for LocaleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)?;
        match self.codeset.as_deref() {
            Some("utf8") => f.write_str(".UTF-8")?,
            Some(c) => write!(f, ".{c}")?,
            None => {}
        }
        if let Some(m) = &self.modifier {
            write!(f, "@{m}")?;
        }
        Ok(())
    }
}

/// glibc's `_nl_normalize_codeset`: letters in lower case and digits, everything else
/// dropped; `iso` in front of a codeset of digits only.
pub fn normalise_codeset(codeset: &str) -> String {
    let kept: String = codeset
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if !kept.is_empty() && kept.chars().all(|c| c.is_ascii_digit()) {
        format!("iso{kept}")
    } else {
        kept
    }
}

/// The names in a glibc `locale-archive` (`locale/locarchive.h`): a header of 32-bit words
/// in the byte order of the machine that wrote it, then a hash table of
/// `{hash, name offset, record offset}` entries; a used entry has a record.
pub fn archive_names(archive: &[u8]) -> Result<Vec<String>> {
    const MAGIC: u32 = 0xde02_0109;
    let word = |at: usize, le: bool| -> Option<u32> {
        let b: [u8; 4] = archive.get(at..at + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let le = match (word(0, true), word(0, false)) {
        (Some(MAGIC), _) => true,
        (_, Some(MAGIC)) => false,
        _ => anyhow::bail!("it is not a glibc locale archive (wrong magic number)"),
    };
    let damaged = || anyhow::anyhow!("it is damaged (its name table reaches past its end)");
    let table = word(8, le).ok_or_else(damaged)? as usize;
    let entries = word(16, le).ok_or_else(damaged)? as usize;
    let mut names = Vec::new();
    for i in 0..entries {
        let at = table + 12 * i;
        let name_at = word(at + 4, le).ok_or_else(damaged)? as usize;
        let record = word(at + 8, le).ok_or_else(damaged)?;
        if record == 0 {
            continue;
        }
        let tail = archive.get(name_at..).ok_or_else(damaged)?;
        let end = tail.iter().position(|&b| b == 0).ok_or_else(damaged)?;
        names.push(String::from_utf8_lossy(&tail[..end]).into_owned());
    }
    Ok(names)
}

/// One line of `/usr/share/i18n/SUPPORTED` or `/etc/locale.gen`: a name and its charmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// As the file spells it.
    pub spelled: String,
    pub name: LocaleName,
    pub charmap: String,
}

/// The `NAME CHARMAP` lines of SUPPORTED or locale.gen (comments and blank lines skipped).
pub fn entries(text: &str) -> Vec<Entry> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let spelled = words.next()?.to_string();
            let charmap = words.next()?.to_string();
            Some(Entry {
                name: LocaleName::parse(&spelled),
                spelled,
                charmap,
            })
        })
        .collect()
}

/// What sets the locale at an image's first boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setter {
    /// cloud-init's `raspberry_pi_os` distro: `raspi-config nonint do_change_locale`.
    RaspiConfig,
    /// cloud-init's `debian` or `ubuntu` distro: `locale-gen NAME`, then `update-locale`.
    /// `takes_names`: Ubuntu's locale-gen, which generates the SUPPORTED name it is given;
    /// Debian's generates only what /etc/locale.gen enables.
    LocaleGen { takes_names: bool },
    /// No cloud-init: nothing generates a locale at first boot.
    Nothing,
}

/// What an image holds about locales, read once from its root filesystem.
#[derive(Debug, Clone, Default)]
pub struct ImageLocales {
    /// In `/usr/lib/locale/locale-archive` or as directories of `/usr/lib/locale`.
    pub generated: BTreeSet<LocaleName>,
    /// `/usr/share/i18n/SUPPORTED`.
    pub supported: Vec<Entry>,
    /// `/etc/locale.gen`, uncommented lines.
    pub enabled: Vec<Entry>,
    /// Files in `/usr/share/i18n/locales` (locale sources).
    pub sources: BTreeSet<String>,
    /// Files in `/usr/share/i18n/charmaps`.
    pub charmaps: BTreeSet<String>,
    pub locale_gen: bool,
    pub update_locale: bool,
    pub raspi_config: bool,
    /// Ubuntu's locale-gen keeps the names it generates in `/var/lib/locales/supported.d/`.
    pub ubuntu_locale_gen: bool,
    /// `system_info.distro` of cloud-init's configuration.
    pub cloud_init_distro: Option<String>,
}

/// Why an image cannot honour a locale, and the locales it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    /// Locales the image honours, those of the same language first (a few).
    pub instead: Vec<String>,
}

const NO_LOCALES: &str = "the image has no `locales` package (no /usr/sbin/update-locale and \
                          /usr/sbin/locale-gen), which cloud-init sets and generates the \
                          locale with";

impl ImageLocales {
    /// What sets the locale at first boot of an image of this kind.
    pub fn setter(&self, firstboot: &Firstboot) -> Setter {
        match firstboot {
            Firstboot::Direct { .. } => Setter::Nothing,
            Firstboot::CloudInit { .. } => match self.cloud_init_distro.as_deref() {
                Some("raspberry_pi_os") => Setter::RaspiConfig,
                _ => Setter::LocaleGen {
                    takes_names: self.ubuntu_locale_gen,
                },
            },
        }
    }

    fn is_generated(&self, name: &LocaleName) -> bool {
        self.generated.contains(name)
    }

    /// Whether the locale source and charmap of an entry are in the image.
    fn has_data(&self, e: &Entry) -> bool {
        let source = match self.sources.contains(&e.spelled) {
            true => true,
            false => {
                let mut input = e.name.base.clone();
                if let Some(m) = &e.name.modifier {
                    input.push('@');
                    input.push_str(m);
                }
                self.sources.contains(&input)
            }
        };
        source
            && (self.charmaps.contains(&e.charmap)
                || self.charmaps.contains(&format!("{}.gz", e.charmap)))
    }

    fn supported_as_spelled(&self, spelled: &str) -> Option<&Entry> {
        self.supported.iter().find(|e| e.spelled == spelled)
    }

    /// Whether a first boot of an image started by `firstboot` ends with `locale` set, or
    /// why not.
    pub fn honours(&self, locale: &Locale, firstboot: &Firstboot) -> Result<(), Refusal> {
        self.verdict(locale.as_str(), self.setter(firstboot))
            .map_err(|reason| Refusal {
                reason,
                instead: self.instead(locale.as_str(), self.setter(firstboot)),
            })
    }

    fn verdict(&self, spelled: &str, setter: Setter) -> Result<(), String> {
        let name = LocaleName::parse(spelled);
        let generated = name.is_builtin() || self.is_generated(&name);
        let not_generated = "it is not generated in the image (not in /usr/lib/locale)";
        match setter {
            Setter::Nothing if generated => Ok(()),
            Setter::Nothing => Err(format!(
                "{not_generated}, and without cloud-init nothing generates a locale at its first boot"
            )),
            Setter::RaspiConfig if !self.raspi_config || !self.locale_gen => Err(
                "its cloud-init sets the locale with raspi-config and locale-gen, which it lacks"
                    .to_string(),
            ),
            Setter::RaspiConfig => match self.supported_as_spelled(spelled) {
                Some(e) if self.has_data(e) => Ok(()),
                Some(e) => Err(format!(
                    "the locale source or the charmap {} of {spelled} is missing from /usr/share/i18n, so locale-gen cannot generate it",
                    e.charmap
                )),
                None => Err(
                    "raspi-config, which its cloud-init sets the locale with, takes only a name /usr/share/i18n/SUPPORTED lists, spelled as there, and it does not list this one"
                        .to_string(),
                ),
            },
            Setter::LocaleGen { .. } if !self.update_locale => Err(NO_LOCALES.to_string()),
            Setter::LocaleGen { .. } if generated => Ok(()),
            Setter::LocaleGen { .. } if !self.locale_gen => {
                Err(format!("{not_generated}, and {NO_LOCALES}"))
            }
            Setter::LocaleGen { takes_names } => {
                if let Some(e) = self.enabled.iter().find(|e| e.name == name) {
                    return match self.has_data(e) {
                        true => Ok(()),
                        false => Err(format!(
                            "{not_generated}, and the locale source or the charmap {} that /etc/locale.gen names for it is missing from /usr/share/i18n",
                            e.charmap
                        )),
                    };
                }
                if !takes_names {
                    return Err(format!(
                        "{not_generated}, and Debian's locale-gen, which its cloud-init runs, generates only what /etc/locale.gen enables, which is not this locale"
                    ));
                }
                match self.supported_as_spelled(spelled) {
                    Some(e) if self.has_data(e) => Ok(()),
                    Some(e) => Err(format!(
                        "{not_generated}, and the locale source or the charmap {} is missing from /usr/share/i18n, so locale-gen cannot generate it",
                        e.charmap
                    )),
                    None => Err(format!(
                        "{not_generated}, and /usr/share/i18n/SUPPORTED does not list it, so locale-gen cannot generate it"
                    )),
                }
            }
        }
    }

    /// A few locales the image honours, those of the language of `wanted` first.
    fn instead(&self, wanted: &str, setter: Setter) -> Vec<String> {
        let mut candidates: Vec<String> = self.generated.iter().map(|n| n.to_string()).collect();
        candidates.extend(self.enabled.iter().map(|e| e.spelled.clone()));
        candidates.extend(self.supported.iter().map(|e| e.spelled.clone()));
        let mut seen = BTreeSet::new();
        let honoured: Vec<String> = candidates
            .into_iter()
            .filter(|c| seen.insert(LocaleName::parse(c)))
            .filter(|c| self.verdict(c, setter).is_ok())
            .collect();
        let language = LocaleName::parse(wanted).language().to_string();
        let (mut same, other): (Vec<String>, Vec<String>) = honoured
            .into_iter()
            .partition(|c| LocaleName::parse(c).language() == language);
        same.extend(other);
        same.truncate(6);
        same
    }
}

/// cloud-init's configuration, as far as it names the distro.
#[derive(Deserialize, Default)]
struct CloudCfg {
    #[serde(default)]
    system_info: Option<SystemInfo>,
}

#[derive(Deserialize, Default)]
struct SystemInfo {
    #[serde(default)]
    distro: Option<String>,
}

/// The distro a cloud-init configuration file names, when it parses and names one.
fn cloud_init_distro(text: &str) -> Option<String> {
    serde_saphyr::from_str::<CloudCfg>(text)
        .ok()?
        .system_info?
        .distro
}

/// Reads what the root filesystem `fs` holds about locales.
pub fn read(fs: &ext4_view::Ext4) -> Result<ImageLocales> {
    let exists = |path: &str| -> Result<bool> {
        fs.exists(path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot look up {path}"))
    };
    let read = |path: &str| -> Result<Option<Vec<u8>>> {
        if !exists(path)? {
            return Ok(None);
        }
        fs.read(path)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot read {path}"))
    };
    let is_dir = |path: &str| -> Result<bool> {
        Ok(exists(path)?
            && fs
                .metadata(path)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("cannot look up {path}"))?
                .is_dir())
    };
    let list = |path: &str| -> Result<Vec<(String, bool)>> {
        if !is_dir(path)? {
            return Ok(Vec::new());
        }
        let mut names = Vec::new();
        let entries = fs
            .read_dir(path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot list {path}"))?;
        for e in entries {
            let e = e
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("cannot list {path}"))?;
            let name = e.file_name().display().to_string();
            if name == "." || name == ".." {
                continue;
            }
            let dir = e
                .file_type()
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("cannot list {path}"))?
                .is_dir();
            names.push((name, dir));
        }
        Ok(names)
    };
    let text = |bytes: Option<Vec<u8>>| bytes.map(|b| String::from_utf8_lossy(&b).into_owned());

    let mut l = ImageLocales::default();
    const ARCHIVE: &str = "/usr/lib/locale/locale-archive";
    if let Some(archive) = read(ARCHIVE)? {
        let names = archive_names(&archive).with_context(|| format!("cannot read {ARCHIVE}"))?;
        l.generated
            .extend(names.iter().map(|n| LocaleName::parse(n)));
    }
    for (name, dir) in list("/usr/lib/locale")? {
        if dir {
            l.generated.insert(LocaleName::parse(&name));
        }
    }
    l.supported = text(read("/usr/share/i18n/SUPPORTED")?)
        .map(|t| entries(&t))
        .unwrap_or_default();
    l.enabled = text(read("/etc/locale.gen")?)
        .map(|t| entries(&t))
        .unwrap_or_default();
    l.sources = list("/usr/share/i18n/locales")?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    l.charmaps = list("/usr/share/i18n/charmaps")?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    l.locale_gen = exists("/usr/sbin/locale-gen")?;
    l.update_locale = exists("/usr/sbin/update-locale")?;
    l.raspi_config = exists("/usr/bin/raspi-config")?;
    l.ubuntu_locale_gen = is_dir("/var/lib/locales/supported.d")?;
    // cloud.cfg first, then cloud.cfg.d/*.cfg in name order, each overriding the last.
    let mut configs = vec!["/etc/cloud/cloud.cfg".to_string()];
    let mut dropins: Vec<String> = list("/etc/cloud/cloud.cfg.d")?
        .into_iter()
        .filter(|(n, dir)| !dir && n.ends_with(".cfg"))
        .map(|(n, _)| format!("/etc/cloud/cloud.cfg.d/{n}"))
        .collect();
    dropins.sort();
    configs.extend(dropins);
    for path in configs {
        if let Some(distro) = text(read(&path)?).and_then(|t| cloud_init_distro(&t)) {
            l.cloud_init_distro = Some(distro);
        }
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locale(s: &str) -> Locale {
        Locale::try_from(s.to_string()).unwrap()
    }

    fn cloud_init() -> Firstboot {
        Firstboot::CloudInit {
            seed_partition: "system-boot".into(),
            cmdline_datasource: false,
            enable_units: Vec::new(),
        }
    }

    #[test]
    fn names_are_normalised_as_glibc_does() {
        let n = |s: &str| LocaleName::parse(s).normalised();
        assert_eq!(n("en_US.UTF-8"), "en_US.utf8");
        assert_eq!(n("en_US.utf8"), "en_US.utf8");
        assert_eq!(n("C.UTF-8"), "C.utf8");
        assert_eq!(n("de_DE.ISO-8859-15@euro"), "de_DE.iso885915@euro");
        assert_eq!(n("de_DE@euro"), "de_DE@euro");
        assert_eq!(n("ja_JP.EUC-JP"), "ja_JP.eucjp");
        assert_eq!(n("en_US"), "en_US");
        assert_eq!(normalise_codeset("8859-1"), "iso88591");
        assert_eq!(
            LocaleName::parse("en_US.UTF-8"),
            LocaleName::parse("en_US.utf8")
        );
        assert_ne!(LocaleName::parse("en_US.UTF-8"), LocaleName::parse("en_US"));
        assert_eq!(LocaleName::parse("sr_RS.UTF-8@latin").language(), "sr");
        assert_eq!(LocaleName::parse("C.utf8").to_string(), "C.UTF-8");
        assert!(LocaleName::parse("POSIX").is_builtin());
        assert!(!LocaleName::parse("C.UTF-8").is_builtin());
    }

    /// An archive as localedef writes it, in either byte order.
    fn archive(names: &[&str], le: bool) -> Vec<u8> {
        let w = |v: u32| match le {
            true => v.to_le_bytes(),
            false => v.to_be_bytes(),
        };
        let slots = names.len() + 2;
        let table = 56usize;
        let strings = table + 12 * slots;
        let mut head = vec![
            0xde02_0109u32,
            0,
            table as u32,
            names.len() as u32,
            slots as u32,
        ];
        head.resize(14, 0);
        let mut out: Vec<u8> = head.into_iter().flat_map(w).collect();
        let mut text = Vec::new();
        for i in 0..slots {
            let (name_at, record) = match names.get(i) {
                Some(n) => {
                    let at = strings + text.len();
                    text.extend_from_slice(n.as_bytes());
                    text.push(0);
                    (at as u32, 4096)
                }
                None => (0, 0),
            };
            out.extend(w(7));
            out.extend(w(name_at));
            out.extend(w(record));
        }
        out.extend(text);
        out
    }

    #[test]
    fn archive_names_in_either_byte_order() {
        for le in [true, false] {
            let a = archive(&["en_GB.utf8", "de_DE@euro"], le);
            assert_eq!(archive_names(&a).unwrap(), ["en_GB.utf8", "de_DE@euro"]);
        }
        assert!(archive_names(b"not an archive at all").is_err());
        let mut cut = archive(&["en_GB.utf8"], true);
        cut.truncate(70);
        assert!(archive_names(&cut).is_err());
    }

    fn debian_with_locales() -> ImageLocales {
        ImageLocales {
            generated: [LocaleName::parse("C.utf8"), LocaleName::parse("en_GB.utf8")].into(),
            supported: entries(
                "C.UTF-8 UTF-8\nde_DE.UTF-8 UTF-8\nde_DE ISO-8859-1\nen_GB.UTF-8 UTF-8\nen_US.UTF-8 UTF-8\nfr_FR.UTF-8 UTF-8\n",
            ),
            enabled: entries("# en_US.UTF-8 UTF-8\nen_GB.UTF-8 UTF-8\nfr_FR.UTF-8 UTF-8\n"),
            sources: ["de_DE", "en_GB", "en_US", "fr_FR", "C"]
                .map(String::from)
                .into(),
            charmaps: ["UTF-8.gz", "ISO-8859-1.gz"].map(String::from).into(),
            locale_gen: true,
            update_locale: true,
            ..ImageLocales::default()
        }
    }

    #[test]
    fn debian_locale_gen_generates_only_what_locale_gen_enables() {
        let l = debian_with_locales();
        for ok in [
            "C",
            "POSIX",
            "C.UTF-8",
            "en_GB.UTF-8",
            "en_GB.utf8",
            "fr_FR.UTF-8",
        ] {
            assert_eq!(l.honours(&locale(ok), &cloud_init()), Ok(()), "{ok}");
        }
        let r = l
            .honours(&locale("de_DE.UTF-8"), &cloud_init())
            .unwrap_err();
        assert!(r.reason.contains("/etc/locale.gen"), "{}", r.reason);
        assert!(
            r.instead.contains(&"C.UTF-8".to_string()),
            "{:?}",
            r.instead
        );
        assert!(!r.instead.contains(&"de_DE.UTF-8".to_string()));
    }

    #[test]
    fn ubuntu_locale_gen_generates_what_supported_lists() {
        let l = ImageLocales {
            ubuntu_locale_gen: true,
            enabled: Vec::new(),
            ..debian_with_locales()
        };
        assert_eq!(l.honours(&locale("de_DE.UTF-8"), &cloud_init()), Ok(()));
        let r = l
            .honours(&locale("de_AT.UTF-8"), &cloud_init())
            .unwrap_err();
        assert!(
            r.reason.contains("SUPPORTED does not list it"),
            "{}",
            r.reason
        );
        assert_eq!(
            r.instead[0], "de_DE.UTF-8",
            "same language first: {:?}",
            r.instead
        );
        let no_data = ImageLocales {
            sources: BTreeSet::new(),
            ..l
        };
        let r = no_data
            .honours(&locale("de_DE.UTF-8"), &cloud_init())
            .unwrap_err();
        assert!(
            r.reason.contains("missing from /usr/share/i18n"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn raspi_config_takes_supported_names_as_spelled() {
        let l = ImageLocales {
            raspi_config: true,
            cloud_init_distro: Some("raspberry_pi_os".into()),
            ..debian_with_locales()
        };
        assert_eq!(l.honours(&locale("de_DE.UTF-8"), &cloud_init()), Ok(()));
        let r = l.honours(&locale("de_DE.utf8"), &cloud_init()).unwrap_err();
        assert!(r.reason.contains("spelled as there"), "{}", r.reason);
        assert_eq!(r.instead[0], "de_DE.UTF-8");
    }

    #[test]
    fn without_the_locales_package_cloud_init_cannot_set_any_locale() {
        let l = ImageLocales {
            generated: [LocaleName::parse("C.utf8")].into(),
            ..ImageLocales::default()
        };
        let r = l.honours(&locale("C.UTF-8"), &cloud_init()).unwrap_err();
        assert!(r.reason.contains("no `locales` package"), "{}", r.reason);
        assert!(r.instead.is_empty());
        // Without cloud-init the build writes /etc/default/locale: generated is enough.
        let direct = Firstboot::Direct {
            network: crate::firstboot::NetworkStack::Netplan,
            interface: None,
        };
        assert_eq!(l.honours(&locale("C.UTF-8"), &direct), Ok(()));
        let r = l.honours(&locale("en_US.UTF-8"), &direct).unwrap_err();
        assert!(r.reason.contains("without cloud-init"), "{}", r.reason);
        assert_eq!(r.instead, ["C.UTF-8"]);
    }

    #[test]
    fn cloud_init_names_its_distro() {
        assert_eq!(
            cloud_init_distro(
                "system_info:\n  distro: raspberry_pi_os\n  paths: {cloud_dir: /var/lib/cloud}\nusers: [default]\n"
            ),
            Some("raspberry_pi_os".into())
        );
        assert_eq!(
            cloud_init_distro("datasource_list: [ NoCloud, None ]\n"),
            None
        );
        assert_eq!(cloud_init_distro(": not yaml ["), None);
    }
}
