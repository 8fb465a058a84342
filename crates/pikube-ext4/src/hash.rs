//! Directory index (htree) name hashes: legacy, half-MD4 and TEA, each in a
//! signed-char and an unsigned-char flavour, as selected by the root block's
//! hash version and the superblock's signed/unsigned flag.

pub(crate) const DX_HASH_LEGACY: u8 = 0;
pub(crate) const DX_HASH_HALF_MD4: u8 = 1;
pub(crate) const DX_HASH_TEA: u8 = 2;
pub(crate) const DX_HASH_LEGACY_UNSIGNED: u8 = 3;
pub(crate) const DX_HASH_HALF_MD4_UNSIGNED: u8 = 4;
pub(crate) const DX_HASH_TEA_UNSIGNED: u8 = 5;

fn ch(b: u8, signed: bool) -> u32 {
    if signed {
        b as i8 as i32 as u32
    } else {
        b as u32
    }
}

fn legacy(name: &[u8], signed: bool) -> u32 {
    let (mut h0, mut h1) = (0x12a3_fe2du32, 0x37ab_e8f9u32);
    for &b in name {
        let mut h = h1.wrapping_add(h0 ^ ch(b, signed).wrapping_mul(7_152_373));
        if h & 0x8000_0000 != 0 {
            h = h.wrapping_sub(0x7fff_ffff);
        }
        h1 = h0;
        h0 = h;
    }
    h0 << 1
}

/// Packs up to `num * 4` bytes of `msg` into `num` words, padded with the
/// length pattern.
fn str2hashbuf(msg: &[u8], num: usize, signed: bool) -> [u32; 8] {
    let mut out = [0u32; 8];
    let len = msg.len() as u32;
    let mut pad = len | (len << 8);
    pad |= pad << 16;
    let mut val = pad;
    let take = msg.len().min(num * 4);
    let mut idx = 0;
    for (i, &b) in msg[..take].iter().enumerate() {
        val = ch(b, signed).wrapping_add(val << 8);
        if i % 4 == 3 {
            out[idx] = val;
            idx += 1;
            val = pad;
        }
    }
    if idx < num {
        out[idx] = val;
        idx += 1;
    }
    while idx < num {
        out[idx] = pad;
        idx += 1;
    }
    out
}

fn half_md4(buf: &mut [u32; 4], inp: &[u32; 8]) {
    const K2: u32 = 0x5A82_7999;
    const K3: u32 = 0x6ED9_EBA1;
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    let (mut a, mut b, mut c, mut d) = (buf[0], buf[1], buf[2], buf[3]);
    macro_rules! r {
        ($f:ident, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a.wrapping_add($f($b, $c, $d)).wrapping_add($x);
            $a = $a.rotate_left($s);
        };
    }
    r!(f, a, b, c, d, inp[0], 3);
    r!(f, d, a, b, c, inp[1], 7);
    r!(f, c, d, a, b, inp[2], 11);
    r!(f, b, c, d, a, inp[3], 19);
    r!(f, a, b, c, d, inp[4], 3);
    r!(f, d, a, b, c, inp[5], 7);
    r!(f, c, d, a, b, inp[6], 11);
    r!(f, b, c, d, a, inp[7], 19);
    r!(g, a, b, c, d, inp[1].wrapping_add(K2), 3);
    r!(g, d, a, b, c, inp[3].wrapping_add(K2), 5);
    r!(g, c, d, a, b, inp[5].wrapping_add(K2), 9);
    r!(g, b, c, d, a, inp[7].wrapping_add(K2), 13);
    r!(g, a, b, c, d, inp[0].wrapping_add(K2), 3);
    r!(g, d, a, b, c, inp[2].wrapping_add(K2), 5);
    r!(g, c, d, a, b, inp[4].wrapping_add(K2), 9);
    r!(g, b, c, d, a, inp[6].wrapping_add(K2), 13);
    r!(h, a, b, c, d, inp[3].wrapping_add(K3), 3);
    r!(h, d, a, b, c, inp[7].wrapping_add(K3), 9);
    r!(h, c, d, a, b, inp[2].wrapping_add(K3), 11);
    r!(h, b, c, d, a, inp[6].wrapping_add(K3), 15);
    r!(h, a, b, c, d, inp[1].wrapping_add(K3), 3);
    r!(h, d, a, b, c, inp[5].wrapping_add(K3), 9);
    r!(h, c, d, a, b, inp[0].wrapping_add(K3), 11);
    r!(h, b, c, d, a, inp[4].wrapping_add(K3), 15);
    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

fn tea(buf: &mut [u32; 4], inp: &[u32; 8]) {
    let mut sum = 0u32;
    let (mut b0, mut b1) = (buf[0], buf[1]);
    let (a, b, c, d) = (inp[0], inp[1], inp[2], inp[3]);
    for _ in 0..16 {
        sum = sum.wrapping_add(0x9E37_79B9);
        b0 = b0.wrapping_add(
            ((b1 << 4).wrapping_add(a)) ^ b1.wrapping_add(sum) ^ ((b1 >> 5).wrapping_add(b)),
        );
        b1 = b1.wrapping_add(
            ((b0 << 4).wrapping_add(c)) ^ b0.wrapping_add(sum) ^ ((b0 >> 5).wrapping_add(d)),
        );
    }
    buf[0] = buf[0].wrapping_add(b0);
    buf[1] = buf[1].wrapping_add(b1);
}

/// Major hash of `name` (low bit cleared), or `None` for an unknown version.
pub(crate) fn dx_hash(name: &[u8], version: u8, seed: &[u32; 4]) -> Option<u32> {
    let mut buf = [0x6745_2301u32, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    if seed.iter().any(|&w| w != 0) {
        buf = *seed;
    }
    let hash = match version {
        DX_HASH_LEGACY | DX_HASH_LEGACY_UNSIGNED => legacy(name, version == DX_HASH_LEGACY),
        DX_HASH_HALF_MD4 | DX_HASH_HALF_MD4_UNSIGNED => {
            let signed = version == DX_HASH_HALF_MD4;
            let mut p = name;
            loop {
                let inp = str2hashbuf(p, 8, signed);
                half_md4(&mut buf, &inp);
                if p.len() <= 32 {
                    break;
                }
                p = &p[32..];
            }
            buf[1]
        }
        DX_HASH_TEA | DX_HASH_TEA_UNSIGNED => {
            let signed = version == DX_HASH_TEA;
            let mut p = name;
            loop {
                let inp = str2hashbuf(p, 4, signed);
                tea(&mut buf, &inp);
                if p.len() <= 16 {
                    break;
                }
                p = &p[16..];
            }
            buf[0]
        }
        _ => return None,
    };
    let mut hash = hash & !1;
    if hash == 0x7fff_ffff << 1 {
        hash = (0x7fff_ffff - 1) << 1;
    }
    Some(hash)
}
