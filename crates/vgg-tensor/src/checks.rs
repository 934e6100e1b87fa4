//! Operand checks shared by every backend, so each op rejects the same inputs with the same
//! message whichever device runs it.

use crate::{AdamParams, Result, Shape, TensorError};

/// Fails with both shapes unless `a` and `b` are equal.
pub fn same_shape(op: &'static str, a: &Shape, b: &Shape) -> Result<()> {
    if a == b {
        Ok(())
    } else {
        Err(TensorError::ShapeMismatch {
            op,
            what: "operands must have the same shape",
            lhs: a.clone(),
            rhs: b.clone(),
        })
    }
}

/// Checks that `t` holds exactly one element.
pub fn check_scalar(op: &'static str, t: &Shape) -> Result<()> {
    if t.elements() == 1 {
        Ok(())
    } else {
        Err(TensorError::InvalidArgument {
            op,
            message: format!("expected a scalar, got shape {t}"),
        })
    }
}

/// Checks class labels against an [N, F] logits shape.
pub fn check_labels(op: &'static str, logits: &Shape, labels: &[usize]) -> Result<(usize, usize)> {
    let (n, f) = logits.matrix(op)?;
    if labels.len() != n {
        return Err(TensorError::InvalidArgument {
            op,
            message: format!("{} labels for {n} rows of logits {logits}", labels.len()),
        });
    }
    if let Some(&bad) = labels.iter().find(|&&l| l >= f) {
        return Err(TensorError::InvalidArgument {
            op,
            message: format!("label {bad} is out of range for {f} classes"),
        });
    }
    Ok((n, f))
}

/// Host data for `upload` must fill the shape exactly; returns the element count.
pub fn check_upload(shape: &Shape, values: usize) -> Result<usize> {
    let n = shape.checked_elements()?;
    if n != values {
        return Err(TensorError::InvalidArgument {
            op: "upload",
            message: format!("{values} values given for shape {shape}, which holds {n}"),
        });
    }
    Ok(n)
}

/// A host buffer for `download_into` must hold the tensor exactly.
pub fn check_download_into(shape: &Shape, len: usize) -> Result<()> {
    if shape.elements() != len {
        return Err(TensorError::InvalidArgument {
            op: "download_into",
            message: format!("a buffer of {len} elements for a tensor of shape {shape}"),
        });
    }
    Ok(())
}

/// `reshape` keeps the element count.
pub fn check_reshape(from: &Shape, to: &Shape) -> Result<()> {
    if to.checked_elements()? != from.elements() {
        return Err(TensorError::ShapeMismatch {
            op: "reshape",
            what: "the new shape must hold as many elements",
            lhs: from.clone(),
            rhs: to.clone(),
        });
    }
    Ok(())
}

/// `argmax_rows` needs rows of at least one element; returns (rows, row length).
pub fn check_argmax_rows(x: &Shape) -> Result<(usize, usize)> {
    let (n, f) = x.matrix("argmax_rows")?;
    if f == 0 {
        return Err(TensorError::InvalidArgument {
            op: "argmax_rows",
            message: format!("rows of {x} are empty"),
        });
    }
    Ok((n, f))
}

/// Dropout's keep probability must lie in (0, 1].
pub fn check_keep_prob(op: &'static str, keep_prob: f32) -> Result<()> {
    if keep_prob > 0.0 && keep_prob <= 1.0 {
        Ok(())
    } else {
        Err(TensorError::InvalidArgument {
            op,
            message: format!("keep_prob {keep_prob} must be in (0, 1]"),
        })
    }
}

/// Checks an [N, F] tensor against a bias of `[F]`; returns (N, F).
pub fn check_row_bias(op: &'static str, x: &Shape, b: &Shape) -> Result<(usize, usize)> {
    let (n, f) = x.matrix(op)?;
    if b.dims() != [f] {
        return Err(TensorError::ShapeMismatch {
            op,
            what: "bias must be [features]",
            lhs: x.clone(),
            rhs: b.clone(),
        });
    }
    Ok((n, f))
}

