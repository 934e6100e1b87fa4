//! Convolution scratch memory is bounded by the tile or chunk, not by the batch. Scratch comes from
//! two places, both counted: the heap (a counting global allocator) and the backend's mmap arena
//! (`vgg_ndarray::arena_usage`), which serves large buffers. The scratch of an op is its peak in
//! both above what was live before it, less its own result, measured at VGG-16 conv1_2 (64
//! channels, 224x224) at batch 4 and 32, on each algorithm: im2col and Winograd. Scratch a kernel
//! keeps per thread between calls is counted where it is first allocated or grown, so a buffer
//! that grew with the batch would show at batch 32.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use vgg_ndarray::conv::use_winograd;
use vgg_ndarray::{arena_usage, reset_arena_peak, ConvAlgorithm, CpuBackend, CpuConfig};
use vgg_tensor::prelude::*;
use vgg_tensor::ConvPass as Pass;
use vgg_tensor::{Conv2dParams, ConvGeometry, Shape};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(live, Ordering::SeqCst);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grew(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak bytes `f` held in the heap and the arena beyond what was live before it and what it
/// returns. The two peaks are added (they may fall at different moments: an upper bound). The
/// result must be among what was counted; if it is not, the measurement misses an allocator.
#[track_caller]
fn scratch_of<T>(result_bytes: usize, f: impl FnOnce() -> T) -> (usize, T) {
    let heap_before = LIVE.load(Ordering::SeqCst);
    PEAK.store(heap_before, Ordering::SeqCst);
    reset_arena_peak();
    let arena_before = arena_usage().in_use_bytes;
    let out = f();
    let heap = PEAK.load(Ordering::SeqCst) - heap_before;
    let arena = arena_usage().peak_in_use_bytes - arena_before;
    let total = heap + arena;
    let scratch = total.checked_sub(result_bytes).unwrap_or_else(|| {
        panic!(
            "{total} bytes counted ({heap} heap, {arena} arena) for a result of {result_bytes}: \
             an allocation was not seen"
        )
    });
    (scratch, out)
}

/// Scratch of (forward, input grad, weight grad) at conv1_2's shape with `batch` images.
fn conv1_2_scratch(b: &CpuBackend, batch: usize) -> [usize; 3] {
    let xs = Shape::from([batch, 64, 224, 224]);
    let ws = Shape::from([64, 64, 3, 3]);
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    let x = b.random_normal(&xs, 0.0, 1.0, 1).unwrap();
    let w = b.random_normal(&ws, 0.0, 0.05, 2).unwrap();
    let activation = xs.elements() * 4;
    let (fwd, y) = scratch_of(activation, || b.conv2d(&x, &w, p).unwrap());
    let (bwd_in, dx) = scratch_of(activation, || {
        b.conv2d_backward_input(&y, &w, &xs, p).unwrap()
    });
    drop(dx);
    let (bwd_w, _dw) = scratch_of(ws.elements() * 4, || {
        b.conv2d_backward_weight(&x, &y, &ws, p).unwrap()
    });
    eprintln!(
        "conv1_2 batch {batch:>2} (activation {:>3} MiB), {:?}: scratch forward {} KiB, input grad {} KiB, weight grad {} KiB",
        activation >> 20,
        b.tuning().convolution,
        fwd >> 10,
        bwd_in >> 10,
        bwd_w >> 10
    );
    [fwd, bwd_in, bwd_w]
}

fn backend(convolution: ConvAlgorithm, threads: usize) -> CpuBackend {
    CpuBackend::with_config(CpuConfig {
        convolution,
        ..CpuConfig::detect(threads)
    })
    .unwrap()
}

/// Each of forward, input grad and weight grad within `bound` at batch 32, and no more than a
/// little above batch 4's.
fn assert_bounded(b: &CpuBackend, bound: usize) {
    let small = conv1_2_scratch(b, 4);
    let large = conv1_2_scratch(b, 32);
    for (i, what) in ["forward", "input grad", "weight grad"].iter().enumerate() {
        assert!(
            large[i] <= bound,
            "{:?} {what}: {} bytes of scratch > bound {bound}",
            b.tuning().convolution,
            large[i]
        );
        assert!(
            large[i] <= small[i] + (256 << 10),
            "{:?} {what}: scratch grew with the batch, {} at 4 and {} at 32",
            b.tuning().convolution,
            small[i],
            large[i]
        );
    }
}

const THREADS: usize = 2;

/// The counters are the process's: the tests here measure one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn measuring() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}
const WEIGHT: usize = 64 * 64 * 9 * 4;

#[test]
fn im2col_scratch_is_a_tile_per_thread() {
    let _alone = measuring();
    let b = backend(ConvAlgorithm::Im2col, THREADS);
    // Per worker: one column tile, the GEMM's packing buffers (under 1 MiB) and, for the weight
    // gradient, its f32 part and f64 total (three weights' worth); the input gradient also holds
    // the flipped kernel.
    let tile = b.tuning().im2col_tile_bytes;
    assert_bounded(&b, THREADS * (tile + (1 << 20) + 3 * WEIGHT) + WEIGHT);
}

#[test]
fn winograd_scratch_is_a_chunk_per_thread() {
    let _alone = measuring();
    let b = backend(ConvAlgorithm::Auto, THREADS);
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    let g = ConvGeometry::new(
        &Shape::from([32, 64, 224, 224]),
        &Shape::from([64, 64, 3, 3]),
        p,
    )
    .unwrap();
    for pass in [Pass::Forward, Pass::WeightGradient] {
        assert!(
            use_winograd(&g, pass, b.tuning()),
            "conv1_2 is on the Winograd path"
        );
    }
    // Per worker: one chunk of transformed input and output (the larger chunk size, where the
    // weights stream), the GEMM's packing; once: the transformed weights (36/9 of the kernel's
    // size for F(4x4, 3x3)) and their transposed copy for the input gradient.
    let chunk = b.tuning().large_chunk_bytes.max(b.tuning().chunk_bytes);
    assert_bounded(&b, THREADS * (chunk + (1 << 20)) + 2 * 4 * WEIGHT + WEIGHT);
}

/// A weight gradient's running f64 total and its result come from the arena, whose pages stay
/// mapped between calls: from the heap, conv5's (19 MB of totals, 9 MB of result) were fresh pages
/// on every call, faulted in one by one (14,000 faults a VGG-16 step at batch 1; the first weight
/// gradient after the classifier's took twice its siblings' time). Here a 256 -> 256 im2col
/// weight gradient summed in several parts (4.5 MiB of f64 totals, 2.25 MiB of result) leaves
/// the heap only what the GEMM's packing asks for (its column tiles come from the arena too):
/// under 2 MiB on two workers, against 7 MB before.
#[test]
fn weight_gradient_totals_and_result_stay_off_the_heap() {
    let _alone = measuring();
    let b = backend(ConvAlgorithm::Im2col, THREADS);
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    let (xs, ws) = (Shape::from([1, 256, 28, 28]), Shape::from([256, 256, 3, 3]));
    let x = b.random_normal(&xs, 0.0, 1.0, 1).unwrap();
    let dy = b.random_normal(&xs, 0.0, 1.0, 2).unwrap();
    let g = ConvGeometry::new(&xs, &ws, p).unwrap();
    assert!(
        g.out_h * g.out_w * 256 * 9 * 4 > b.tuning().im2col_tile_bytes,
        "the column tiles split the pixels into several parts"
    );
    // The first call sizes the GEMM's packing buffers and the arena's regions.
    drop(b.conv2d_backward_weight(&x, &dy, &ws, p).unwrap());
    let heap_before = LIVE.load(Ordering::SeqCst);
    PEAK.store(heap_before, Ordering::SeqCst);
    let dw = b.conv2d_backward_weight(&x, &dy, &ws, p).unwrap();
    let heap = PEAK.load(Ordering::SeqCst) - heap_before;
    // The GEMM's packing, up to 1 MiB a worker as in the bounds above: a worker the first call
    // did not reach sizes its own during this one (seen once: 1 MiB and 400 bytes).
    assert!(
        heap < THREADS << 20,
        "{heap} bytes of heap for a weight gradient"
    );
    assert_eq!(dw.shape(), &ws);
}
