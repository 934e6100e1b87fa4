//! The composite ops, written in the primitives only: what `Backend`'s provided methods run on a
//! backend that does not override them. Each keeps the checks and error messages of the op it
//! implements, so every backend refuses the same operands the same way.

use crate::checks::{
    adam_corrections, argmax, check_argmax_rows, check_channel_bias, check_keep_prob, check_labels,
    check_row_bias, check_scalar, same_shape,
};
use crate::ops::{BinaryOp, ReduceOp, UnaryOp};
use crate::{AdamParams, Backend, Conv2dParams, DeviceTensor, Result, Shape, TensorError};

type T<B> = <B as crate::Device>::Tensor;

pub(crate) fn mul_scalar<B: Backend>(b: &B, x: &T<B>, s: &T<B>) -> Result<T<B>> {
    check_scalar("mul_scalar", s.shape())?;
    let s = b.reshape(s, &Shape::scalar())?;
    b.binary(BinaryOp::Mul, x, &s)
}

pub(crate) fn broadcast_scalar<B: Backend>(b: &B, s: &T<B>, shape: &Shape) -> Result<T<B>> {
    check_scalar("broadcast_scalar", s.shape())?;
    let s = b.reshape(s, &Shape::scalar())?;
    b.binary(BinaryOp::Add, &b.zeros(shape)?, &s)
}

pub(crate) fn axpy<B: Backend>(b: &B, y: &mut T<B>, alpha: f32, x: &T<B>) -> Result<()> {
    same_shape("axpy", y.shape(), x.shape())?;
    *y = b.add(y, &b.scale(x, alpha)?)?;
    Ok(())
}

pub(crate) fn sum_all<B: Backend>(b: &B, x: &T<B>) -> Result<T<B>> {
    let axes: Vec<usize> = (0..x.shape().rank()).collect();
    b.reshape(&b.reduce(ReduceOp::Sum, x, &axes)?, &Shape::scalar())
}

pub(crate) fn sum_to_shape<B: Backend>(b: &B, x: &T<B>, shape: &Shape) -> Result<T<B>> {
    let from = x.shape();
    let broadcast = crate::checks::broadcast_shapes("sum_to_shape", shape, from)?;
    if &broadcast != from {
        return Err(TensorError::ShapeMismatch {
            op: "sum_to_shape",
            what: "the target shape must broadcast to the tensor's",
            lhs: from.clone(),
            rhs: shape.clone(),
        });
    }
    let offset = from.rank() - shape.rank();
    let axes: Vec<usize> = (0..from.rank())
        .filter(|&i| i < offset || (shape.dims()[i - offset] == 1 && from.dims()[i] != 1))
        .collect();
    if axes.is_empty() && from == shape {
        return Ok(x.clone());
    }
    b.reshape(&b.reduce(ReduceOp::Sum, x, &axes)?, shape)
}

pub(crate) fn argmax_rows<B: Backend>(b: &B, x: &T<B>) -> Result<Vec<usize>> {
    let (_, f) = check_argmax_rows(x.shape())?;
    Ok(b.download(x)?.chunks(f).map(argmax).collect())
}

pub(crate) fn add_channel_bias<B: Backend>(b: &B, x: &T<B>, bias: &T<B>) -> Result<T<B>> {
    let (_, c, _, _) = check_channel_bias("add_channel_bias", x.shape(), bias.shape())?;
    b.add(x, &b.reshape(bias, &Shape::from([1, c, 1, 1]))?)
}

pub(crate) fn channel_bias_grad<B: Backend>(b: &B, dy: &T<B>) -> Result<T<B>> {
    let (_, c, _, _) = dy.shape().nchw("channel_bias_grad")?;
    b.reshape(&b.reduce(ReduceOp::Sum, dy, &[0, 2, 3])?, &Shape::from([c]))
}

pub(crate) fn add_row_bias<B: Backend>(b: &B, x: &T<B>, bias: &T<B>) -> Result<T<B>> {
    let (_, f) = check_row_bias("add_row_bias", x.shape(), bias.shape())?;
    b.add(x, &b.reshape(bias, &Shape::from([1, f]))?)
}

pub(crate) fn sum_rows<B: Backend>(b: &B, x: &T<B>) -> Result<T<B>> {
    let (_, f) = x.shape().matrix("sum_rows")?;
    b.reshape(&b.reduce(ReduceOp::Sum, x, &[0])?, &Shape::from([f]))
}

pub(crate) fn relu_backward<B: Backend>(b: &B, dy: &T<B>, y: &T<B>) -> Result<T<B>> {
    same_shape("relu_backward", dy.shape(), y.shape())?;
    let mask = b.binary(BinaryOp::Greater, y, &b.scalar(0.0)?)?;
    b.mul(dy, &mask)
}

pub(crate) fn conv2d_bias_act<B: Backend>(
    b: &B,
    x: &T<B>,
    w: &T<B>,
    bias: &T<B>,
    p: Conv2dParams,
    relu: bool,
) -> Result<T<B>> {
    let g = crate::ConvGeometry::new(x.shape(), w.shape(), p)?;
    g.check_bias("conv2d_bias_act", w.shape(), bias.shape())?;
    let y = b.add_channel_bias(&b.conv2d(x, w, p)?, bias)?;
    if relu {
        b.relu(&y)
    } else {
        Ok(y)
    }
}

pub(crate) fn bias_act_backward<B: Backend>(
    b: &B,
    dy: &T<B>,
    y: Option<&T<B>>,
) -> Result<(T<B>, T<B>)> {
    let dz = match y {
        Some(y) => b.relu_backward(dy, y)?,
        None => dy.clone(),
    };
    let db = b.channel_bias_grad(&dz)?;
    Ok((dz, db))
}

