//! Tables keyed by identity (an object's address), shared by the encoders of both codecs and
//! the Python package: the memo of the pickle encoder, the reference table of the marshal
//! encoder and the code-object scans. Addresses are chosen by the allocator, never by the
//! input, so a multiply-and-fold hash is enough (SipHash showed up in profiles).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Hasher for identity keys: multiply and fold, much cheaper than SipHash.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    #[inline(always)]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    #[inline(always)]
    fn write_usize(&mut self, n: usize) {
        // Addresses are aligned: drop the dead low bits, multiply to spread them up, then fold
        // the well-mixed high half back down (hashbrown indexes with the low bits).
        let x = (n as u64 >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = x ^ (x >> 32);
    }
}

/// `BuildHasher` of [`IdHasher`].
pub type IdBuild = BuildHasherDefault<IdHasher>;
/// A map keyed by identity (address).
pub type IdMap<V> = HashMap<usize, V, IdBuild>;
/// A set of identities (addresses).
pub type IdSet = HashSet<usize, IdBuild>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_addresses_spread_over_the_low_bits() {
        let mut low = std::collections::HashSet::new();
        for i in 0..1024usize {
            let mut h = IdHasher::default();
            h.write_usize(0x7f00_0000_0000 + i * 16);
            low.insert(h.finish() & 1023);
        }
        assert!(
            low.len() > 600,
            "only {} distinct low-bit buckets",
            low.len()
        );
    }
}
