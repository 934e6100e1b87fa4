//! The kernels a backend may compute in one pass instead of composing primitives. [`Backend`]'s
//! method of the same name without `fused_` checks the operands, once for every backend, then
//! calls the kernel here with what the checks found (dimensions, a convolution's geometry); the
//! defaults compose the primitives (`composite.rs`). A backend overrides the kernels it has:
//!
//! ```ignore
//! impl Fused for MyBackend {
//!     fn fused_relu(&self, x: &MyTensor) -> Result<MyTensor> { /* one pass */ }
//! }
//! impl Backend for MyBackend {}
//! ```
//!
//! A backend that wraps another with the same tensor type (a tracer, a counter) keeps the inner
//! backend's kernels with one line, `vgg_tensor::forward_fused!(inner);` inside its `impl Fused`,
//! where `inner` is the field holding the wrapped backend.

use crate::backend::{Backend, Convolution, Device, Elementwise, Layout, Matmul, Pooling, Reduce};
use crate::{composite, AdamParams, BinaryOp, ConvGeometry, Result, Shape};

type T<B> = <B as Device>::Tensor;

/// (rows, columns) of a checked matrix.
pub type Rows = (usize, usize);
/// (batch, channels, height, width) of a checked NCHW tensor.
pub type Nchw = (usize, usize, usize, usize);

/// Kernels for composite ops, each given operands its [`Backend`] method has checked. The
/// defaults compose primitives; a backend overrides those it computes in one pass.
pub trait Fused: Device + Elementwise + Reduce + Layout + Matmul + Convolution + Pooling {
    /// a + b, of the same shape.
    fn fused_add(&self, a: &T<Self>, b: &T<Self>) -> Result<T<Self>>
    where
        Self: Backend,
    {
        self.binary(BinaryOp::Add, a, b)
    }

    /// a - b, of the same shape.
    fn fused_sub(&self, a: &T<Self>, b: &T<Self>) -> Result<T<Self>>
    where
        Self: Backend,
    {
        self.binary(BinaryOp::Sub, a, b)
    }

    /// a * b, of the same shape.
    fn fused_mul(&self, a: &T<Self>, b: &T<Self>) -> Result<T<Self>>
    where
        Self: Backend,
    {
        self.binary(BinaryOp::Mul, a, b)
    }

    /// alpha x.
    fn fused_scale(&self, x: &T<Self>, alpha: f32) -> Result<T<Self>>
    where
        Self: Backend,
    {
        self.binary(BinaryOp::Mul, x, &self.scalar(alpha)?)
    }

    /// x times the one-element `s`.
    fn fused_mul_scalar(&self, x: &T<Self>, s: &T<Self>) -> Result<T<Self>>
    where
        Self: Backend,
    {
        composite::mul_scalar(self, x, s)
    }

    /// A tensor of `shape` filled with the one-element `s`.
    fn fused_broadcast_scalar(&self, s: &T<Self>, shape: &Shape) -> Result<T<Self>>
    where
        Self: Backend,
    {
        composite::broadcast_scalar(self, s, shape)
    }

    /// y += alpha x, in place; same shapes.
    fn fused_axpy(&self, y: &mut T<Self>, alpha: f32, x: &T<Self>) -> Result<()>
    where
        Self: Backend,
    {
        composite::axpy(self, y, alpha, x)
    }

    /// Sum of all elements, as a scalar.
    fn fused_sum_all(&self, x: &T<Self>) -> Result<T<Self>>
    where
        Self: Backend,
    {
        composite::sum_all(self, x)
    }

    /// The first maximum's column in each row of a matrix with `dims.1 > 0` columns.
    fn fused_argmax_rows(&self, x: &T<Self>, dims: Rows) -> Result<Vec<usize>>
    where
        Self: Backend,
    {
        composite::argmax_rows(self, x, dims)
    }

    /// NCHW `x` plus the `[C]` bias per channel.
    fn fused_add_channel_bias(&self, x: &T<Self>, b: &T<Self>, dims: Nchw) -> Result<T<Self>>
    where
        Self: Backend,
    {
        composite::add_channel_bias(self, x, b, dims)
    }

    /// NCHW `x` times `scale` plus `shift` per channel (`[C]` each).
    fn fused_channel_affine(
        &self,
        x: &T<Self>,
        scale: &T<Self>,
        shift: &T<Self>,
        dims: Nchw,
    ) -> Result<T<Self>>
    where
        Self: Backend,
    {
        composite::channel_affine(self, x, scale, shift, dims)
    }

