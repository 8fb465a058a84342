mod common;
use common::*;
use pikube_ext4::{Ext4Fs, Meta};

#[test]
fn smoke_write_and_fsck() {
    let fx = make(&Spec {
        name: "smoke",
        features: "",
        block_size: 4096,
        size_mib: 64,
        extra: &[],
        big_dir_entries: 3000,
        offset_mib: 1,
    });
    let meta = Meta {
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
    };
    let mut fs = Ext4Fs::open(fx.open_rw(), fx.offset, fx.len, NOW).unwrap();
    fs.write_file("/etc/hostname", &mut &b"node1\n"[..], 6, &meta)
        .unwrap();
    fs.mkdir_p(
        "/etc/rancher/k3s",
        &Meta {
            mode: 0o755,
            ..meta
        },
    )
    .unwrap();
    fs.write_file(
        "/etc/rancher/k3s/config.yaml",
        &mut &b"a: b\n"[..],
        5,
        &meta,
    )
    .unwrap();
    for i in 0..400 {
        let name = format!("/etc/big/new-{i}-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
        fs.write_file(&name, &mut &b"z"[..], 1, &meta).unwrap();
    }
    let big = vec![7u8; 3_000_000];
    fs.write_file("/lib/big.bin", &mut &big[..], big.len() as u64, &meta)
        .unwrap();
    fs.symlink("/etc/short", "hostname", &meta).unwrap();
    fs.symlink("/etc/long", &"x".repeat(200), &meta).unwrap();
    fs.remove("/etc/os-release").unwrap();
    fs.close().unwrap();
    let (ok, out) = fx.fsck();
    assert!(ok, "{out}");
    assert_ne!(fx.flags("/etc/big") & 0x1000, 0);
    let v = fx.view();
    assert_eq!(v.read("/etc/hostname").unwrap(), b"node1\n");
    assert_eq!(v.read("/usr/lib/big.bin").unwrap(), big);
}