/// Checks an NCHW tensor against a bias of `[C]`; returns (N, C, H, W).
pub fn check_channel_bias(
    op: &'static str,
    x: &Shape,
    b: &Shape,
) -> Result<(usize, usize, usize, usize)> {
    let (n, c, h, w) = x.nchw(op)?;
    if b.dims() != [c] {
        return Err(TensorError::ShapeMismatch {
            op,
            what: "bias must be [channels]",
            lhs: x.clone(),
            rhs: b.clone(),
        });
    }
    Ok((n, c, h, w))
}

/// (m, n, k) of op(a) x op(b), where op transposes when its flag is set.
pub fn matmul_dims(
    a: &Shape,
    b: &Shape,
    transpose_a: bool,
    transpose_b: bool,
) -> Result<(usize, usize, usize)> {
    let (ar, ac) = a.matrix("matmul")?;
    let (br, bc) = b.matrix("matmul")?;
    let (m, k) = if transpose_a { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if transpose_b { (bc, br) } else { (br, bc) };
    if k != k2 {
        return Err(TensorError::ShapeMismatch {
            op: "matmul",
            what: "inner dimensions (after the transpose flags) differ",
            lhs: a.clone(),
            rhs: b.clone(),
        });
    }
    Ok((m, n, k))
}

/// Adam's bias corrections (1 - beta1^t, 1 - beta2^t); steps count from 1.
pub fn adam_corrections(hp: &AdamParams) -> Result<(f32, f32)> {
    if hp.step == 0 {
        return Err(TensorError::InvalidArgument {
            op: "adam_step",
            message: "steps count from 1".into(),
        });
    }
    let t = hp.step.min(i32::MAX as u64) as i32;
    Ok((1.0 - hp.beta1.powi(t), 1.0 - hp.beta2.powi(t)))
}

/// Index of the first largest value of a row (NaNs never win), as `argmax_rows` defines it.
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// NumPy broadcasting: the shapes aligned at their last dimension, each pair equal or one of
/// them 1. Returns the result's shape.
pub fn broadcast_shapes(op: &'static str, a: &Shape, b: &Shape) -> Result<Shape> {
    let rank = a.rank().max(b.rank());
    let dim = |s: &Shape, i: usize| {
        let offset = rank - s.rank();
        if i < offset {
            1
        } else {
            s.dims()[i - offset]
        }
    };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(TensorError::ShapeMismatch {
                op,
                what: "shapes do not broadcast (each dimension, from the last, must be equal or 1)",
                lhs: a.clone(),
                rhs: b.clone(),
            }),
        })
        .collect::<Result<Vec<_>>>()
        .map(Shape::from)
}

/// Checks reduction axes (each in range, none twice); returns the shape with them set to 1.
pub fn check_axes(op: &'static str, shape: &Shape, axes: &[usize]) -> Result<Shape> {
    let mut dims = shape.dims().to_vec();
    let mut seen = vec![false; dims.len()];
    for &a in axes {
        if a >= dims.len() || seen[a] {
            return Err(TensorError::InvalidArgument {
                op,
                message: format!(
                    "axes {axes:?} are not distinct axes of a rank-{} tensor {shape}",
                    dims.len()
                ),
            });
        }
        seen[a] = true;
        dims[a] = 1;
    }
    Ok(Shape::from(dims))
}

/// Checks a permutation of a shape's axes; returns the permuted shape.
pub fn check_permutation(op: &'static str, shape: &Shape, perm: &[usize]) -> Result<Shape> {
    let mut seen = vec![false; shape.rank()];
    let ok = perm.len() == shape.rank()
        && perm
            .iter()
            .all(|&p| p < seen.len() && !std::mem::replace(&mut seen[p], true));
    if !ok {
        return Err(TensorError::InvalidArgument {
            op,
            message: format!("{perm:?} is not a permutation of the axes of {shape}"),
        });
    }
    Ok(Shape::from(
        perm.iter().map(|&p| shape.dims()[p]).collect::<Vec<_>>(),
    ))
}

/// Checks `len` elements from `start` along `axis`; returns the slice's shape.
pub fn check_slice(
    op: &'static str,
    shape: &Shape,
    axis: usize,
    start: usize,
    len: usize,
) -> Result<Shape> {
    let fits = axis < shape.rank()
        && start
            .checked_add(len)
            .is_some_and(|end| end <= shape.dims()[axis]);
    if !fits {
        return Err(TensorError::InvalidArgument {
            op,
            message: format!("{len} elements from {start} along axis {axis} do not fit {shape}"),
        });
    }
    let mut dims = shape.dims().to_vec();
    dims[axis] = len;
    Ok(Shape::from(dims))
}

