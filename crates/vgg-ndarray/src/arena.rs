//! One address-space reservation from which every large f32 buffer is carved (best fit, freed
//! ranges merged with their neighbours). A training or benchmark step allocates and frees gigabytes
//! in buffers of many sizes; from the system allocator each large one is a fresh mmap whose pages
//! fault in one by one and are zeroed by the kernel (1.3 GB per VGG-16 forward-backward step at
//! batch 8, ~5 GB at batch 32). Here freed memory stays mapped and serves the next request of any
//! size, so resident memory settles at the most ever live (plus fragmentation) and a step touches
//! no new pages. Pages are never handed back except by `trim`.
//!
//! Two regions, so that values of different lifetimes do not share free space: one for the
//! step's short-lived buffers, and one for parameters' gradients, which are made in backward and
//! live to the end of the step. In one region, fc6's 411 MB gradient, made at the start of
//! backward, sat among the activations and split the free space that conv1's backward needed
//! (measured at batch 32: 2,320 MB of pages for 1,993 MB ever in use).
//!
//! The memory comes from the OS (mmap), so every byte is initialised (zeros at first, then whatever
//! the previous owner wrote): a block's contents are unspecified but always valid f32 values.

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Blocks start and end on page boundaries, so `trim` can release whole pages.
const GRANULE: usize = 4096;

struct Region {
    base: NonNull<u8>,
    reserved: usize,
    state: Mutex<State>,
}

// SAFETY: the region is plain memory; which thread may touch which range is decided under the
// mutex (each range belongs to at most one Block).
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

#[derive(Default)]
struct State {
    /// Free ranges below `top`: start -> length, in bytes; never adjacent to each other or to `top`.
    free: BTreeMap<usize, usize>,
    /// Everything at or above `top` is free.
    top: usize,
    /// Bytes of the region ever touched and not trimmed since: its resident set, at most.
    touched: usize,
    /// Bytes in blocks alive now.
    in_use: usize,
}

/// Bytes in blocks alive now, in both regions.
static IN_USE: AtomicUsize = AtomicUsize::new(0);
/// The most `IN_USE` has been since the last `reset_arena_peak`.
static PEAK_IN_USE: AtomicUsize = AtomicUsize::new(0);

/// Which region a block comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pool {
    /// The step's short-lived buffers: activations, their gradients, kernels' scratch.
    Transient,
    /// Parameters' gradients: made during backward, alive to the end of the step.
    Gradients,
}

impl State {
    /// The smallest free range that holds `bytes` (the lowest of equals), else the top.
    fn take(&mut self, bytes: usize, reserved: usize) -> Option<usize> {
        let best = self
            .free
            .iter()
            .filter(|&(_, &len)| len >= bytes)
            .min_by_key(|&(&start, &len)| (len, start))
            .map(|(&start, &len)| (start, len));
        let start = match best {
            Some((start, len)) => {
                self.free.remove(&start);
                if len > bytes {
                    self.free.insert(start + bytes, len - bytes);
                }
                start
            }
            None => {
                let start = self.top;
                if reserved - start < bytes {
                    return None;
                }
                self.top += bytes;
                self.touched = self.touched.max(self.top);
                start
            }
        };
        self.in_use += bytes;
        Some(start)
    }

    fn give_back(&mut self, mut start: usize, mut bytes: usize) {
        self.in_use -= bytes;
        if let Some((&before, &len)) = self.free.range(..start).next_back() {
            if before + len == start {
                self.free.remove(&before);
                start = before;
                bytes += len;
            }
        }
        if let Some(&len) = self.free.get(&(start + bytes)) {
            self.free.remove(&(start + bytes));
            bytes += len;
        }
        if start + bytes == self.top {
            self.top = start;
        } else {
            self.free.insert(start, bytes);
        }
    }
}

#[cfg(unix)]
fn reserve() -> Option<Region> {
    // Address space only: pages cost memory once touched. Twice the machine's memory, so the
    // arena is never what runs out first.
    // SAFETY: sysconf has no preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page <= 0 || page as usize > GRANULE {
        return None;
    }
    let reserved = (pages as usize)
        .checked_mul(page as usize)?
        .checked_mul(2)?;
    // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserved,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        tracing::debug!(
            reserved,
            "no arena: mmap failed; large buffers come from the allocator"
        );
        return None;
    }
    Some(Region {
        base: NonNull::new(base.cast())?,
        reserved,
        state: Mutex::new(State::default()),
    })
}

#[cfg(not(unix))]
fn reserve() -> Option<Region> {
    None
}

fn region(pool: Pool) -> Option<&'static Region> {
    static TRANSIENT: OnceLock<Option<Region>> = OnceLock::new();
    static GRADIENTS: OnceLock<Option<Region>> = OnceLock::new();
    match pool {
        Pool::Transient => &TRANSIENT,
        Pool::Gradients => &GRADIENTS,
    }
    .get_or_init(reserve)
    .as_ref()
}

