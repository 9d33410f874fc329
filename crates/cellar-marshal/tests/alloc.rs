//! Memory allocated while decoding stays proportional to the input's size, whatever lengths
//! and counts the input claims. Measured by counting allocations (a wrapping global allocator),
//! not by timing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

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
fn peak_while_loading(data: &[u8]) -> usize {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let r = cellar_marshal::loads(data);
    let peak = PEAK.load(Ordering::SeqCst) - base;
    drop(r);
    peak
}

const PER_INPUT_BYTE: usize = 64;
const SLACK: usize = 64 * 1024;

fn assert_proportional(name: &str, data: &[u8]) {
    let peak = peak_while_loading(data);
    assert!(
        peak <= PER_INPUT_BYTE * data.len() + SLACK,
        "{name}: {} input bytes made {peak} bytes of allocations",
        data.len()
    );
}

#[test]
fn allocation_is_bounded_by_input_size() {
    let huge = 0x7fff_ffffi32.to_le_bytes();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for (name, code) in [
        ("list", b'['),
        ("tuple", b'('),
        ("set", b'<'),
        ("frozenset", b'>'),
        ("bytes", b's'),
        ("str", b'u'),
        ("ascii", b'a'),
        ("long", b'l'),
    ] {
        let mut d = vec![code];
        d.extend_from_slice(&huge);
        d.extend_from_slice(b"NNNNN");
        cases.push((name, d));
    }
    // Many claimed-huge containers nested: each claim is checked against what remains.
    let mut nested = Vec::new();
    for _ in 0..1000 {
        nested.push(b'[');
        nested.extend_from_slice(&huge);
    }
    cases.push(("nested claims", nested));
    // Valid but dense inputs: empty containers and references, the worst ratio of value size
    // to input bytes.
    let n = 100_000i32;
    for (name, item) in [
        ("empty dicts", b"{0".to_vec()),
        ("empty tuples", b")\x00".to_vec()),
        ("empty strs", b"z\x00".to_vec()),
        ("refs", b"r\x00\x00\x00\x00".to_vec()),
    ] {
        let mut d = b"[".to_vec();
        d.extend_from_slice(&n.to_le_bytes());
        d.extend_from_slice(b"\xe9\x01\x00\x00\x00");
        for _ in 1..n {
            d.extend_from_slice(&item);
        }
        cases.push((name, d));
    }
    for (name, data) in &cases {
        assert_proportional(name, data);
    }
}
