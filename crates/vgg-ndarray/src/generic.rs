//! The generic primitives on ndarray views of the backend's buffers: elementwise functions with
//! NumPy broadcasting (`Zip` over broadcast views, in parallel), reductions over any axes,
//! permutes, slices and joins. The hot layers have their own kernels; these serve every other
//! network. Reductions accumulate each output in f64 in index order, so results do not depend on
//! the thread count.

use ndarray::{ArrayViewD, ArrayViewMutD, Axis, IxDyn, Slice, Zip};
use rayon::prelude::*;
use vgg_tensor::{BinaryOp, ReduceOp, UnaryOp};

/// `out` = op(x), elementwise.
pub fn unary(op: UnaryOp, x: ArrayViewD<'_, f32>, out: ArrayViewMutD<'_, f32>) {
    // One monomorphic loop per op, so the match is not in the inner loop.
    macro_rules! each {
        ($($variant:ident),*) => {
            match op {
                $(UnaryOp::$variant => Zip::from(out)
                    .and(&x)
                    .par_for_each(|o, &v| *o = UnaryOp::$variant.apply(v)),)*
            }
        };
    }
    each!(Neg, Abs, Exp, Log, Sqrt, Recip, Square, Tanh, Sigmoid, Relu);
}

/// `out` = op(a, b) with `a` and `b` broadcast to `out`'s shape (checked by the caller).
pub fn binary(
    op: BinaryOp,
    a: ArrayViewD<'_, f32>,
    b: ArrayViewD<'_, f32>,
    out: ArrayViewMutD<'_, f32>,
) {
    let dims = out.raw_dim();
    let a = a.broadcast(dims.clone()).expect("broadcast shapes checked");
    let b = b.broadcast(dims).expect("broadcast shapes checked");
    macro_rules! each {
        ($($variant:ident),*) => {
            match op {
                $(BinaryOp::$variant => Zip::from(out)
                    .and(&a)
                    .and(&b)
                    .par_for_each(|o, &a, &b| *o = BinaryOp::$variant.apply(a, b)),)*
            }
        };
    }
    each!(Add, Sub, Mul, Div, Max, Min, Greater, Equal);
}

/// `out` (the input's shape with `axes` at length 1, as a flat slice) = op over `axes` of `x`.
pub fn reduce(op: ReduceOp, x: ArrayViewD<'_, f32>, axes: &[usize], out: &mut [f32]) {
    if !reduce_in_place(op, &x, axes, out) {
        reduce_rearranged(op, x, axes, out);
    }
}

/// `reduce` by a copy with the kept axes first and the reduced ones last, so that each output is
/// one contiguous run of values.
fn reduce_rearranged(op: ReduceOp, x: ArrayViewD<'_, f32>, axes: &[usize], out: &mut [f32]) {
    let kept = (0..x.ndim()).filter(|a| !axes.contains(a));
    let perm: Vec<usize> = kept.chain(axes.iter().copied()).collect();
    let run: usize = axes.iter().map(|&a| x.shape()[a]).product();
    let arranged = x.permuted_axes(IxDyn(&perm));
    let arranged = arranged.as_standard_layout();
    let values = arranged.as_slice().expect("standard layout is contiguous");
    if run == 0 {
        out.fill(op.apply(std::iter::empty()));
        return;
    }
    out.par_iter_mut()
        .zip(values.par_chunks(run))
        .for_each(|(o, chunk)| *o = op.apply(chunk.iter().copied()));
}

/// `reduce` without rearranging a contiguous `x` whose kept axes are one block between reduced
/// ones (a channel's sum over N, H and W of NCHW: BatchNorm's statistics), where the copy cost
/// ten times the sums. Each output takes its values in the same order as `reduce` (reduced axes
/// ascending), so the results are the same to the bit. False where it does not apply.
fn reduce_in_place(op: ReduceOp, x: &ArrayViewD<'_, f32>, axes: &[usize], out: &mut [f32]) -> bool {
    let Some(values) = x.as_slice() else {
        return false;
    };
    let kept: Vec<usize> = (0..x.ndim()).filter(|a| !axes.contains(a)).collect();
    let (Some(&first), Some(&last)) = (kept.first(), kept.last()) else {
        return false;
    };
    let one_block = last - first + 1 == kept.len();
    if !one_block || !axes.windows(2).all(|w| w[0] < w[1]) || values.is_empty() {
        return false;
    }
    let dims = x.shape();
    let outer: usize = dims[..first].iter().product();
    let block: usize = dims[first..=last].iter().product();
    let inner: usize = dims[last + 1..].iter().product();
    out.par_iter_mut().enumerate().for_each(|(k, o)| {
        let runs = (0..outer).flat_map(|n| &values[(n * block + k) * inner..][..inner]);
        *o = op.apply(runs.copied());
    });
    true
}

