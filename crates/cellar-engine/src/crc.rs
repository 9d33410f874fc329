//! CRC-32C of several independent records at once, for whole-store walks.
//!
//! The `crc32` instruction has a latency of about three cycles and a throughput of one per
//! cycle, and the checksum of one short record (the `crc32c` crate folds three streams only for
//! buffers of several KiB) is a single dependent chain: a walk that verifies ~120-byte records
//! one after the other waits on that latency. Computing the checksums of `N` records in
//! lock-step keeps `N` independent chains in flight. The results are exactly the `crc32c`
//! crate's (tested).

/// Below this length one chain of `crc32` instructions beats the `crc32c` crate's general
/// routine (its alignment split and three-way folding cost more than they save on a record of
/// a few hundred bytes); above it the crate's folding wins.
const SHORT: usize = 512;

/// `crc32c::crc32c(b)`, faster for the short buffers most records are.
#[inline]
pub fn crc32c(b: &[u8]) -> u32 {
    if b.len() < SHORT {
        crc32c_each(&[b])[0]
    } else {
        crc32c::crc32c(b)
    }
}

/// `crc32c::crc32c(b)` for every buffer of `bufs`.
pub fn crc32c_each<const N: usize>(bufs: &[&[u8]; N]) -> [u32; N] {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: `interleaved` only requires SSE 4.2, which the CPU was just checked to
            // support; its body is otherwise safe code (slice reads are bounds-checked).
            #[allow(unsafe_code)]
            return unsafe { interleaved(bufs) };
        }
    }
    bufs.map(crc32c::crc32c)
}

/// # Safety
/// The CPU must support SSE 4.2. (An `unsafe fn` rather than a safe `#[target_feature]` one,
/// which needs Rust 1.86; the workspace MSRV is 1.80. In edition 2021 the body is an unsafe
/// context, where the `crc32` intrinsics may be called on every supported Rust.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
#[allow(unsafe_code)]
unsafe fn interleaved<const N: usize>(bufs: &[&[u8]; N]) -> [u32; N] {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    #[inline(always)]
    fn word(w: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        u64::from_le_bytes(a)
    }
    let words = bufs.iter().map(|b| b.len() / 8).min().unwrap_or(0);
    // The initial state of a CRC-32C (all ones), finished by complementing.
    let mut state = [u64::from(u32::MAX); N];
    let mut chunks = bufs.map(|b| b.chunks_exact(8));
    for _ in 0..words {
        for (s, c) in state.iter_mut().zip(chunks.iter_mut()) {
            if let Some(w) = c.next() {
                *s = _mm_crc32_u64(*s, word(w));
            }
        }
    }
    let mut out = [0u32; N];
    for ((o, mut s), c) in out.iter_mut().zip(state).zip(chunks.iter_mut()) {
        for w in c.by_ref() {
            s = _mm_crc32_u64(s, word(w));
        }
        let mut s = s as u32;
        for &b in c.remainder() {
            s = _mm_crc32_u8(s, b);
        }
        *o = !s;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::crc32c_each;

    #[test]
    fn matches_the_crate_for_every_length_mix() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7919 % 251) as u8).collect();
        for a in [0usize, 1, 7, 8, 9, 63, 64, 117, 130, 300] {
            for b in [0usize, 5, 8, 16, 120, 129, 999] {
                for c in [3usize, 100, 121] {
                    let bufs = [&data[..a], &data[1..1 + b], &data[a..a + c]];
                    let want = [
                        crc32c::crc32c(bufs[0]),
                        crc32c::crc32c(bufs[1]),
                        crc32c::crc32c(bufs[2]),
                    ];
                    assert_eq!(crc32c_each(&bufs), want, "lengths {a} {b} {c}");
                }
            }
        }
        assert_eq!(crc32c_each::<0>(&[]), []);
        for n in [0usize, 1, 8, 100, 511, 512, 513, 999] {
            assert_eq!(
                super::crc32c(&data[..n]),
                crc32c::crc32c(&data[..n]),
                "length {n}"
            );
        }
    }
}
