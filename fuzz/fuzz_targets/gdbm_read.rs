//! Fuzz the GDBM reader: any bytes either fail to open with an error or give a database on
//! which every read operation returns (an error or data) without panicking, and whose `check`
//! agrees with a full iteration when it reports no damage.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(db) = cellar_legacy::gdbm::Gdbm::from_bytes(data.to_vec()) else {
        return;
    };
    let _ = db.describe();
    let _ = db.len();
    let _ = db.keys();
    let mut n = 0u64;
    let mut complete = true;
    for item in db.iter() {
        match item {
            Ok((k, _)) => {
                if n < 8 {
                    let _ = db.get(&k);
                }
                n += 1;
            }
            Err(_) => complete = false,
        }
    }
    let _ = db.get(b"key");
    let report = db.check();
    if complete {
        assert_eq!(report.readable, n, "check and iteration disagree");
    }
});
