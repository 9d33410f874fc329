//! Test support shared by cellar's codec test suites (marshal, pickle): a seeded generator of
//! Python values covering every type and edge, a driver for the machine's CPython, the record
//! framing the differential tests use, and a repr diff for failure messages.
//! Not published; a dev-dependency only.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use cellar_value::{BigInt, PyStr, Value};

/// SplitMix64: small, seeded, reproducible.
pub struct Rng(pub u64);

impl Rng {
    #[allow(clippy::should_implement_trait)] // an RNG step, not an iterator
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const EDGE_INTS: &[i64] = &[
    0,
    1,
    -1,
    255,
    256,
    (1 << 31) - 1,
    1 << 31,
    -(1 << 31),
    -(1 << 31) - 1,
    (1 << 30),
    (1 << 15) - 1,
    1 << 15,
    i64::MAX,
    i64::MIN,
    i64::MIN + 1,
    (1 << 62),
];

const EDGE_FLOATS: &[f64] = &[
    0.0,
    -0.0,
    1.0,
    -1.5,
    0.1,
    1e16,
    1e-5,
    1e300,
    -1e-300,
    5e-324,
    f64::MAX,
    f64::MIN_POSITIVE,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::NAN,
    123456789.123,
    2.0e-7,
];

/// Which values a codec can round-trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// marshal: no bytearray (written as bytes) and no slices (version 5 only).
    Marshal,
    /// pickle: bytearray and slices too, and wide containers only at the top level.
    Pickle,
}

pub struct Gen {
    pub rng: Rng,
    flavor: Flavor,
    pool: Vec<Value>,
    hashable_pool: Vec<Value>,
}

impl Gen {
    /// The marshal flavour.
    pub fn new(seed: u64) -> Gen {
        Gen::with_flavor(seed, Flavor::Marshal)
    }

    /// The pickle flavour.
    pub fn pickle(seed: u64) -> Gen {
        Gen::with_flavor(seed, Flavor::Pickle)
    }

    pub fn with_flavor(seed: u64, flavor: Flavor) -> Gen {
        Gen {
            rng: Rng(seed),
            flavor,
            pool: Vec::new(),
            hashable_pool: Vec::new(),
        }
    }

    pub fn int(&mut self) -> Value {
        match self.rng.below(6) {
            0 => Value::int(EDGE_INTS[self.rng.below(EDGE_INTS.len() as u64) as usize]),
            1 => Value::int(
                -EDGE_INTS[self.rng.below(EDGE_INTS.len() as u64 - 1) as usize + 1]
                    .saturating_abs(),
            ),
            2 => {
                // Around 2^63 and 2^64 and beyond i64.
                let base = BigInt::from(1u128 << (63 + self.rng.below(3)));
                let delta = BigInt::from(self.rng.below(5) as i64 - 2);
                let v = base + delta;
                Value::bigint(if self.rng.chance(50) { -v } else { v })
            }
            3 => {
                // Huge: up to ~3000 bits.
                let words = 1 + self.rng.below(100) as usize;
                let mut b = BigInt::from(0);
                for _ in 0..words {
                    b = (b << 32) + BigInt::from(self.rng.next() as u32);
                }
                Value::bigint(if self.rng.chance(50) { -b } else { b })
            }
            _ => Value::int(self.rng.next() as i64 >> self.rng.below(64)),
        }
    }

    pub fn float(&mut self) -> f64 {
        match self.rng.below(3) {
            0 => EDGE_FLOATS[self.rng.below(EDGE_FLOATS.len() as u64) as usize],
            1 => f64::from_bits(self.rng.next()),
            _ => (self.rng.next() as i64 as f64) / 1e6,
        }
    }

    pub fn string(&mut self) -> Value {
        let len = match self.rng.below(10) {
            0 => 0,
            1 => 255 + self.rng.below(3) as usize,
            2 => 300 + self.rng.below(500) as usize,
            _ => self.rng.below(12) as usize,
        };
        let kind = self.rng.below(5);
        let mut cps = Vec::with_capacity(len);
        for _ in 0..len {
            let cp = match (kind, self.rng.below(10)) {
                (0, _) => 0x20 + self.rng.below(0x5F) as u32,
                (_, 0) => {
                    [0x27, 0x22, 0x5C, 0x0A, 0x09, 0x0D, 0x00, 0x7F][self.rng.below(8) as usize]
                }
                (_, 1) => 0xD800 + self.rng.below(0x800) as u32, // lone surrogates
                (_, 2) => 0x10000 + self.rng.below(0x100000) as u32, // non-BMP, incl. unassigned
                (_, 3) => self.rng.below(0x100) as u32,
                (_, 4) => 0x80 + self.rng.below(0x780) as u32,
                (_, 5) => self.rng.below(0x10000) as u32,
                _ => 0x20 + self.rng.below(0x5F) as u32,
            };
            cps.push(cp);
        }
        let s = PyStr::from_code_points(cps).expect("valid code points");
        Value::Str(Arc::new(s.with_interned(self.rng.chance(20))))
    }

    pub fn bytes(&mut self) -> Vec<u8> {
        let len = match self.rng.below(8) {
            0 => 0,
            1 => 256 + self.rng.below(300) as usize,
            _ => self.rng.below(16) as usize,
        };
        (0..len).map(|_| self.rng.next() as u8).collect()
    }

