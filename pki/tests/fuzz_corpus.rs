//! Replays the fuzz corpus of the `tokens` target (`fuzz/corpus/tokens/`) through the same
//! checks as the fuzzer, so plain `cargo test` catches a regression on any input the fuzzer
//! ever found interesting. See `fuzz/README.md` for running the fuzzer itself.

use strait_pki::fuzzing;

#[test]
fn fuzz_corpus_replays_cleanly() {
    strait_proto::fuzzing::replay_corpus("tokens", fuzzing::tokens);
}

/// Writes the seed inputs into the corpus. Run by hand when tokens change:
/// `cargo test -p strait-pki --test fuzz_corpus -- --ignored write_seed_corpus`,
/// then let the fuzzer grow the corpus and minimize it (see `fuzz/README.md`).
#[test]
#[ignore = "writes fuzz/corpus/tokens; run by hand"]
fn write_seed_corpus() {
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
        strait_proto::fuzzing::write_seed("tokens", name, text.as_bytes(), fuzzing::tokens);
    }
}
