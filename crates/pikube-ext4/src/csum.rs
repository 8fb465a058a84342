//! Checksums used by ext4 metadata.
//!
//! ext4 uses the CRC32C polynomial without the final inversion ("raw" CRC,
//! as the kernel's `crc32c()` helper), seeded per filesystem and per inode.
//! Filesystems without `metadata_csum` but with `gdt_csum` protect group
//! descriptors with CRC16 (ANSI polynomial, reflected).

/// CRC32C continuation without pre/post inversion, as used by ext4.
pub(crate) fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// CRC16 (polynomial 0x8005, reflected 0xA001) continuation as used for
/// `gdt_csum` group descriptor checksums.
pub(crate) fn crc16(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc ^= b as u16;
        for _ in 0..8 {
            if crc & 1 != 0 {
                crc = (crc >> 1) ^ 0xA001;
            } else {
                crc >>= 1;
            }
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_raw_matches_standard_crc_when_inverted() {
        // Standard CRC32C("123456789") = 0xE3069283.
        assert_eq!(!crc32c_raw(!0, b"123456789"), 0xE306_9283);
        // Continuation property.
        let a = crc32c_raw(0x1234_5678, b"hello ");
        assert_eq!(
            crc32c_raw(a, b"world"),
            crc32c_raw(0x1234_5678, b"hello world")
        );
    }

    #[test]
    fn crc16_check_value() {
        // CRC-16/ARC check value for "123456789" is 0xBB3D (init 0).
        assert_eq!(crc16(0, b"123456789"), 0xBB3D);
    }
}
