//! Replays the fuzz corpus and any saved regressions through the fuzz target's check, so that
//! they run on stable with every `cargo test` (`cargo fuzz` needs nightly).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

#[path = "../fuzz/check.rs"]
mod check;

#[test]
fn fuzz_corpus_and_regressions_pass_the_fuzz_check() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    let mut failed = Vec::new();
    for dir in ["corpus/parser", "regressions/parser"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir)) else {
            continue; // `regressions/` only exists once the fuzzer has found something.
        };
        let mut paths: Vec<_> = entries.map(|e| e.expect("readable entry").path()).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.is_file()) {
            let input = std::fs::read(&path).expect("readable corpus file");
            replayed += 1;
            if catch_unwind(AssertUnwindSafe(|| check::check(&input))).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "failed: {failed:#?}");
    assert!(replayed >= 20, "only {replayed} corpus files found");
}
