//! pikube-image: per-node OS images for Raspberry Pi and Orange Pi k3s clusters.
//!
//! A build is a pipeline of small stages around one central value, the [`plan::Plan`]:
//! `source` (resolve, download, cache, verify) -> `decompress` (stream, sparse) ->
//! `disk` (partition tables, grow) -> `plan` (declarative file operations, contributed by
//! `firstboot`, `boot`, `k3s`, `gitops`, `images`, `host_keys`, `overlay`) -> `fs` (apply
//! them through one `op::Tree` trait to FAT, ext4 or a directory) -> `target` (what is made
//! of each built node: image files today). `build` runs the stages for each node; `flash`
//! writes a built image to a card.

pub mod arch;
pub mod boards;
pub mod boot;
pub mod build;
pub mod cache_admin;
pub mod config;
pub mod decompress;
pub mod disk;
pub mod emit;
pub mod firstboot;
pub mod flash;
pub mod flux;
pub mod formats;
pub mod fs;
pub mod gitops;
pub mod host_keys;
pub mod images;
pub mod init;
pub mod inspect;
pub mod io;
pub mod k3s;
pub mod k3s_flags;
pub mod kube_vip;
pub mod manifest;
pub mod netconfig;
pub mod nodeinfo;
pub mod op;
pub mod overlay;
pub mod plan;
pub mod progress;
pub mod registry;
pub mod source;
pub mod systemd;
pub mod target;

/// Timestamp for everything a build writes: `$SOURCE_DATE_EPOCH` when set (reproducible
/// builds), else the current time.
pub fn build_timestamp() -> i64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        })
}
