//! The composite ops, written in the primitives only: the default kernels of `Fused`, which run
//! where a backend has no fused kernel of its own. Their operands were checked by `Backend`'s
//! method of the same name (which also passes what the checks found: dimensions, geometry).

use crate::checks::argmax;
use crate::fused::{Nchw, Rows};
use crate::ops::{BinaryOp, ReduceOp, UnaryOp};
use crate::{AdamParams, Backend, ConvGeometry, DeviceTensor, Result, Shape, TensorError};

type T<B> = <B as crate::Device>::Tensor;

pub(crate) fn mul_scalar<B: Backend>(b: &B, x: &T<B>, s: &T<B>) -> Result<T<B>> {
    let s = b.reshape(s, &Shape::scalar())?;
    b.binary(BinaryOp::Mul, x, &s)
}

pub(crate) fn broadcast_scalar<B: Backend>(b: &B, s: &T<B>, shape: &Shape) -> Result<T<B>> {
    let s = b.reshape(s, &Shape::scalar())?;
    b.binary(BinaryOp::Add, &b.zeros(shape)?, &s)
}

pub(crate) fn axpy<B: Backend>(b: &B, y: &mut T<B>, alpha: f32, x: &T<B>) -> Result<()> {
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

pub(crate) fn argmax_rows<B: Backend>(b: &B, x: &T<B>, (_, f): Rows) -> Result<Vec<usize>> {
    Ok(b.download(x)?.chunks(f).map(argmax).collect())
}

pub(crate) fn add_channel_bias<B: Backend>(
    b: &B,
    x: &T<B>,
    bias: &T<B>,
    (_, c, _, _): Nchw,
) -> Result<T<B>> {
    b.add(x, &b.reshape(bias, &Shape::from([1, c, 1, 1]))?)
}

pub(crate) fn channel_affine<B: Backend>(
    b: &B,
    x: &T<B>,
    scale: &T<B>,
    shift: &T<B>,
    (_, c, _, _): Nchw,
) -> Result<T<B>> {
    let per_channel = Shape::from([1, c, 1, 1]);
    b.add(
        &b.mul(x, &b.reshape(scale, &per_channel)?)?,
        &b.reshape(shift, &per_channel)?,
    )
}

pub(crate) fn channel_bias_grad<B: Backend>(b: &B, dy: &T<B>, (_, c, _, _): Nchw) -> Result<T<B>> {
    b.reshape(&b.reduce(ReduceOp::Sum, dy, &[0, 2, 3])?, &Shape::from([c]))
}

pub(crate) fn add_row_bias<B: Backend>(b: &B, x: &T<B>, bias: &T<B>, (_, f): Rows) -> Result<T<B>> {
    b.add(x, &b.reshape(bias, &Shape::from([1, f]))?)
}

pub(crate) fn sum_rows<B: Backend>(b: &B, x: &T<B>, (_, f): Rows) -> Result<T<B>> {
    b.reshape(&b.reduce(ReduceOp::Sum, x, &[0])?, &Shape::from([f]))
}

pub(crate) fn relu_backward<B: Backend>(b: &B, dy: &T<B>, y: &T<B>) -> Result<T<B>> {
    let mask = b.binary(BinaryOp::Greater, y, &b.scalar(0.0)?)?;
    b.mul(dy, &mask)
}

pub(crate) fn conv2d_bias_act<B: Backend>(
    b: &B,
    x: &T<B>,
    w: &T<B>,
    bias: &T<B>,
    g: &ConvGeometry,
    relu: bool,
) -> Result<T<B>> {
    let dims = (g.batch, g.out_channels, g.out_h, g.out_w);
    let y = b.fused_add_channel_bias(&b.conv2d(x, w, g.params())?, bias, dims)?;
    if relu {
        b.fused_relu(&y)
    } else {
        Ok(y)
    }
}

pub(crate) fn bias_act_backward<B: Backend>(
    b: &B,
    dy: &T<B>,
    y: Option<&T<B>>,
    dims: Nchw,
) -> Result<(T<B>, T<B>)> {
    let dz = match y {
        Some(y) => b.fused_relu_backward(dy, y)?,
        None => dy.clone(),
    };
    let db = b.fused_channel_bias_grad(&dz, dims)?;
    Ok((dz, db))
}

pub(crate) fn dropout<B: Backend>(b: &B, x: &T<B>, keep_prob: f32, seed: u64) -> Result<T<B>> {
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

pub(crate) fn softmax_rows<B: Backend>(b: &B, x: &T<B>, _: Rows) -> Result<T<B>> {
    let (z, log_sum) = shifted_log_sum_exp(b, x)?;
    b.unary(UnaryOp::Exp, &b.sub(&z, &log_sum)?)
}

pub(crate) fn softmax_rows_backward<B: Backend>(
    b: &B,
    dy: &T<B>,
    y: &T<B>,
    _: Rows,
) -> Result<T<B>> {
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
    (n, f): Rows,
) -> Result<(T<B>, T<B>)> {
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
    (n, f): Rows,
) -> Result<T<B>> {
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
    (correction1, correction2): (f32, f32),
) -> Result<()> {
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
