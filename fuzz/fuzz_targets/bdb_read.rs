//! Fuzz the Berkeley DB hash reader: any bytes either fail to open with an error or give a
//! database on which every read operation returns without panicking, and whose `check`
//! counts every pair a full scan reads when the scan succeeds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
        assert_eq!(report.readable as usize, keys.len(), "check and scan disagree");
    }
});
