//! pikube-image: per-node OS images for Raspberry Pi and Orange Pi k3s clusters.
//!
//! A build is a pipeline of small stages around one central value, the [`plan::Plan`]:
//! `source` (resolve, download, cache, verify) -> `decompress` (stream, sparse) ->
//! `disk` (partition tables, grow) -> `plan` (declarative file operations) ->
//! `fs` (apply the plan to FAT and ext4) -> `emit` (image, checksums, manifest).

pub mod disk;
pub mod io;
pub mod progress;
