//! `cluster.yaml`: the cluster inventory, parsed strictly and validated before any work starts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::registry::ImageRef;

/// `as_str`, `Display` and the way back to `String` of a string type that is checked when
/// it is made (`TryFrom<String>`).
macro_rules! checked_string {
    ($t:ident) => {
        impl $t {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// The default file name looked up in the current directory.
pub const DEFAULT_CONFIG: &str = "cluster.yaml";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Cluster name; part of every node's identity.
    pub cluster: String,
    /// DNS domain of the nodes (fqdn = name.domain).
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default = "default_timezone")]
    pub timezone: Timezone,
    /// The nodes' locale; the OS image's own when absent.
    #[serde(default)]
    pub locale: Option<Locale>,
    pub admin: Admin,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub k3s: K3s,
    #[serde(default)]
    pub gitops: Option<Gitops>,
    /// Prefix every download with this base URL (`https://HOST/PATH` -> `MIRROR/HOST/PATH`).
    #[serde(default)]
    pub mirror: Option<String>,
    /// Extra directory trees copied into the root filesystem.
    #[serde(default)]
    pub overlays: OverlaySets,
    /// Container images preloaded into every node's containerd.
    #[serde(default)]
    pub images: ImageSets,
    /// Default output formats of `build` (raw, zst, xz, bmap); `--format` overrides.
    #[serde(default, deserialize_with = "formats_list")]
    pub formats: Vec<crate::formats::Format>,
    /// How `build --netboot DIR` serves the nodes over the network.
    #[serde(default)]
    pub netboot: Option<crate::target::netboot::Settings>,
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// Directory that relative paths in the file are resolved against (the file's own).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Whether paths in the file may lead outside `base_dir` (`--allow-outside-paths`).
    #[serde(skip)]
    pub allow_outside_paths: bool,
}

/// Where the Argo CD images go when GitOps is enabled.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ArgocdImages {
    /// Only the first server, which installs Argo CD.
    #[default]
    FirstServer,
    /// Every server, so Argo CD can be rescheduled without pulling.
    AllServers,
    /// None: nodes pull them from the registry.
    None,
}

/// Image references (`redis:7-alpine`, `ghcr.io/org/app@sha256:...`) for every node and per
/// role, plus registry settings for pulling them at build time.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageSets {
    #[serde(default)]
    pub all: Vec<ImageRef>,
    #[serde(default)]
    pub server: Vec<ImageRef>,
    #[serde(default)]
    pub agent: Vec<ImageRef>,
    /// Registries (`host[:port]`) that may be reached over plain HTTP.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    #[serde(default)]
    pub argocd: ArgocdImages,
    /// A registry every image is pulled through at build time, each under its registry's
    /// name: `redis:7` from `MIRROR/docker.io/library/redis:7`.
    #[serde(default)]
    pub registry_mirror: Option<crate::registry::PullMirror>,
}

/// Overlay directories for every node and per role, relative to cluster.yaml.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OverlaySets {
    #[serde(default)]
    pub all: Vec<PathBuf>,
    #[serde(default)]
    pub server: Vec<PathBuf>,
    #[serde(default)]
    pub agent: Vec<PathBuf>,
}

fn default_timezone() -> Timezone {
    Timezone("Etc/UTC".into())
}

/// The tz database names (zones and links) a timezone may be.
const TIMEZONES: &str = include_str!("timezones.txt");

/// A time zone of the tz database (`Europe/Berlin`, `Etc/UTC`), checked against its names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Timezone(String);

impl TryFrom<String> for Timezone {
    type Error = String;

    fn try_from(tz: String) -> std::result::Result<Timezone, String> {
        let names = || TIMEZONES.lines().filter(|l| !l.starts_with('#'));
        if names().any(|n| n == tz) {
            return Ok(Timezone(tz));
        }
        let hint = names()
            .map(|n| {
                (
                    edit_distance(&n.to_ascii_lowercase(), &tz.to_ascii_lowercase()),
                    n,
                )
            })
            .min()
            .filter(|(d, _)| *d <= 3)
            .map(|(_, n)| format!(" (did you mean {n}?)"))
            .unwrap_or_default();
        Err(format!(
            "unknown timezone {tz:?}{hint}: use a tz database name like Europe/Berlin or Etc/UTC (`timedatectl list-timezones` lists them)"
        ))
    }
}

checked_string!(Timezone);

/// Levenshtein distance, for suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// A locale name like `en_US.UTF-8`, `C.UTF-8` or `de_DE@euro`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Locale(String);

impl TryFrom<String> for Locale {
    type Error = String;

    fn try_from(locale: String) -> std::result::Result<Locale, String> {
        let ok = !locale.is_empty()
            && locale.len() <= 64
            && locale
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
            && locale
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-'));
        if !ok {
            return Err(format!(
                "locale {locale:?} is not a locale name like en_US.UTF-8 or C.UTF-8; leave `locale` out to keep the OS image's own"
            ));
        }
        Ok(Locale(locale))
    }
}

checked_string!(Locale);

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Login of the administrator account created on every node.
    #[serde(default = "default_admin")]
    pub user: String,
    /// Public keys allowed to log in as the admin user. Password login stays disabled.
    pub ssh_authorized_keys: Vec<AuthorizedKey>,
}

/// What `init` writes in place of a public key when it finds none in `~/.ssh`. `build`
/// refuses it with a message saying what to put there.
pub const PLACEHOLDER_KEY: &str = "REPLACE-WITH-YOUR-SSH-PUBLIC-KEY";

/// One OpenSSH public key line (`ssh-ed25519 AAAA... comment`), checked by decoding it when
/// the inventory is read. It keeps the line as the user wrote it, comment included, so the
/// nodes' authorized_keys hold exactly that line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct AuthorizedKey(String);

