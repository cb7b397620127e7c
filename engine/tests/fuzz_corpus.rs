//! Every parser that takes bytes from outside, on every `cargo test`: the fuzz corpus kept in
//! `fuzz/corpus/<target>/` (seeds, and every input a fuzzing run found interesting or that once
//! crashed — each such crash is thereby a regression test), then a bounded number of seeded
//! mutations of it. The coverage-guided runs (`cargo +nightly fuzz run <target>`) use the same
//! entry points; docs/reliability.md has their figures.
#[path = "../../fuzz/src/entry.rs"]
mod entry;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Mutations per target per test run: bounded so the whole test stays within seconds.
const MUTATIONS: usize = 20_000;
/// No single input may take longer than this (a hang is a failure, not a slow test).
const PER_INPUT: Duration = Duration::from_secs(2);

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus of `{target}` ({}): {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "the corpus of `{target}` is empty");
    inputs
}

/// A small deterministic generator (xorshift64*): the same mutations on every run, so a
/// failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Tokens that steer mutations into the parsers' interesting corners.
const TOKENS: &[&[u8]] = &[
    b"#{",
    b"}",
    b"${",
    b"\"",
    b"\\",
    b"\n",
    b"- ",
    b": ",
    b"{",
    b"[",
    b"]",
    b"null",
    b"-1",
    b"18446744073709551616",
    b"\xff\xfe",
    b"\0",
    b"&a",
    b"*a",
    b"<<: *a",
    b"!!binary",
    b"..",
    b"/",
    b"%",
    b"specversion",
    b"ce-",
    b"kind",
    b"verb",
];

fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            2 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, token.iter().copied());
            }
            3 if !other.is_empty() => {
                let from = rng.below(other.len());
                let len = rng.below(other.len() - from) + 1;
                out.splice(at..at, other[from..from + len].iter().copied());
            }
            4 if !out.is_empty() => {
                // Repeat a slice: deep nesting, long runs.
                let end = (at + 1 + rng.below(8)).min(out.len());
                let piece = out[at.min(end)..end].to_vec();
                for _ in 0..rng.below(64) {
                    out.splice(at..at, piece.iter().copied());
                }
            }
            _ => out.insert(at, rng.next() as u8),
        }
    }
    out
}

fn run_one(target: &str, run: fn(&[u8]), input: &[u8], what: &str) {
    let started = Instant::now();
    if std::panic::catch_unwind(|| run(input)).is_err() {
        let kept = std::env::temp_dir().join(format!("sluice-fuzz-{target}-crash"));
        std::fs::write(&kept, input).unwrap();
        panic!(
            "`{target}` panicked on {what} (input kept in {})",
            kept.display()
        );
    }
    assert!(
        started.elapsed() < PER_INPUT,
        "`{target}` took {:?} on {what}",
        started.elapsed()
    );
}

#[test]
fn every_parser_survives_its_corpus_and_mutations_of_it() {
    for (target, run) in entry::TARGETS {
        let inputs = corpus(target);
        for (name, input) in &inputs {
            run_one(target, *run, input, name);
        }
        let mut rng = Rng(0x5eed_0000 ^ target.len() as u64);
        for i in 0..MUTATIONS {
            let (_, base) = &inputs[rng.below(inputs.len())];
            let (_, other) = &inputs[rng.below(inputs.len())];
            let input = mutate(&mut rng, base, other);
            run_one(target, *run, &input, &format!("mutation {i}"));
        }
    }
}
