//! `disassemble` lists the same opcodes at the same offsets as pickletools.genops, on random
//! values pickled by cellar at every protocol.

mod common;

use cellar_pickle::{disassemble, dumps, Registry};
use common::{get_record, put_record, run_python, Gen};

#[test]
fn same_opcodes_as_pickletools() {
    let mut gen = Gen::new(0xD15A);
    let mut input = Vec::new();
    let mut ours = Vec::new();
    for i in 0..1200 {
        let b = dumps(&gen.value(3), (i % 6) as u8, &Registry::default()).expect("dumps");
        let listing: Vec<String> = disassemble(&b)
            .expect("disassemble")
            .iter()
            .map(|op| format!("{} {}", op.name, op.offset))
            .collect();
        ours.push(listing.join("\n"));
        put_record(&mut input, &b);
    }
    let out = run_python(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/genops.py"),
        &[],
        input,
    );
    let mut pos = 0;
    for (i, mine) in ours.iter().enumerate() {
        let theirs = String::from_utf8_lossy(get_record(&out, &mut pos)).into_owned();
        assert_eq!(&theirs, mine, "pickle {i}");
    }
}
