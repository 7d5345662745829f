//! The fuzz corpora (`fuzz/corpus/<target>/`) replayed on stable through the functions the
//! cargo-fuzz targets run (`shoal::fuzzing`): what fuzzing found stays fixed, in CI.

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

#[test]
fn every_corpus_input_and_seed_runs_through_its_target() {
    for (name, run) in shoal::fuzzing::TARGETS {
        let dir = corpus(name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (the corpus is committed)", dir.display()));
        let mut n = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let input = std::fs::read(&path).unwrap();
            run(&input);
            n += 1;
        }
        assert!(n >= 2, "{name}: {n} corpus inputs");
    }
    for (name, input) in shoal::fuzzing::seeds() {
        let (_, run) = shoal::fuzzing::TARGETS
            .iter()
            .find(|(t, _)| *t == name)
            .unwrap();
        run(&input);
    }
}

/// `cargo test --test it write_fuzz_seeds -- --ignored` writes the seeds into the corpora.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    for (i, (name, input)) in shoal::fuzzing::seeds().into_iter().enumerate() {
        let dir = corpus(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{i}")), input).unwrap();
    }
}
