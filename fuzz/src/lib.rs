//! Fuzz entry points: one function per fuzz target, each feeding arbitrary bytes to a
//! library function of the project and checking what must hold for every input.
//!
//! Why a library: the same functions run under libFuzzer (fuzz/fuzz_targets/*.rs, built
//! outside the main workspace) and on stable Rust in the main workspace's corpus replay
//! test (loadtest/tests/fuzz_corpus.rs includes this file by path), so every seed and
//! every past crash in fuzz/corpus/<target>/ is a regression test in CI.
//!
//! Invariants: an entry function returns normally for every input unless the project
//! code panics or breaks a property asserted here (a round trip, a determinism, an
//! all-or-nothing guarantee); it allocates only in proportion to its input. It uses only
//! dependencies the replay test's crate (loadtest) already has.

mod convert;
mod dice;
mod mirror;
mod selector;
mod wire;

pub use convert::{convert_json, convert_structured};
pub use mirror::{mirror, replay as replay_mirror};
pub use selector::selector;
pub use wire::{client_message, server_frame};

/// A fuzz entry function.
pub type Entry = fn(&[u8]);

/// Every fuzz target: its name (the fuzz_targets/<name>.rs binary and the
/// fuzz/corpus/<name>/ directory) and its entry function.
pub const TARGETS: &[(&str, Entry)] = &[
    ("client_message", client_message),
    ("server_frame", server_frame),
    ("mirror", mirror),
    ("convert_json", convert_json),
    ("convert_structured", convert_structured),
    ("selector", selector),
];
