//! Replays the fuzz corpus of the `tokens` target (`fuzz/corpus/tokens/`) through the same
//! checks as the fuzzer, so plain `cargo test` catches a regression on any input the fuzzer
//! ever found interesting. See `fuzz/README.md` for running the fuzzer itself.

use std::fs;
use std::path::PathBuf;

use strait_pki::fuzzing;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/tokens")
}

#[test]
fn fuzz_corpus_replays_cleanly() {
    let dir = corpus_dir();
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "{} holds only {} files: the corpus is missing",
        dir.display(),
        files.len()
    );
    for path in &files {
        let data = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| fuzzing::tokens(&data));
        assert!(outcome.is_ok(), "fuzz input {} panics", path.display());
    }
}

/// Writes the seed inputs into the corpus. Run by hand when tokens change:
/// `cargo test -p strait-pki --test fuzz_corpus -- --ignored write_seed_corpus`,
/// then let the fuzzer grow the corpus and minimize it (see `fuzz/README.md`).
#[test]
#[ignore = "writes fuzz/corpus/tokens; run by hand"]
fn write_seed_corpus() {
    let dir = corpus_dir();
    fs::create_dir_all(&dir).unwrap();
    let known = fuzzing::known_token().to_string();
    let (head, ca) = known.rsplit_once('.').unwrap();
    let seeds = [
        ("known", known.clone()),
        ("known-spaces", format!(" \t{known}\r\n")),
        ("sha256-prefix", format!("{head}.sha256:{ca}")),
        ("other-secret", known.replace("10111213", "10111214")),
        ("other-id", known.replace("strait1.0a0b", "strait1.ffff")),
        ("upper-case", known.to_uppercase()),
        ("other-prefix", known.replace("strait1", "strait2")),
        ("three-parts", head.to_string()),
        ("five-parts", format!("{known}.x")),
        ("short-ca", known[..known.len() - 2].to_string()),
        ("empty", String::new()),
        ("dots", "strait1...".to_string()),
    ];
    for (name, text) in seeds {
        fuzzing::tokens(text.as_bytes());
        fs::write(dir.join(format!("seed-{name}")), text).unwrap();
    }
}
