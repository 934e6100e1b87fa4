//! Reverse-mode automatic differentiation over any [`vgg_tensor::Backend`].
//!
//! A [`Tape`] records each op on tracked values (a Wengert list) together with a backward closure
//! that owns exactly what its gradient needs. [`Tape::backward`] walks the list once in reverse,
//! running and then dropping each closure, so saved activations are released as soon as their
//! backward step has run; it consumes the tape, so nothing of it is left afterwards.
//!
//! ```
//! use vgg_autodiff::Tape;
//! use vgg_ndarray::CpuBackend;
//! use vgg_tensor::prelude::*;
//!
//! let backend = CpuBackend::new(1).unwrap();
//! let tape = Tape::new(backend.clone());
//! let w = tape.param("w", backend.upload(&Shape::from([2]), &[3.0, -1.0]).unwrap());
//! let x = tape.constant(backend.upload(&Shape::from([2]), &[2.0, 5.0]).unwrap());
//! let loss = tape.sum(&tape.mul(&w, &x).unwrap()).unwrap(); // 3*2 - 1*5
//! let grads = tape.backward(&loss).unwrap();
//! assert_eq!(backend.download(&grads.get(&w).unwrap()).unwrap(), [2.0, 5.0]);
//! ```

/// The README's examples run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod check;
pub mod conformance;
mod custom;
mod ops;
pub mod recompute;
mod tap;
mod tape;

pub use check::{check_gradients, GradCheck, GradCheckReport};
pub use custom::CustomOp;
pub use ops::{inverse_std, BatchNormOutput, DeferredConv};
pub use recompute::{Recompute, Saved};
pub use tap::Tap;
pub use tape::{BackwardFn, BackwardStep, Gradients, Tape, Value, Var};

use vgg_tensor::{Shape, TensorError};

/// What can go wrong building or differentiating a computation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AutodiffError {
    #[error(transparent)]
    /// A backend op failed.
    Tensor(#[from] TensorError),
    #[error("backward needs a scalar loss, got shape {0}: reduce it first (sum, mean, l2_loss)")]
    /// `backward` was asked for the gradient of a non-scalar value.
    NotScalar(Shape),
    #[error(
        "{op}: a value from another tape (tape {found}, this is tape {expected}); build one computation on one tape"
    )]
    /// A value recorded on one tape was given to another.
    ForeignValue {
        /// The op that was given the value.
        op: &'static str,
        /// The tape the value belongs to.
        found: u64,
        /// The tape the op was recorded on.
        expected: u64,
    },
    #[error("the loss depends on no tracked value: register parameters with Tape::param on a recording tape")]
    /// The loss depends on no parameter or tracked input.
    LossUntracked,
    #[error("no gradient for {0}: it was not tracked (a constant, or a value from an inference-mode tape)")]
    /// A gradient was asked for a value the tape did not track.
    Untracked(String),
    #[error("{0} needs a recording tape (Tape::new or Tape::frozen), not an inference tape")]
    /// An op that exists only for backward was asked of a tape that does not record.
    NotRecording(&'static str),
    #[error("gradient check failed: {0}")]
    /// A gradient check found analytic and numeric gradients apart.
    GradientMismatch(String),
    #[error("the backward of {op} is wrong: {problem}")]
    /// A custom op's backward returned gradients of the wrong number or shape.
    BadBackward {
        /// The op's name.
        op: &'static str,
        /// What was wrong.
        problem: String,
    },
}

/// Results of tape operations.
pub type Result<T, E = AutodiffError> = std::result::Result<T, E>;
