//! Tensor buffers: large ones carved from the arena (`arena.rs`), which recycles freed memory for
//! requests of any size; small ones from the allocator, which recycles them well itself. The pool
//! counts live and peak bytes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::arena::{self, Memory};

/// Bytes in use and held, as counted by a backend's pool.
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
pub(crate) struct Pool {
    live_bytes: AtomicUsize,
    peak_live_bytes: AtomicUsize,
    live_buffers: AtomicUsize,
}

impl Pool {
    pub(crate) fn new() -> Arc<Pool> {
        Arc::new(Pool::default())
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

/// One tensor's storage; counted by its pool while alive.
#[derive(Debug)]
pub(crate) struct Buffer {
    data: Memory,
    pool: Arc<Pool>,
}

impl Buffer {
    /// A buffer of `len` values whose contents are unspecified (the caller overwrites them all).
    pub(crate) fn uninit(pool: &Arc<Pool>, len: usize) -> Buffer {
        pool.count_new(len);
        Buffer {
            data: Memory::uninit(len),
            pool: pool.clone(),
        }
    }

    /// Adopts a vector built elsewhere.
    pub(crate) fn from_vec(pool: &Arc<Pool>, data: Vec<f32>) -> Buffer {
        pool.count_new(data.len());
        Buffer {
            data: Memory::Heap(data),
            pool: pool.clone(),
        }
    }

    pub(crate) fn as_slice(&self) -> &[f32] {
        &self.data
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub(crate) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let len = self.as_slice().len();
        self.pool.live_bytes.fetch_sub(len * 4, Ordering::Relaxed);
        self.pool.live_buffers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_counted() {
        let pool = Pool::new();
        let len = 100_000;
        let a = Buffer::uninit(&pool, len);
        let b = Buffer::from_vec(&pool, vec![1.0; 10]);
        assert_eq!(pool.stats().live_bytes, len * 4 + 40);
        assert_eq!(pool.stats().live_buffers, 2);
        drop(a);
        assert_eq!(pool.stats().live_bytes, 40);
        assert_eq!(pool.stats().peak_live_bytes, len * 4 + 40);
        pool.reset_peak();
        assert_eq!(pool.stats().peak_live_bytes, 40);
        assert_eq!(b.as_slice(), &[1.0; 10]);
    }
}
