//! The backend traits. A backend implements a small core of primitives, grouped by what they
//! hold, and gets every composite op from [`Backend`]'s provided methods, which check the
//! operands and run a [`Fused`] kernel: the backend's own where it has one, else the composite
//! of primitives (`composite.rs`).
//!
//! | trait | holds |
//! |---|---|
//! | [`Device`] | the tensor type, creation and transfer, device control |
//! | [`Elementwise`] | functions of one value and of two values with NumPy broadcasting |
//! | [`Reduce`] | sums, maxima and minima over chosen axes |
//! | [`Layout`] | permuting axes, slicing and joining along an axis |
//! | [`Matmul`] | matrix products |
//! | [`Convolution`] | 2-D convolution and its two gradients |
//! | [`Pooling`] | max- and average-pooling and their gradients |
//! | [`Fused`] | kernels for the composites, given checked operands: defaults compose the primitives |
//! | [`Backend`] | all of the above, and the composites (losses, bias and ReLU, dropout, optimiser steps), checked once |
//!
//! Every op checks its operands and returns a typed error instead of panicking; ops never mutate
//! their operands except the in-place updates (`axpy`, the optimiser steps), which say so.

use std::fmt;

use crate::checks::{
    adam_corrections, check_argmax_rows, check_channel_bias, check_keep_prob, check_labels,
    check_row_bias, check_scalar, same_shape,
};
use crate::fused::Fused;
use crate::ops::{BinaryOp, ReduceOp, UnaryOp};
use crate::{composite, random, AdamParams, Conv2dParams, ConvGeometry, Pool2dParams, Result};
use crate::{ConvMethod, ConvPass};
use crate::{DeviceTensor, Shape, TensorError};

/// A compute device: its tensor type, how tensors are made and moved, and device control.
pub trait Device: Clone + fmt::Debug + Send + Sync + 'static {
    /// The backend's tensor, which lives on its device.
    type Tensor: DeviceTensor;

    /// A human-readable description: "cpu (2 threads, AVX2)", the GPU's name.
    fn name(&self) -> String;

    /// Runs `f` where this backend's ops are cheapest to start: wrap loops of many ops (a training
    /// step, a benchmark) in it. The CPU backend runs `f` on its own worker threads, so its ops do
    /// not hand work across threads (6x faster on loops of small ops).
    fn execute<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    /// Memory free for this backend's tensors: the host's available memory by default, a GPU's
    /// free memory where tensors live there. None where it cannot be known. Callers check every
    /// size a user controls against it before allocating.
    fn available_bytes(&self) -> Option<u64> {
        crate::memory::host_available_bytes()
    }

    /// Waits until all queued work is done (a no-op where ops are synchronous).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// A tensor holding `data`, row-major.
    fn upload(&self, shape: &Shape, data: &[f32]) -> Result<Self::Tensor>;

    /// A tensor's values, row-major.
    fn download(&self, t: &Self::Tensor) -> Result<Vec<f32>>;

    /// A tensor's values, row-major, into `out`, which holds exactly its elements: for callers
    /// that reuse one host buffer step after step. By default through `download`.
    fn download_into(&self, t: &Self::Tensor, out: &mut [f32]) -> Result<()> {
        crate::check_download_into(t.shape(), out.len())?;
        out.copy_from_slice(&self.download(t)?);
        Ok(())
    }

    /// A tensor whose every element is `value`.
    fn full(&self, shape: &Shape, value: f32) -> Result<Self::Tensor>;

    /// The same values under another shape of the same size, without copying.
    fn reshape(&self, t: &Self::Tensor, shape: &Shape) -> Result<Self::Tensor>;

    /// A tensor of zeros.
    fn zeros(&self, shape: &Shape) -> Result<Self::Tensor> {
        self.full(shape, 0.0)
    }

    /// A rank-0 tensor.
    fn scalar(&self, value: f32) -> Result<Self::Tensor> {
        self.full(&Shape::scalar(), value)
    }

    /// Normal(mean, std) values; element i depends only on (seed, i).
    fn random_normal(&self, shape: &Shape, mean: f32, std: f32, seed: u64) -> Result<Self::Tensor> {
        let mut host = vec![0.0; shape.checked_elements()?];
        random::fill_normal(&mut host, seed, 0, mean, std);
        self.upload(shape, &host)
    }

    /// Uniform values on [low, high); element i depends only on (seed, i).
    fn random_uniform(
        &self,
        shape: &Shape,
        low: f32,
        high: f32,
        seed: u64,
    ) -> Result<Self::Tensor> {
        let mut host = vec![0.0; shape.checked_elements()?];
        random::fill_uniform(&mut host, seed, 0, low, high);
        self.upload(shape, &host)
    }

    /// A one-element tensor's value.
    fn scalar_value(&self, t: &Self::Tensor) -> Result<f32> {
        if t.shape().elements() != 1 {
            return Err(TensorError::InvalidArgument {
                op: "scalar_value",
                message: format!("expected one element, got shape {}", t.shape()),
            });
        }
        Ok(self.download(t)?[0])
    }
}

