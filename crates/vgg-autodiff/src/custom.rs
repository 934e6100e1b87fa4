//! Ops added from outside the crate. [`CustomOp`] is the small trait: a forward from the inputs'
//! values, a backward from the inputs, the output and the output's gradient. [`Tape::apply`]
//! records it like a built-in op (constants pruned, gradients accumulated, checked by
//! `check_gradients`), keeping the inputs (as [`Saved`]: a recomputed input is computed again,
//! not held) and the output for backward. `Tape::custom_op` is the
//! closure form, for ops that keep something else.

use vgg_tensor::{Backend, DeviceTensor};

use crate::recompute::Saved;
use crate::tape::{Tape, Value, Var};
use crate::Result;

/// A differentiable op defined outside this crate.
///
/// ```
/// use vgg_autodiff::{check_gradients, CustomOp, GradCheck, Result, Tape, Value};
/// use vgg_tensor::reference::ReferenceBackend;
/// use vgg_tensor::prelude::*;
///
/// /// softplus(x) = ln(1 + e^x); its derivative is sigmoid(x).
/// struct Softplus;
///
/// impl<B: Backend> CustomOp<B> for Softplus {
///     fn name(&self) -> &'static str {
///         "softplus"
///     }
///
///     fn forward(&self, b: &B, x: &[&Value<B>]) -> Result<Value<B>> {
///         let one_plus = b.add(&b.unary(UnaryOp::Exp, x[0])?, &b.scalar(1.0)?)?;
///         Ok(b.unary(UnaryOp::Log, &one_plus)?)
///     }
///
///     fn backward(
///         &self,
///         b: &B,
///         x: &[Value<B>],
///         _y: &Value<B>,
///         dy: &Value<B>,
///         _needs: &[bool],
///     ) -> Result<Vec<Option<Value<B>>>> {
///         Ok(vec![Some(b.mul(dy, &b.unary(UnaryOp::Sigmoid, &x[0])?)?)])
///     }
/// }
///
/// let b = ReferenceBackend;
/// let tape = Tape::new(b.clone());
/// let x = tape.param("x", b.upload(&Shape::from([3]), &[-1.0, 0.0, 2.0]).unwrap());
/// let y = tape.apply(Softplus, &[&x]).unwrap();
/// let loss = tape.sum(&y).unwrap();
/// let grads = tape.backward(&loss).unwrap();
/// let dx = b.download(&grads.get(&x).unwrap()).unwrap();
/// assert!((dx[1] - 0.5).abs() < 1e-6); // sigmoid(0)
///
/// // Checked against finite differences like any built-in op.
/// let x0 = b.upload(&Shape::from([5]), &[-2.0, -0.5, 0.1, 0.7, 3.0]).unwrap();
/// check_gradients(&b, &[x0], |t, v| t.apply(Softplus, &[&v[0]]), &GradCheck::default()).unwrap();
/// ```
pub trait CustomOp<B: Backend>: 'static {
    /// Names the op in errors.
    fn name(&self) -> &'static str;

    /// The output from the inputs' values.
    fn forward(&self, backend: &B, inputs: &[&Value<B>]) -> Result<Value<B>>;

    /// Each input's gradient (None where `needs` is false) from the inputs, the output `y` and
    /// the output's gradient `dy`.
    fn backward(
        &self,
        backend: &B,
        inputs: &[Value<B>],
        y: &Value<B>,
        dy: &Value<B>,
        needs: &[bool],
    ) -> Result<Vec<Option<Value<B>>>>;
}

impl<B: Backend> Tape<B> {
    /// Runs `op` on `inputs` and records it; backward keeps the inputs and the output.
    pub fn apply(&self, op: impl CustomOp<B>, inputs: &[&Var<B>]) -> Result<Var<B>> {
        let values: Vec<&Value<B>> = inputs.iter().map(|v| v.value()).collect();
        let y = op.forward(self.backend(), &values)?;
        // An input the tape recomputes is computed again for backward, not held until then.
        let kept: Vec<Saved<B>> = inputs.iter().map(|v| Saved::of(v)).collect();
        let saved = kept.iter().map(Saved::bytes).sum::<usize>() + y.bytes();
        let yv = y.clone();
        self.custom_op(op.name(), inputs, y, saved, move |b, dy, needs| {
            let kept = kept
                .iter()
                .map(|s| s.get(b))
                .collect::<vgg_tensor::Result<Vec<_>>>()?;
            op.backward(b, &kept, &yv, dy, needs)
        })
    }
}
