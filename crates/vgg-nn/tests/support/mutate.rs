//! Mutation testing of file loaders on stable Rust: valid files cut short, bit-flipped and with
//! their headers edited, thousands of cases each, every one checked to return (never panic) with
//! its peak heap use under a bound. A counting allocator measures each case on its own thread.
//! Shared by the loader tests of vgg-nn and vgg-train (`#[path]`-included).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Counts each thread's live and peak heap bytes.
pub struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        grow(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            grow(new_size as isize - layout.size() as isize);
        }
        p
    }
}

fn grow(delta: isize) {
    // try_with: allocations while a thread is being torn down are not counted.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

/// Peak heap bytes this thread allocated (above what it held before) while running `f`.
pub fn peak_bytes<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    let peak = PEAK.with(Cell::get);
    (r, (peak - base).max(0) as usize)
}

/// A small deterministic generator (SplitMix64): the same cases on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// How a case was made from the valid file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The first n bytes.
    Truncated,
    /// One bit flipped.
    BitFlip,
    /// Header bytes replaced, inserted or deleted.
    HeaderEdit,
}

/// `count` cases of each kind from `valid`; header edits and most bit flips fall in the first
/// `header` bytes, where a parser's decisions are made.
pub fn cases(valid: &[u8], header: usize, count: usize, seed: u64) -> Vec<(Kind, Vec<u8>)> {
    let mut rng = Rng::new(seed);
    let header = header.clamp(1, valid.len());
    let mut out = Vec::with_capacity(3 * count);
    // Truncations: every length in the header, then evenly spaced ones.
    let lengths: Vec<usize> = (0..header)
        .chain((0..count).map(|i| header + i * (valid.len() - header) / count.max(1)))
        .filter(|&n| n < valid.len())
        .take(count)
        .collect();
    for n in lengths {
        out.push((Kind::Truncated, valid[..n].to_vec()));
    }
    for i in 0..count {
        let mut b = valid.to_vec();
        let at = if i % 4 == 3 {
            rng.below(b.len())
        } else {
            rng.below(header)
        };
        b[at] ^= 1 << rng.below(8);
        out.push((Kind::BitFlip, b));
    }
    const INTERESTING: &[u8] = b"\x00\xff\x7f\x80 09{}[](),:'\"-.eE\n";
    for _ in 0..count {
        let mut b = valid.to_vec();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(header.min(b.len()).max(1));
            let byte = INTERESTING[rng.below(INTERESTING.len())];
            match rng.below(3) {
                0 if at < b.len() => b[at] = byte,
                1 => b.insert(at.min(b.len()), byte),
                _ if at < b.len() => {
                    b.remove(at);
                }
                _ => {}
            }
        }
        out.push((Kind::HeaderEdit, b));
    }
    out
}

/// Runs `parse` on every case: it must return (a panic fails the test, naming the case), every
/// truncation must be an error when `truncation_fails`, and no case may use more than
/// `max_bytes(len)` of heap. Returns how many cases were refused.
pub fn check<T, E: std::fmt::Debug>(
    what: &str,
    cases: &[(Kind, Vec<u8>)],
    truncation_fails: bool,
    max_bytes: impl Fn(usize) -> usize,
    parse: impl Fn(&[u8]) -> Result<T, E>,
) -> usize {
    let mut refused = 0;
    for (i, (kind, bytes)) in cases.iter().enumerate() {
        let (result, peak) = peak_bytes(|| catch_unwind(AssertUnwindSafe(|| parse(bytes).is_ok())));
        let accepted = match result {
            Ok(accepted) => accepted,
            Err(_) => panic!(
                "{what}: case {i} ({kind:?}, {} bytes) panicked",
                bytes.len()
            ),
        };
        if !accepted {
            refused += 1;
        } else if truncation_fails && *kind == Kind::Truncated {
            panic!(
                "{what}: case {i} (truncated to {} bytes) was accepted",
                bytes.len()
            );
        }
        let bound = max_bytes(bytes.len());
        assert!(
            peak <= bound,
            "{what}: case {i} ({kind:?}, {} bytes) used {peak} bytes of heap, over {bound}",
            bytes.len()
        );
    }
    refused
}
