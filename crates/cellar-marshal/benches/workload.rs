//! The benchmark workloads of the foundation issue, shared by the criterion bench and the
//! profiling example.

use cellar_value::Value;

/// `[{"id": i, "name": "user%d" % i, "tags": ("a", "b"), "score": 1.5} for i in range(n)]`,
/// with the keys and the tags tuple shared as CPython shares its constants.
pub fn users(n: i64) -> Value {
    let (k_id, k_name, k_tags, k_score) = (
        Value::str("id"),
        Value::str("name"),
        Value::str("tags"),
        Value::str("score"),
    );
    let tags = Value::tuple(vec![Value::str("a"), Value::str("b")]);
    let items = (0..n)
        .map(|i| {
            Value::dict([
                (k_id.clone(), Value::int(i)),
                (k_name.clone(), Value::from(format!("user{i}"))),
                (k_tags.clone(), tags.clone()),
                (k_score.clone(), Value::Float(1.5)),
            ])
            .expect("hashable keys")
        })
        .collect();
    Value::list(items)
}
