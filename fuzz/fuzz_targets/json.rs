#![no_main]
//! Fuzz target: the checks of `uring_gateway::fuzzing::json`, which document
//! the invariants; `tests/fuzz_corpus.rs` runs the same checks on the corpus.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| uring_gateway::fuzzing::json(data));