/// The regions reserved so far.
fn regions() -> impl Iterator<Item = &'static Region> {
    [Pool::Transient, Pool::Gradients]
        .into_iter()
        .filter_map(region)
}

/// `len` f32 values carved from the arena; returned to it when dropped.
#[derive(Debug)]
pub(crate) struct Block {
    ptr: NonNull<f32>,
    len: usize,
    offset: usize,
    bytes: usize,
    pool: Pool,
}

// SAFETY: a Block owns its range exclusively, like a Vec.
unsafe impl Send for Block {}
unsafe impl Sync for Block {}

impl Block {
    /// A block of `len` values from `pool` with unspecified contents, or None where the arena is
    /// unavailable (no mmap, or the reservation is full): callers then use an ordinary vector.
    pub(crate) fn new(len: usize, pool: Pool) -> Option<Block> {
        let region = region(pool)?;
        let bytes = len
            .checked_mul(4)?
            .max(1)
            .checked_next_multiple_of(GRANULE)?;
        let offset = region
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(bytes, region.reserved)?;
        let now = IN_USE.fetch_add(bytes, Ordering::Relaxed) + bytes;
        PEAK_IN_USE.fetch_max(now, Ordering::Relaxed);
        // SAFETY: offset + bytes <= reserved, so the pointer stays inside the mapping.
        let ptr = unsafe { region.base.add(offset) }.cast();
        Some(Block {
            ptr,
            len,
            offset,
            bytes,
            pool,
        })
    }

    pub(crate) fn as_slice(&self) -> &[f32] {
        // SAFETY: the range is mapped, initialised (see the module note), aligned (page-aligned
        // start) and owned by this block alone.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`; `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Some(region) = region(self.pool) {
            region
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .give_back(self.offset, self.bytes);
            IN_USE.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

/// Buffers smaller than this come from the allocator, which recycles them well itself.
const ARENA_MIN_ELEMENTS: usize = 16 << 10;

/// f32 storage: large requests from the arena, small ones (or all, where there is no arena) from
/// the allocator.
#[derive(Debug)]
pub(crate) enum Memory {
    Heap(Vec<f32>),
    Arena(Block),
}

impl Memory {
    /// `len` values whose contents are unspecified: the caller writes every one before reading it.
    pub(crate) fn uninit(len: usize) -> Memory {
        Memory::uninit_in(len, Pool::Transient)
    }

    /// `Memory::uninit` from `pool`'s region.
    pub(crate) fn uninit_in(len: usize, pool: Pool) -> Memory {
        Some(len)
            .filter(|&len| len >= ARENA_MIN_ELEMENTS)
            .and_then(|len| Block::new(len, pool))
            .map_or_else(|| Memory::Heap(vec![0.0; len]), Memory::Arena)
    }

    /// `len` zeros for a value that outlives many steps: from the allocator, because long-lived
    /// blocks between the arena's short-lived ones would split its free space (measured: kept
    /// transformed weights took batch-32 forward-backward from 3.10 to 3.96 GiB resident).
    pub(crate) fn lasting(len: usize) -> Memory {
        Memory::Heap(vec![0.0; len])
    }

    /// `Memory::lasting` or `Memory::uninit`.
    pub(crate) fn new(len: usize, lasting: bool) -> Memory {
        if lasting {
            Memory::lasting(len)
        } else {
            Memory::uninit(len)
        }
    }
}

impl From<Vec<f32>> for Memory {
    fn from(values: Vec<f32>) -> Memory {
        Memory::Heap(values)
    }
}

impl std::ops::Deref for Memory {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            Memory::Heap(v) => v,
            Memory::Arena(b) => b.as_slice(),
        }
    }
}

impl std::ops::DerefMut for Memory {
    fn deref_mut(&mut self) -> &mut [f32] {
        match self {
            Memory::Heap(v) => v,
            Memory::Arena(b) => b.as_mut_slice(),
        }
    }
}

/// What the arena has handed out, shared by every CPU backend of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ArenaUsage {
    /// Bytes in blocks alive now (tensors and kernels' scratch; whole pages).
    pub in_use_bytes: usize,
    /// The most `in_use_bytes` has been since the last [`reset_arena_peak`].
    pub peak_in_use_bytes: usize,
}

/// The arena's usage now, both regions (zeros where there is no arena).
pub fn arena_usage() -> ArenaUsage {
    ArenaUsage {
        in_use_bytes: IN_USE.load(Ordering::Relaxed),
        peak_in_use_bytes: PEAK_IN_USE.load(Ordering::Relaxed),
    }
}