/// Elementwise functions.
pub trait Elementwise: Device {
    /// `op` of every element.
    fn unary(&self, op: UnaryOp, x: &Self::Tensor) -> Result<Self::Tensor>;

    /// `op` of the elements of `a` and `b`, broadcast against each other as NumPy does
    /// (`checks::broadcast_shapes`).
    fn binary(&self, op: BinaryOp, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
}

/// Reductions.
pub trait Reduce: Device {
    /// `op` over `axes`, which keep length 1 in the result (reshape to drop them). No axes: a
    /// copy.
    fn reduce(&self, op: ReduceOp, x: &Self::Tensor, axes: &[usize]) -> Result<Self::Tensor>;
}

/// Moving elements between positions.
pub trait Layout: Device {
    /// The axes reordered: axis i of the result is axis `perm[i]` of `x`.
    fn permute(&self, x: &Self::Tensor, perm: &[usize]) -> Result<Self::Tensor>;

    /// `len` elements from `start` along `axis`.
    fn slice(
        &self,
        x: &Self::Tensor,
        axis: usize,
        start: usize,
        len: usize,
    ) -> Result<Self::Tensor>;

    /// The tensors joined along `axis`, in order.
    fn concat(&self, xs: &[&Self::Tensor], axis: usize) -> Result<Self::Tensor>;
}

/// Matrix products.
pub trait Matmul: Device {
    /// op(a) x op(b), where op transposes when its flag is set. Both rank 2.
    fn matmul(
        &self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        transpose_a: bool,
        transpose_b: bool,
    ) -> Result<Self::Tensor>;

    /// `matmul` for a parameter's gradient (a linear layer's `dY^T X`), a result that lives to
    /// the end of the step: a backend may keep it apart from the step's short-lived buffers,
    /// whose free memory it would otherwise split. By default `matmul`.
    fn matmul_gradient(
        &self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        transpose_a: bool,
        transpose_b: bool,
    ) -> Result<Self::Tensor> {
        self.matmul(a, b, transpose_a, transpose_b)
    }
}

/// 2-D convolution (NCHW input, OIHW weight), any stride and padding.
pub trait Convolution: Device {
    /// Cross-correlation of NCHW `x` with OIHW `w` (no bias), as PyTorch's conv2d.
    fn conv2d(&self, x: &Self::Tensor, w: &Self::Tensor, p: Conv2dParams) -> Result<Self::Tensor>;

    /// Gradient with respect to the input, given the output gradient.
    fn conv2d_backward_input(
        &self,
        dy: &Self::Tensor,
        w: &Self::Tensor,
        input_shape: &Shape,
        p: Conv2dParams,
    ) -> Result<Self::Tensor>;

    /// Gradient with respect to the weight, given the input and the output gradient.
    fn conv2d_backward_weight(
        &self,
        x: &Self::Tensor,
        dy: &Self::Tensor,
        weight_shape: &Shape,
        p: Conv2dParams,
    ) -> Result<Self::Tensor>;

