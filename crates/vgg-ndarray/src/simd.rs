//! Runtime choice of vector width. The crate is compiled for the default x86-64 target (SSE2),
//! so hot loops that the compiler vectorises well are compiled again for AVX-512 and for
//! AVX2+FMA, and the widest the CPU has, up to the backend's `CpuConfig::isa`, is called.

use std::cell::Cell;
use std::sync::OnceLock;

use crate::config::Isa;

thread_local! {
    /// The widest set kernels on this thread may use: set on each worker of a backend's pool
    /// when it starts (None elsewhere: the CPU's widest).
    static CAP: Cell<Option<Isa>> = const { Cell::new(None) };
}

/// Caps the kernels run on this thread at `isa` (a backend's workers call it as they start).
pub(crate) fn cap_this_thread(isa: Isa) {
    CAP.with(|c| c.set(Some(isa)));
}

/// The set kernels on this thread use: the CPU's widest, lowered to the thread's cap.
pub(crate) fn level() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    let widest = *DETECTED.get_or_init(Isa::detected);
    CAP.with(|c| c.get()).map_or(widest, |cap| cap.min(widest))
}

/// Asks the caches for `values` ahead of their use, a request per 64-byte line; for reads the
/// hardware prefetchers do not foresee (short runs in many pages). Nothing elsewhere.
#[inline(always)]
pub(crate) fn prefetch(values: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in values.chunks(16) {
        // SAFETY: a prefetch only hints; the address lies in `values` and is never dereferenced.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// `dst` = `values` with non-temporal stores (no read of the destination's lines first, and no
/// eviction of what the caches hold), where `dst` is 16-byte aligned and a multiple of 4 long;
/// false, with nothing written, elsewhere. The writer calls `store_fence` before others read.
#[inline(always)]
pub(crate) fn stream_store(dst: &mut [f32], values: &[f32]) -> bool {
    assert_eq!(dst.len(), values.len(), "as many values as places");
    #[cfg(target_arch = "x86_64")]
    if (dst.as_ptr() as usize).is_multiple_of(16) && dst.len().is_multiple_of(4) {
        for (quad, out) in values.chunks_exact(4).zip(dst.chunks_exact_mut(4)) {
            // SAFETY: SSE is part of x86_64; `out` is 4 values inside `dst`, 16-byte aligned
            // (its start is, and every quad after it).
            unsafe {
                std::arch::x86_64::_mm_stream_ps(
                    out.as_mut_ptr(),
                    std::arch::x86_64::_mm_loadu_ps(quad.as_ptr()),
                )
            };
        }
        return true;
    }
    false
}

/// Orders this thread's non-temporal stores (`stream_store`) before its later stores, such as
/// the completion of its task, which the thread joining the tasks waits on.
#[inline(always)]
pub(crate) fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86_64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// `$vis fn $name(args)` that calls `$generic(args)` (an `#[inline(always)]` function) compiled
/// for AVX-512 or AVX2+FMA where `level` allows, and as it is otherwise. The second form takes a
/// type and two sizes as generic parameters (`fn name<T: Bound, const M: usize, const A: usize>`,
/// T bounded by `Bound<M, A>`: the Winograd tile sizes) and passes them on.
macro_rules! dispatch_simd {
    ($(#[$doc:meta])* $vis:vis fn $name:ident<$t:ident: $bound:ident, const $m:ident: usize, const $a:ident: usize>($($arg:ident: $ty:ty),* $(,)?) => $generic:ident) => {
        $(#[$doc])*
        $vis fn $name<$t: $bound<$m, $a>, const $m: usize, const $a: usize>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512<$t: $bound<$m, $a>, const $m: usize, const $a: usize>($($arg: $ty),*) {
                    $generic::<$t, $m, $a>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<$t: $bound<$m, $a>, const $m: usize, const $a: usize>($($arg: $ty),*) {
                    $generic::<$t, $m, $a>($($arg),*)
                }
                match $crate::simd::level() {
                    // SAFETY: `level` never exceeds what the CPU has (`Isa::detected`).
                    $crate::config::Isa::Avx512 => return unsafe { avx512::<$t, $m, $a>($($arg),*) },
                    // SAFETY: as above.
                    $crate::config::Isa::Avx2 => return unsafe { avx2::<$t, $m, $a>($($arg),*) },
                    $crate::config::Isa::Portable => {}
                }
            }
            $generic::<$t, $m, $a>($($arg),*)
        }
    };
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $generic:path) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $generic($($arg),*)
                }
                match $crate::simd::level() {
                    // SAFETY: `level` never exceeds what the CPU has (`Isa::detected`).
                    $crate::config::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    $crate::config::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::config::Isa::Portable => {}
                }
            }
            $generic($($arg),*)
        }
    };
}

pub(crate) use dispatch_simd;