/// Starts a new peak measurement from the bytes in use now.
pub fn reset_arena_peak() {
    PEAK_IN_USE.store(IN_USE.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Bytes of the arena free but possibly resident (kept for reuse; after `trim`, an upper bound).
pub(crate) fn free_resident_bytes() -> usize {
    regions()
        .map(|r| {
            let s = r.state.lock().unwrap_or_else(|e| e.into_inner());
            s.touched - s.in_use
        })
        .sum()
}

/// Hands every free page of both regions back to the OS. Blocks alive keep their contents.
pub(crate) fn trim() {
    regions().for_each(trim_region);
}

fn trim_region(region: &Region) {
    let mut state = region.state.lock().unwrap_or_else(|e| e.into_inner());
    let touched = state.touched;
    let ranges = state
        .free
        .iter()
        .map(|(&start, &len)| (start, len))
        .chain(std::iter::once((
            state.top,
            touched.saturating_sub(state.top),
        )));
    for (start, len) in ranges.filter(|&(_, len)| len > 0) {
        release(region, start, len);
    }
    state.touched = state.top;
}

#[cfg(unix)]
fn release(region: &Region, start: usize, len: usize) {
    // SAFETY: a free, page-aligned range inside the mapping; no block points into it. The pages
    // read as zeros afterwards, which is a valid state for free memory.
    unsafe {
        libc::madvise(
            region.base.as_ptr().add(start).cast(),
            len,
            libc::MADV_DONTNEED,
        );
    }
}

#[cfg(not(unix))]
fn release(_region: &Region, _start: usize, _len: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_fit_reuses_and_merges_freed_ranges() {
        let mut s = State::default();
        let reserved = 100 * GRANULE;
        let a = s.take(10 * GRANULE, reserved).unwrap();
        let b = s.take(20 * GRANULE, reserved).unwrap();
        let c = s.take(5 * GRANULE, reserved).unwrap();
        assert_eq!((a, b, c), (0, 10 * GRANULE, 30 * GRANULE));
        s.give_back(a, 10 * GRANULE);
        s.give_back(b, 20 * GRANULE);
        // a and b merged: one range of 30 granules below c.
        assert_eq!(s.free.len(), 1);
        assert_eq!(s.free[&0], 30 * GRANULE);
        // A request of any size up to 30 granules is served there, not from the top.
        assert_eq!(s.take(25 * GRANULE, reserved), Some(0));
        assert_eq!(s.free[&(25 * GRANULE)], 5 * GRANULE);
        // Freeing c (next to the top) lowers the top and swallows the free range below it.
        s.give_back(c, 5 * GRANULE);
        assert_eq!(s.top, 25 * GRANULE);
        assert!(s.free.is_empty());
        assert_eq!(s.touched, 35 * GRANULE);
        assert_eq!(s.in_use, 25 * GRANULE);
        // The reservation bounds what can be taken.
        assert_eq!(s.take(80 * GRANULE, reserved), None);
        assert_eq!(s.take(75 * GRANULE, reserved), Some(25 * GRANULE));
    }

    #[test]
    fn the_regions_share_no_free_space() {
        if !cfg!(unix) {
            return;
        }
        // Freed in one region, a range is not handed out by the other: best fit in one region
        // would give the gradient the activation's place back.
        let len = 3 << 20;
        let freed = Block::new(len, Pool::Transient).unwrap();
        let (start, end) = (
            freed.as_slice().as_ptr(),
            freed.as_slice().as_ptr_range().end,
        );
        drop(freed);
        let gradient = Block::new(len, Pool::Gradients).unwrap();
        let at = gradient.as_slice().as_ptr();
        assert!(
            !(start..end).contains(&at),
            "the gradients' region is apart"
        );
        let again = Block::new(len, Pool::Transient).unwrap();
        assert_eq!(
            again.as_slice().as_ptr(),
            start,
            "the freed range serves its own region"
        );
    }

    #[test]
    fn blocks_are_disjoint_and_keep_their_values() {
        let mut blocks: Vec<Block> = (1..6)
            .filter_map(|i| Block::new(i * 5000, [Pool::Transient, Pool::Gradients][i % 2]))
            .collect();
        if cfg!(unix) {
            assert_eq!(blocks.len(), 5, "the arena serves small requests");
        }
        for (i, b) in blocks.iter_mut().enumerate() {
            b.as_mut_slice().fill(i as f32);
        }
        for (i, b) in blocks.iter().enumerate() {
            assert_eq!(b.as_slice().len(), (i + 1) * 5000);
            assert!(b.as_slice().iter().all(|&v| v == i as f32));
        }
        // Trimming hands back only free pages: live blocks keep their values.
        drop(blocks.remove(2));
        trim();
        for (b, i) in blocks.iter().zip([0, 1, 3, 4]) {
            assert!(b.as_slice().iter().all(|&v| v == i as f32));
        }
    }
}
