//! Shared test support: a seeded generator of awkward byte strings and a driver for the
//! machine's CPython.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// SplitMix64: small, seeded, reproducible.
pub struct Rng(pub u64);

impl Rng {
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
}

/// Keys and values that stress repr and the file formats.
pub fn edge_bytes() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"a".to_vec(),
        b"'".to_vec(),
        b"\"".to_vec(),
        b"'\"".to_vec(),
        b"it's".to_vec(),
        b"say \"hi\"".to_vec(),
        b"both ' and \"".to_vec(),
        b"back\\slash".to_vec(),
        b"new\nline".to_vec(),
        b"cr\rlf\r\n".to_vec(),
        b"tab\there".to_vec(),
        b"  trailing spaces  ".to_vec(),
        b"\x00nul\x00".to_vec(),
        b"\x7f\x80\x85\x9f\xa0\xad\xff".to_vec(),
        "caf\u{e9} \u{fc}ber".as_bytes().to_vec(),
        "\u{1F600} emoji".as_bytes().to_vec(),
        "\u{e9}".as_bytes().to_vec(),
        vec![0xe9],
        (0u8..=255).collect(),
        b"(0, 7)".to_vec(),
        b"', (1, 2)\n'x".to_vec(),
        vec![b'x'; 511],
        vec![b'y'; 512],
        vec![b'z'; 513],
        vec![7u8; 3000],
    ];
    for i in 0..20u8 {
        v.push(vec![i, i.wrapping_mul(37), 0x0a, 0x27]);
    }
    v
}

/// A random byte string of up to `max` bytes (biased to awkward bytes).
pub fn random_bytes(rng: &mut Rng, max: u64) -> Vec<u8> {
    let n = rng.below(max + 1) as usize;
    (0..n)
        .map(|_| match rng.below(6) {
            0 => b'\'',
            1 => b'\n',
            2 => rng.below(256) as u8,
            _ => b'a' + rng.below(26) as u8,
        })
        .collect()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// Runs `python3 -c script args...` with `stdin`; returns stdout, panicking with stderr on
/// failure.
pub fn python_with(exe: &str, script: &str, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(exe)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed for the interop tests");
    // A broken pipe means python3 died early: its stderr below says why.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes());
    let out = child.wait_with_output().expect("python3 ran");
    assert!(
        out.status.success(),
        "python3 failed: {}\n--- script ---\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn python(script: &str, args: &[&str], stdin: &str) -> String {
    python_with("python3", script, args, stdin)
}

/// Parses `hexkey hexvalue` lines.
pub fn parse_pairs(out: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut it = l.split(' ');
            let k = unhex(it.next().unwrap_or(""));
            let v = unhex(it.next().unwrap_or(""));
            (k, v)
        })
        .collect()
}

/// Names of the files in a directory, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