/// `out` = `x` with its axes permuted.
pub fn permute(x: ArrayViewD<'_, f32>, perm: &[usize], out: ArrayViewMutD<'_, f32>) {
    let permuted = x.permuted_axes(IxDyn(perm));
    Zip::from(out).and(&permuted).par_for_each(|o, &v| *o = v);
}

/// `out` = `len` elements of `x` from `start` along `axis`.
pub fn slice(
    x: ArrayViewD<'_, f32>,
    axis: usize,
    start: usize,
    len: usize,
    out: ArrayViewMutD<'_, f32>,
) {
    let part = x.slice_axis(Axis(axis), Slice::from(start..start + len));
    Zip::from(out).and(&part).par_for_each(|o, &v| *o = v);
}

/// `out` = the `parts` joined along `axis`.
pub fn concat(parts: &[ArrayViewD<'_, f32>], axis: usize, mut out: ArrayViewMutD<'_, f32>) {
    let mut at = 0;
    for part in parts {
        let len = part.shape()[axis];
        let dst = out.slice_axis_mut(Axis(axis), Slice::from(at..at + len));
        Zip::from(dst).and(part).par_for_each(|o, &v| *o = v);
        at += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, Dimension};

    fn array(dims: &[usize]) -> ArrayD<f32> {
        ArrayD::from_shape_fn(IxDyn(dims), |i: IxDyn| {
            let index: &[usize] = i.slice();
            index.iter().fold(0.0, |acc, &v| acc * 10.0 + v as f32)
        })
    }

    #[test]
    fn reductions_over_leading_middle_and_trailing_axes() {
        let x = array(&[2, 3, 4]);
        for axes in [vec![0], vec![1], vec![2], vec![0, 2], vec![0, 1, 2]] {
            let mut out_dims = x.shape().to_vec();
            for &a in &axes {
                out_dims[a] = 1;
            }
            let mut out = vec![0.0; out_dims.iter().product()];
            reduce(ReduceOp::Sum, x.view(), &axes, &mut out);
            let mut want = x.clone();
            for &a in axes.iter().rev() {
                want = want.sum_axis(Axis(a)).insert_axis(Axis(a));
            }
            assert_eq!(out, want.into_raw_vec_and_offset().0, "axes {axes:?}");
        }
    }

    #[test]
    fn the_in_place_reduction_gives_the_rearranged_ones_bits() {
        // Values whose f64 sums depend on their order.
        let x = ArrayD::from_shape_fn(IxDyn(&[3, 5, 4, 7]), |i: IxDyn| {
            let i = i.slice();
            ((i[0] * 131 + i[1] * 31 + i[2] * 7 + i[3]) as f32 * 0.37).sin() * 1e3
        });
        for axes in [vec![0, 2, 3], vec![0, 3], vec![2, 3], vec![0], vec![0, 1]] {
            let len = x.len() / axes.iter().map(|&a| x.shape()[a]).product::<usize>();
            for op in ReduceOp::ALL {
                let (mut fast, mut slow) = (vec![0.0; len], vec![0.0; len]);
                assert!(reduce_in_place(op, &x.view(), &axes, &mut fast), "{axes:?}");
                reduce_rearranged(op, x.view(), &axes, &mut slow);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&fast), bits(&slow), "{op:?} over {axes:?}");
            }
        }
        // Kept axes that are not one block, or unsorted axes: the rearranging path.
        let mut out = vec![0.0; 5 * 7];
        assert!(!reduce_in_place(
            ReduceOp::Sum,
            &x.view(),
            &[0, 2],
            &mut out
        ));
        assert!(!reduce_in_place(
            ReduceOp::Sum,
            &x.view(),
            &[3, 2, 0],
            &mut [0.0; 5]
        ));
    }

    #[test]
    fn broadcast_binary_matches_ndarray_arithmetic() {
        let a = array(&[2, 1, 4]);
        let b = array(&[3, 1]);
        let mut out = ArrayD::zeros(IxDyn(&[2, 3, 4]));
        binary(BinaryOp::Sub, a.view(), b.view(), out.view_mut());
        assert_eq!(out, &a - &b);
    }
}