    /// NCHW `dy` summed over N, H and W.
    fn fused_channel_bias_grad(&self, dy: &T<Self>, dims: Nchw) -> Result<T<Self>>
    where
        Self: Backend,
    {
        composite::channel_bias_grad(self, dy, dims)
    }

    /// A matrix plus the `[F]` bias per row.
    fn fused_add_row_bias(&self, x: &T<Self>, b: &T<Self>, dims: Rows) -> Result<T<Self>>
    where
        Self: Backend,
    {
        composite::add_row_bias(self, x, b, dims)
    }

    /// A matrix summed over its rows.
    fn fused_sum_rows(&self, x: &T<Self>, dims: Rows) -> Result<T<Self>>
    where
        Self: Backend,
    {
        composite::sum_rows(self, x, dims)
    }

    /// max(x, 0); NaN stays NaN.
    fn fused_relu(&self, x: &T<Self>) -> Result<T<Self>>
    where
        Self: Backend,
    {
        self.unary(crate::UnaryOp::Relu, x)
    }

    /// dy where `y` > 0, else 0; same shapes.
    fn fused_relu_backward(&self, dy: &T<Self>, y: &T<Self>) -> Result<T<Self>>
    where
        Self: Backend,
    {
        composite::relu_backward(self, dy, y)
    }

    /// Convolution of checked geometry `g` (its stride and padding: `g.params()`), bias and
    /// optional ReLU.
    fn fused_conv2d_bias_act(
        &self,
        x: &T<Self>,
        w: &T<Self>,
        b: &T<Self>,
        g: &ConvGeometry,
        relu: bool,
    ) -> Result<T<Self>>
    where
        Self: Backend,
    {
        composite::conv2d_bias_act(self, x, w, b, g, relu)
    }

    /// (dz, bias gradient) for NCHW `dy` and, with the ReLU, its output `y` of the same shape.
    fn fused_bias_act_backward(
        &self,
        dy: &T<Self>,
        y: Option<&T<Self>>,
        dims: Nchw,
    ) -> Result<(T<Self>, T<Self>)>
    where
        Self: Backend,
    {
        composite::bias_act_backward(self, dy, y, dims)
    }

    /// `fused_bias_act_backward` with the ReLU's output given by value, for a backend to write
    /// dz into where nothing else shares it.
    fn fused_bias_relu_backward_consuming(
        &self,
        dy: &T<Self>,
        y: T<Self>,
        dims: Nchw,
    ) -> Result<(T<Self>, T<Self>)>
    where
        Self: Backend,
    {
        self.fused_bias_act_backward(dy, Some(&y), dims)
    }

    /// Dropout with `0 < keep_prob < 1`.
    fn fused_dropout(&self, x: &T<Self>, keep_prob: f32, seed: u64) -> Result<T<Self>>
    where
        Self: Backend,
    {
        composite::dropout(self, x, keep_prob, seed)
    }

    /// Softmax over each row of a matrix with at least one element.
    fn fused_softmax_rows(&self, x: &T<Self>, dims: Rows) -> Result<T<Self>>
    where
        Self: Backend,
    {
        composite::softmax_rows(self, x, dims)
    }

    /// The gradient of `softmax_rows` given its output `y`; same shapes.
    fn fused_softmax_rows_backward(&self, dy: &T<Self>, y: &T<Self>, dims: Rows) -> Result<T<Self>>
    where
        Self: Backend,
    {
        composite::softmax_rows_backward(self, dy, y, dims)
    }

    /// sum(x^2) / 2.
    fn fused_l2_loss(&self, x: &T<Self>) -> Result<T<Self>>
    where
        Self: Backend,
    {
        composite::l2_loss(self, x)
    }

    /// Mean cross-entropy and the softmax, labels checked against the logits.
    fn fused_cross_entropy(
        &self,
        logits: &T<Self>,
        labels: &[usize],
        dims: Rows,
    ) -> Result<(T<Self>, T<Self>)>
    where
        Self: Backend,
    {
        composite::cross_entropy(self, logits, labels, dims)
    }

    /// g (p - onehot) / N, labels checked and `g` one element.
    fn fused_cross_entropy_backward(
        &self,
        probs: &T<Self>,
        labels: &[usize],
        g: &T<Self>,
        dims: Rows,
    ) -> Result<T<Self>>
    where
        Self: Backend,
    {
        composite::cross_entropy_backward(self, probs, labels, g, dims)
    }

    /// One SGD step in place; same shapes.
    fn fused_sgd_step(
        &self,
        param: &mut T<Self>,
        velocity: &mut T<Self>,
        grad: &T<Self>,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    ) -> Result<()>
    where
        Self: Backend,
    {
        composite::sgd_step(self, param, velocity, grad, lr, momentum, weight_decay)
    }

