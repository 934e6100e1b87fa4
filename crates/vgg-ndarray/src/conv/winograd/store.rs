//! Writing the output from several chunks at once, with non-temporal stores where it is far
//! larger than the caches.

use super::*;

/// The output, written by several chunks at disjoint positions.
#[derive(Clone, Copy)]
pub(super) struct OutPtr {
    pub(super) ptr: *mut f32,
    pub(super) len: usize,
    /// Written with non-temporal stores (`Tuning::streaming_bytes`).
    pub(super) streaming: bool,
}

// SAFETY: chunks write disjoint elements (their own tile rows), and the pointer outlives them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// `write_slice`, with non-temporal stores when `streaming` (where `simd::stream_store` can):
    /// no read of the destination lines first, and no eviction of the cached working set. The
    /// caller fences (`simd::store_fence`) before others read the output.
    #[inline(always)]
    pub(super) unsafe fn write_row(self, at: usize, values: &[f32], streaming: bool) {
        if streaming {
            assert!(at + values.len() <= self.len, "write inside the output");
            // SAFETY: in bounds (checked above); the caller guarantees no other writer.
            let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), values.len()) };
            if crate::simd::stream_store(dst, values) {
                return;
            }
        }
        // SAFETY: forwarded to the caller.
        unsafe { self.write_slice(at, values) }
    }

    #[inline(always)]
    pub(super) unsafe fn write_slice(self, at: usize, values: &[f32]) {
        assert!(at + values.len() <= self.len, "write inside the output");
        // SAFETY: in bounds (checked above); the caller guarantees no other writer.
        copy_lanes(
            unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), values.len()) },
            values,
        );
    }
}
