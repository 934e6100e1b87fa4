//! Convolution scratch memory is bounded by the column tile, not by the batch. A counting global
//! allocator measures the peak heap above what was live before the op, minus the op's own
//! result, at VGG-16 conv1_2 (64 channels, 224x224) with batch 32.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use vgg_ndarray::CpuBackend;
use vgg_tensor::prelude::*;
use vgg_tensor::{Conv2dParams, Shape};

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

/// Peak bytes allocated by `f` beyond what was live before it and what it returns.
fn scratch_of<T>(result_bytes: usize, f: impl FnOnce() -> T) -> (usize, T) {
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let out = f();
    let peak = PEAK.load(Ordering::SeqCst);
    (peak.saturating_sub(before + result_bytes), out)
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
        "conv1_2 batch {batch:>2} (activation {:>3} MiB): scratch forward {} KiB, input grad {} KiB, weight grad {} KiB",
        activation >> 20,
        fwd >> 10,
        bwd_in >> 10,
        bwd_w >> 10
    );
    [fwd, bwd_in, bwd_w]
}

#[test]
fn conv1_2_at_batch_32_needs_scratch_of_a_tile_per_thread() {
    let threads = 2;
    let b = CpuBackend::new(threads).unwrap();
    let weight = 64 * 64 * 9 * 4;
    // Per worker: one column tile, the GEMM's packing buffers (under 1 MiB) and, for the weight
    // gradient, its own partial dW; the input gradient also holds the flipped kernel.
    let tile = b.tuning().im2col_tile_bytes;
    let bound = threads * (tile + (1 << 20) + weight) + weight;
    let small = conv1_2_scratch(&b, 4);
    let large = conv1_2_scratch(&b, 32);
    for (i, what) in ["forward", "input grad", "weight grad"].iter().enumerate() {
        assert!(
            large[i] <= bound,
            "{what}: {} bytes of scratch > bound {bound}",
            large[i]
        );
        assert!(
            large[i] <= small[i] + (256 << 10),
            "{what}: scratch grew with the batch, {} at 4 and {} at 32",
            small[i],
            large[i]
        );
    }
}