impl TryFrom<String> for AuthorizedKey {
    type Error = String;

    fn try_from(line: String) -> Result<Self, String> {
        let key = line.trim();
        if key == PLACEHOLDER_KEY {
            return Err(format!(
                "{PLACEHOLDER_KEY} is the placeholder `pikube-image init` wrote because it found no key in ~/.ssh: replace it with your public key (the line in ~/.ssh/id_ed25519.pub; make one with `ssh-keygen -t ed25519`)"
            ));
        }
        let shown = || {
            let s: String = key.chars().take(40).collect();
            if s.len() < key.len() {
                format!("{s}...")
            } else {
                s
            }
        };
        if let Some(c) = key.chars().find(|c| c.is_control()) {
            return Err(format!(
                "the SSH key '{}' contains the control character {c:?}: write the key on one line, as in ~/.ssh/id_ed25519.pub",
                shown().escape_debug()
            ));
        }
        ssh_key::PublicKey::from_openssh(key).map_err(|e| {
            format!(
                "'{}' is not an OpenSSH public key ({e}): paste the whole line of a .pub file, like 'ssh-ed25519 AAAAC3Nza... me@laptop'",
                shown()
            )
        })?;
        Ok(AuthorizedKey(key.to_string()))
    }
}

checked_string!(AuthorizedKey);

fn default_admin() -> String {
    "pikube".into()
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Default gateway for nodes with a static address.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// DNS servers for nodes with a static address.
    #[serde(default)]
    pub dns: Vec<IpAddr>,
    /// Prefix length used when a node's `ip` has none.
    #[serde(default)]
    pub prefix: Option<u8>,
    /// Name of the wired interface in the OS image.
    #[serde(default)]
    pub interface: Option<String>,
    /// The Wi-Fi network nodes join (a node's own `wifi` replaces it).
    #[serde(default)]
    pub wifi: Option<Wifi>,
}

/// A Wi-Fi network to join: its name, the file holding its WPA passphrase (a secret, like
/// `k3s.token_file`) and the regulatory country the radio must follow.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Wifi {
    pub ssid: Ssid,
    /// Relative to cluster.yaml, mode 0600: the passphrase (8 to 63 characters) or the
    /// 64-hex-digit key, on one line.
    pub passphrase_file: PathBuf,
    pub country: Country,
}

/// A Wi-Fi network name: 1 to 32 bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ssid(String);

impl TryFrom<String> for Ssid {
    type Error = String;

    fn try_from(ssid: String) -> std::result::Result<Ssid, String> {
        if ssid.is_empty() || ssid.len() > 32 {
            return Err(format!(
                "ssid {ssid:?} is {} bytes long: a Wi-Fi network name has 1 to 32",
                ssid.len()
            ));
        }
        if ssid.chars().any(char::is_control) {
            return Err(format!(
                "ssid {ssid:?} contains a control character: write the network's name as it shows on your devices"
            ));
        }
        Ok(Ssid(ssid))
    }
}

checked_string!(Ssid);

/// The ISO 3166-1 alpha-2 codes a regulatory country may be.
const COUNTRIES: &str = include_str!("countries.txt");

/// A Wi-Fi regulatory country: an ISO 3166-1 alpha-2 code (`DE`, `US`), which sets the
/// channels and transmit power the radio may use (cfg80211's regulatory domain).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Country(String);

impl TryFrom<String> for Country {
    type Error = String;

    fn try_from(code: String) -> std::result::Result<Country, String> {
        let known = COUNTRIES
            .lines()
            .filter(|l| !l.starts_with('#'))
            .any(|c| c == code);
        if !known {
            let hint = match COUNTRIES.lines().find(|c| c.eq_ignore_ascii_case(&code)) {
                Some(c) => format!(" (did you mean {c}?)"),
                None => String::new(),
            };
            return Err(format!(
                "country {code:?} is not an ISO 3166 country code{hint}: use the two capital letters of the country the nodes are in, like DE, GB or US"
            ));
        }
        Ok(Country(code))
    }
}

checked_string!(Country);

/// k3s release installed when cluster.yaml names none.
pub const DEFAULT_K3S_VERSION: &str = "v1.36.3+k3s1";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct K3s {
    /// Put k3s into the images (binary, config, unit, airgap images). Default true.
    #[serde(default = "yes")]
    pub install: bool,
    /// k3s release, e.g. `v1.31.4+k3s1`.
    #[serde(default = "default_k3s_version")]
    pub version: String,
    /// URL agents and extra servers join, e.g. `https://192.168.1.10:6443`; defaults to the first server.
    #[serde(default)]
    pub api: Option<String>,
    /// Shared join token, relative to cluster.yaml (default `secrets/k3s-token`).
    #[serde(default = "default_token_file")]
    pub token_file: PathBuf,
    /// Ship the release's airgap images tarball so nodes need no registry for k3s itself.
    #[serde(default = "yes")]
    pub airgap: bool,
    /// Extra names and addresses for the API server certificate.
    #[serde(default)]
    pub tls_san: Vec<String>,
    /// Any k3s server flag, without dashes (`disable: [traefik]`, `flannel-backend: wireguard-native`).
    #[serde(default)]
    pub server_config: BTreeMap<String, serde_json::Value>,
    /// Any k3s agent flag, for agents (`kubelet-arg: [...]`).
    #[serde(default)]
    pub agent_config: BTreeMap<String, serde_json::Value>,
    /// Registry mirrors and settings, written as /etc/rancher/k3s/registries.yaml.
    #[serde(default)]
    pub registries: Option<Registries>,
    /// A directory holding the release's files copied by hand (`k3s-arm64`,
    /// `sha256sum-arm64.txt`, `k3s-airgap-images-arm64.tar.zst`, ...), relative to
    /// cluster.yaml: used instead of downloading the release.
    #[serde(default)]
    pub release_dir: Option<PathBuf>,
    /// A virtual IP in front of the servers, held by kube-vip.
    #[serde(default)]
    pub vip: Option<crate::kube_vip::Vip>,
    /// k3s's embedded registry mirror: nodes share the images they hold.
    #[serde(default)]
    pub embedded_registry: bool,
    /// Packaged components the servers do not deploy (`traefik`, `servicelb`, ...).
    #[serde(default)]
    pub disable: Vec<crate::k3s_flags::Component>,
    /// `none` for a CNI of one's own; k3s's default (vxlan) when absent.
    #[serde(default)]
    pub flannel_backend: Option<crate::k3s_flags::FlannelBackend>,
    #[serde(default)]
    pub disable_network_policy: bool,
    #[serde(default)]
    pub disable_kube_proxy: bool,
    /// OpenID Connect sign-in for the API server.
    #[serde(default)]
    pub oidc: Option<crate::k3s_flags::Oidc>,
}