/// Checks tensors to join along `axis` (same rank, every other dimension equal); returns the
/// joined shape.
pub fn check_concat(op: &'static str, shapes: &[&Shape], axis: usize) -> Result<Shape> {
    let Some(first) = shapes.first() else {
        return Err(TensorError::InvalidArgument {
            op,
            message: "nothing to join".into(),
        });
    };
    if axis >= first.rank() {
        return Err(TensorError::InvalidArgument {
            op,
            message: format!("axis {axis} is out of range for {first}"),
        });
    }
    let mut dims = first.dims().to_vec();
    for s in &shapes[1..] {
        let same_elsewhere = s.rank() == first.rank()
            && (0..first.rank()).all(|i| i == axis || s.dims()[i] == first.dims()[i]);
        if !same_elsewhere {
            return Err(TensorError::ShapeMismatch {
                op,
                what: "tensors to join must match in every other dimension",
                lhs: (*first).clone(),
                rhs: (*s).clone(),
            });
        }
        dims[axis] =
            dims[axis]
                .checked_add(s.dims()[axis])
                .ok_or_else(|| TensorError::TooLarge {
                    shape: (*s).clone(),
                })?;
    }
    Ok(Shape::from(dims))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(d: &[usize]) -> Shape {
        Shape::from(d)
    }

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(
            broadcast_shapes("t", &s(&[2, 3]), &s(&[3])).unwrap(),
            s(&[2, 3])
        );
        assert_eq!(
            broadcast_shapes("t", &s(&[4, 1, 5]), &s(&[3, 1])).unwrap(),
            s(&[4, 3, 5])
        );
        assert_eq!(
            broadcast_shapes("t", &s(&[]), &s(&[2, 2])).unwrap(),
            s(&[2, 2])
        );
        let e = broadcast_shapes("t", &s(&[2, 3]), &s(&[2]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[2, 3]") && e.contains("[2]") && e.contains("broadcast"),
            "{e}"
        );
    }

    #[test]
    fn axes_permutations_slices_and_joins_are_checked() {
        assert_eq!(
            check_axes("t", &s(&[2, 3, 4]), &[0, 2]).unwrap(),
            s(&[1, 3, 1])
        );
        assert!(check_axes("t", &s(&[2, 3]), &[1, 1]).is_err());
        assert!(check_axes("t", &s(&[2, 3]), &[2]).is_err());
        assert_eq!(
            check_permutation("t", &s(&[2, 3, 4]), &[2, 0, 1]).unwrap(),
            s(&[4, 2, 3])
        );
        assert!(check_permutation("t", &s(&[2, 3]), &[0, 0]).is_err());
        assert!(check_permutation("t", &s(&[2, 3]), &[0]).is_err());
        assert_eq!(check_slice("t", &s(&[5, 4]), 0, 1, 3).unwrap(), s(&[3, 4]));
        assert!(check_slice("t", &s(&[5, 4]), 0, 3, 3).is_err());
        assert!(check_slice("t", &s(&[5, 4]), 0, usize::MAX, 2).is_err());
        assert_eq!(
            check_concat("t", &[&s(&[2, 3]), &s(&[2, 5])], 1).unwrap(),
            s(&[2, 8])
        );
        assert!(check_concat("t", &[&s(&[2, 3]), &s(&[3, 3])], 1).is_err());
        assert!(check_concat("t", &[], 0).is_err());
    }

    #[test]
    fn labels_and_matmul_dims() {
        assert_eq!(check_labels("t", &s(&[2, 3]), &[0, 2]).unwrap(), (2, 3));
        assert!(check_labels("t", &s(&[2, 3]), &[0, 3]).is_err());
        assert!(check_labels("t", &s(&[2, 3]), &[0]).is_err());
        assert_eq!(
            matmul_dims(&s(&[2, 3]), &s(&[4, 3]), false, true).unwrap(),
            (2, 4, 3)
        );
        assert!(matmul_dims(&s(&[2, 3]), &s(&[4, 3]), false, false).is_err());
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f32::NAN]), 1);
    }
}
