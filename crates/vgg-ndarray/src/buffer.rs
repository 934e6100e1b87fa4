//! Tensor buffers recycled by size. A training or benchmark step allocates the same sizes every
//! step; fresh allocations over 32 MiB are mmapped by glibc and pay a page fault per 4 KiB when
//! first written (34 ms for one 103 MB activation, ~20% of the convolution that fills it).
//! Recycling them removes that cost. The pool also counts live and peak bytes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Buffers smaller than this go straight to the allocator, which recycles them well itself.
const POOLED_MIN_ELEMENTS: usize = 16 << 10;

/// Bytes in use and held, as counted by a backend's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryStats {
    /// Bytes of tensors alive now.
    pub live_bytes: usize,
    /// The most `live_bytes` has been since the last `reset_peak`.
    pub peak_live_bytes: usize,
    /// Bytes of freed buffers kept for reuse.
    pub cached_bytes: usize,
    /// Tensor buffers alive now.
    pub live_buffers: usize,
}

#[derive(Debug)]
pub(crate) struct Pool {
    /// Freed buffers, oldest first.
    free: Mutex<VecDeque<Vec<f32>>>,
    cache_limit_bytes: usize,
    live_bytes: AtomicUsize,
    peak_live_bytes: AtomicUsize,
    cached_bytes: AtomicUsize,
    live_buffers: AtomicUsize,
}

impl Pool {
    pub(crate) fn new(cache_limit_bytes: usize) -> Arc<Pool> {
        Arc::new(Pool {
            free: Mutex::new(VecDeque::new()),
            cache_limit_bytes,
            live_bytes: AtomicUsize::new(0),
            peak_live_bytes: AtomicUsize::new(0),
            cached_bytes: AtomicUsize::new(0),
            live_buffers: AtomicUsize::new(0),
        })
    }

    pub(crate) fn stats(&self) -> MemoryStats {
        MemoryStats {
            live_bytes: self.live_bytes.load(Ordering::Relaxed),
            peak_live_bytes: self.peak_live_bytes.load(Ordering::Relaxed),
            cached_bytes: self.cached_bytes.load(Ordering::Relaxed),
            live_buffers: self.live_buffers.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn reset_peak(&self) {
        self.peak_live_bytes
            .store(self.live_bytes.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Drops every cached buffer.
    pub(crate) fn trim(&self) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.clear();
        self.cached_bytes.store(0, Ordering::Relaxed);
    }

    /// The most recently freed buffer of exactly `len` values.
    fn take(&self, len: usize) -> Option<Vec<f32>> {
        if len < POOLED_MIN_ELEMENTS {
            return None;
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let at = free.iter().rposition(|v| v.len() == len)?;
        let v = free.remove(at)?;
        self.cached_bytes.fetch_sub(len * 4, Ordering::Relaxed);
        Some(v)
    }

    /// Keeps a freed buffer, dropping the oldest cached ones if the cache would exceed its bound:
    /// a step frees and allocates the same sizes as the step before, so recent ones come back.
    fn give_back(&self, v: Vec<f32>) {
        let len = v.len();
        if len < POOLED_MIN_ELEMENTS || len * 4 > self.cache_limit_bytes {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let mut cached = self.cached_bytes.load(Ordering::Relaxed) + len * 4;
        while cached > self.cache_limit_bytes {
            let Some(old) = free.pop_front() else { break };
            cached -= old.len() * 4;
        }
        free.push_back(v);
        self.cached_bytes.store(cached, Ordering::Relaxed);
    }

    fn count_new(&self, len: usize) {
        let live = self.live_bytes.fetch_add(len * 4, Ordering::Relaxed) + len * 4;
        self.peak_live_bytes.fetch_max(live, Ordering::Relaxed);
        self.live_buffers.fetch_add(1, Ordering::Relaxed);
    }
}

/// One tensor's storage; returns itself to the pool when dropped.
#[derive(Debug)]
pub(crate) struct Buffer {
    data: Vec<f32>,
    pool: Arc<Pool>,
}

impl Buffer {
    /// A buffer of `len` values whose contents are unspecified (the caller overwrites them all).
    pub(crate) fn uninit(pool: &Arc<Pool>, len: usize) -> Buffer {
        let data = pool.take(len).unwrap_or_else(|| vec![0.0; len]);
        pool.count_new(len);
        Buffer {
            data,
            pool: pool.clone(),
        }
    }

    /// Adopts a vector built elsewhere.
    pub(crate) fn from_vec(pool: &Arc<Pool>, data: Vec<f32>) -> Buffer {
        pool.count_new(data.len());
        Buffer {
            data,
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
        let len = self.data.len();
        self.pool.live_bytes.fetch_sub(len * 4, Ordering::Relaxed);
        self.pool.live_buffers.fetch_sub(1, Ordering::Relaxed);
        self.pool.give_back(std::mem::take(&mut self.data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_recycled_and_counted() {
        let pool = Pool::new(1 << 30);
        let len = POOLED_MIN_ELEMENTS * 2;
        let a = Buffer::uninit(&pool, len);
        let ptr = a.as_slice().as_ptr();
        assert_eq!(pool.stats().live_bytes, len * 4);
        drop(a);
        assert_eq!(pool.stats().live_bytes, 0);
        assert_eq!(pool.stats().cached_bytes, len * 4);
        let b = Buffer::uninit(&pool, len);
        assert_eq!(b.as_slice().as_ptr(), ptr, "the freed buffer is reused");
        assert_eq!(pool.stats().cached_bytes, 0);
        assert_eq!(pool.stats().peak_live_bytes, len * 4);
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_the_most_recent() {
        let len = POOLED_MIN_ELEMENTS;
        let pool = Pool::new(len * 4 * 2);
        let (a, b, c) = (
            Buffer::uninit(&pool, len),
            Buffer::uninit(&pool, len),
            Buffer::uninit(&pool, 2 * len),
        );
        let c_ptr = c.as_slice().as_ptr();
        drop((a, b));
        assert_eq!(pool.stats().cached_bytes, 2 * len * 4);
        // The larger buffer freed last evicts both older ones.
        drop(c);
        assert_eq!(pool.stats().cached_bytes, 2 * len * 4);
        assert_eq!(Buffer::uninit(&pool, 2 * len).as_slice().as_ptr(), c_ptr);
        pool.trim();
        assert_eq!(pool.stats().cached_bytes, 0);
    }
}
