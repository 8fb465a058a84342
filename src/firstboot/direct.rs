//! Node identity for OS images without cloud-init (Armbian): the files cloud-init would have
//! written at first boot, generated at build time from validated, typed values. Creating the
//! admin account needs the running system (its passwd, shadow and group files are the OS's),
//! so a small static first-boot script does that from data files written next to it.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Result;

use super::{NetworkStack, edits};
use crate::config::{Cluster, Locale, Node, Timezone};
use crate::host_keys::HostKey;
use crate::netconfig::{self, Ethernet, Links, NetplanFile};
use crate::op::{Action, Op};
use crate::systemd::{UNIT_DIR, Unit};

/// The first-boot unit and script, shipped as they are (no value is pasted into them).
pub const FIRSTBOOT_UNIT: &str = include_str!("../../firstboot/pikube-firstboot.service");
pub const FIRSTBOOT_SCRIPT: &str = include_str!("../../firstboot/pikube-firstboot.sh");
pub const FIRSTBOOT_UNIT_NAME: &str = "pikube-firstboot.service";
pub const FIRSTBOOT_SCRIPT_PATH: &str = "/usr/local/sbin/pikube-firstboot";

/// Data the first-boot script reads (only root can list it: it holds the host key copy).
pub const DATA_DIR: &str = "/etc/pikube";
pub const ADMIN_USER_FILE: &str = "/etc/pikube/admin-user";
pub const AUTHORIZED_KEYS_FILE: &str = "/etc/pikube/authorized_keys";
pub const HOST_KEY_COPY: &str = "/etc/pikube/ssh_host_ed25519_key";

pub const SUDOERS_FILE: &str = "/etc/sudoers.d/90-pikube";
pub const SSHD_DROPIN_FILE: &str = "/etc/ssh/sshd_config.d/90-pikube.conf";
pub const NETPLAN_FILE: &str = "/etc/netplan/20-pikube.yaml";
/// Armbian's default netplan file: DHCP on every wired interface.
pub const NETPLAN_ARMBIAN_DEFAULT: &str = "/etc/netplan/10-dhcp-all-interfaces.yaml";
pub const NETWORKD_FILE: &str = "/etc/systemd/network/20-pikube.network";
/// Armbian's first-login preset file: its presence starts an interactive setup on login.
pub const ARMBIAN_FIRST_LOGIN: &str = "/root/.not_logged_in_yet";
/// Drop-ins with which Armbian logs root in on every console without a password (written by
/// its build under /etc, by armbian-config under /lib). Removing them leaves the stock gettys.
pub const CONSOLE_AUTOLOGIN_DROPINS: [&str; 4] = [
    "/etc/systemd/system/getty@.service.d/override.conf",
    "/etc/systemd/system/serial-getty@.service.d/override.conf",
    "/lib/systemd/system/getty@.service.d/override.conf",
    "/lib/systemd/system/serial-getty@.service.d/override.conf",
];
/// Settings of `armbian-firstrun.service`: whether it replaces the SSH host keys.
pub const ARMBIAN_FIRSTRUN_DEFAULTS: &str = "/etc/default/armbian-firstrun";
pub const SHADOW_FILE: &str = "/etc/shadow";

/// sshd settings: keys only, no root login. Drop-ins are read before the main file's own
/// settings and the first value wins, so these hold whatever the image's sshd_config says.
pub const SSHD_DROPIN: &str = "# Written by pikube-image: log in with SSH keys only, never as root.\nPermitRootLogin no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n";

/// `/etc/hostname`.
pub fn hostname(node: &Node) -> String {
    format!("{}\n", node.name)
}

