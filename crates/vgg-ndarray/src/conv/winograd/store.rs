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

/// Orders this thread's non-temporal stores before its later stores (the chunk's completion,
/// which the thread joining the chunks waits on).
#[inline(always)]
pub(super) fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86_64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

impl OutPtr {
    /// `write_slice`, with non-temporal stores when `streaming` and the row segment is 16-byte
    /// aligned: no read of the destination lines first, and no eviction of the cached working
    /// set. The caller fences (`store_fence`) before others read the output.
    #[inline(always)]
    pub(super) unsafe fn write_row(self, at: usize, values: &[f32], streaming: bool) {
        #[cfg(target_arch = "x86_64")]
        if streaming && values.len() % 4 == 0 {
            assert!(at + values.len() <= self.len, "write inside the output");
            // SAFETY: in bounds (checked above); the caller guarantees no other writer.
            let dst = unsafe { self.ptr.add(at) };
            if dst as usize % 16 == 0 {
                for (i, quad) in values.chunks_exact(4).enumerate() {
                    // SAFETY: SSE is part of x86_64; dst + 4i is 16-byte aligned and in bounds.
                    unsafe {
                        std::arch::x86_64::_mm_stream_ps(
                            dst.add(4 * i),
                            std::arch::x86_64::_mm_loadu_ps(quad.as_ptr()),
                        )
                    };
                }
                return;
            }
        }
        let _ = streaming;
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