    /// The method this backend computes `pass` of the convolution `g` (its forward geometry)
    /// by, so that a benchmark can count the products executed; `Unreported` unless the backend
    /// says.
    fn conv_method(&self, g: &ConvGeometry, pass: ConvPass) -> ConvMethod {
        let _ = (g, pass);
        ConvMethod::Unreported
    }
}

/// 2-D pooling (NCHW, no padding, floored output sizes).
pub trait Pooling: Device {
    /// Where each max-pool output came from, for the backward pass.
    type PoolIndices: Clone + fmt::Debug + Send + Sync + 'static;

    /// Max-pool; ties go to the first maximum in row-major order, and NaN wins its window.
    fn max_pool2d(
        &self,
        x: &Self::Tensor,
        p: Pool2dParams,
    ) -> Result<(Self::Tensor, Self::PoolIndices)>;

    /// Routes each output gradient to the input that was the maximum.
    fn max_pool2d_backward(
        &self,
        dy: &Self::Tensor,
        indices: &Self::PoolIndices,
        input_shape: &Shape,
    ) -> Result<Self::Tensor>;

    /// Average of each window.
    fn avg_pool2d(&self, x: &Self::Tensor, p: Pool2dParams) -> Result<Self::Tensor>;

    /// Spreads each output gradient evenly over its window.
    fn avg_pool2d_backward(
        &self,
        dy: &Self::Tensor,
        input_shape: &Shape,
        p: Pool2dParams,
    ) -> Result<Self::Tensor>;
}

/// Every primitive, and every composite op. Model, layers, tape and benchmark are generic over
/// it. Its methods check their operands, once for every backend, and run the backend's [`Fused`]
/// kernel (a composite of primitives where the backend has none); backends do not override
/// them. A new backend implements the primitive traits and writes `impl Fused for MyBackend {}`
/// (overriding the kernels it has) and `impl Backend for MyBackend {}`;
/// `vgg_tensor::reference::ReferenceBackend` is such a backend.
pub trait Backend: Fused {
    // ---- arithmetic ----

    /// a + b, broadcast.
    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor> {
        if a.shape() == b.shape() {
            self.fused_add(a, b)
        } else {
            self.binary(BinaryOp::Add, a, b)
        }
    }

