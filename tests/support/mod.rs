//! Utilities shared by the integration tests (`mod support;` in a test file).
#![allow(dead_code)]

pub mod build_env;
pub mod examples;
pub mod fixtures;
pub mod http;
pub mod nbd;
pub mod readme;
pub mod registry;
pub mod signing;
pub mod vm;

/// Deterministic, incompressible-looking bytes (xorshift), so tests need no fixtures.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Lower-case hex SHA-256 of `b`.
pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}
