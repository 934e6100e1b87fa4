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
    // Kept axes first, reduced ones last: each output is then one contiguous run of values.
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
    fn broadcast_binary_matches_ndarray_arithmetic() {
        let a = array(&[2, 1, 4]);
        let b = array(&[3, 1]);
        let mut out = ArrayD::zeros(IxDyn(&[2, 3, 4]));
        binary(BinaryOp::Sub, a.view(), b.view(), out.view_mut());
        assert_eq!(out, &a - &b);
    }
}
