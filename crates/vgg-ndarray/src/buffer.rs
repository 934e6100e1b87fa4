//! Tensor buffers: large ones carved from the arena (`arena.rs`), which recycles freed memory for
//! requests of any size; small ones from the allocator, which recycles them well itself. The accounting
//! counts live and peak bytes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::arena::{self, Memory, Pool};

/// Bytes in use and held, as counted by a backend's accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryStats {
    /// Bytes of tensors alive now.
    pub live_bytes: usize,
    /// The most `live_bytes` has been since the last `reset_peak`.
    pub peak_live_bytes: usize,
    /// Bytes of freed memory kept resident for reuse (shared by every CPU backend).
    pub cached_bytes: usize,
    /// Tensor buffers alive now.
    pub live_buffers: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Accounting {
    live_bytes: AtomicUsize,
    peak_live_bytes: AtomicUsize,
    live_buffers: AtomicUsize,
}

impl Accounting {
    pub(crate) fn new() -> Arc<Accounting> {
        Arc::new(Accounting::default())
    }

    pub(crate) fn stats(&self) -> MemoryStats {
        MemoryStats {
            live_bytes: self.live_bytes.load(Ordering::Relaxed),
            peak_live_bytes: self.peak_live_bytes.load(Ordering::Relaxed),
            cached_bytes: arena::free_resident_bytes(),
            live_buffers: self.live_buffers.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn reset_peak(&self) {
        self.peak_live_bytes
            .store(self.live_bytes.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Hands the memory kept for reuse back to the OS.
    pub(crate) fn trim(&self) {
        arena::trim();
    }

    fn count_new(&self, len: usize) {
        let live = self.live_bytes.fetch_add(len * 4, Ordering::Relaxed) + len * 4;
        self.peak_live_bytes.fetch_max(live, Ordering::Relaxed);
        self.live_buffers.fetch_add(1, Ordering::Relaxed);
    }
}

/// A value computed from a buffer's contents (Winograd's transformed weights), kept with it.
#[derive(Debug, Default)]
enum Derived {
    #[default]
    None,
    /// Asked for once (for this key) since the contents last changed, and not kept.
    Asked(DerivedKey),
    Kept(DerivedKey, Arc<Memory>),
}

/// What a derived value depends on besides the contents: its form (what made it: a buffer's
/// weights could be derived in two forms, as by two convolution algorithms), the shape it was
/// derived for (a buffer can be shared by tensors of different shapes, through reshape), and the
/// bf16 unit it was packed for (None: f32 products).
pub(crate) type DerivedKey = (&'static str, usize, usize, Option<crate::config::Bf16Unit>);

/// One tensor's storage; counted by its accounting while alive.
#[derive(Debug)]
pub(crate) struct Buffer {
    data: Memory,
    accounting: Arc<Accounting>,
    derived: Mutex<Derived>,
}

impl Buffer {
    /// A buffer of `len` values whose contents are unspecified (the caller overwrites them all).
    pub(crate) fn uninit(accounting: &Arc<Accounting>, len: usize) -> Buffer {
        Buffer::uninit_in(accounting, len, Pool::Transient)
    }

    /// `Buffer::uninit` from `pool`'s region of the arena.
    pub(crate) fn uninit_in(accounting: &Arc<Accounting>, len: usize, pool: Pool) -> Buffer {
        accounting.count_new(len);
        Buffer {
            data: Memory::uninit_in(len, pool),
            accounting: accounting.clone(),
            derived: Mutex::default(),
        }
    }

    /// Adopts values computed elsewhere (a vector, or memory from the arena).
    pub(crate) fn adopt(accounting: &Arc<Accounting>, data: impl Into<Memory>) -> Buffer {
        let data = data.into();
        accounting.count_new(data.len());
        Buffer {
            data,
            accounting: accounting.clone(),
            derived: Mutex::default(),
        }
    }

    pub(crate) fn as_slice(&self) -> &[f32] {
        &self.data
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [f32] {
        // The contents may change: what was derived from them no longer holds.
        *self.derived.get_mut().unwrap_or_else(|e| e.into_inner()) = Derived::None;
        &mut self.data
    }

    /// `make(lasting)`, a value derived from this buffer's contents for `key` (`lasting`: whether
    /// it will be kept, see `Memory::lasting`). From the second request
    /// with the same contents and key on, it is kept with the buffer and returned again: weights
    /// that stay fixed across steps (inference, benchmarks) pay for it once, while weights updated
    /// between steps (training) never hold the extra memory. Writing through `as_mut_slice`
    /// forgets it. `worth_keeping` false: made afresh and not kept (one already kept is still
    /// returned).
    pub(crate) fn derived(
        &self,
        key: DerivedKey,
        worth_keeping: bool,
        make: impl FnOnce(bool) -> Memory,
    ) -> Arc<Memory> {
        let lock = || self.derived.lock().unwrap_or_else(|e| e.into_inner());
        let keep = match &*lock() {
            Derived::Kept(k, value) if *k == key => return value.clone(),
            _ if !worth_keeping => return Arc::new(make(false)),
            Derived::Asked(k) => *k == key,
            _ => false,
        };
        // Computed without the lock: `make` may run parallel work on this thread's worker pool, whose
        // workers could meanwhile take up another request for this same buffer.
        let value = Arc::new(make(keep));
        *lock() = if keep {
            Derived::Kept(key, value.clone())
        } else {
            Derived::Asked(key)
        };
        value
    }

    pub(crate) fn accounting(&self) -> &Arc<Accounting> {
        &self.accounting
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let len = self.as_slice().len();
        self.accounting
            .live_bytes
            .fetch_sub(len * 4, Ordering::Relaxed);
        self.accounting.live_buffers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_counted() {
        let accounting = Accounting::new();
        let len = 100_000;
        let a = Buffer::uninit(&accounting, len);
        let b = Buffer::adopt(&accounting, vec![1.0; 10]);
        assert_eq!(accounting.stats().live_bytes, len * 4 + 40);
        assert_eq!(accounting.stats().live_buffers, 2);
        drop(a);
        assert_eq!(accounting.stats().live_bytes, 40);
        assert_eq!(accounting.stats().peak_live_bytes, len * 4 + 40);
        accounting.reset_peak();
        assert_eq!(accounting.stats().peak_live_bytes, 40);
        assert_eq!(b.as_slice(), &[1.0; 10]);
    }

    #[test]
    fn derived_values_are_kept_from_the_second_request_until_a_write() {
        let accounting = Accounting::new();
        let mut buf = Buffer::adopt(&accounting, vec![2.0; 4]);
        let calls = std::cell::Cell::new(0);
        let sum = |b: &Buffer| {
            b.derived(("sum", 1, 4, None), true, |_| {
                calls.set(calls.get() + 1);
                Memory::Heap(vec![b.as_slice().iter().sum()])
            })
        };
        assert_eq!(sum(&buf)[0], 8.0);
        assert_eq!(sum(&buf)[0], 8.0);
        assert_eq!(calls.get(), 2, "computed on the first two requests");
        assert_eq!(sum(&buf)[0], 8.0);
        assert_eq!(calls.get(), 2, "kept from the second on");
        buf.as_mut_slice()[0] = 5.0;
        assert_eq!(sum(&buf)[0], 11.0, "a write forgets the kept value");
        assert_eq!(calls.get(), 3);
        let other_key = buf.derived(("sum", 4, 1, None), true, |_| Memory::Heap(vec![-1.0]));
        assert_eq!(other_key[0], -1.0, "another key is another value");
    }

    #[test]
    fn derived_values_not_worth_keeping_are_made_each_time() {
        let accounting = Accounting::new();
        let buf = Buffer::adopt(&accounting, vec![2.0; 4]);
        let calls = std::cell::Cell::new(0);
        let sum = |keep: bool| {
            buf.derived(("sum", 1, 4, None), keep, |lasting| {
                assert!(!lasting || keep, "nothing kept where it is not worth it");
                calls.set(calls.get() + 1);
                Memory::Heap(vec![buf.as_slice().iter().sum()])
            })
        };
        for _ in 0..3 {
            assert_eq!(sum(false)[0], 8.0);
        }
        assert_eq!(calls.get(), 3, "computed on every request");
        sum(true);
        sum(true);
        assert_eq!(sum(false)[0], 8.0);
        assert_eq!(calls.get(), 5, "one kept is returned to any request");
    }
}
