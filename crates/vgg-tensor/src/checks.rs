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

/// Checks an [N, F] tensor against a bias of [F]; returns (N, F).
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

/// Checks an NCHW tensor against a bias of [C]; returns (N, C, H, W).
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
