//! Hashing for dict keys and set members.
//!
//! Equal values must hash alike across types, as in Python (`1`, `1.0`, `True` and `1+0j`
//! are one key). CPython gets that from its numeric hash (reduction modulo 2^61-1), which is
//! public and lets crafted input collide at will: a marshal or pickle stream of keys that all
//! hash alike would make loading quadratic. cellar keeps the cross-type agreement but hashes
//! the exact value with SipHash under a key chosen at random once per process (as CPython does
//! for str with PYTHONHASHSEED): integral numbers (ints, and floats/complexes equal to one)
//! hash as the integer, other floats by their bits. Hashes are therefore stable within a
//! process only, like Python's.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::OnceLock;

use num_bigint::BigInt;
use num_traits::{FromPrimitive, ToPrimitive};

/// A value that cannot be hashed (a list, dict, set or bytearray, or a tuple holding one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashError {
    /// Python's type name of the unhashable object.
    pub type_name: &'static str,
}

impl std::fmt::Display for HashError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unhashable type: '{}'", self.type_name)
    }
}

impl std::error::Error for HashError {}

fn state() -> &'static RandomState {
    static STATE: OnceLock<RandomState> = OnceLock::new();
    STATE.get_or_init(RandomState::new)
}

/// SipHash of a type tag and a value under the per-process key.
pub(crate) fn keyed<T: Hash + ?Sized>(tag: u8, value: &T) -> u64 {
    let mut h = state().build_hasher();
    h.write_u8(tag);
    value.hash(&mut h);
    h.finish()
}

const TAG_INT: u8 = 1;
const TAG_BIGINT: u8 = 2;
const TAG_FLOAT: u8 = 3;
const TAG_COMPLEX: u8 = 4;

/// Hash of an integer in `i64` range (bools and integral floats hash through here too).
pub(crate) fn hash_i64(v: i64) -> u64 {
    keyed(TAG_INT, &v)
}

/// Hash of an integer outside `i64` range.
pub(crate) fn hash_bigint(b: &BigInt) -> u64 {
    match b.to_i64() {
        Some(v) => hash_i64(v),
        None => keyed(TAG_BIGINT, &b.to_signed_bytes_le()),
    }
}

/// Hash of a float: as the integer it equals when integral (so `2.0` hashes like `2`, and
/// `-0.0` like `0`), else by its bits. NaN never equals anything, so any value will do.
pub(crate) fn hash_f64(v: f64) -> u64 {
    if v.is_nan() {
        return 0;
    }
    if v.is_finite() && v.fract() == 0.0 {
        if v.abs() < 9.2e18 {
            return hash_i64(v as i64);
        }
        if let Some(b) = BigInt::from_f64(v) {
            return hash_bigint(&b);
        }
    }
    keyed(TAG_FLOAT, &v.to_bits())
}

/// Hash of a complex: like its real part when the imaginary part is zero.
pub(crate) fn hash_complex(re: f64, im: f64) -> u64 {
    if im == 0.0 {
        return hash_f64(re);
    }
    let norm = |x: f64| if x == 0.0 { 0u64 } else { x.to_bits() };
    keyed(TAG_COMPLEX, &(norm(re), norm(im)))
}

/// One step of a tuple hash (xxHash-like, as CPython 3.8+ combines item hashes).
pub(crate) fn mix_tuple(acc: Option<u64>, item: u64) -> u64 {
    const P1: u64 = 11_400_714_785_074_694_791;
    const P2: u64 = 14_029_467_366_897_019_727;
    let acc = acc.unwrap_or(2_870_177_450_012_600_261);
    let acc = acc.wrapping_add(item.wrapping_mul(P2));
    acc.rotate_left(31).wrapping_mul(P1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_numbers_hash_alike() {
        assert_eq!(hash_f64(2.0), hash_i64(2));
        assert_eq!(hash_f64(-0.0), hash_i64(0));
        assert_eq!(hash_complex(3.0, -0.0), hash_i64(3));
        assert_eq!(hash_complex(-0.0, 1.5), hash_complex(0.0, 1.5));
        let big = BigInt::from(1u128 << 100);
        assert_eq!(hash_bigint(&big), hash_f64(2f64.powi(100)));
        assert_eq!(hash_bigint(&BigInt::from(5)), hash_i64(5));
        assert_ne!(hash_f64(0.5), hash_f64(1.5));
    }

    #[test]
    fn crafted_cpython_collisions_do_not_collide() {
        // In CPython, n and n + k*(2**61 - 1) share a hash; here they do not.
        let m = (1i64 << 61) - 1;
        assert_ne!(hash_i64(1), hash_i64(1 + m));
        assert_ne!(
            hash_i64(1),
            hash_bigint(&(BigInt::from(1) + BigInt::from(m) * 4))
        );
    }
}
