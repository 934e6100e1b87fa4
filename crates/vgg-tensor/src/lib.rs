//! The `Backend` trait: opaque device tensors (NCHW, f32) and every op the VGG networks and their
//! autodiff need, each forward op with the backward kernels its gradient takes. Model, layers, tape
//! and benchmark are generic over it; `vgg-ndarray` (CPU) and `vgg-cuda` (GPU) implement it.
//!
//! Layouts: activations NCHW, convolution weights OIHW and linear weights [out, in], as torchvision's.

mod checks;
pub mod memory;
pub mod random;
mod shape;

use std::fmt;

pub use checks::{
    adam_corrections, argmax, check_argmax_rows, check_channel_bias, check_keep_prob, check_labels,
    check_reshape, check_row_bias, check_scalar, check_upload, matmul_dims, same_shape,
};
pub use shape::{window_len, Conv2dParams, ConvGeometry, Pool2dParams, PoolGeometry, Shape};

/// Why an op failed. Messages name the op and, for shape errors, both shapes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error("{op}: shapes do not match ({what}): {lhs} vs {rhs}")]
    ShapeMismatch {
        op: &'static str,
        what: &'static str,
        lhs: Shape,
        rhs: Shape,
    },
    #[error("{op}: expected a rank-{expected} tensor, got shape {shape}")]
    Rank {
        op: &'static str,
        expected: usize,
        shape: Shape,
    },
    #[error("{op}: {message}")]
    InvalidArgument { op: &'static str, message: String },
    #[error("shape {shape} has too many elements to address")]
    TooLarge { shape: Shape },
    #[error("out of device memory allocating {bytes} bytes")]
    OutOfMemory { bytes: u64 },
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("device error: {0}")]
    Device(String),
}

pub type Result<T, E = TensorError> = std::result::Result<T, E>;

/// ReLU of one value, as every backend computes it: negatives become 0 and NaN stays NaN (as in
/// PyTorch), so a NaN anywhere in a network shows in its output instead of vanishing.
/// (`f32::max(v, 0.0)` would return 0 for NaN.)
#[inline(always)]
pub fn relu(v: f32) -> f32 {
    if v < 0.0 {
        0.0
    } else {
        v
    }
}

/// Hyper-parameters of one Adam step (Kingma & Ba 2015).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// L2 penalty added to the gradient (as PyTorch's Adam does).
    pub weight_decay: f32,
    /// The step being taken, counting from 1 (for the bias corrections).
    pub step: u64,
}

/// A tensor living on some device. Cloning is cheap (the buffer is shared).
pub trait DeviceTensor: Clone + fmt::Debug + Send + Sync + 'static {
    fn shape(&self) -> &Shape;

    /// Bytes of the buffer this tensor views.
    fn bytes(&self) -> usize {
        self.shape().elements() * std::mem::size_of::<f32>()
    }
}