impl Default for K3s {
    fn default() -> Self {
        K3s {
            install: true,
            version: default_k3s_version(),
            api: None,
            token_file: default_token_file(),
            airgap: true,
            tls_san: Vec::new(),
            server_config: BTreeMap::new(),
            agent_config: BTreeMap::new(),
            registries: None,
            release_dir: None,
            vip: None,
            embedded_registry: false,
            disable: Vec::new(),
            flannel_backend: None,
            disable_network_policy: false,
            disable_kube_proxy: false,
            oidc: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_k3s_version() -> String {
    DEFAULT_K3S_VERSION.into()
}

fn default_token_file() -> PathBuf {
    PathBuf::from("secrets/k3s-token")
}

/// containerd registry configuration as k3s reads it from registries.yaml.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Registries {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mirrors: BTreeMap<String, RegistryMirror>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, RegistryConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryMirror {
    /// Empty for a mirror entry that only enables the embedded registry for the registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rewrite: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RegistryAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RegistryTls>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

/// Argo CD release installed when cluster.yaml names none.
pub const DEFAULT_ARGOCD_VERSION: &str = "v3.5.3";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Gitops {
    /// `argocd` (default) or `flux`.
    #[serde(default)]
    pub engine: GitopsEngine,
    /// Git repository holding the cluster's configuration (checked to be present).
    #[serde(default)]
    pub repo: String,
    #[serde(default = "default_revision")]
    pub revision: String,
    /// Directory in the repository with the applications (app of apps).
    #[serde(default = "default_gitops_path")]
    pub path: String,
    /// Argo CD release whose install manifest is put on the first server.
    #[serde(default = "default_argocd_version")]
    pub argocd_version: String,
    /// Expected SHA-256 of that install manifest. When absent, the manifest records the
    /// digest that was downloaded, so it can be pinned here.
    #[serde(default)]
    pub argocd_sha256: Option<String>,
    /// The install manifest copied by hand (relative to cluster.yaml), used instead of
    /// downloading it; checked against `argocd_sha256` when that is set.
    #[serde(default)]
    pub argocd_manifest: Option<PathBuf>,
    /// File (relative to cluster.yaml) with credentials for a private repository:
    /// `username` and `password` (or token) lines as YAML. Written as an Argo CD
    /// repository Secret, mode 0600.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Flux's release, controllers and SSH credentials (`engine: flux`).
    #[serde(default)]
    pub flux: Option<crate::flux::FluxSettings>,
}

/// What installs and runs the GitOps bootstrap on the first server.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GitopsEngine {
    #[default]
    Argocd,
    Flux,
}

fn default_argocd_version() -> String {
    DEFAULT_ARGOCD_VERSION.into()
}

fn default_revision() -> String {
    "HEAD".into()
}

fn default_gitops_path() -> String {
    ".".into()
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Control plane node (`k3s server`).
    Server,
    /// Worker node (`k3s agent`); `worker` is accepted as a synonym.
    #[serde(alias = "worker")]
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Role> {
        match s {
            "server" => Ok(Role::Server),
            "agent" | "worker" => Ok(Role::Agent),
            other => bail!("unknown role '{other}': use server, agent or worker"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Hostname (RFC 1123 label), unique in the cluster.
    pub name: Hostname,
    /// Board name or alias from `pikube-image boards`.
    pub board: String,
    /// OS image key of the board; the board's default when absent.
    #[serde(default)]
    pub os: Option<String>,
    pub role: Role,
    /// Static address, `192.168.1.10` or `192.168.1.10/24`; DHCP when absent.
    #[serde(default)]
    pub ip: Option<NodeAddress>,
    /// MAC address of the wired interface; the network config matches on it when set.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// Raspberry Pi serial number, naming its TFTP directory for network boot.
    #[serde(default)]
    pub serial: Option<crate::target::netboot::PiSerial>,
    /// Extra Kubernetes node labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Overlay directories for this node only, relative to cluster.yaml.
    #[serde(default)]
    pub overlays: Vec<PathBuf>,
    /// Container images preloaded on this node only.
    #[serde(default)]
    pub images: Vec<ImageRef>,
    /// The Wi-Fi network this node joins, in place of `network.wifi`.
    #[serde(default)]
    pub wifi: Option<Wifi>,
}

/// A host name: one DNS label (RFC 1123: 1 to 63 of `a-z`, `0-9` and `-`, not starting or
/// ending with `-`), checked when the inventory is read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Hostname(String);

impl TryFrom<String> for Hostname {
    type Error = String;

    fn try_from(name: String) -> std::result::Result<Hostname, String> {
        check_hostname(&name).map_err(|e| {
            format!("{e:#}: a node name must be a hostname (RFC 1123: letters, digits and '-', at most 63 characters, not starting or ending with '-')")
        })?;
        Ok(Hostname(name))
    }
}

checked_string!(Hostname);

impl std::ops::Deref for Hostname {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Hostname {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Hostname {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Hostname {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

/// The output formats in the inventory: sorted, without duplicates.
fn formats_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<crate::formats::Format>, D::Error> {
    let mut v = Vec::<crate::formats::Format>::deserialize(d)?;
    v.sort();
    v.dedup();
    Ok(v)
}

/// A node's `ip:` as written: an address, with a prefix length or without one (then the
/// cluster's `network.prefix` applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeAddress {
    pub ip: IpAddr,
    pub prefix: Option<u8>,
}

impl TryFrom<String> for NodeAddress {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<NodeAddress, String> {
        if s.contains('/') {
            let net: IpNet = s
                .parse()
                .map_err(|_| format!("'{s}' is not an address like 192.168.1.10/24"))?;
            Ok(NodeAddress {
                ip: net.addr(),
                prefix: Some(net.prefix_len()),
            })
        } else {
            let ip = s
                .parse()
                .map_err(|_| format!("'{s}' is not an IP address like 192.168.1.10"))?;
            Ok(NodeAddress { ip, prefix: None })
        }
    }
}

impl From<NodeAddress> for String {
    fn from(a: NodeAddress) -> String {
        match a.prefix {
            Some(p) => format!("{}/{p}", a.ip),
            None => a.ip.to_string(),
        }
    }
}

/// A MAC address (`dc:a6:32:01:02:03`), kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(String);

impl TryFrom<String> for MacAddr {
    type Error = String;

    fn try_from(mac: String) -> std::result::Result<MacAddr, String> {
        let parts: Vec<&str> = mac.split(':').collect();
        if parts.len() != 6
            || parts
                .iter()
                .any(|p| p.len() != 2 || !p.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(format!(
                "'{mac}' is not a MAC address like dc:a6:32:01:02:03"
            ));
        }
        Ok(MacAddr(mac))
    }
}

checked_string!(MacAddr);

impl MacAddr {
    /// Lower case, dash separated (`dc-a6-32-01-02-03`), as network bootloaders name files.
    pub fn dashed(&self) -> String {
        self.0.to_ascii_lowercase().replace(':', "-")
    }
}

/// A node's static address with its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticAddr {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl StaticAddr {
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.ip, self.prefix)
    }
}

impl Cluster {
    /// Reads and validates a cluster file. Errors name the file and, for syntax and unknown
    /// keys, the line and column.
    pub fn load(path: &Path) -> Result<Cluster> {
        if !path.exists() {
            bail!(
                "{} not found: run `pikube-image init` to create a cluster.yaml (and secrets/), or pass --config FILE",
                path.display()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut c = Cluster::parse_named(&text, &path.display().to_string())
            .with_context(|| format!("invalid cluster file {}", path.display()))?;
        c.base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Ok(c)
    }

    /// Images preloaded on `node` through its role (shared by the role) and its own.
    pub fn images_for(&self, node: &Node) -> (Vec<ImageRef>, Vec<ImageRef>) {
        let role = match node.role {
            Role::Server => &self.images.server,
            Role::Agent => &self.images.agent,
        };
        let shared = self.images.all.iter().chain(role).cloned().collect();
        (shared, node.images.clone())
    }

    /// A file of fixed name (`images.lock`, `secrets/`) in the file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        self.base_dir.join(p)
    }

    /// The path the file gives under `key` (`k3s.token_file`, `overlays.all[1]`), resolved
    /// against the file's directory and refused when it leads outside it, unless
    /// `allow_outside_paths` ([`path_inside`]).
    pub fn inventory_path(&self, key: &str, p: &Path) -> Result<PathBuf> {
        path_inside(&self.base_dir, key, p, self.allow_outside_paths)
    }

    /// Checks every path the file gives that a build reads, before anything is downloaded.
    pub fn check_paths(&self) -> Result<()> {
        if self.k3s.install {
            self.inventory_path("k3s.token_file", &self.k3s.token_file)?;
            if let Some(d) = &self.k3s.release_dir {
                self.inventory_path("k3s.release_dir", d)?;
            }
        }
        if let Some(f) = self
            .gitops
            .as_ref()
            .and_then(|g| g.argocd_manifest.as_ref())
        {
            self.inventory_path("gitops.argocd_manifest", f)?;
        }
        if let Some(f) = self
            .gitops
            .as_ref()
            .and_then(|g| g.credentials_file.as_ref())
        {
            self.inventory_path("gitops.credentials_file", f)?;
        }
        crate::flux::check_paths(self)?;
        for node in &self.nodes {
            self.overlays_for(node)?;
            if let Some((key, w)) = self.wifi_for(node) {
                self.inventory_path(&format!("{key}.passphrase_file"), &w.passphrase_file)?;
            }
        }
        Ok(())
    }

    /// The Wi-Fi network `node` joins, with the key that gives it in the file
    /// (`nodes[2].wifi`, `network.wifi`): the node's own, else the inventory's.
    pub fn wifi_for<'a>(&'a self, node: &'a Node) -> Option<(String, &'a Wifi)> {
        if let Some(w) = &node.wifi {
            let key = match self.nodes.iter().position(|n| n.name == node.name) {
                Some(i) => format!("nodes[{i}].wifi"),
                None => format!("wifi of node '{}'", node.name),
            };
            return Some((key, w));
        }
        self.network
            .wifi
            .as_ref()
            .map(|w| ("network.wifi".to_string(), w))
    }

    /// Overlay directories for `node`: every node's, then its role's, then its own; each with
    /// whether it is shared by all nodes of the role or the node's own.
    pub fn overlays_for(&self, node: &Node) -> Result<Vec<(PathBuf, crate::op::Scope)>> {
        use crate::op::Scope;
        let role = match node.role {
            Role::Server => &self.overlays.server,
            Role::Agent => &self.overlays.agent,
        };
        let own = match self.nodes.iter().position(|n| n.name == node.name) {
            Some(i) => format!("nodes[{i}].overlays"),
            None => format!("overlays of node '{}'", node.name),
        };
        let lists = [
            ("overlays.all".to_string(), &self.overlays.all, Scope::Role),
            (format!("overlays.{}", node.role), role, Scope::Role),
            (own, &node.overlays, Scope::Node),
        ];
        let mut dirs = Vec::new();
        for (key, list, scope) in lists {
            for (i, p) in list.iter().enumerate() {
                dirs.push((self.inventory_path(&format!("{key}[{i}]"), p)?, scope));
            }
        }
        Ok(dirs)
    }

    pub fn parse(text: &str) -> Result<Cluster> {
        Cluster::parse_named(text, "cluster.yaml")
    }

    /// Parses `text`, naming it `name` (its path) where a syntax error or a bad value is
    /// shown.
    pub fn parse_named(text: &str, name: &str) -> Result<Cluster> {
        let cluster: Cluster = serde_saphyr::from_str(text).map_err(|e| {
            anyhow::anyhow!(
                "{}",
                e.render_with_options(serde_saphyr::render_options! { source_name: Some(name) })
            )
        })?;
        cluster.validate()?;
        Ok(cluster)
    }

    /// Checks everything that can be checked without the board catalog.
    pub fn validate(&self) -> Result<()> {
        check_hostname(&self.cluster).context("`cluster` must be a valid DNS label")?;
        if let Some(domain) = &self.domain {
            for part in domain.split('.') {
                check_hostname(part)
                    .with_context(|| format!("domain '{domain}' is not a valid DNS name"))?;
            }
        }
        check_hostname(&self.admin.user)
            .with_context(|| format!("admin user '{}' is not a valid login", self.admin.user))?;
        if self.admin.user == "root" {
            bail!("admin user must not be root: name a regular account that gets sudo");
        }
        if self.admin.ssh_authorized_keys.is_empty() {
            bail!(
                "admin.ssh_authorized_keys is empty: password login is disabled, so add at least one public key (e.g. the content of ~/.ssh/id_ed25519.pub)"
            );
        }
        if let Some(p) = self.network.prefix {
            if p > 128 {
                bail!("network.prefix {p} is not a prefix length");
            }
        }
        if let Some(gw) = &self.k3s.api {
            check_url(gw).context("k3s.api must be a URL like https://192.168.1.10:6443")?;
        }
        check_k3s_version(&self.k3s.version)?;
        if let Some(m) = &self.mirror {
            check_url(m).context("mirror must be a URL like http://127.0.0.1:8080")?;
        }
        if let Some(g) = &self.gitops {
            if g.repo.is_empty() {
                bail!(
                    "gitops.repo is missing: name the Git repository the cluster's configuration comes from, e.g. `repo: https://github.com/you/fleet.git` under gitops"
                );
            }
            check_url(&g.repo).with_context(|| {
                format!(
                    "gitops.repo '{}' is not a URL: use https://host/org/repo.git or ssh://git@host/org/repo.git",
                    g.repo
                )
            })?;
        }
        let mut seen = BTreeSet::new();
        for node in &self.nodes {
            if !seen.insert(node.name.to_ascii_lowercase()) {
                bail!(
                    "duplicate hostname '{}': every node needs its own name",
                    node.name
                );
            }
            if let Some(a) = self.static_addr(node) {
                let max = if a.ip.is_ipv4() { 32 } else { 128 };
                if a.prefix > max {
                    bail!(
                        "node '{}': prefix /{} is too long for {}: set network.prefix or write the node's ip as {}/24",
                        node.name,
                        a.prefix,
                        a.ip,
                        a.ip
                    );
                }
            }
            for (k, v) in &node.labels {
                check_label(k, v).with_context(|| format!("node '{}'", node.name))?;
            }
        }
        for node in &self.nodes {
            if let Some(a) = self.static_addr(node) {
                check_address(&node.name, a, self.network.gateway)?;
            }
        }
        let mut ips = BTreeMap::new();
        for node in &self.nodes {
            if let Some(a) = self.static_addr(node) {
                if let Some(other) = ips.insert(a.ip, &node.name) {
                    bail!(
                        "nodes '{other}' and '{}' have the same ip {}",
                        node.name,
                        a.ip
                    );
                }
            }
        }
        let servers = self.nodes.iter().filter(|n| n.role == Role::Server).count();
        let agents = self.nodes.len() - servers;
        if agents > 0 && servers == 0 && self.k3s.api.is_none() {
            bail!(
                "the inventory has agents but no server: add a node with `role: server`, or set k3s.api to an existing cluster"
            );
        }
        crate::k3s_flags::validate(&self.k3s)?;
        crate::kube_vip::validate(self)?;
        crate::flux::validate(self)?;
        Ok(())
    }

    /// What is allowed but likely to go wrong, for the user to read before building.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(first) = self.first_server()
            && first.ip.is_none()
            && self.k3s.api.is_none()
            && self.k3s.vip.is_none()
            && self.nodes.len() > 1
        {
            let name = self
                .fqdn(&first.name)
                .unwrap_or_else(|| first.name.to_string());
            out.push(format!(
                "server '{}' has no ip: the other nodes will join https://{name}:6443, which works only if your DNS resolves that name to its DHCP lease; give it an ip in cluster.yaml, or set k3s.api",
                first.name
            ));
        }
        out.extend(crate::kube_vip::warnings(self));
        out
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The first server in inventory order: it initialises the cluster and carries GitOps.
    pub fn first_server(&self) -> Option<&Node> {
        self.nodes.iter().find(|n| n.role == Role::Server)
    }

    /// A node's static address, with the cluster's default prefix when the node gives none
    /// (checked against the address family when the inventory is read).
    pub fn static_addr(&self, node: &Node) -> Option<StaticAddr> {
        let a = node.ip?;
        let prefix = a.prefix.unwrap_or_else(|| {
            self.network
                .prefix
                .unwrap_or(if a.ip.is_ipv4() { 24 } else { 64 })
        });
        Some(StaticAddr { ip: a.ip, prefix })
    }

    /// Directory that relative paths in the file are resolved against.
    pub fn fqdn(&self, node: &str) -> Option<String> {
        self.domain.as_ref().map(|d| format!("{node}.{d}"))
    }
}

/// A node's static address must be usable on its subnet: in the gateway's subnet, not the
/// gateway itself, not the subnet's network or broadcast address.
fn check_address(node: &str, a: StaticAddr, gateway: Option<IpAddr>) -> Result<()> {
    let Ok(net) = IpNet::new(a.ip, a.prefix) else {
        return Ok(()); // a prefix too long for the family is reported with its own message
    };
    let net = net.trunc();
    if let Some(gw) = gateway {
        if gw == a.ip {
            bail!(
                "node '{node}': ip {} is network.gateway's address: give the node an address of its own",
                a.ip
            );
        }
        if gw.is_ipv4() == a.ip.is_ipv4() && !net.contains(&gw) {
            bail!(
                "node '{node}': ip {} is not in the subnet of network.gateway {gw} ({net} holds the node, not the gateway): fix the address, the gateway, or the prefix (network.prefix, or ip: ADDRESS/PREFIX)",
                a.cidr()
            );
        }
    }
    if let IpNet::V4(v4) = net
        && a.prefix < 31
    {
        let what = if a.ip == IpAddr::V4(v4.network()) {
            Some("network")
        } else if a.ip == IpAddr::V4(v4.broadcast()) {
            Some("broadcast")
        } else {
            None
        };
        if let Some(what) = what {
            bail!(
                "node '{node}': ip {} is the {what} address of {net}, which no host can use: pick another address",
                a.cidr()
            );
        }
    }
    Ok(())
}

/// `p`, which cluster.yaml gives under `key`, resolved against `dir` (cluster.yaml's
/// directory). Unless `allow_outside`, a path that leads outside `dir` is refused: absolute,
/// climbing out with `..`, or through a symbolic link that points outside (as far as the
/// path exists). An inventory from someone else could otherwise copy any file of this
/// machine (private keys, Git credentials) into an image.
pub fn path_inside(dir: &Path, key: &str, p: &Path, allow_outside: bool) -> Result<PathBuf> {
    let path = dir.join(p);
    if allow_outside {
        return Ok(path);
    }
    let root = std::fs::canonicalize(dir)
        .with_context(|| format!("cannot resolve the inventory directory {}", dir.display()))?;
    let refuse = |why: String| {
        anyhow::anyhow!(
            "`{key}` ({}) in the inventory in {} {why}: paths in cluster.yaml must stay inside its directory, so that an inventory cannot copy other files of this machine (private keys, credentials) into images; move it there and name it relative to cluster.yaml, or pass --allow-outside-paths if you trust this inventory",
            p.display(),
            root.display()
        )
    };
    if p.is_absolute() {
        return Err(refuse("is an absolute path".into()));
    }
    if !crate::overlay::stays_inside(Path::new(DEFAULT_CONFIG), p) {
        return Err(refuse("climbs out of that directory with `..`".into()));
    }
    // The longest part of the path that exists, with its links followed.
    let mut existing = path.clone();
    let real = loop {
        match std::fs::canonicalize(&existing) {
            Ok(real) => break real,
            Err(_) if existing.pop() => {}
            Err(e) => return Err(e).with_context(|| format!("cannot resolve {}", path.display())),
        }
    };
    if !real.starts_with(&root) {
        return Err(refuse(format!(
            "leads through a symbolic link to {}",
            real.display()
        )));
    }
    Ok(path)
}

/// RFC 1123 label: 1-63 of [a-z0-9-], not starting or ending with '-'.
pub fn check_hostname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 63 {
        bail!("'{name}' must be 1 to 63 characters long");
    }
    if name.starts_with('-') || name.ends_with('-') {
        bail!("'{name}' must not start or end with '-'");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        bail!("'{name}' contains '{c}': use lower-case letters, digits and '-'");
    }
    Ok(())
}

fn check_k3s_version(v: &str) -> Result<()> {
    let ok = v.starts_with('v')
        && v.len() > 1
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'));
    if !ok {
        bail!("k3s.version '{v}' is not a k3s release name like v1.31.4+k3s1");
    }
    Ok(())
}

fn check_url(s: &str) -> Result<()> {
    let u = url::Url::parse(s).with_context(|| format!("'{s}' is not a URL"))?;
    if u.host_str().is_none_or(str::is_empty) {
        bail!("'{s}' has no host");
    }
    Ok(())
}

fn check_label(k: &str, v: &str) -> Result<()> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let ok_name = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    // A prefix is a DNS subdomain: dot-separated RFC 1123 labels, 253 characters at most.
    let ok_prefix = |p: &str| p.len() <= 253 && p.split('.').all(|l| check_hostname(l).is_ok());
    if !ok_name(name) || prefix.is_some_and(|p| !ok_prefix(p)) {
        bail!(
            "label key '{k}' is not a valid Kubernetes label key: an optional DNS prefix and '/', then 1 to 63 of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        );
    }
    if !v.is_empty() && !ok_name(v) {
        bail!("label '{k}': value '{v}' is not a valid Kubernetes label value");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster: homelab
domain: home.arpa
admin:
  user: pi
  ssh_authorized_keys:
    - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c me@laptop
network:
  gateway: 192.168.1.1
  dns: [192.168.1.1, 1.1.1.1]
  prefix: 24
k3s:
  version: v1.31.4+k3s1
  server_config:
    disable: [traefik]
nodes:
  - name: cp1
    board: rpi4
    role: server
    ip: 192.168.1.10
  - name: w1
    board: rpi4
    role: worker
    ip: 192.168.1.21/16
    labels: { zone: a }
  - name: w2
    board: rpi5
    role: agent
"#;

    fn with(patch: &str) -> String {
        format!("{GOOD}{patch}")
    }

    #[test]
    fn parses_a_full_inventory() {
        let c = Cluster::parse(GOOD).unwrap();
        assert_eq!(c.nodes.len(), 3);
        assert_eq!(c.nodes[1].role, Role::Agent, "worker is an agent");
        assert_eq!(c.timezone.as_str(), "Etc/UTC");
        assert_eq!(c.locale, None, "the image's own locale");
        let a = c.static_addr(&c.nodes[0]).unwrap();
        assert_eq!(a.cidr(), "192.168.1.10/24");
        let b = c.static_addr(&c.nodes[1]).unwrap();
        assert_eq!(b.cidr(), "192.168.1.21/16");
        assert!(c.static_addr(&c.nodes[2]).is_none());
        assert_eq!(c.first_server().unwrap().name, "cp1");
        assert_eq!(c.fqdn("cp1").unwrap(), "cp1.home.arpa");
        assert_eq!(
            c.k3s.server_config["disable"],
            serde_json::json!(["traefik"])
        );
        assert!(c.k3s.install && c.k3s.airgap);
        assert_eq!(c.k3s.token_file, PathBuf::from("secrets/k3s-token"));
    }

    #[test]
    fn image_references_are_checked() {
        let text = GOOD.replace(
            "nodes:",
            "images: { all: [\"redis:7-alpine\"], agent: [\"ghcr.io/org/app:1\"] }\nnodes:",
        );
        let c = Cluster::parse(&text).unwrap();
        let (shared, own) = c.images_for(c.node("w1").unwrap());
        let names = |v: Vec<ImageRef>| v.iter().map(|r| r.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(shared),
            ["docker.io/library/redis:7-alpine", "ghcr.io/org/app:1"]
        );
        assert!(own.is_empty());
        let (shared, _) = c.images_for(c.node("cp1").unwrap());
        assert_eq!(names(shared), ["docker.io/library/redis:7-alpine"]);
        let e = err(&GOOD.replace("nodes:", "images: { all: [\"Bad Ref!\"] }\nnodes:"));
        assert!(e.contains("Bad Ref!"), "{e}");
    }

    #[test]
    fn k3s_version_is_checked() {
        let e = err(&GOOD.replace("v1.31.4+k3s1", "1.31; rm -rf /"));
        assert!(e.contains("k3s.version"), "{e}");
    }

    fn err(text: &str) -> String {
        format!("{:#}", Cluster::parse(text).unwrap_err())
    }

    #[test]
    fn unknown_key_is_rejected_with_its_position() {
        let e = err(&GOOD.replace("domain: home.arpa", "domain: home.arpa\ndomian: x"));
        assert!(e.contains("domian"), "{e}");
        assert!(e.contains("line") || e.contains(":3"), "{e}");
    }

    #[test]
    fn bad_ip_is_named() {
        let e = err(&GOOD.replace("192.168.1.10", "192.168.1.300"));
        assert!(e.contains("line 20") && e.contains("192.168.1.300"), "{e}");
    }

    #[test]
    fn duplicate_hostname_is_named() {
        let e = err(&with("  - { name: w1, board: rpi3, role: agent }\n"));
        assert!(e.contains("duplicate hostname 'w1'"), "{e}");
    }

    #[test]
    fn invalid_hostname_is_named() {
        let e = err(&with("  - { name: Bad_Name, board: rpi3, role: agent }\n"));
        assert!(e.contains("Bad_Name"), "{e}");
    }

    #[test]
    fn duplicate_ip_is_named() {
        let e = err(&with(
            "  - { name: w3, board: rpi3, role: agent, ip: 192.168.1.10 }\n",
        ));
        assert!(e.contains("same ip"), "{e}");
    }

    #[test]
    fn unknown_role_is_rejected() {
        let e = err(&with("  - { name: w3, board: rpi3, role: master }\n"));
        assert!(e.contains("master"), "{e}");
    }

    #[test]
    fn agents_need_a_server() {
        let text = GOOD.replace("role: server", "role: agent");
        let e = err(&text);
        assert!(e.contains("no server"), "{e}");
        let with_api = text.replace("k3s:\n", "k3s:\n  api: https://10.0.0.1:6443\n");
        Cluster::parse(&with_api).unwrap();
    }

    #[test]
    fn gitops_repo_must_be_a_url() {
        let e = err(&with_gitops("not a url"));
        assert!(e.contains("gitops.repo"), "{e}");
        Cluster::parse(&with_gitops("https://github.com/me/fleet.git")).unwrap();
    }

    fn with_gitops(repo: &str) -> String {
        GOOD.replace("nodes:", &format!("gitops:\n  repo: {repo}\nnodes:"))
    }

    #[test]
    fn keys_are_checked() {
        let e = err(&GOOD.replace("ssh-ed25519 AAAA", "hello AAAA"));
        assert!(e.contains("not an OpenSSH public key"), "{e}");
        let e = err(&GOOD.replace(
            "    - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c me@laptop",
            "    []",
        ));
        assert!(e.contains("ssh_authorized_keys"), "{e}");
    }

    #[test]
    fn hostname_rules() {
        for ok in ["a", "node-1", "x1y2", &"a".repeat(63)] {
            check_hostname(ok).unwrap();
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"a".repeat(64)] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timezones_are_tz_database_names() {
        for ok in [
            "Etc/GMT+5",
            "Etc/GMT-14",
            "UTC",
            "America/Port-au-Prince",
            "Europe/Berlin",
        ] {
            Timezone::try_from(ok.to_string()).unwrap();
        }
        let e = Timezone::try_from("Europe/Berln".to_string()).unwrap_err();
        assert!(e.contains("did you mean Europe/Berlin?"), "{e}");
        for bad in [
            "",
            "../etc/shadow",
            "Europe/../../x",
            "Europe/Berlin\n",
            "Mars/Olympus",
        ] {
            let e = Timezone::try_from(bad.to_string()).unwrap_err();
            assert!(e.contains("tz database"), "{bad:?}: {e}");
        }
        let e = err(&GOOD.replace(
            "domain: home.arpa",
            "domain: home.arpa\ntimezone: Europe/Berln",
        ));
        assert!(
            e.contains("line 4") && e.contains("Europe/Berlin"),
            "names line and fix: {e}"
        );
    }

    #[test]
    fn locales_are_names() {
        for ok in ["C.UTF-8", "de_DE@euro", "POSIX"] {
            Locale::try_from(ok.to_string()).unwrap();
        }
        for bad in ["", "en_US.UTF-8\nLC_ALL=x", "en US", "$(reboot)", ".UTF-8"] {
            assert!(Locale::try_from(bad.to_string()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wifi_settings_are_checked_and_a_nodes_own_wins() {
        let wifi = |ssid: &str, country: &str| {
            GOOD.replace(
                "  prefix: 24\n",
                &format!("  prefix: 24\n  wifi: {{ ssid: {ssid:?}, passphrase_file: secrets/wifi, country: {country} }}\n"),
            )
        };
        let c = Cluster::parse(&wifi("home", "DE")).unwrap();
        let (key, w) = c.wifi_for(c.node("w1").unwrap()).unwrap();
        assert_eq!(
            (key.as_str(), w.ssid.as_str(), w.country.as_str()),
            ("network.wifi", "home", "DE")
        );
        let own = wifi("home", "DE").replace(
            "labels: { zone: a }",
            "labels: { zone: a }\n    wifi: { ssid: shed, passphrase_file: secrets/shed, country: FR }",
        );
        let c = Cluster::parse(&own).unwrap();
        let (key, w) = c.wifi_for(c.node("w1").unwrap()).unwrap();
        assert_eq!((key.as_str(), w.ssid.as_str()), ("nodes[1].wifi", "shed"));
        assert_eq!(
            c.wifi_for(c.node("cp1").unwrap()).unwrap().0,
            "network.wifi"
        );
        for (ssid, country, want) in [
            ("home", "de", "did you mean DE?"),
            ("home", "XX", "not an ISO 3166 country code"),
            ("", "DE", "1 to 32"),
            (&"x".repeat(33), "DE", "1 to 32"),
            ("a\tb", "DE", "control character"),
        ] {
            let e = err(&wifi(ssid, country));
            assert!(
                e.contains(want) && e.contains("line 12"),
                "{ssid:?} {country}: {e}"
            );
        }
    }

    #[test]
    fn addresses_must_fit_the_gateways_subnet() {
        for (ip, want) in [
            ("192.168.2.10", "not in the subnet of network.gateway"),
            ("192.168.1.1", "network.gateway's address"),
            ("192.168.1.0", "the network address"),
            ("192.168.1.255", "the broadcast address"),
            ("10.1.2.3/8", "not in the subnet"),
        ] {
            let e = err(&GOOD.replace("ip: 192.168.1.10", &format!("ip: {ip}")));
            assert!(e.contains("cp1") && e.contains(want), "{ip}: {e}");
        }
        // /16 holds the gateway: fine.
        Cluster::parse(&GOOD.replace("ip: 192.168.1.10", "ip: 192.168.7.10/16")).unwrap();
    }

    #[test]
    fn a_server_on_dhcp_is_warned_about() {
        let c = Cluster::parse(GOOD).unwrap();
        assert!(c.warnings().is_empty());
        let c = Cluster::parse(&GOOD.replace("    ip: 192.168.1.10\n", "")).unwrap();
        let w = c.warnings();
        assert!(
            w.len() == 1 && w[0].contains("cp1.home.arpa") && w[0].contains("k3s.api"),
            "{w:?}"
        );
    }

    #[test]
    fn label_rules() {
        check_label("zone", "a").unwrap();
        check_label("example.com/tier", "edge-1").unwrap();
        for bad in [
            "a,b=c,evil.io/zone",
            "Evil.io/zone",
            "a..b/x",
            "-a.io/x",
            "/x",
            "a b/x",
        ] {
            assert!(check_label(bad, "v").is_err(), "{bad}");
        }
        assert!(check_label("zone", "bad value").is_err());
        assert!(check_label("-x", "a").is_err());
    }
}