    fn scalar(&mut self, hashable: bool) -> Value {
        // marshal writes bytearray as bytes and slices only at version 5: left out there.
        let n = if self.flavor == Flavor::Pickle && !hashable {
            12
        } else {
            10
        };
        match self.rng.below(n) {
            0 => Value::None,
            1 => Value::Bool(self.rng.chance(50)),
            2 | 3 => self.int(),
            4 => Value::Float(self.float()),
            5 => Value::Complex(self.float(), self.float()),
            6 | 7 => self.string(),
            8 => Value::Bytes(self.bytes().into()),
            9 => match self.rng.below(2) {
                0 => Value::Ellipsis,
                _ => Value::StopIteration,
            },
            10 => Value::ByteArray(Arc::new(self.bytes())),
            _ => {
                let mut part = || match self.rng.below(3) {
                    0 => Value::None,
                    _ => Value::int(self.rng.below(100) as i64 - 50),
                };
                Value::Slice(Arc::new(cellar_value::Slice {
                    start: part(),
                    stop: part(),
                    step: part(),
                }))
            }
        }
    }

    /// A hashable value (dict key / set member): scalars, tuples and frozensets of them.
    pub fn hashable(&mut self, depth: u32) -> Value {
        if depth > 0 && !self.hashable_pool.is_empty() && self.rng.chance(8) {
            let i = self.rng.below(self.hashable_pool.len() as u64) as usize;
            return self.hashable_pool[i].clone();
        }
        let v = match (depth, self.rng.below(10)) {
            (0, _) | (_, 0..=6) => match self.rng.below(12) {
                // Deliberately colliding numeric keys: 1, 1.0, True, 0, -0.0, False, 0j.
                0 => [
                    Value::int(1),
                    Value::Float(1.0),
                    Value::Bool(true),
                    Value::int(0),
                    Value::Float(-0.0),
                    Value::Bool(false),
                    Value::Complex(0.0, 0.0),
                ][self.rng.below(7) as usize]
                    .clone(),
                _ => self.scalar(true),
            },
            (_, 7 | 8) => {
                let n = self.rng.below(4) as usize;
                Value::tuple((0..n).map(|_| self.hashable(depth - 1)).collect())
            }
            _ => {
                let n = self.rng.below(4) as usize;
                let items: Vec<Value> = (0..n).map(|_| self.hashable(depth - 1)).collect();
                Value::frozenset(items).expect("hashable items")
            }
        };
        if self.rng.chance(10) {
            self.hashable_pool.push(v.clone());
        }
        v
    }

    /// Any value, up to `depth` levels of containers.
    pub fn value(&mut self, depth: u32) -> Value {
        if depth > 0 && !self.pool.is_empty() && self.rng.chance(6) {
            // A shared sub-object: the same allocation appears twice.
            let i = self.rng.below(self.pool.len() as u64) as usize;
            return self.pool[i].clone();
        }
        let v = if depth == 0 || self.rng.chance(40) {
            self.scalar(false)
        } else {
            let n = match self.rng.below(6) {
                0 => 0,
                1 => 256 + self.rng.below(10) as usize,
                _ => self.rng.below(5) as usize,
            };
            let wide_above = if self.flavor == Flavor::Pickle { 1 } else { 2 };
            let n = if depth > wide_above { n.min(6) } else { n };
            match self.rng.below(6) {
                0 => Value::list((0..n).map(|_| self.value(depth - 1)).collect()),
                1 => Value::tuple((0..n).map(|_| self.value(depth - 1)).collect()),
                2 | 3 => {
                    let pairs: Vec<(Value, Value)> = (0..n.min(40))
                        .map(|_| (self.hashable(2), self.value(depth - 1)))
                        .collect();
                    Value::dict(pairs).expect("hashable keys")
                }
                4 => Value::set((0..n.min(40)).map(|_| self.hashable(2)).collect::<Vec<_>>())
                    .expect("hashable"),
                _ => Value::frozenset((0..n.min(40)).map(|_| self.hashable(2)).collect::<Vec<_>>())
                    .expect("hashable"),
            }
        };
        if self.rng.chance(10) {
            self.pool.push(v.clone());
            if self.pool.len() > 64 {
                self.pool.remove(0);
            }
        }
        v
    }
}

/// The python3 to compare against (`CELLAR_PYTHON` overrides).
pub fn python() -> String {
    std::env::var("CELLAR_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Runs `script` under CPython with `input` on stdin (written from a thread, so a script that
/// streams its output cannot deadlock) and returns stdout; panics with stderr on failure.
pub fn run_python(script: &str, args: &[&str], input: Vec<u8>) -> Vec<u8> {
    let mut child = Command::new(python())
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed to run the differential tests");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut out)
        .expect("read stdout");
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    let status = child.wait().expect("wait python");
    writer.join().expect("writer thread");
    assert!(status.success(), "python failed: {err}");
    out
}

/// Length-prefixed records: u32 LE length, then the bytes.
pub fn put_record(buf: &mut Vec<u8>, data: &[u8]) {
    buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
    buf.extend_from_slice(data);
}

pub fn get_record<'a>(buf: &'a [u8], pos: &mut usize) -> &'a [u8] {
    let n = u32::from_le_bytes(buf[*pos..*pos + 4].try_into().expect("4 bytes")) as usize;
    let r = &buf[*pos + 4..*pos + 4 + n];
    *pos += 4 + n;
    r
}

/// The neighbourhood of the first difference between two reprs.
pub fn diff(got: &str, want: &str) -> String {
    let at = got
        .bytes()
        .zip(want.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let window = |s: &str| {
        let mut lo = at.saturating_sub(60);
        while !s.is_char_boundary(lo) {
            lo -= 1;
        }
        s[lo..].chars().take(120).collect::<String>()
    };
    if got == want {
        return "reprs equal (difference in types or float bits)".to_string();
    }
    format!("\n   got  ...{}\n   want ...{}", window(got), window(want))
}
