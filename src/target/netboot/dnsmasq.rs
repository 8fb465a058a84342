//! The dnsmasq configuration of a netboot tree: DHCP with a static lease per node, TFTP of
//! the tree, the Raspberry Pi boot menu entry and the U-Boot boot file.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::config::{Hostname, MacAddr};

/// What dnsmasq is told, one field per kind of directive.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsmasqConf {
    /// Listen only on this interface.
    pub interface: Option<String>,
    /// Where the DHCP server hands out addresses.
    pub range: DhcpRange,
    pub hosts: Vec<DhcpHost>,
    /// The Raspberry Pi bootloader accepts an offer whose option 43 carries this text.
    pub pi_boot_service: Option<String>,
    /// U-Boot clients: their vendor class and the boot file whose directory holds
    /// `pxelinux.cfg/`.
    pub uboot: Option<UbootBoot>,
    pub tftp_root: PathBuf,
    pub lease_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DhcpRange {
    /// Only hosts with a `dhcp-host` address get one, on the network of `network`.
    Static {
        network: Ipv4Addr,
        netmask: Ipv4Addr,
    },
    /// Addresses `first` to `last` for anyone, leases of `hours`.
    Dynamic {
        first: Ipv4Addr,
        last: Ipv4Addr,
        netmask: Ipv4Addr,
        hours: u32,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct DhcpHost {
    pub mac: MacAddr,
    pub ip: Option<Ipv4Addr>,
    pub name: Hostname,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UbootBoot {
    /// Tag set on clients whose vendor class starts with `vendor_class`.
    pub tag: String,
    pub vendor_class: String,
    pub boot_file: String,
}

/// The text the Raspberry Pi bootloader looks for in option 43.
pub const PI_BOOT_SERVICE: &str = "Raspberry Pi Boot";
/// The vendor class U-Boot sends in its DHCP requests (`U-Boot.armv8` and the like).
pub const UBOOT_VENDOR_CLASS: &str = "U-Boot";

/// One line of a dnsmasq configuration file: `key` or `key=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub key: &'static str,
    pub value: Option<String>,
}

impl fmt::Display for Directive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={v}", self.key),
            None => f.write_str(self.key),
        }
    }
}

fn d(key: &'static str, value: impl Into<String>) -> Directive {
    Directive {
        key,
        value: Some(value.into()),
    }
}

fn flag(key: &'static str) -> Directive {
    Directive { key, value: None }
}

/// A quoted dnsmasq string (no quotes or line breaks inside, checked by the caller's types).
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('"', ""))
}

impl DnsmasqConf {
    pub fn directives(&self) -> Vec<Directive> {
        // No DNS: the network keeps its resolver; this dnsmasq only does DHCP and TFTP.
        let mut out = vec![d("port", "0")];
        if let Some(i) = &self.interface {
            out.extend(listen_on(i));
        }
        out.push(d("dhcp-range", self.range.value()));
        out.push(d("dhcp-leasefile", self.lease_file.display().to_string()));
        out.push(flag("log-dhcp"));
        for h in &self.hosts {
            let mut v = h.mac.as_str().to_ascii_lowercase();
            if let Some(ip) = h.ip {
                v.push_str(&format!(",{ip}"));
            }
            v.push_str(&format!(",{}", h.name));
            out.push(d("dhcp-host", v));
        }
        if let Some(text) = &self.pi_boot_service {
            out.push(d("pxe-service", format!("0,{}", quoted(text))));
        }
        if let Some(u) = &self.uboot {
            out.push(d(
                "dhcp-vendorclass",
                format!("set:{},{}", u.tag, u.vendor_class),
            ));
            out.push(d("dhcp-boot", format!("tag:{},{}", u.tag, u.boot_file)));
        }
        out.push(flag("enable-tftp"));
        out.push(d("tftp-root", self.tftp_root.display().to_string()));
        out
    }

    /// The file's text, one directive a line after a comment saying what it is.
    pub fn render(&self) -> String {
        let mut s = String::from(
            "# dnsmasq configuration written by pikube-image build --netboot: DHCP and TFTP for\n# the nodes' network boot. Run: dnsmasq --keep-in-foreground --conf-file=THIS_FILE\n",
        );
        for line in self.directives() {
            s.push_str(&line.to_string());
            s.push('\n');
        }
        s
    }
}

impl DhcpRange {
    fn value(&self) -> String {
        match self {
            DhcpRange::Static { network, netmask } => format!("{network},static,{netmask}"),
            DhcpRange::Dynamic {
                first,
                last,
                netmask,
                hours,
            } => format!("{first},{last},{netmask},{hours}h"),
        }
    }
}

/// The directives that make dnsmasq answer on `interface` only: bound to its addresses, and
/// not to the loopback interface, which `interface=` adds on its own.
pub fn listen_on(interface: &str) -> Vec<Directive> {
    let mut out = vec![d("interface", interface), flag("bind-interfaces")];
    if interface != "lo" {
        out.push(d("except-interface", "lo"));
    }
    out
}

/// The interfaces a dnsmasq configuration file names with `interface=`.
pub fn interfaces(conf: &str) -> Vec<String> {
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("interface="))
        .flat_map(|v| v.split(','))
        .map(|i| i.trim().to_string())
        .filter(|i| !i.is_empty())
        .collect()
}

/// The netmask of a prefix length.
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let bits = match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    };
    Ipv4Addr::from(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_render_one_a_line() {
        let conf = DnsmasqConf {
            interface: Some("eth1".into()),
            range: DhcpRange::Static {
                network: "192.168.50.0".parse().unwrap(),
                netmask: netmask(24),
            },
            hosts: vec![DhcpHost {
                mac: MacAddr::try_from("DC:A6:32:01:02:03".to_string()).unwrap(),
                ip: Some("192.168.50.10".parse().unwrap()),
                name: Hostname::try_from("cp1".to_string()).unwrap(),
            }],
            pi_boot_service: Some(PI_BOOT_SERVICE.into()),
            uboot: Some(UbootBoot {
                tag: "uboot".into(),
                vendor_class: UBOOT_VENDOR_CLASS.into(),
                boot_file: "pxelinux.0".into(),
            }),
            tftp_root: "/srv/nb/tftp".into(),
            lease_file: "/srv/nb/dnsmasq.leases".into(),
        };
        let text = conf.render();
        for line in [
            "port=0\n",
            "interface=eth1\nbind-interfaces\nexcept-interface=lo\n",
            "dhcp-range=192.168.50.0,static,255.255.255.0\n",
            "dhcp-host=dc:a6:32:01:02:03,192.168.50.10,cp1\n",
            "pxe-service=0,\"Raspberry Pi Boot\"\n",
            "dhcp-vendorclass=set:uboot,U-Boot\ndhcp-boot=tag:uboot,pxelinux.0\n",
            "enable-tftp\ntftp-root=/srv/nb/tftp\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        assert_eq!(interfaces(&text), ["eth1"]);
        assert_eq!(netmask(20).to_string(), "255.255.240.0");
        assert_eq!(netmask(0).to_string(), "0.0.0.0");
    }
}