    /// a - b, broadcast.
    fn sub(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor> {
        if a.shape() == b.shape() {
            self.fused_sub(a, b)
        } else {
            self.binary(BinaryOp::Sub, a, b)
        }
    }

    /// a * b, broadcast.
    fn mul(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor> {
        if a.shape() == b.shape() {
            self.fused_mul(a, b)
        } else {
            self.binary(BinaryOp::Mul, a, b)
        }
    }

    /// a / b, broadcast.
    fn div(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor> {
        self.binary(BinaryOp::Div, a, b)
    }

    /// alpha x.
    fn scale(&self, x: &Self::Tensor, alpha: f32) -> Result<Self::Tensor> {
        self.fused_scale(x, alpha)
    }

    /// x times the one-element tensor `s`.
    fn mul_scalar(&self, x: &Self::Tensor, s: &Self::Tensor) -> Result<Self::Tensor> {
        check_scalar("mul_scalar", s.shape())?;
        self.fused_mul_scalar(x, s)
    }

    /// A tensor of `shape` whose every element is the one-element tensor `s`.
    fn broadcast_scalar(&self, s: &Self::Tensor, shape: &Shape) -> Result<Self::Tensor> {
        check_scalar("broadcast_scalar", s.shape())?;
        self.fused_broadcast_scalar(s, shape)
    }

    /// y += alpha x, in place: gradient accumulation.
    fn axpy(&self, y: &mut Self::Tensor, alpha: f32, x: &Self::Tensor) -> Result<()> {
        same_shape("axpy", y.shape(), x.shape())?;
        self.fused_axpy(y, alpha, x)
    }

    // ---- reductions ----

    /// Sum of all elements as a scalar tensor.
    fn sum_all(&self, x: &Self::Tensor) -> Result<Self::Tensor> {
        self.fused_sum_all(x)
    }

    /// `x` summed down to `shape`, which it broadcasts from: the gradient of a broadcast.
    fn sum_to_shape(&self, x: &Self::Tensor, shape: &Shape) -> Result<Self::Tensor> {
        composite::sum_to_shape(self, x, shape)
    }

    /// Index of the largest value of each row of [N, F] (the first, on ties; NaN never wins).
    fn argmax_rows(&self, x: &Self::Tensor) -> Result<Vec<usize>> {
        let dims = check_argmax_rows(x.shape())?;
        self.fused_argmax_rows(x, dims)
    }

    // ---- layers' pieces ----

    /// Adds `b` (`[C]`) to every pixel of channel c of an NCHW tensor.
    fn add_channel_bias(&self, x: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor> {
        let dims = check_channel_bias("add_channel_bias", x.shape(), b.shape())?;
        self.fused_add_channel_bias(x, b, dims)
    }

    /// The gradient of `add_channel_bias` with respect to the bias: sums over N, H and W.
    fn channel_bias_grad(&self, dy: &Self::Tensor) -> Result<Self::Tensor> {
        let dims = dy.shape().nchw("channel_bias_grad")?;
        self.fused_channel_bias_grad(dy, dims)
    }

    /// `x * scale[c] + shift[c]` for every pixel of channel c of an NCHW tensor (`[C]` each):
    /// batch normalisation's per-channel arithmetic.
    fn channel_affine(
        &self,
        x: &Self::Tensor,
        scale: &Self::Tensor,
        shift: &Self::Tensor,
    ) -> Result<Self::Tensor> {
        let dims = check_channel_bias("channel_affine", x.shape(), scale.shape())?;
        check_channel_bias("channel_affine", x.shape(), shift.shape())?;
        self.fused_channel_affine(x, scale, shift, dims)
    }

    /// Adds `b` (`[F]`) to every row of an [N, F] tensor.
    fn add_row_bias(&self, x: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor> {
        let dims = check_row_bias("add_row_bias", x.shape(), b.shape())?;
        self.fused_add_row_bias(x, b, dims)
    }

    /// Sums an [N, F] tensor over its rows: `[F]`. The gradient of `add_row_bias`.
    fn sum_rows(&self, x: &Self::Tensor) -> Result<Self::Tensor> {
        let dims = x.shape().matrix("sum_rows")?;
        self.fused_sum_rows(x, dims)
    }

    /// max(x, 0) elementwise; NaN stays NaN.
    fn relu(&self, x: &Self::Tensor) -> Result<Self::Tensor> {
        self.fused_relu(x)
    }

    /// dy where the ReLU's output `y` is positive, else 0.
    fn relu_backward(&self, dy: &Self::Tensor, y: &Self::Tensor) -> Result<Self::Tensor> {
        same_shape("relu_backward", dy.shape(), y.shape())?;
        self.fused_relu_backward(dy, y)
    }

    /// Convolution, bias and optional ReLU in one pass. Backends fuse it where they can.
    fn conv2d_bias_act(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        b: &Self::Tensor,
        p: Conv2dParams,
        relu: bool,
    ) -> Result<Self::Tensor> {
        let g = ConvGeometry::new(x.shape(), w.shape(), p)?;
        g.check_bias("conv2d_bias_act", w.shape(), b.shape())?;
        self.fused_conv2d_bias_act(x, w, b, &g, relu)
    }

    /// The backward of the bias and ReLU of `conv2d_bias_act`: dz = dy where its output `y` is
    /// positive (dy itself without ReLU), and the bias gradient, dz summed over N, H and W.
    /// Backends fuse the two passes over dz where they can.
    fn bias_act_backward(
        &self,
        dy: &Self::Tensor,
        y: Option<&Self::Tensor>,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        let dims = dy.shape().nchw("bias_act_backward")?;
        if let Some(y) = y {
            same_shape("bias_act_backward", dy.shape(), y.shape())?;
        }
        self.fused_bias_act_backward(dy, y, dims)
    }

    /// `bias_act_backward` with the ReLU, given its output `y` by value: a backend may write dz
    /// into y's storage where no other tensor shares it (an output recomputed for backward), one
    /// buffer fewer at the peak.
    fn bias_relu_backward_consuming(
        &self,
        dy: &Self::Tensor,
        y: Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        let dims = dy.shape().nchw("bias_act_backward")?;
        same_shape("bias_act_backward", dy.shape(), y.shape())?;
        self.fused_bias_relu_backward_consuming(dy, y, dims)
    }

    /// Keeps each element with probability `keep_prob` (mask from `seed`: element i is kept when
    /// uniform i of the stream is below `keep_prob`), scaling kept ones by 1/keep_prob.
    fn dropout(&self, x: &Self::Tensor, keep_prob: f32, seed: u64) -> Result<Self::Tensor> {
        check_keep_prob("dropout", keep_prob)?;
        if keep_prob == 1.0 {
            return Ok(x.clone());
        }
        self.fused_dropout(x, keep_prob, seed)
    }

    /// The same mask applied to the gradient; nothing is stored between the two.
    fn dropout_backward(
        &self,
        dy: &Self::Tensor,
        keep_prob: f32,
        seed: u64,
    ) -> Result<Self::Tensor> {
        // Dropout is linear in its input with a fixed mask, so its backward is itself.
        self.dropout(dy, keep_prob, seed)
    }

    // ---- probabilities and losses ----

    /// Softmax over each row of an [N, F] tensor.
    fn softmax_rows(&self, x: &Self::Tensor) -> Result<Self::Tensor> {
        let dims = x.shape().matrix("softmax_rows")?;
        if x.shape().elements() == 0 {
            return Ok(x.clone());
        }
        self.fused_softmax_rows(x, dims)
    }

    /// Gradient of `softmax_rows` given its output y: dx = y (dy - sum(dy y)) per row.
    fn softmax_rows_backward(&self, dy: &Self::Tensor, y: &Self::Tensor) -> Result<Self::Tensor> {
        same_shape("softmax_rows_backward", dy.shape(), y.shape())?;
        let dims = y.shape().matrix("softmax_rows_backward")?;
        self.fused_softmax_rows_backward(dy, y, dims)
    }

    /// sum(x^2) / 2 as a scalar tensor (TensorFlow's l2_loss). Its gradient is x.
    fn l2_loss(&self, x: &Self::Tensor) -> Result<Self::Tensor> {
        self.fused_l2_loss(x)
    }

    /// Mean cross-entropy of [N, F] logits against class labels: (scalar loss, softmax probabilities).
    fn cross_entropy(
        &self,
        logits: &Self::Tensor,
        labels: &[usize],
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        let dims = check_labels("cross_entropy", logits.shape(), labels)?;
        self.fused_cross_entropy(logits, labels, dims)
    }

    /// Gradient of the mean cross-entropy with respect to the logits: g (p - onehot) / N.
    fn cross_entropy_backward(
        &self,
        probs: &Self::Tensor,
        labels: &[usize],
        g: &Self::Tensor,
    ) -> Result<Self::Tensor> {
        let dims = check_labels("cross_entropy_backward", probs.shape(), labels)?;
        check_scalar("cross_entropy_backward", g.shape())?;
        self.fused_cross_entropy_backward(probs, labels, g, dims)
    }

    // ---- optimiser steps (in place) ----

    /// One SGD step in place: v = momentum v + g + weight_decay p; p -= lr v.
    fn sgd_step(
        &self,
        param: &mut Self::Tensor,
        velocity: &mut Self::Tensor,
        grad: &Self::Tensor,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    ) -> Result<()> {
        same_shape("sgd_step", param.shape(), grad.shape())?;
        same_shape("sgd_step", velocity.shape(), grad.shape())?;
        self.fused_sgd_step(param, velocity, grad, lr, momentum, weight_decay)
    }

    /// One Adam step in place: m and v are the first and second moment estimates.
    fn adam_step(
        &self,
        param: &mut Self::Tensor,
        m: &mut Self::Tensor,
        v: &mut Self::Tensor,
        grad: &Self::Tensor,
        hp: AdamParams,
    ) -> Result<()> {
        for t in [param.shape(), m.shape(), v.shape()] {
            same_shape("adam_step", t, grad.shape())?;
        }
        let corrections = adam_corrections(&hp)?;
        self.fused_adam_step(param, m, v, grad, hp, corrections)
    }
}
