//! Replays the checked-in fuzz corpus (`tests/fuzz_corpus/`: a minimized sample of what the
//! fuzzer explored, plus every input that ever crashed it, named `crash-*`) through the same
//! function the fuzz target calls. No fuzzer needed. See docs/fuzzing.md.

use std::path::Path;

#[test]
fn every_corpus_input_passes_every_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/fuzz_corpus exists")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 20, "corpus too small: {}", files.len());
    for path in &files {
        let data = std::fs::read(path).unwrap();
        let outcome =
            std::panic::catch_unwind(|| dispatch_runner::batch::exercise::exercise(&data));
        assert!(outcome.is_ok(), "{} fails", path.display());
    }
}