    /// One Adam step in place; same shapes, bias corrections (1 - beta1^t, 1 - beta2^t) given.
    fn fused_adam_step(
        &self,
        param: &mut T<Self>,
        m: &mut T<Self>,
        v: &mut T<Self>,
        grad: &T<Self>,
        hp: AdamParams,
        corrections: (f32, f32),
    ) -> Result<()>
    where
        Self: Backend,
    {
        composite::adam_step(self, param, m, v, grad, hp, corrections)
    }
}

/// Inside `impl Fused for Wrapper`, forwards every kernel to the backend in field `$inner`, whose
/// tensor type the wrapper shares: a wrapping backend keeps the fused kernels of the one it wraps.
#[macro_export]
macro_rules! forward_fused {
    ($inner:ident) => {
        $crate::forward_fused!(@each $inner;
            fused_add(a: &Self::Tensor, b: &Self::Tensor) -> Self::Tensor;
            fused_sub(a: &Self::Tensor, b: &Self::Tensor) -> Self::Tensor;
            fused_mul(a: &Self::Tensor, b: &Self::Tensor) -> Self::Tensor;
            fused_scale(x: &Self::Tensor, alpha: f32) -> Self::Tensor;
            fused_mul_scalar(x: &Self::Tensor, s: &Self::Tensor) -> Self::Tensor;
            fused_broadcast_scalar(s: &Self::Tensor, shape: &$crate::Shape) -> Self::Tensor;
            fused_axpy(y: &mut Self::Tensor, alpha: f32, x: &Self::Tensor) -> ();
            fused_sum_all(x: &Self::Tensor) -> Self::Tensor;
            fused_argmax_rows(x: &Self::Tensor, dims: $crate::fused::Rows) -> Vec<usize>;
            fused_add_channel_bias(x: &Self::Tensor, b: &Self::Tensor, dims: $crate::fused::Nchw) -> Self::Tensor;
            fused_channel_bias_grad(dy: &Self::Tensor, dims: $crate::fused::Nchw) -> Self::Tensor;
            fused_add_row_bias(x: &Self::Tensor, b: &Self::Tensor, dims: $crate::fused::Rows) -> Self::Tensor;
            fused_sum_rows(x: &Self::Tensor, dims: $crate::fused::Rows) -> Self::Tensor;
            fused_relu(x: &Self::Tensor) -> Self::Tensor;
            fused_relu_backward(dy: &Self::Tensor, y: &Self::Tensor) -> Self::Tensor;
            fused_conv2d_bias_act(x: &Self::Tensor, w: &Self::Tensor, b: &Self::Tensor, g: &$crate::ConvGeometry, relu: bool) -> Self::Tensor;
            fused_bias_act_backward(dy: &Self::Tensor, y: Option<&Self::Tensor>, dims: $crate::fused::Nchw) -> (Self::Tensor, Self::Tensor);
            fused_bias_relu_backward_consuming(dy: &Self::Tensor, y: Self::Tensor, dims: $crate::fused::Nchw) -> (Self::Tensor, Self::Tensor);
            fused_dropout(x: &Self::Tensor, keep_prob: f32, seed: u64) -> Self::Tensor;
            fused_softmax_rows(x: &Self::Tensor, dims: $crate::fused::Rows) -> Self::Tensor;
            fused_softmax_rows_backward(dy: &Self::Tensor, y: &Self::Tensor, dims: $crate::fused::Rows) -> Self::Tensor;
            fused_l2_loss(x: &Self::Tensor) -> Self::Tensor;
            fused_cross_entropy(logits: &Self::Tensor, labels: &[usize], dims: $crate::fused::Rows) -> (Self::Tensor, Self::Tensor);
            fused_cross_entropy_backward(probs: &Self::Tensor, labels: &[usize], g: &Self::Tensor, dims: $crate::fused::Rows) -> Self::Tensor;
            fused_sgd_step(param: &mut Self::Tensor, velocity: &mut Self::Tensor, grad: &Self::Tensor, lr: f32, momentum: f32, weight_decay: f32) -> ();
            fused_adam_step(param: &mut Self::Tensor, m: &mut Self::Tensor, v: &mut Self::Tensor, grad: &Self::Tensor, hp: $crate::AdamParams, corrections: (f32, f32)) -> ();
        );
    };
    (@each $inner:ident; $($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(
            fn $name(&self, $($arg: $ty),*) -> $crate::Result<$ret> {
                $crate::fused::Fused::$name(&self.$inner, $($arg),*)
            }
        )*
    };
}