/// A compute device and its ops. Every op checks its operands' shapes and returns a typed error
/// instead of panicking. Ops never mutate their operands except `axpy`, which says so.
pub trait Backend: Clone + fmt::Debug + Send + Sync + 'static {
    type Tensor: DeviceTensor;
    /// Where each max-pool output came from, for the backward pass.
    type PoolIndices: Clone + fmt::Debug + Send + Sync + 'static;

    /// A human-readable description: "cpu (2 threads)", the GPU's name.
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
        memory::host_available_bytes()
    }

    /// Waits until all queued work is done (a no-op where ops are synchronous).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    // ---- transfers and creation ----

    fn upload(&self, shape: &Shape, data: &[f32]) -> Result<Self::Tensor>;
    fn download(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    fn full(&self, shape: &Shape, value: f32) -> Result<Self::Tensor>;

    fn zeros(&self, shape: &Shape) -> Result<Self::Tensor> {
        self.full(shape, 0.0)
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

    /// The same values under another shape of the same size, without copying.
    fn reshape(&self, t: &Self::Tensor, shape: &Shape) -> Result<Self::Tensor>;

    /// A scalar tensor's value.
    fn scalar_value(&self, t: &Self::Tensor) -> Result<f32> {
        if t.shape().elements() != 1 {
            return Err(TensorError::InvalidArgument {
                op: "scalar_value",
                message: format!("expected one element, got shape {}", t.shape()),
            });
        }
        Ok(self.download(t)?[0])
    }

    // ---- convolution (NCHW input, OIHW weight) ----

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

    /// Adds `b` ([C]) to every pixel of channel c of an NCHW tensor.
    fn add_channel_bias(&self, x: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;

    /// The gradient of `add_channel_bias` with respect to the bias: sums over N, H and W.
    fn channel_bias_grad(&self, dy: &Self::Tensor) -> Result<Self::Tensor>;

    /// The backward of the bias and ReLU of `conv2d_bias_act`: dz = dy where its output `y` is
    /// positive (dy itself without ReLU), and the bias gradient, dz summed over N, H and W.
    /// Backends fuse the two passes over dz where they can.
    fn bias_act_backward(
        &self,
        dy: &Self::Tensor,
        y: Option<&Self::Tensor>,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        let dz = match y {
            Some(y) => self.relu_backward(dy, y)?,
            None => dy.clone(),
        };
        let db = self.channel_bias_grad(&dz)?;
        Ok((dz, db))
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
        let y = self.add_channel_bias(&self.conv2d(x, w, p)?, b)?;
        if relu {
            self.relu(&y)
        } else {
            Ok(y)
        }
    }

    // ---- pooling ----

    /// Max-pool with floored output sizes; ties go to the first maximum in row-major order.
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

    // ---- matrices ----

    /// op(a) x op(b), where op transposes when its flag is set. Both rank 2.
    fn matmul(
        &self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        transpose_a: bool,
        transpose_b: bool,
    ) -> Result<Self::Tensor>;

    /// Adds `b` ([F]) to every row of an [N, F] tensor.
    fn add_row_bias(&self, x: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;

    /// Sums an [N, F] tensor over its rows: [F]. The gradient of `add_row_bias`.
    fn sum_rows(&self, x: &Self::Tensor) -> Result<Self::Tensor>;

    // ---- activations and losses ----

    fn relu(&self, x: &Self::Tensor) -> Result<Self::Tensor>;

    /// dy where the ReLU's output `y` is positive, else 0.
    fn relu_backward(&self, dy: &Self::Tensor, y: &Self::Tensor) -> Result<Self::Tensor>;

    /// Keeps each element with probability `keep_prob` (mask from `seed`), scaling kept ones by 1/keep_prob.
    fn dropout(&self, x: &Self::Tensor, keep_prob: f32, seed: u64) -> Result<Self::Tensor>;

    /// The same mask applied to the gradient; nothing is stored between the two.
    fn dropout_backward(
        &self,
        dy: &Self::Tensor,
        keep_prob: f32,
        seed: u64,
    ) -> Result<Self::Tensor>;

    /// Softmax over each row of an [N, F] tensor.
    fn softmax_rows(&self, x: &Self::Tensor) -> Result<Self::Tensor>;

    /// Gradient of `softmax_rows` given its output y: dx = y (dy - sum(dy y)) per row.
    fn softmax_rows_backward(&self, dy: &Self::Tensor, y: &Self::Tensor) -> Result<Self::Tensor>;

    /// Index of the largest value of each row (the first, on ties).
    fn argmax_rows(&self, x: &Self::Tensor) -> Result<Vec<usize>>;

    /// sum(x^2) / 2 as a scalar tensor (TensorFlow's l2_loss). Its gradient is x.
    fn l2_loss(&self, x: &Self::Tensor) -> Result<Self::Tensor>;

    /// Mean cross-entropy of [N, F] logits against class labels: (scalar loss, softmax probabilities).
    fn cross_entropy(
        &self,
        logits: &Self::Tensor,
        labels: &[usize],
    ) -> Result<(Self::Tensor, Self::Tensor)>;

    /// Gradient of the mean cross-entropy with respect to the logits: g (p - onehot) / N.
    fn cross_entropy_backward(
        &self,
        probs: &Self::Tensor,
        labels: &[usize],
        g: &Self::Tensor,
    ) -> Result<Self::Tensor>;

    // ---- elementwise ----

    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    fn sub(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    fn mul(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    fn scale(&self, x: &Self::Tensor, alpha: f32) -> Result<Self::Tensor>;

    /// y += alpha x, in place: gradient accumulation and optimiser steps.
    fn axpy(&self, y: &mut Self::Tensor, alpha: f32, x: &Self::Tensor) -> Result<()>;

    /// One SGD step in place: v = momentum v + g + weight_decay p; p -= lr v.
    fn sgd_step(
        &self,
        param: &mut Self::Tensor,
        velocity: &mut Self::Tensor,
        grad: &Self::Tensor,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    ) -> Result<()>;

    /// One Adam step in place: m and v are the first and second moment estimates.
    fn adam_step(
        &self,
        param: &mut Self::Tensor,
        m: &mut Self::Tensor,
        v: &mut Self::Tensor,
        grad: &Self::Tensor,
        hp: AdamParams,
    ) -> Result<()>;

    /// Sum of all elements as a scalar tensor.
    fn sum_all(&self, x: &Self::Tensor) -> Result<Self::Tensor>;

    /// A tensor of `shape` whose every element is the scalar `s`.
    fn broadcast_scalar(&self, s: &Self::Tensor, shape: &Shape) -> Result<Self::Tensor>;

    /// x times the scalar tensor `s`.
    fn mul_scalar(&self, x: &Self::Tensor, s: &Self::Tensor) -> Result<Self::Tensor>;
}