pub(crate) fn dropout<B: Backend>(b: &B, x: &T<B>, keep_prob: f32, seed: u64) -> Result<T<B>> {
    check_keep_prob("dropout", keep_prob)?;
    if keep_prob == 1.0 {
        return Ok(x.clone());
    }
    // Kept where uniform < keep_prob, as `random::dropout_keeps` decides it.
    let u = b.random_uniform(x.shape(), 0.0, 1.0, seed)?;
    let mask = b.binary(BinaryOp::Greater, &b.scalar(keep_prob)?, &u)?;
    b.scale(&b.mul(x, &mask)?, 1.0 / keep_prob)
}

/// (x - max, log(sum(exp(x - max)))) per row of [N, F]: the stable pieces of a log-softmax.
fn shifted_log_sum_exp<B: Backend>(b: &B, x: &T<B>) -> Result<(T<B>, T<B>)> {
    let max = b.reduce(ReduceOp::Max, x, &[1])?;
    let z = b.sub(x, &max)?;
    let log_sum = b.unary(
        UnaryOp::Log,
        &b.reduce(ReduceOp::Sum, &b.unary(UnaryOp::Exp, &z)?, &[1])?,
    )?;
    Ok((z, log_sum))
}

pub(crate) fn softmax_rows<B: Backend>(b: &B, x: &T<B>) -> Result<T<B>> {
    x.shape().matrix("softmax_rows")?;
    if x.shape().elements() == 0 {
        return Ok(x.clone());
    }
    let (z, log_sum) = shifted_log_sum_exp(b, x)?;
    b.unary(UnaryOp::Exp, &b.sub(&z, &log_sum)?)
}

pub(crate) fn softmax_rows_backward<B: Backend>(b: &B, dy: &T<B>, y: &T<B>) -> Result<T<B>> {
    same_shape("softmax_rows_backward", dy.shape(), y.shape())?;
    y.shape().matrix("softmax_rows_backward")?;
    let dot = b.reduce(ReduceOp::Sum, &b.mul(dy, y)?, &[1])?;
    b.mul(y, &b.sub(dy, &dot)?)
}

pub(crate) fn l2_loss<B: Backend>(b: &B, x: &T<B>) -> Result<T<B>> {
    b.scale(&b.sum_all(&b.unary(UnaryOp::Square, x)?)?, 0.5)
}

/// The labels as an [N, F] one-hot tensor.
fn one_hot<B: Backend>(b: &B, n: usize, f: usize, labels: &[usize]) -> Result<T<B>> {
    let mut host = vec![0.0f32; n * f];
    for (row, &label) in labels.iter().enumerate() {
        host[row * f + label] = 1.0;
    }
    b.upload(&Shape::from([n, f]), &host)
}

pub(crate) fn cross_entropy<B: Backend>(
    b: &B,
    logits: &T<B>,
    labels: &[usize],
) -> Result<(T<B>, T<B>)> {
    let (n, f) = check_labels("cross_entropy", logits.shape(), labels)?;
    let (z, log_sum) = shifted_log_sum_exp(b, logits)?;
    let log_probs = b.sub(&z, &log_sum)?;
    let picked = b.sum_all(&b.mul(&one_hot(b, n, f, labels)?, &log_probs)?)?;
    let loss = b.scale(&picked, -1.0 / n.max(1) as f32)?;
    Ok((loss, b.unary(UnaryOp::Exp, &log_probs)?))
}

pub(crate) fn cross_entropy_backward<B: Backend>(
    b: &B,
    probs: &T<B>,
    labels: &[usize],
    g: &T<B>,
) -> Result<T<B>> {
    let (n, f) = check_labels("cross_entropy_backward", probs.shape(), labels)?;
    check_scalar("cross_entropy_backward", g.shape())?;
    let per_row = b.scale(&b.reshape(g, &Shape::scalar())?, 1.0 / n.max(1) as f32)?;
    b.mul(&b.sub(probs, &one_hot(b, n, f, labels)?)?, &per_row)
}

pub(crate) fn sgd_step<B: Backend>(
    b: &B,
    param: &mut T<B>,
    velocity: &mut T<B>,
    grad: &T<B>,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
) -> Result<()> {
    same_shape("sgd_step", param.shape(), grad.shape())?;
    same_shape("sgd_step", velocity.shape(), grad.shape())?;
    let g = b.add(grad, &b.scale(param, weight_decay)?)?;
    *velocity = b.add(&b.scale(velocity, momentum)?, &g)?;
    *param = b.sub(param, &b.scale(velocity, lr)?)?;
    Ok(())
}

pub(crate) fn adam_step<B: Backend>(
    b: &B,
    param: &mut T<B>,
    m: &mut T<B>,
    v: &mut T<B>,
    grad: &T<B>,
    hp: AdamParams,
) -> Result<()> {
    for t in [param.shape(), m.shape(), v.shape()] {
        same_shape("adam_step", t, grad.shape())?;
    }
    let (correction1, correction2) = adam_corrections(&hp)?;
    let g = b.add(grad, &b.scale(param, hp.weight_decay)?)?;
    *m = b.add(&b.scale(m, hp.beta1)?, &b.scale(&g, 1.0 - hp.beta1)?)?;
    let g2 = b.unary(UnaryOp::Square, &g)?;
    *v = b.add(&b.scale(v, hp.beta2)?, &b.scale(&g2, 1.0 - hp.beta2)?)?;
    let m_hat = b.scale(m, 1.0 / correction1)?;
    let v_hat = b.scale(v, 1.0 / correction2)?;
    let denominator = b.add(&b.unary(UnaryOp::Sqrt, &v_hat)?, &b.scalar(hp.eps)?)?;
    *param = b.sub(param, &b.scale(&b.div(&m_hat, &denominator)?, hp.lr)?)?;
    Ok(())
}
