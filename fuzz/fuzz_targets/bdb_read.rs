//! Fuzz the Berkeley DB hash readers (libdb 3-6 and 1.85): any bytes either fail to open with
//! an error or give a database on which every read operation returns without panicking, and
//! whose `check` counts every pair a full scan reads when the scan succeeds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(db) = cellar_legacy::bdb185::Bdb185::from_bytes(data.to_vec()) {
        let _ = db.describe();
        let _ = db.keys();
        let _ = db.get(b"key");
        let mut n = 0u64;
        let scan = db.try_for_each(|_, _| -> cellar_legacy::Result<()> {
            n += 1;
            Ok(())
        });
        let report = db.check();
        if scan.is_ok() {
            assert_eq!(report.readable, n, "1.85: check and scan disagree");
        }
    }
    let Ok(db) = cellar_legacy::bdb::Bdb::from_bytes(data.to_vec()) else {
        return;
    };
    let _ = db.describe();
    let _ = db.len();
    let _ = db.keys();
    let mut keys = Vec::new();
    let scan = db.try_for_each(|k, _| -> cellar_legacy::Result<()> {
        keys.push(k.to_vec());
        Ok(())
    });
    for k in keys.iter().take(8) {
        let _ = db.get(k);
    }
    let _ = db.get(b"key");
    let report = db.check();
    if scan.is_ok() {
        assert_eq!(
            report.readable as usize,
            keys.len(),
            "check and scan disagree"
        );
    }
});