/// A complete `/etc/hosts`: loopback names, the node's own name on 127.0.1.1 (fqdn first, as
/// `hostname --fqdn` expects), and the usual IPv6 entries.
pub fn hosts(cluster: &Cluster, node: &Node) -> String {
    let own = match cluster.fqdn(&node.name) {
        Some(fqdn) => format!("{fqdn} {}", node.name),
        None => node.name.to_string(),
    };
    format!(
        "127.0.0.1\tlocalhost\n127.0.1.1\t{own}\n\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    )
}

/// `/etc/netplan/20-pikube.yaml`: the shared version 2 network config, rendered by
/// systemd-networkd.
pub fn netplan(cluster: &Cluster, node: &Node, iface: &str, links: Links<'_>) -> Result<String> {
    let mut network = netconfig::config(cluster, node, iface, Some("networkd"), links)?;
    if cluster.netboot.is_some() {
        for eth in network.ethernets.values_mut() {
            eth.critical = true;
        }
    }
    let file = NetplanFile { network };
    serde_saphyr::to_string(&file).map_err(|e| anyhow::anyhow!("cannot serialise YAML: {e}"))
}

/// The systemd-networkd `.network` file equivalent to `eth` on interface `iface`.
pub fn networkd_unit(iface: &str, eth: &Ethernet) -> Result<Unit> {
    let mut matching = Vec::new();
    match &eth.matching {
        Some(m) => matching.push(("MACAddress", m.macaddress.clone())),
        None => matching.push(("Name", iface.to_string())),
    }
    let mut network = Vec::new();
    if eth.dhcp4 {
        network.push(("DHCP", "ipv4".to_string()));
    }
    for a in &eth.addresses {
        a.parse::<ipnet::IpNet>()
            .map_err(|e| anyhow::anyhow!("'{a}' is not an address with prefix: {e}"))?;
        network.push(("Address", a.clone()));
    }
    for r in &eth.routes {
        let gw: IpAddr = r
            .via
            .parse()
            .map_err(|e| anyhow::anyhow!("gateway '{}' is not an address: {e}", r.via))?;
        network.push(("Gateway", gw.to_string()));
    }
    if let Some(ns) = &eth.nameservers {
        for d in &ns.addresses {
            let ip: IpAddr = d
                .parse()
                .map_err(|e| anyhow::anyhow!("DNS server '{d}' is not an address: {e}"))?;
            network.push(("DNS", ip.to_string()));
        }
        if !ns.search.is_empty() {
            network.push(("Domains", ns.search.join(" ")));
        }
    }
    if eth.critical {
        network.push(("KeepConfiguration", "yes".to_string()));
    }
    let mut sections = vec![("Match", matching), ("Network", network)];
    if eth.optional {
        // Boot does not wait for the link (netplan's `optional: true`).
        sections.push(("Link", vec![("RequiredForOnline", "no".to_string())]));
    }
    Ok(Unit { sections })
}

/// `/etc/systemd/network/20-pikube.network`.
/// In an inventory whose nodes can boot from the network (`netboot:`), the link is critical
/// (netplan's `critical: true`, networkd's `KeepConfiguration=yes`): the node's root may come
/// over it, and dropping the initramfs's addresses would cut the root off.
pub fn networkd(cluster: &Cluster, node: &Node, iface: &str) -> Result<String> {
    let mut eth = netconfig::ethernet(cluster, node, iface)?;
    eth.critical = cluster.netboot.is_some();
    networkd_unit(iface, &eth)?.render()
}

/// A timezone name from the tz database, as a path under /usr/share/zoneinfo.
/// `/etc/timezone`.
pub fn timezone_file(tz: &Timezone) -> String {
    format!("{tz}\n")
}

/// Target of the `/etc/localtime` link.
pub fn localtime_target(tz: &Timezone) -> String {
    format!("/usr/share/zoneinfo/{tz}")
}

pub fn locale_file(locale: &Locale) -> String {
    format!("LANG={locale}\n")
}

/// `/etc/sudoers.d/90-pikube`: passwordless sudo for the admin user (a validated login).
pub fn sudoers(user: &str) -> String {
    format!(
        "# Written by pikube-image: the cluster's admin account.\n{user} ALL=(ALL) NOPASSWD:ALL\n"
    )
}

/// `/etc/pikube/admin-user`.
pub fn admin_user_file(user: &str) -> String {
    format!("{user}\n")
}

/// `/etc/pikube/authorized_keys`: one key per line, each parsed from the inventory.
pub fn authorized_keys(keys: &[crate::config::AuthorizedKey]) -> String {
    keys.iter().map(|k| format!("{}\n", k.as_str())).collect()
}

/// The identity of a node whose image has no cloud-init, written into the root filesystem:
/// hostname, hosts, network, timezone, locale, sshd and sudo settings, and the first-boot
/// unit that creates the admin user from the data files next to it. What depends only on
/// cluster-wide settings is the same for every node of the image; the node's names, network
/// and host key copy are its own.
pub fn ops(
    cluster: &Cluster,
    node: &Node,
    root: &str,
    network: NetworkStack,
    image_interface: Option<&str>,
    host_key: Option<&HostKey>,
    links: Links<'_>,
) -> Result<Vec<Op>> {
    let mut ops = vec![
        Op::file(root, "/etc/hostname", hostname(node).into_bytes(), 0o644),
        Op::file(root, "/etc/hosts", hosts(cluster, node).into_bytes(), 0o644),
    ];
    let iface = netconfig::interface(cluster, image_interface)?;
    match network {
        // A node on DHCP without a fixed MAC keeps the image's DHCP on every wired port,
        // whatever the kernel names them; a static address or a MAC replaces it, so that no
        // second lease and no second definition of the port remain.
        NetworkStack::Netplan if cluster.static_addr(node).is_none() && node.mac.is_none() => {}
        NetworkStack::Netplan => {
            ops.push(Op::new(
                root,
                NETPLAN_ARMBIAN_DEFAULT,
                Action::Remove,
                0o600,
            ));
            // netplan warns about (and future versions refuse) files others can read.
            let file = Op::file(
                root,
                NETPLAN_FILE,
                netplan(cluster, node, &iface, links)?.into_bytes(),
                0o600,
            );
            // With Wi-Fi it holds the passphrase.
            ops.push(match links.wifi {
                Some(_) => file.secret(),
                None => file,
            });
        }
        NetworkStack::Networkd if links.wifi.is_some() || !links.ethernet => anyhow::bail!(
            "node '{}': its OS image configures the network with systemd-networkd alone, which cannot join a Wi-Fi network: choose an OS image that uses netplan (`nodes[].os`), or give the node a board with a wired port and no `wifi`",
            node.name
        ),
        NetworkStack::Networkd => ops.push(Op::file(
            root,
            NETWORKD_FILE,
            networkd(cluster, node, &iface)?.into_bytes(),
            0o644,
        )),
    }
    let tz = &cluster.timezone;
    ops.push(Op::file(root, "/etc/timezone", timezone_file(tz).into_bytes(), 0o644).role_wide());
    ops.push(Op::symlink(root, "/etc/localtime", &localtime_target(tz)).role_wide());
    // The image's own locale stays unless the inventory names one.
    if let Some(locale) = &cluster.locale {
        ops.push(
            Op::file(
                root,
                "/etc/default/locale",
                locale_file(locale).into_bytes(),
                0o644,
            )
            .role_wide(),
        );
    }
    ops.push(Op::new(root, DATA_DIR, Action::Mkdir, 0o700).role_wide());
    let user = &cluster.admin.user;
    ops.push(
        Op::file(
            root,
            ADMIN_USER_FILE,
            admin_user_file(user).into_bytes(),
            0o644,
        )
        .role_wide(),
    );
    ops.push(
        Op::file(
            root,
            AUTHORIZED_KEYS_FILE,
            authorized_keys(&cluster.admin.ssh_authorized_keys).into_bytes(),
            0o644,
        )
        .role_wide(),
    );
    if let Some(key) = host_key {
        // The OS's own first run may regenerate host keys; the first-boot script puts this
        // copy back.
        ops.push(
            Op::file(
                root,
                HOST_KEY_COPY,
                key.private_openssh.clone().into_bytes(),
                0o600,
            )
            .secret(),
        );
        ops.push(Op::file(
            root,
            &format!("{HOST_KEY_COPY}.pub"),
            format!("{}\n", key.public_openssh).into_bytes(),
            0o644,
        ));
    }
    ops.push(Op::file(root, SUDOERS_FILE, sudoers(user).into_bytes(), 0o440).role_wide());
    ops.push(
        Op::file(
            root,
            SSHD_DROPIN_FILE,
            SSHD_DROPIN.as_bytes().to_vec(),
            0o644,
        )
        .role_wide(),
    );
    ops.push(
        Op::file(
            root,
            FIRSTBOOT_SCRIPT_PATH,
            FIRSTBOOT_SCRIPT.as_bytes().to_vec(),
            0o755,
        )
        .role_wide(),
    );
    let unit_path = format!("{UNIT_DIR}/{FIRSTBOOT_UNIT_NAME}");
    ops.push(Op::file(root, &unit_path, FIRSTBOOT_UNIT.as_bytes().to_vec(), 0o644).role_wide());
    ops.push(crate::systemd::enable(root, FIRSTBOOT_UNIT_NAME, &unit_path).role_wide());
    ops.extend(headless_ops(root));
    Ok(ops)
}

/// What makes an image safe to boot unattended: root's well-known password locked, no
/// first-login wizard, no console that logs root in by itself, and the host key the build
/// wrote kept by Armbian's first run (the first-boot script restores it anyway).
pub fn headless_ops(root: &str) -> Vec<Op> {
    let mut shadow = Op::new(
        root,
        SHADOW_FILE,
        Action::Edit(Arc::new(edits::LockPassword {
            user: "root".into(),
        })),
        0o640,
    );
    shadow.gid = edits::SHADOW_GID;
    let mut ops = vec![
        shadow.role_wide(),
        Op::new(root, ARMBIAN_FIRST_LOGIN, Action::Remove, 0o644).role_wide(),
    ];
    for dropin in CONSOLE_AUTOLOGIN_DROPINS {
        ops.push(Op::new(root, dropin, Action::Remove, 0o644).role_wide());
    }
    ops.push(
        Op::new(
            root,
            ARMBIAN_FIRSTRUN_DEFAULTS,
            Action::Edit(Arc::new(edits::SetVariable {
                key: "OPENSSHD_REGENERATE_HOST_KEYS".into(),
                value: "false".into(),
            })),
            0o644,
        )
        .role_wide(),
    );
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(domain: bool) -> Cluster {
        let d = if domain { "domain: home.arpa\n" } else { "" };
        Cluster::parse(&format!(
            r#"cluster: lab
{d}admin: {{user: ops, ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c me@x", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCeJ0bGk+Hh7WTjyKGkB1HyopywvWL5YLyI+rzpQwbjiiUCuoWh89L5elg67OSuYojiNKALlE0ODVs7XE3GqnXiFgEDmRqoZUfStu4kn3e2gj4QjDw7CX3Af6/21VdDtlZNjOPWB/rTip+lSBgTUNaOII0GjbgOEjTlUonLs6bTYc2/eMCbndT7RJrJR4WD3GdY8mRSc9OYrG7Up8XSjftDzYrKLjU0zq7pEX9fTdrObC98+NrxG3UCTmBUW6aQ+YUJHXKvjbJh7Kk+cVL5DamSJBBaOPj6uN13amUOHcnBd8zABtEJnpbzM17jFmAJoD2S3YQ+sSAtIh8+9CxN1Ji7 other"]}}
network: {{ gateway: 10.0.0.1, dns: [10.0.0.2, 10.0.0.3], prefix: 24 }}
nodes:
  - {{ name: cp1, board: rpi4, role: server, ip: 10.0.0.10 }}
  - {{ name: w1, board: rpi4, role: agent }}
  - {{ name: w2, board: rpi4, role: agent, ip: 10.0.0.12, mac: "02:AB:00:00:00:02" }}
"#
        ))
        .unwrap()
    }

    #[test]
    fn hostname_and_hosts() {
        let c = cluster(true);
        assert_eq!(hostname(&c.nodes[0]), "cp1\n");
        let h = hosts(&c, &c.nodes[0]);
        let lines: Vec<&str> = h.lines().collect();
        assert_eq!(lines[0], "127.0.0.1\tlocalhost");
        assert_eq!(lines[1], "127.0.1.1\tcp1.home.arpa cp1");
        assert!(h.contains("::1\tlocalhost ip6-localhost ip6-loopback\n"));
        assert!(h.contains("ff02::2\tip6-allrouters\n"));
        let c = cluster(false);
        assert!(hosts(&c, &c.nodes[1]).contains("127.0.1.1\tw1\n"));
    }

    #[test]
    fn netplan_static_dhcp_and_mac() {
        let c = cluster(true);
        let v: serde_json::Value =
            serde_saphyr::from_str(&netplan(&c, &c.nodes[0], "end0", Links::WIRED).unwrap())
                .unwrap();
        let n = &v["network"];
        assert_eq!(n["version"], 2);
        assert_eq!(n["renderer"], "networkd");
        let e = &n["ethernets"]["end0"];
        assert_eq!(e["dhcp4"], false);
        assert_eq!(e["addresses"][0], "10.0.0.10/24");
        assert_eq!(e["routes"][0]["via"], "10.0.0.1");
        assert_eq!(e["nameservers"]["addresses"][1], "10.0.0.3");
        assert_eq!(e["nameservers"]["search"][0], "home.arpa");
        let v: serde_json::Value =
            serde_saphyr::from_str(&netplan(&c, &c.nodes[1], "eth0", Links::WIRED).unwrap())
                .unwrap();
        assert_eq!(v["network"]["ethernets"]["eth0"]["dhcp4"], true);
        let v: serde_json::Value =
            serde_saphyr::from_str(&netplan(&c, &c.nodes[2], "eth0", Links::WIRED).unwrap())
                .unwrap();
        let e = &v["network"]["ethernets"]["eth0"];
        assert_eq!(e["match"]["macaddress"], "02:ab:00:00:00:02");
        assert_eq!(e["set-name"], "eth0");
    }

    fn wifi_join() -> crate::netconfig::WifiJoin {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("wifi");
        std::fs::write(&f, "correct horse\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        crate::netconfig::WifiJoin {
            ssid: crate::config::Ssid::try_from("home".to_string()).unwrap(),
            passphrase: crate::netconfig::Passphrase::read(&f, "network.wifi.passphrase_file")
                .unwrap(),
            country: crate::config::Country::try_from("NL".to_string()).unwrap(),
        }
    }

    #[test]
    fn netplan_joins_wifi_on_a_board_without_ethernet() {
        let c = cluster(true);
        let w = wifi_join();
        let links = Links {
            ethernet: false,
            wifi: Some(&w),
        };
        let yaml = netplan(&c, &c.nodes[0], "end0", links).unwrap();
        let v: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        let n = &v["network"];
        assert!(n.get("ethernets").is_none(), "{yaml}");
        let wl = &n["wifis"]["wlan0"];
        assert_eq!(wl["addresses"][0], "10.0.0.10/24");
        assert_eq!(wl["regulatory-domain"], "NL");
        assert_eq!(wl["access-points"]["home"]["password"], "correct horse");
        // What netplan makes of it.
        if pikube_test_oracles::require_tool("netplan", "netplan.io") {
            use std::os::unix::fs::PermissionsExt;
            let tree = tempfile::tempdir().unwrap();
            let f = tree.path().join("etc/netplan/20-pikube.yaml");
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, &yaml).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
            let o = std::process::Command::new("netplan")
                .arg("generate")
                .arg("--root-dir")
                .arg(tree.path())
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let wpa =
                std::fs::read_to_string(tree.path().join("run/netplan/wpa-wlan0.conf")).unwrap();
            assert!(
                wpa.contains("country=NL") && wpa.contains("ssid=\"home\""),
                "{wpa}"
            );
        }
        // systemd-networkd alone cannot join Wi-Fi: refused, naming the node.
        let e = ops(
            &c,
            &c.nodes[0],
            "root",
            NetworkStack::Networkd,
            None,
            None,
            links,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cp1") && e.contains("Wi-Fi"), "{e}");
    }

    #[test]
    fn networkd_files() {
        let c = cluster(true);
        let s = networkd(&c, &c.nodes[0], "end0").unwrap();
        assert_eq!(
            s,
            "[Match]\nName=end0\n\n[Network]\nAddress=10.0.0.10/24\nGateway=10.0.0.1\nDNS=10.0.0.2\nDNS=10.0.0.3\nDomains=home.arpa\n\n[Link]\nRequiredForOnline=no\n"
        );
        let s = networkd(&c, &c.nodes[1], "eth0").unwrap();
        assert!(
            s.starts_with("[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n"),
            "{s}"
        );
        let s = networkd(&c, &c.nodes[2], "eth0").unwrap();
        assert!(
            s.starts_with("[Match]\nMACAddress=02:ab:00:00:00:02\n"),
            "{s}"
        );
    }

    #[test]
    fn a_netboot_inventory_keeps_the_initramfs_addresses() {
        let plain = cluster(false);
        let text = r#"cluster: lab
admin: {user: ops, ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c me@x"]}
network: { gateway: 10.0.0.1, dns: [10.0.0.2], prefix: 24 }
netboot: { server: 10.0.0.2 }
nodes:
  - { name: w2, board: rpi4, role: server, ip: 10.0.0.12, mac: "02:AB:00:00:00:02" }
"#;
        let net = Cluster::parse(text).unwrap();
        let links = Links {
            ethernet: true,
            wifi: None,
        };
        let keep = "KeepConfiguration=yes";
        assert!(
            networkd(&net, &net.nodes[0], "eth0")
                .unwrap()
                .contains(keep)
        );
        assert!(
            !networkd(&plain, &plain.nodes[2], "eth0")
                .unwrap()
                .contains(keep)
        );
        let critical = "critical: true";
        let n = netplan(&net, &net.nodes[0], "eth0", links).unwrap();
        assert!(n.contains(critical), "{n}");
        let p = netplan(&plain, &plain.nodes[2], "eth0", links).unwrap();
        assert!(!p.contains(critical), "{p}");
    }

    #[test]
    fn timezone_and_locale_files() {
        let tz = |s: &str| Timezone::try_from(s.to_string()).unwrap();
        assert_eq!(timezone_file(&tz("Europe/Berlin")), "Europe/Berlin\n");
        assert_eq!(
            localtime_target(&tz("America/Argentina/Buenos_Aires")),
            "/usr/share/zoneinfo/America/Argentina/Buenos_Aires"
        );
        let locale = Locale::try_from("en_US.UTF-8".to_string()).unwrap();
        assert_eq!(locale_file(&locale), "LANG=en_US.UTF-8\n");
    }

    #[test]
    fn account_files() {
        assert_eq!(
            sudoers("ops"),
            "# Written by pikube-image: the cluster's admin account.\nops ALL=(ALL) NOPASSWD:ALL\n"
        );
        assert_eq!(admin_user_file("ops"), "ops\n");
        let c = cluster(true);
        assert_eq!(
            authorized_keys(&c.admin.ssh_authorized_keys),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP6cyUNsMZK8W+EW93n0PP4OFPMQUWK1nd+PguuFld7c me@x\nssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCeJ0bGk+Hh7WTjyKGkB1HyopywvWL5YLyI+rzpQwbjiiUCuoWh89L5elg67OSuYojiNKALlE0ODVs7XE3GqnXiFgEDmRqoZUfStu4kn3e2gj4QjDw7CX3Af6/21VdDtlZNjOPWB/rTip+lSBgTUNaOII0GjbgOEjTlUonLs6bTYc2/eMCbndT7RJrJR4WD3GdY8mRSc9OYrG7Up8XSjftDzYrKLjU0zq7pEX9fTdrObC98+NrxG3UCTmBUW6aQ+YUJHXKvjbJh7Kk+cVL5DamSJBBaOPj6uN13amUOHcnBd8zABtEJnpbzM17jFmAJoD2S3YQ+sSAtIh8+9CxN1Ji7 other\n"
        );
        for line in SSHD_DROPIN.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.ends_with(" no"), "{line}");
        }
    }

    #[test]
    fn sudoers_passes_visudo_when_available() {
        if !pikube_test_oracles::require_tool("visudo", "sudo") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("90-pikube");
        std::fs::write(&p, sudoers("ops")).unwrap();
        let o = std::process::Command::new("visudo")
            .arg("-cf")
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "visudo -cf: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    #[test]
    fn shipped_firstboot_files() {
        assert!(FIRSTBOOT_SCRIPT.starts_with("#!/bin/sh\n"));
        assert!(FIRSTBOOT_UNIT.contains(&format!("ExecStart={FIRSTBOOT_SCRIPT_PATH}\n")));
        assert!(FIRSTBOOT_UNIT.contains("After=armbian-firstrun.service"));
        assert!(FIRSTBOOT_UNIT.contains("Before=ssh.service"));
        assert!(FIRSTBOOT_UNIT.contains("WantedBy=multi-user.target"));
        for sh in ["sh", "bash"] {
            let o = std::process::Command::new(sh)
                .arg("-n")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/firstboot/pikube-firstboot.sh"
                ))
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{sh} -n: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}
