//! Offline writer for ext4 filesystems that live in a byte range of an image file.
pub mod grow;
