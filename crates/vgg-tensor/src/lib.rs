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
pub mod memory;
pub mod ops;
pub mod random;
pub mod reference;
mod shape;

use std::fmt;

pub use backend::{Backend, Convolution, Device, Elementwise, Layout, Matmul, Pooling, Reduce};
pub use checks::{
    adam_corrections, argmax, broadcast_shapes, check_argmax_rows, check_axes, check_channel_bias,
    check_concat, check_keep_prob, check_labels, check_permutation, check_reshape, check_row_bias,
    check_scalar, check_slice, check_upload, matmul_dims, same_shape,
};
pub use ops::{BinaryOp, ReduceOp, UnaryOp};
pub use shape::{window_len, Conv2dParams, ConvGeometry, Pool2dParams, PoolGeometry, Shape};

/// Everything needed to call ops on a concrete backend: the traits (whose methods need them in
/// scope) and the op vocabularies. `use vgg_tensor::prelude::*;`
pub mod prelude {
    pub use crate::{
        Backend, BinaryOp, Convolution, Device, DeviceTensor, Elementwise, Layout, Matmul, Pooling,
        Reduce, ReduceOp, Shape, UnaryOp,
    };
}

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
