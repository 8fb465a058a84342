mod support;

use support::fixtures::*;

#[test]
fn smoke() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let f = ubuntu_raspi(dir.path(), FixtureOpts::default());
    println!("{}", sfdisk_dump(&f.image));
    let f = raspios(dir.path(), FixtureOpts::default());
    println!("{}", sfdisk_dump(&f.image));
    let f = armbian_allwinner(dir.path(), FixtureOpts::default());
    println!("{}", sfdisk_dump(&f.image));
    let f = armbian_rockchip_gpt(dir.path(), FixtureOpts::default());
    println!("{}", sfdisk_dump(&f.image));
    let d = pikube_image::disk::Disk::read(&f.image).unwrap();
    println!("{d:#?}");
}
