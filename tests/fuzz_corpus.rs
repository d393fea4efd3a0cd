//! The fuzz corpus as regression tests, on the stable toolchain.
//!
//! For every fuzz target (`uring_gateway::fuzzing::TARGETS`), every file of
//! its committed corpus (`fuzz/corpus/<target>/`) goes through the same check
//! the fuzz target runs, then a short deterministic run of inputs made by
//! mutating corpus entries with a fixed-seed xorshift. Each input must also
//! stay within an allocation bound (a counting global allocator measures the
//! peak of live bytes while it is checked), the stable-toolchain counterpart
//! of libFuzzer's `-malloc_limit_mb`.
//!
//! A failing input is written to `target/fuzz-failures/<target>-<hash>` so it
//! can be replayed with `cargo +nightly fuzz run <target> <file>`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use uring_gateway::fuzzing::{Check, TARGETS};

/// Mutated inputs per target. Chosen so the whole file runs in a few seconds
/// in a debug build.
const MUTATED_INPUTS: usize = 20_000;

/// The fixed seed of the mutation run.
const SEED: u64 = 0x5EED_F022_2026_0001;

/// Largest input the mutation run builds.
const MAX_INPUT: usize = 64 * 1024;

/// Peak live bytes one check may allocate: a fixed allowance plus a multiple
/// of the input, so that anything sized from a length field inside the input
/// (a 1 MiB payload announced by 48 bytes, say) is caught.
fn allocation_bound(input_len: usize) -> usize {
    256 * 1024 + 64 * input_len
}

#[test]
fn decoder_corpus_and_mutations() {
    check_target("decoder");
}

#[test]
fn json_corpus_and_mutations() {
    check_target("json");
}

#[test]
fn upgrade_corpus_and_mutations() {
    check_target("upgrade");
}

#[test]
fn every_target_is_tested_here() {
    let names: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["decoder", "json", "upgrade"]);
}

fn check_target(name: &str) {
    let (_, check) = TARGETS
        .iter()
        .find(|(target, _)| *target == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"));
    let corpus = read_corpus(name);
    for (path, input) in &corpus {
        run_one(name, *check, input, &path.display().to_string());
    }

    let inputs: Vec<Vec<u8>> = corpus.into_iter().map(|(_, input)| input).collect();
    let mut rng = XorShift(SEED ^ fnv(name.as_bytes()));
    for i in 0..MUTATED_INPUTS {
        let mut input = inputs[rng.below(inputs.len())].clone();
        mutate(&mut rng, &mut input, &inputs);
        run_one(name, *check, &input, &format!("mutated input {i}"));
    }
}

/// Every file of the target's corpus; an absent or empty corpus fails.
fn read_corpus(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()));
    let mut files: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let input =
                std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            (path, input)
        })
        .collect();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files.sort();
    files
}

/// Checks one input within the allocation bound; on failure, saves it and
/// says where.
fn run_one(name: &str, check: Check, input: &[u8], what: &str) {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let base = start_counting();
        check(input);
        peak_since(base)
    }));
    let failure = match result {
        Ok(peak) if peak <= allocation_bound(input.len()) => return,
        Ok(peak) => format!(
            "allocated {peak} bytes at peak, over the bound {}",
            allocation_bound(input.len())
        ),
        Err(panic) => {
            let saved = save_failure(name, input);
            eprintln!("{name}: {what} failed; input saved as {saved}");
            resume_unwind(panic);
        }
    };
    let saved = save_failure(name, input);
    panic!("{name}: {what}: {failure}; input saved as {saved}");
}

fn save_failure(name: &str, input: &[u8]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
    let path = dir.join(format!("{name}-{:016x}", fnv(input)));
    let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input));
    match saved {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("(not saved: {e}) {input:02x?}"),
    }
}

/// FNV-1a, to name inputs and vary the seed per target.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Marsaglia's xorshift64: deterministic and dependency-free.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n`, `n > 0`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Bytes that matter to the parsers: delimiters of JSON and HTTP, and the
/// edges of a byte.
const INTERESTING_BYTES: [u8; 16] = [
    0, 1, 0x7F, 0x80, 0xFF, b'"', b'\\', b'{', b'}', b':', b',', b'\r', b'\n', b' ', b'/', b'=',
];

/// Values that matter to length and id fields, written big-endian.
const INTERESTING_WORDS: [u64; 8] = [
    0,
    1,
    16,
    48,
    1 << 20,
    (1 << 20) + 1,
    u32::MAX as u64,
    u64::MAX,
];

/// One to four of the usual mutations: flip, set, insert, delete, duplicate,
/// splice with another entry, truncate, overwrite with a word.
fn mutate(rng: &mut XorShift, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        let at = rng.below(len + 1);
        match rng.below(8) {
            0 if len > 0 => input[at.min(len - 1)] ^= 1 << rng.below(8),
            1 if len > 0 => {
                input[at.min(len - 1)] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
            }
            2 => input.insert(at, rng.byte()),
            3 => {
                let end = (at + 1 + rng.below(16)).min(len);
                input.drain(at..end);
            }
            4 => {
                let end = (at + 1 + rng.below(64)).min(len);
                let chunk = input[at..end].to_vec();
                let to = rng.below(len + 1);
                input.splice(to..to, chunk);
            }
            5 => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len() + 1);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            6 => input.truncate(at),
            _ => {
                let word = INTERESTING_WORDS[rng.below(INTERESTING_WORDS.len())].to_be_bytes();
                let width = [1, 2, 4, 8][rng.below(4)];
                let bytes = &word[8 - width..];
                let end = (at + width).min(len);
                input.splice(at..end, bytes.iter().copied());
            }
        }
    }
    input.truncate(MAX_INPUT);
}

// Allocation counting: live bytes and their peak, per thread, so that tests
// running in parallel do not see each other's allocations.

struct Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grew(bytes: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().wrapping_add(bytes);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrank(bytes: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().wrapping_sub(bytes)));
}

/// Resets the peak to what is live now, and returns that.
fn start_counting() -> usize {
    let live = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(live));
    live
}

fn peak_since(base: usize) -> usize {
    PEAK.with(Cell::get).wrapping_sub(base)
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters touch only const-initialised thread locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        p
    }
}
