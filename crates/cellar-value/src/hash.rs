//! Python's numeric hash (CPython's `Python/pyhash.c` and `Objects/longobject.c`), so that
//! numbers equal across types (`1`, `1.0`, `True`, `1+0j`) hash alike, and the error for
//! unhashable values.

use num_bigint::{BigInt, Sign};
use num_traits::ToPrimitive;

const BITS: u32 = 61;
const MODULUS: u64 = (1u64 << BITS) - 1;
const INF: i64 = 314_159;

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

fn fix(h: i64) -> i64 {
    if h == -1 {
        -2
    } else {
        h
    }
}

/// `hash(n)` for an int in i64 range.
pub fn hash_i64(v: i64) -> i64 {
    let m = v.unsigned_abs() % MODULUS;
    let h = if v < 0 { -(m as i64) } else { m as i64 };
    fix(h)
}

/// `hash(n)` for an arbitrary int.
pub fn hash_bigint(b: &BigInt) -> i64 {
    let m = (b.magnitude() % MODULUS).to_u64().unwrap_or(0);
    let h = if b.sign() == Sign::Minus {
        -(m as i64)
    } else {
        m as i64
    };
    fix(h)
}

/// `hash(x)` for a float (NaN hashes to 0 here: CPython uses the object's identity, and a
/// NaN is never equal to anything, so any value is consistent).
pub fn hash_f64(v: f64) -> i64 {
    if v.is_nan() {
        return 0;
    }
    if v.is_infinite() {
        return if v > 0.0 { INF } else { -INF };
    }
    let (mut m, mut e) = frexp(v);
    let mut sign: i64 = 1;
    if m < 0.0 {
        sign = -1;
        m = -m;
    }
    let mut x: u64 = 0;
    while m != 0.0 {
        x = ((x << 28) & MODULUS) | (x >> (BITS - 28));
        m *= 268_435_456.0;
        e -= 28;
        let y = m as u64;
        m -= y as f64;
        x += y;
        if x >= MODULUS {
            x -= MODULUS;
        }
    }
    let e = if e >= 0 {
        (e as u32) % BITS
    } else {
        BITS - 1 - (((-1 - e) as u32) % BITS)
    };
    x = ((x << e) & MODULUS) | (x >> (BITS - e));
    fix((x as i64).wrapping_mul(sign))
}

/// C's `frexp`: `v == m * 2^e` with `0.5 <= |m| < 1` (for finite, non-zero `v`).
fn frexp(v: f64) -> (f64, i32) {
    if v == 0.0 {
        return (v, 0);
    }
    let bits = v.to_bits();
    let exp = ((bits >> 52) & 0x7FF) as i32;
    if exp == 0 {
        // Subnormal: scale into the normal range first.
        let (m, e) = frexp(v * f64::from_bits(0x4350_0000_0000_0000)); // 2^54
        return (m, e - 54);
    }
    let m = f64::from_bits((bits & !(0x7FFu64 << 52)) | (1022u64 << 52));
    (m, exp - 1022)
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
    fn float_hashes_from_cpython() {
        // python3 -c 'print(hash(0.1), hash(-2.5), hash(1e300), hash(5e-324))'
        assert_eq!(hash_f64(0.1), 230584300921369408);
        assert_eq!(hash_f64(-2.5), -1152921504606846978);
        assert_eq!(hash_f64(1e300), 1224995262755759164);
        assert_eq!(hash_f64(5e-324), 16777216);
        assert_eq!(hash_bigint(&-(BigInt::from(1u128 << 100))), -549755813888);
    }
}
