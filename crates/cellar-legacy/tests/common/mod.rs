//! Fixtures made at test time by the real C libraries (scripts/legacy-fixtures.py run with
//! Debian's /usr/bin/python3), with the pairs those libraries read back.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const PYTHON: &str = "/usr/bin/python3";

pub struct Fixture {
    pub name: String,
    pub kind: String,
    pub count: usize,
    /// The file the reader opens (NAME for gnu, NAME.db for ndbm, NAME.pag for the pair).
    pub file: PathBuf,
    /// The dbm base name (what dbm.open takes).
    pub base: PathBuf,
    pub dir: PathBuf,
}

impl Fixture {
    /// The pairs the C library read, sorted.
    pub fn pairs(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let text = std::fs::read_to_string(self.dir.join(format!("{}.pairs", self.name)))
            .expect("pairs file");
        text.lines()
            .map(|l| {
                let (k, v) = l.split_once(' ').expect("pair line");
                (unhex(k), unhex(v))
            })
            .collect()
    }
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

struct Store {
    list: Vec<Fixture>,
}

static FIXTURES: OnceLock<Option<Store>> = OnceLock::new();

fn tools_available() -> Result<(), String> {
    let out = Command::new(PYTHON)
        .args(["-c", "import dbm.gnu, dbm.ndbm"])
        .output()
        .map_err(|e| format!("{PYTHON} cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{PYTHON} lacks dbm.gnu or dbm.ndbm (apt-get install python3-gdbm): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The fixture set under cargo's target tmpdir, generated on first use: into a fresh
/// temporary directory beside it, then renamed into place, so test binaries running at once
/// never see a half-written set (a loser of the rename race uses the winner's).
fn cached_fixtures() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = root.join("legacy-fixtures");
    if dir.join("manifest.txt").exists() {
        return dir;
    }
    std::fs::create_dir_all(&root).expect("create the target tmpdir");
    let tmp = tempfile::tempdir_in(&root).expect("tempdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/legacy-fixtures.py");
    let st = Command::new(PYTHON)
        .arg(&script)
        .arg(tmp.path())
        .status()
        .expect("run legacy-fixtures.py");
    assert!(st.success(), "legacy-fixtures.py failed");
    let made = tmp.keep();
    if std::fs::rename(&made, &dir).is_err() {
        // Another test binary got there first.
        let _ = std::fs::remove_dir_all(&made);
        assert!(
            dir.join("manifest.txt").exists(),
            "no legacy fixtures at {}",
            dir.display()
        );
    }
    dir
}

fn generate() -> Option<Store> {
    if let Err(why) = tools_available() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true and the legacy fixtures cannot be made: {why}");
        }
        eprintln!("SKIPPED: legacy fixture tests need Debian's python3 with dbm.gnu: {why}");
        return None;
    }
    let dir = match std::env::var_os("CELLAR_LEGACY_FIXTURES") {
        Some(d) if Path::new(&d).join("manifest.txt").exists() => PathBuf::from(d),
        // Made once per target directory and kept there (about 130 MB): a fixture set in a
        // temporary directory held by a static was never removed, since statics are not
        // dropped at exit, and every run of a test binary left one in /tmp.
        _ => cached_fixtures(),
    };
    let manifest = std::fs::read_to_string(dir.join("manifest.txt")).expect("manifest");
    let list = manifest
        .lines()
        .map(|l| {
            let mut it = l.split(' ');
            let name = it.next().expect("name").to_string();
            let kind = it.next().expect("kind").to_string();
            let count = it.next().expect("count").parse().expect("count");
            let base = dir.join(&name);
            let file = if name == "compat_pair" {
                dir.join(format!("{name}.pag"))
            } else if kind == "ndbm" {
                dir.join(format!("{name}.db"))
            } else {
                base.clone()
            };
            Fixture {
                name,
                kind,
                count,
                file,
                base,
                dir: dir.clone(),
            }
        })
        .collect();
    Some(Store { list })
}

/// All fixtures, or `None` (after printing why) when they cannot be made outside CI.
pub fn fixtures() -> Option<&'static [Fixture]> {
    FIXTURES
        .get_or_init(generate)
        .as_ref()
        .map(|s| s.list.as_slice())
}

pub fn fixture(name: &str) -> Option<&'static Fixture> {
    fixtures().map(|l| {
        l.iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no fixture {name}"))
    })
}
