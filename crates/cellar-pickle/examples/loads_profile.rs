//! A fixed workload for instruction counts of `cellar_pickle::loads` (the Rust `Value` path):
//! `valgrind --tool=callgrind target/release/examples/loads_profile`. The same data as
//! bench/python/pickle_bench.py's case (a): 100,000 small dicts at protocol 5, plus 20,000
//! instances of one class (an allowed global, NEWOBJ + BUILD), decoded once each.

use cellar_pickle::{dumps, loads, LoadOptions, Registry};
use cellar_value::Value;

fn users(n: i64) -> Value {
    let (k_id, k_name, k_tags, k_score) = (
        Value::str("id"),
        Value::str("name"),
        Value::str("tags"),
        Value::str("score"),
    );
    let tags = Value::tuple(vec![Value::str("a"), Value::str("b")]);
    Value::list(
        (0..n)
            .map(|i| {
                Value::dict([
                    (k_id.clone(), Value::int(i)),
                    (k_name.clone(), Value::from(format!("user{i}"))),
                    (k_tags.clone(), tags.clone()),
                    (k_score.clone(), Value::Float(1.5)),
                ])
                .expect("hashable keys")
            })
            .collect(),
    )
}

/// `pickle.dumps([Point(i, 2*i) for i in range(n)], 5)` as CPython writes it (NEWOBJ, BUILD
/// with a `__dict__` state), built by hand.
fn points(n: u32) -> Vec<u8> {
    let mut b = vec![0x80, 5, b']', b'('];
    b.extend_from_slice(b"\x8c\x08__main__\x94\x8c\x05Point\x94\x93\x94");
    for i in 0..n {
        b.extend_from_slice(b"h\x02");
        b.extend_from_slice(b")\x81}(\x8c\x01x\x94J");
        b.extend_from_slice(&(i as i32).to_le_bytes());
        b.extend_from_slice(b"\x8c\x01y\x94J");
        b.extend_from_slice(&(2 * i as i32).to_le_bytes());
        b.extend_from_slice(b"ub");
    }
    b.extend_from_slice(b"e.");
    b
}

fn main() {
    let reg = Registry::default();
    let bytes = dumps(&users(100_000), 5, &reg).expect("dumps");
    let v = loads(&bytes, &reg, &LoadOptions::default()).expect("loads");
    let mut reg2 = Registry::default();
    reg2.allow("__main__", "Point");
    let pts = points(20_000);
    let p = loads(&pts, &reg2, &LoadOptions::default()).expect("loads points");
    println!(
        "{} {}",
        cellar_value::repr(&v).len(),
        cellar_value::repr(&p).len()
    );
}
