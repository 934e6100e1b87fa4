//! Opaque device tensors (f32) and the backend traits: a small core of primitives a backend
//! implements (creation and transfer, elementwise functions with broadcasting, reductions over
//! axes, permutes, slices and joins, matrix products, convolution and pooling with their
//! gradients), and the composite ops every backend gets from them (`backend.rs`). Model, layers,
//! tape and benchmark are generic over [`Backend`]; `vgg-ndarray` (CPU) and `vgg-cuda` (GPU)
//! implement it with fused fast paths, and [`reference::ReferenceBackend`] with plain loops.
//!
//! Layouts: activations NCHW, convolution weights OIHW and linear weights [out, in], as torchvision's.

mod backend;
mod checks;
mod composite;
pub mod conformance;
mod conv_method;
pub mod fused;
pub mod memory;
pub mod ops;
pub mod random;
pub mod reference;
mod shape;

use std::fmt;

pub use backend::{Backend, Convolution, Device, Elementwise, Layout, Matmul, Pooling, Reduce};
pub use checks::{
    adam_corrections, argmax, broadcast_shapes, check_argmax_rows, check_axes, check_channel_bias,
    check_concat, check_download_into, check_keep_prob, check_labels, check_permutation,
    check_reshape, check_row_bias, check_scalar, check_slice, check_upload, matmul_dims,
    same_shape,
};
pub use conv_method::{ConvMethod, ConvPass};
pub use fused::Fused;
pub use ops::{BinaryOp, ReduceOp, UnaryOp};
pub use shape::{window_len, Conv2dParams, ConvGeometry, Pool2dParams, PoolGeometry, Shape};

/// Everything needed to call ops on a concrete backend: the traits (whose methods need them in
/// scope) and the op vocabularies. `use vgg_tensor::prelude::*;`
pub mod prelude {
    pub use crate::{
        AdamParams, Backend, BinaryOp, Conv2dParams, Convolution, Device, DeviceTensor,
        Elementwise, Fused, Layout, Matmul, Pool2dParams, Pooling, Reduce, ReduceOp, Shape,
        UnaryOp,
    };
}

/// Why an op failed. Messages name the op and, for shape errors, both shapes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error("{op}: shapes do not match ({what}): {lhs} vs {rhs}")]
    /// Two operands' shapes do not fit together.
    ShapeMismatch {
        /// The op.
        op: &'static str,
        /// Which dimensions disagree.
        what: &'static str,
        /// The first operand's shape.
        lhs: Shape,
        /// The second operand's shape.
        rhs: Shape,
    },
    #[error("{op}: expected a rank-{expected} tensor, got shape {shape}")]
    /// An operand has the wrong number of dimensions.
    Rank {
        /// The op.
        op: &'static str,
        /// The rank the op needs.
        expected: usize,
        /// The operand's shape.
        shape: Shape,
    },
    #[error("{op}: {message}")]
    /// An argument is out of range.
    InvalidArgument {
        /// The op.
        op: &'static str,
        /// What is wrong, in words.
        message: String,
    },
    #[error("shape {shape} has too many elements to address")]
    /// The tensor's element count overflows.
    TooLarge {
        /// The shape asked for.
        shape: Shape,
    },
    #[error("out of device memory allocating {bytes} bytes")]
    /// The device could not allocate the tensor.
    OutOfMemory {
        /// The bytes asked for.
        bytes: u64,
    },
    #[error("backend unavailable: {0}")]
    /// The backend cannot be used here (no driver, no GPU).
    Unavailable(String),
    #[error("device error: {0}")]
    /// The device failed at run time.
    Device(String),
}

/// Results of tensor operations.
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
    /// Learning rate.
    pub lr: f32,
    /// Decay of the first-moment estimate.
    pub beta1: f32,
    /// Decay of the second-moment estimate.
    pub beta2: f32,
    /// Added to the denominator for stability.
    pub eps: f32,
    /// L2 penalty added to the gradient (as PyTorch's Adam does).
    pub weight_decay: f32,
    /// The step being taken, counting from 1 (for the bias corrections).
    pub step: u64,
}

impl Default for AdamParams {
    /// PyTorch's defaults (lr 1e-3, betas 0.9 and 0.999, eps 1e-8, no weight decay), first step.
    fn default() -> Self {
        AdamParams {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            step: 1,
        }
    }
}

/// A tensor living on some device. Cloning is cheap (the buffer is shared).
pub trait DeviceTensor: Clone + fmt::Debug + Send + Sync + 'static {
    /// The tensor's shape.
    fn shape(&self) -> &Shape;

    /// Bytes of the buffer this tensor views.
    fn bytes(&self) -> usize {
        self.shape().elements() * std::mem::size_of::<f32>()
    }
}
