//! Runs every Rust example of README.md and docs/*.md (extracted by build.rs) in a scratch
//! directory of its own, one at a time (the working directory is per process).

use std::sync::Mutex;

static CWD: Mutex<()> = Mutex::new(());

/// What an example's `main` may return.
trait Outcome {
    fn check(self, at: &str);
}

impl Outcome for () {
    fn check(self, _: &str) {}
}

impl<E: std::fmt::Debug> Outcome for Result<(), E> {
    fn check(self, at: &str) {
        if let Err(e) = self {
            panic!("the example at {at} failed: {e:?}");
        }
    }
}

fn run_in_scratch<O: Outcome>(at: &str, main: fn() -> O) {
    let _guard = CWD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = tempfile::tempdir().expect("scratch directory");
    let old = std::env::current_dir().expect("cwd");
    std::env::set_current_dir(dir.path()).expect("cd scratch");
    let result = std::panic::catch_unwind(main);
    std::env::set_current_dir(old).expect("cd back");
    match result {
        Ok(outcome) => outcome.check(at),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

include!(concat!(env!("OUT_DIR"), "/examples.rs"));
