//! The transforms compiled for the widest vector unit the CPU has (they are most of the
//! non-GEMM time), for each tile size (`Tile`).

use vgg_tensor::ConvGeometry;

use super::*;

crate::simd::dispatch_simd! {
    pub(super) fn input_channels<T: Tile, const M: usize, const A: usize>(
        x: &[f32],
        g: &ConvGeometry,
        rows: std::ops::Range<usize>,
        channels: std::ops::Range<usize>,
        v: &mut [f32],
    ) => transform_input_generic
}

/// V[c][pos][t] for the tile rows `rows`, every input channel.
pub(super) fn input<T: Tile<M, A>, const M: usize, const A: usize>(
    x: &[f32],
    g: &ConvGeometry,
    rows: std::ops::Range<usize>,
    v: &mut [f32],
) {
    input_channels::<T, M, A>(x, g, rows, 0..g.in_channels, v)
}

crate::simd::dispatch_simd! {
    pub(super) fn output_grad_channels<T: Backward, const M: usize, const A: usize>(
        dy: &[f32],
        g: &ConvGeometry,
        rows: std::ops::Range<usize>,
        channels: std::ops::Range<usize>,
        dm: &mut [f32],
    ) => transform_output_grad_generic
}

/// dM[k][pos][t] for the tile rows `rows`, every output channel.
pub(super) fn output_grad<T: Backward<M, A>, const M: usize, const A: usize>(
    dy: &[f32],
    g: &ConvGeometry,
    rows: std::ops::Range<usize>,
    dm: &mut [f32],
) {
    output_grad_channels::<T, M, A>(dy, g, rows, 0..g.out_channels, dm)
}

crate::simd::dispatch_simd! {
    pub(super) fn output<T: Tile, const M: usize, const A: usize>(
        m: &[f32],
        g: &ConvGeometry,
        rows: std::ops::Range<usize>,
        channels: std::ops::Range<usize>,
        bias: Option<&[f32]>,
        relu: bool,
        y: OutPtr,
    ) => transform_output_generic
}

crate::simd::dispatch_simd! {
    pub(super) fn filters<T: Tile, const M: usize, const A: usize>(
        filters: &[f32],
        ko: usize,
        k: usize,
        c: usize,
        u: OutPtr,
    ) => transform_filters_generic
}

crate::simd::dispatch_simd! {
    pub(super) fn weight_grad<T: Backward, const M: usize, const A: usize>(
        du: &[f32],
        ko: usize,
        k: usize,
        c: usize,
        dw_k: &mut [f32],
    ) => transform_weight_grad_generic
}
