//! Memory allocated while decoding stays proportional to the input's size, whatever lengths
//! and counts the input claims. Measured by counting allocations (a wrapping global allocator),
//! not by timing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use cellar_pickle::{loads, LoadOptions, Registry};

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwards to the system allocator with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: `ptr` was allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Peak bytes allocated (above the starting level) while loading `data`.
fn peak_while_loading(data: &[u8], inert: bool) -> usize {
    let reg = Registry::default();
    let opts = LoadOptions {
        inert,
        ..LoadOptions::default()
    };
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let r = loads(data, &reg, &opts);
    let peak = PEAK.load(Ordering::SeqCst) - base;
    drop(r);
    peak
}

/// The decoder keeps, per opcode, at most a stack slot, a graph node, a memo slot and the
/// frozen value: a few hundred bytes for the densest one-byte opcodes.
const PER_INPUT_BYTE: usize = 320;
const SLACK: usize = 64 * 1024;

#[test]
fn allocation_is_bounded_by_input_size() {
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Claimed-huge lengths with little data behind them.
    for (name, head) in [
        ("LONG4", b"\x8b\xff\xff\xff\x7f".to_vec()),
        (
            "BINBYTES8",
            b"\x8e\xff\xff\xff\xff\xff\xff\xff\x7f".to_vec(),
        ),
        (
            "BINUNICODE8",
            b"\x8d\xff\xff\xff\xff\xff\xff\x00\x00".to_vec(),
        ),
        (
            "BYTEARRAY8",
            b"\x96\x00\x00\x00\x00\x00\x01\x00\x00".to_vec(),
        ),
        ("BINUNICODE", b"X\xff\xff\xff\xff".to_vec()),
        ("BINSTRING", b"T\xff\xff\xff\x7f".to_vec()),
        (
            "FRAME",
            b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\x7f".to_vec(),
        ),
        (
            "LONG_BINPUT",
            b"N r\xff\xff\xff\x7fr\xfe\xff\xff\x7f".to_vec(),
        ),
    ] {
        let mut d = head;
        d.extend_from_slice(b"NNNNN");
        cases.push((name, d));
    }
    // Valid but dense inputs: the worst ratio of decoded size to input bytes.
    let n = 100_000;
    for (name, item) in [
        ("empty lists", b"]".to_vec()),
        ("empty dicts", b"}".to_vec()),
        ("empty sets", b"\x8f".to_vec()),
        ("empty tuples", b")".to_vec()),
        ("memo gets", b"h\x00".to_vec()),
        ("dups", b"2".to_vec()),
        ("marks", b"(1".to_vec()),
        ("sparse puts", b"r\xff\xff\xff\x7f".to_vec()),
        ("short strs", b"\x8c\x00".to_vec()),
        ("tuple1", b"\x85".to_vec()),
    ] {
        let mut d = b"\x80\x04]\x94(".to_vec();
        for _ in 0..n {
            d.extend_from_slice(&item);
        }
        d.extend_from_slice(b"e.");
        cases.push((name, d));
    }
    // Objects in inert mode.
    let mut d = b"\x80\x04\x8c\x01m\x8c\x01C\x93\x94](".to_vec();
    for _ in 0..n {
        d.extend_from_slice(b"h\x00)\x81");
    }
    d.extend_from_slice(b"e.");
    cases.push(("inert objects", d));
    for (name, data) in &cases {
        for inert in [false, true] {
            let peak = peak_while_loading(data, inert);
            eprintln!(
                "{name} (inert={inert}): {} bytes in, peak {peak}",
                data.len()
            );
            assert!(
                peak <= PER_INPUT_BYTE * data.len() + SLACK,
                "{name}: {} input bytes made {peak} bytes of allocations",
                data.len()
            );
        }
    }
}
