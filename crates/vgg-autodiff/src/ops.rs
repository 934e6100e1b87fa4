//! The differentiable ops. Each computes its forward value on the backend and records a closure
//! that owns what its backward needs; inputs that need no gradient get no gradient work.

use std::rc::Rc;

use vgg_tensor::{
    Backend, BinaryOp, Conv2dParams, DeviceTensor, Pool2dParams, ReduceOp, Shape, TensorError,
    UnaryOp,
};

use crate::recompute::{Recipe, Saved};
use crate::tape::{Tape, Value, Var};
use crate::Result;

/// Runs `f` only for inputs whose gradient is needed.
fn when<T>(need: bool, f: impl FnOnce() -> vgg_tensor::Result<T>) -> Result<Option<T>> {
    Ok(if need { Some(f()?) } else { None })
}

/// The input and weight gradients of a convolution given dz, its output's gradient before the
/// bias (with `db`, the bias gradient, passed through). The weight gradient comes first, so the
/// input `x`, taken by value, is released before the input gradient's buffer is made: where
/// nothing else holds `x`, the peak is one activation lower.
fn conv_grads<B: Backend>(
    b: &B,
    dz: &Value<B>,
    x: Saved<B>,
    w: &Value<B>,
    p: Conv2dParams,
    needs: &[bool],
    db: Option<Value<B>>,
) -> Result<Vec<Option<Value<B>>>> {
    let input_shape = x.shape().clone();
    let dw = when(needs[1], || {
        b.conv2d_backward_weight(&x.get(b)?, dz, w.shape(), p)
    })?;
    drop(x);
    let dx = when(needs[0], || b.conv2d_backward_input(dz, w, &input_shape, p))?;
    Ok(vec![dx, dw, db])
}

/// A convolution with bias and ReLU whose output is not on the tape yet
/// (`Tape::conv2d_bias_relu_deferred`).
pub struct DeferredConv<B: Backend> {
    x: Var<B>,
    w: Var<B>,
    bias: Var<B>,
    p: Conv2dParams,
    y: Value<B>,
}

impl<B: Backend> DeferredConv<B> {
    /// The convolution's output (after the ReLU).
    pub fn value(&self) -> &Value<B> {
        &self.y
    }

    /// Records it as `Tape::conv2d_bias_act` would have.
    pub fn record(self, tape: &Tape<B>) -> Result<Var<B>> {
        tape.record_conv(&self.x, &self.w, &self.bias, self.p, self.y, true)
    }

    /// Max-pools the output and records convolution, ReLU and pool as one node, which keeps the
    /// pooled output and the indices but not the convolution's output: a gradient reaches only
    /// each window's maximum, where the ReLU's mask is the pooled value's sign. The gradients
    /// are those of the three ops recorded apart, to the bit.
    pub fn max_pool2d(self, tape: &Tape<B>, pool: Pool2dParams) -> Result<Var<B>> {
        let DeferredConv { x, w, bias, p, y } = self;
        let (pooled, indices) = tape.backend().max_pool2d(&y, pool)?;
        let conv_shape = y.shape().clone();
        drop(y);
        let (xv, wv, pv) = (Saved::of(&x), w.value.clone(), pooled.clone());
        // As `max_pool2d` counts them: at most a u32 index per output.
        let saved = xv.bytes() + wv.bytes() + 2 * pv.bytes();
        tape.record(
            "conv2d_bias_relu_max_pool2d",
            &[&x, &w, &bias],
            pooled,
            saved,
            Box::new(move |b, dy, needs| {
                let masked = b.relu_backward(dy, &pv)?;
                drop(pv);
                let dz = b.max_pool2d_backward(&masked, &indices, &conv_shape)?;
                drop((masked, indices));
                let db = when(needs[2], || b.channel_bias_grad(&dz))?;
                conv_grads(b, &dz, xv, &wv, p, needs, db)
            }),
        )
    }
}

/// `g` broadcast to `shape` (the gradient of a reduction that kept its axes).
fn expand<B: Backend>(b: &B, g: &Value<B>, shape: &Shape) -> vgg_tensor::Result<Value<B>> {
    b.add(&b.zeros(shape)?, g)
}

/// Elements per output of a reduction over `axes`.
fn count(shape: &Shape, axes: &[usize]) -> usize {
    axes.iter()
        .map(|&a| shape.dims().get(a).copied().unwrap_or(1))
        .product()
}

/// What `batch_norm` computes for one batch.
pub struct BatchNormOutput<B: Backend> {
    /// The normalised, scaled and shifted input.
    pub y: Var<B>,
    /// Per-channel mean of the batch (`[C]`), for the running averages (not tracked).
    pub mean: Value<B>,
    /// Per-channel biased variance of the batch (`[C]`), for the running averages (not tracked).
    pub var: Value<B>,
}

impl<B: Backend> Tape<B> {
    /// 2-D convolution, NCHW input and OIHW weight.
    pub fn conv2d(&self, x: &Var<B>, w: &Var<B>, p: Conv2dParams) -> Result<Var<B>> {
        let y = self.backend().conv2d(&x.value, &w.value, p)?;
        let (xv, wv) = (Saved::of(x), w.value.clone());
        let saved = xv.bytes() + wv.bytes();
        self.record(
            "conv2d",
            &[x, w],
            y,
            saved,
            Box::new(move |b, dy, needs| {
                let mut grads = conv_grads(b, dy, xv, &wv, p, needs, None)?;
                grads.truncate(2);
                Ok(grads)
            }),
        )
    }

    /// Adds a per-channel bias (`[C]`) to an NCHW tensor.
    pub fn add_channel_bias(&self, x: &Var<B>, bias: &Var<B>) -> Result<Var<B>> {
        let y = self.backend().add_channel_bias(&x.value, &bias.value)?;
        self.record(
            "add_channel_bias",
            &[x, bias],
            y,
            0,
            Box::new(move |b, dy, needs| {
                Ok(vec![
                    needs[0].then(|| dy.clone()),
                    when(needs[1], || b.channel_bias_grad(dy))?,
                ])
            }),
        )
    }

    /// Convolution, bias and (optionally) ReLU fused into one forward pass; backward keeps the
    /// input, the weight and the output (which doubles as the ReLU mask).
    pub fn conv2d_bias_act(
        &self,
        x: &Var<B>,
        w: &Var<B>,
        bias: &Var<B>,
        p: Conv2dParams,
        relu: bool,
    ) -> Result<Var<B>> {
        let y = self
            .backend()
            .conv2d_bias_act(&x.value, &w.value, &bias.value, p, relu)?;
        self.record_conv(x, w, bias, p, y, relu)
    }

    /// Records a computed `conv2d_bias_act`. Its backward needs the ReLU's output for the mask:
    /// kept, or recomputed from the input where the tape's [`Recompute`] says so.
    fn record_conv(
        &self,
        x: &Var<B>,
        w: &Var<B>,
        bias: &Var<B>,
        p: Conv2dParams,
        y: Value<B>,
        relu: bool,
    ) -> Result<Var<B>> {
        let (xv, wv) = (Saved::of(x), w.value.clone());
        if relu && self.recompute().applies(wv.shape(), y.bytes()) {
            // Neither this node nor the ops that use the output keep it: each computes it again.
            let (xr, wr, br) = (xv.clone(), wv.clone(), bias.value.clone());
            let recipe: Recipe<B> =
                Rc::new(move |b: &B| b.conv2d_bias_act(&xr.get(b)?, &wr, &br, p, true));
            let again = recipe.clone();
            let saved = xv.bytes() + wv.bytes() + bias.value.bytes();
            let mut out = self.record(
                "conv2d_bias_act",
                &[x, w, bias],
                y,
                saved,
                Box::new(move |b, dy, needs| {
                    // The same kernels on the same values: the output of forward, to the bit.
                    let y = again(b)?;
                    drop(again);
                    let (dz, db) = b.bias_relu_backward_consuming(dy, y)?;
                    conv_grads(b, &dz, xv, &wv, p, needs, needs[2].then_some(db))
                }),
            )?;
            if out.is_tracked() {
                out.recipe = Some(recipe);
            }
            return Ok(out);
        }
        let yv = relu.then(|| y.clone());
        let saved = xv.bytes() + wv.bytes() + yv.as_ref().map_or(0, |y| y.bytes());
        self.record(
            "conv2d_bias_act",
            &[x, w, bias],
            y,
            saved,
            Box::new(move |b, dy, needs| {
                // The bias gradient comes out of the same pass as the ReLU's mask.
                let (dz, db) = if needs[2] {
                    let (dz, db) = b.bias_act_backward(dy, yv.as_ref())?;
                    (dz, Some(db))
                } else {
                    let dz = match &yv {
                        Some(y) => b.relu_backward(dy, y)?,
                        None => dy.clone(),
                    };
                    (dz, None)
                };
                drop(yv);
                conv_grads(b, &dz, xv, &wv, p, needs, db)
            }),
        )
    }

    /// Convolution, bias and ReLU computed but not yet recorded: `DeferredConv::max_pool2d`
    /// records it together with the max-pool after it, `DeferredConv::record` alone.
    pub fn conv2d_bias_relu_deferred(
        &self,
        x: &Var<B>,
        w: &Var<B>,
        bias: &Var<B>,
        p: Conv2dParams,
    ) -> Result<DeferredConv<B>> {
        for v in [x, w, bias] {
            self.check("conv2d_bias_act", v)?;
        }
        let y = self
            .backend()
            .conv2d_bias_act(&x.value, &w.value, &bias.value, p, true)?;
        Ok(DeferredConv {
            x: x.clone(),
            w: w.clone(),
            bias: bias.clone(),
            p,
            y,
        })
    }

    /// Max-pool (floored sizes); backward routes each gradient to its maximum.
    pub fn max_pool2d(&self, x: &Var<B>, p: Pool2dParams) -> Result<Var<B>> {
        let (y, indices) = self.backend().max_pool2d(&x.value, p)?;
        let input_shape = x.shape().clone();
        // One u32 index per output.
        let saved = y.bytes();
        self.record(
            "max_pool2d",
            &[x],
            y,
            saved,
            Box::new(move |b, dy, _| {
                Ok(vec![Some(b.max_pool2d_backward(
                    dy,
                    &indices,
                    &input_shape,
                )?)])
            }),
        )
    }

    /// op(a) x op(b) for rank-2 tensors, op transposing where its flag is set.
    pub fn matmul(&self, a: &Var<B>, bm: &Var<B>, ta: bool, tb: bool) -> Result<Var<B>> {
        let c = self.backend().matmul(&a.value, &bm.value, ta, tb)?;
        let (av, bv) = (a.value.clone(), bm.value.clone());
        let saved = av.bytes() + bv.bytes();
        // A parameter's gradient lives to the end of backward (`Matmul::matmul_gradient`).
        let (a_param, b_param) = (self.is_param(a), self.is_param(bm));
        self.record(
            "matmul",
            &[a, bm],
            c,
            saved,
            Box::new(move |b, dc, needs| {
                let (a, bm) = (&av, &bv);
                let product = |param: bool, x: &Value<B>, y: &Value<B>, tx: bool, ty: bool| {
                    if param {
                        b.matmul_gradient(x, y, tx, ty)
                    } else {
                        b.matmul(x, y, tx, ty)
                    }
                };
                // C = op(A) op(B): dA and dB as products of dC with the other operand.
                Ok(vec![
                    when(needs[0], || match (ta, tb) {
                        (false, false) => product(a_param, dc, bm, false, true),
                        (false, true) => product(a_param, dc, bm, false, false),
                        (true, false) => product(a_param, bm, dc, false, true),
                        (true, true) => product(a_param, bm, dc, true, true),
                    })?,
                    when(needs[1], || match (ta, tb) {
                        (false, false) => product(b_param, a, dc, true, false),
                        (false, true) => product(b_param, dc, a, true, false),
                        (true, false) => product(b_param, a, dc, false, false),
                        (true, true) => product(b_param, dc, a, true, true),
                    })?,
                ])
            }),
        )
    }

    /// Adds a bias (`[F]`) to every row of an [N, F] tensor.
    pub fn add_row_bias(&self, x: &Var<B>, bias: &Var<B>) -> Result<Var<B>> {
        let y = self.backend().add_row_bias(&x.value, &bias.value)?;
        self.record(
            "add_row_bias",
            &[x, bias],
            y,
            0,
            Box::new(move |b, dy, needs| {
                Ok(vec![
                    needs[0].then(|| dy.clone()),
                    when(needs[1], || b.sum_rows(dy))?,
                ])
            }),
        )
    }

    /// A fully connected layer: x [N, in] times w [out, in] transposed, plus b `[out]`.
    pub fn linear(&self, x: &Var<B>, w: &Var<B>, bias: &Var<B>) -> Result<Var<B>> {
        // Shapes checked here, so a mismatch names the layer's operands, not the product inside.
        let (x_shape, w_shape) = (x.shape(), w.shape());
        let fits =
            x_shape.rank() == 2 && w_shape.rank() == 2 && x_shape.dims()[1] == w_shape.dims()[1];
        if !fits {
            return Err(TensorError::ShapeMismatch {
                op: "linear",
                what: "the input [N, F] and the weight [out, F] must share F",
                lhs: x_shape.clone(),
                rhs: w_shape.clone(),
            }
            .into());
        }
        let xw = self.matmul(x, w, false, true)?;
        self.add_row_bias(&xw, bias)
    }

    /// max(x, 0) elementwise; NaN stays NaN.
    pub fn relu(&self, x: &Var<B>) -> Result<Var<B>> {
        let y = self.backend().relu(&x.value)?;
        let yv = y.clone();
        let saved = yv.bytes();
        self.record(
            "relu",
            &[x],
            y,
            saved,
            Box::new(move |b, dy, _| Ok(vec![Some(b.relu_backward(dy, &yv)?)])),
        )
    }

    /// Inverted dropout with a seeded mask; the mask is regenerated in backward, not stored.
    pub fn dropout(&self, x: &Var<B>, keep_prob: f32, seed: u64) -> Result<Var<B>> {
        let y = self.backend().dropout(&x.value, keep_prob, seed)?;
        self.record(
            "dropout",
            &[x],
            y,
            0,
            Box::new(move |b, dy, _| Ok(vec![Some(b.dropout_backward(dy, keep_prob, seed)?)])),
        )
    }

    /// The same values under another shape (no copy).
    pub fn reshape(&self, x: &Var<B>, shape: &Shape) -> Result<Var<B>> {
        let y = self.backend().reshape(&x.value, shape)?;
        let input_shape = x.shape().clone();
        self.record(
            "reshape",
            &[x],
            y,
            0,
            Box::new(move |b, dy, _| Ok(vec![Some(b.reshape(dy, &input_shape)?)])),
        )
    }

    /// [N, ...] to [N, rest].
    pub fn flatten(&self, x: &Var<B>) -> Result<Var<B>> {
        let dims = x.shape().dims();
        let n = dims.first().copied().unwrap_or(1);
        let rest = dims.iter().skip(1).product();
        self.reshape(x, &Shape::from([n, rest]))
    }

    /// Softmax over each row of [N, F].
    pub fn softmax(&self, x: &Var<B>) -> Result<Var<B>> {
        let y = self.backend().softmax_rows(&x.value)?;
        let yv = y.clone();
        let saved = yv.bytes();
        self.record(
            "softmax",
            &[x],
            y,
            saved,
            Box::new(move |b, dy, _| Ok(vec![Some(b.softmax_rows_backward(dy, &yv)?)])),
        )
    }

    /// sum(x^2) / 2, TensorFlow's `l2_loss`.
    pub fn l2_loss(&self, x: &Var<B>) -> Result<Var<B>> {
        let loss = self.backend().l2_loss(&x.value)?;
        let xv = x.value.clone();
        let saved = xv.bytes();
        self.record(
            "l2_loss",
            &[x],
            loss,
            saved,
            Box::new(move |b, g, _| Ok(vec![Some(b.mul_scalar(&xv, g)?)])),
        )
    }

    /// Mean cross-entropy of [N, F] logits against class labels (a stable log-softmax).
    pub fn cross_entropy(&self, logits: &Var<B>, labels: &[usize]) -> Result<Var<B>> {
        let (loss, probs) = self.backend().cross_entropy(&logits.value, labels)?;
        let labels = labels.to_vec();
        let saved = probs.bytes();
        self.record(
            "cross_entropy",
            &[logits],
            loss,
            saved,
            Box::new(move |b, g, _| Ok(vec![Some(b.cross_entropy_backward(&probs, &labels, g)?)])),
        )
    }

    /// a + b, with NumPy broadcasting.
    pub fn add(&self, a: &Var<B>, c: &Var<B>) -> Result<Var<B>> {
        self.binary(BinaryOp::Add, a, c)
    }

    /// a - b, with NumPy broadcasting.
    pub fn sub(&self, a: &Var<B>, c: &Var<B>) -> Result<Var<B>> {
        self.binary(BinaryOp::Sub, a, c)
    }

    /// a * b, with NumPy broadcasting.
    pub fn mul(&self, a: &Var<B>, c: &Var<B>) -> Result<Var<B>> {
        self.binary(BinaryOp::Mul, a, c)
    }

    /// a / b, with NumPy broadcasting.
    pub fn div(&self, a: &Var<B>, c: &Var<B>) -> Result<Var<B>> {
        self.binary(BinaryOp::Div, a, c)
    }

    /// The larger of a and b, broadcast ([`BinaryOp::Max`]); a tie sends half the gradient to
    /// each (as PyTorch's `torch.maximum`). The maximum over axes is [`Tape::max_axes`].
    #[doc(alias = "max")]
    pub fn maximum(&self, a: &Var<B>, c: &Var<B>) -> Result<Var<B>> {
        self.binary(BinaryOp::Max, a, c)
    }

    /// The smaller of a and b, broadcast ([`BinaryOp::Min`]); ties split the gradient.
    #[doc(alias = "min")]
    pub fn minimum(&self, a: &Var<B>, c: &Var<B>) -> Result<Var<B>> {
        self.binary(BinaryOp::Min, a, c)
    }

    /// A differentiable binary op (Add, Sub, Mul, Div, Max, Min) with NumPy broadcasting; each
    /// input's gradient is summed back to its shape. The masks (Greater, Equal) have no gradient
    /// and are refused.
    pub fn binary(&self, op: BinaryOp, a: &Var<B>, c: &Var<B>) -> Result<Var<B>> {
        if matches!(op, BinaryOp::Greater | BinaryOp::Equal) {
            return Err(TensorError::InvalidArgument {
                op: op.name(),
                message:
                    "a mask has no gradient: compute it on the backend and use it as a constant"
                        .into(),
            }
            .into());
        }
        let y = self.backend().binary(op, &a.value, &c.value)?;
        let (av, cv) = (a.value.clone(), c.value.clone());
        let keep = !matches!(op, BinaryOp::Add | BinaryOp::Sub);
        let saved = if keep { av.bytes() + cv.bytes() } else { 0 };
        let (a_shape, c_shape) = (a.shape().clone(), c.shape().clone());
        self.record(
            op.name(),
            &[a, c],
            y,
            saved,
            Box::new(move |b, dy, needs| {
                // The gradient for each operand at the broadcast shape, then summed to its own.
                let (da, dc) = match op {
                    BinaryOp::Add => (
                        when(needs[0], || Ok(dy.clone()))?,
                        when(needs[1], || Ok(dy.clone()))?,
                    ),
                    BinaryOp::Sub => (
                        when(needs[0], || Ok(dy.clone()))?,
                        when(needs[1], || b.unary(UnaryOp::Neg, dy))?,
                    ),
                    BinaryOp::Mul => (
                        when(needs[0], || b.mul(dy, &cv))?,
                        when(needs[1], || b.mul(dy, &av))?,
                    ),
                    BinaryOp::Div => (
                        when(needs[0], || b.div(dy, &cv))?,
                        when(needs[1], || {
                            // -dy a / c^2
                            let q = b.div(&b.div(&av, &cv)?, &cv)?;
                            b.unary(UnaryOp::Neg, &b.mul(dy, &q)?)
                        })?,
                    ),
                    BinaryOp::Max | BinaryOp::Min => {
                        let wins = if op == BinaryOp::Max {
                            b.binary(BinaryOp::Greater, &av, &cv)?
                        } else {
                            b.binary(BinaryOp::Greater, &cv, &av)?
                        };
                        let ties = b.binary(BinaryOp::Equal, &av, &cv)?;
                        let share_a = b.add(&wins, &b.scale(&ties, 0.5)?)?;
                        let share_c = b.sub(&b.scalar(1.0)?, &share_a)?;
                        (
                            when(needs[0], || b.mul(dy, &share_a))?,
                            when(needs[1], || b.mul(dy, &share_c))?,
                        )
                    }
                    BinaryOp::Greater | BinaryOp::Equal => unreachable!("refused above"),
                };
                Ok(vec![
                    da.map(|g| b.sum_to_shape(&g, &a_shape)).transpose()?,
                    dc.map(|g| b.sum_to_shape(&g, &c_shape)).transpose()?,
                ])
            }),
        )
    }

    /// A differentiable elementwise function of one value.
    pub fn unary(&self, op: UnaryOp, x: &Var<B>) -> Result<Var<B>> {
        let y = self.backend().unary(op, &x.value)?;
        // Each derivative from the input or the output, whichever is cheaper to keep.
        let from_output = matches!(
            op,
            UnaryOp::Exp
                | UnaryOp::Sqrt
                | UnaryOp::Recip
                | UnaryOp::Tanh
                | UnaryOp::Sigmoid
                | UnaryOp::Relu
        );
        let kept = if from_output {
            y.clone()
        } else {
            x.value.clone()
        };
        let saved = if op == UnaryOp::Neg { 0 } else { kept.bytes() };
        self.record(
            op.name(),
            &[x],
            y,
            saved,
            Box::new(move |b, dy, _| {
                let k = &kept;
                let one = || b.scalar(1.0);
                let dx = match op {
                    UnaryOp::Neg => b.unary(UnaryOp::Neg, dy)?,
                    UnaryOp::Abs => {
                        // sign(x): +1, -1, and 0 at 0.
                        let zero = b.scalar(0.0)?;
                        let sign = b.sub(
                            &b.binary(BinaryOp::Greater, k, &zero)?,
                            &b.binary(BinaryOp::Greater, &zero, k)?,
                        )?;
                        b.mul(dy, &sign)?
                    }
                    UnaryOp::Exp => b.mul(dy, k)?,
                    UnaryOp::Log => b.div(dy, k)?,
                    UnaryOp::Sqrt => b.div(&b.scale(dy, 0.5)?, k)?,
                    UnaryOp::Recip => {
                        b.unary(UnaryOp::Neg, &b.mul(dy, &b.unary(UnaryOp::Square, k)?)?)?
                    }
                    UnaryOp::Square => b.mul(&b.scale(dy, 2.0)?, k)?,
                    UnaryOp::Tanh => b.mul(dy, &b.sub(&one()?, &b.unary(UnaryOp::Square, k)?)?)?,
                    UnaryOp::Sigmoid => b.mul(dy, &b.mul(k, &b.sub(&one()?, k)?)?)?,
                    UnaryOp::Relu => b.relu_backward(dy, k)?,
                };
                Ok(vec![Some(dx)])
            }),
        )
    }

    /// e^x elementwise.
    pub fn exp(&self, x: &Var<B>) -> Result<Var<B>> {
        self.unary(UnaryOp::Exp, x)
    }

    /// Natural logarithm.
    pub fn log(&self, x: &Var<B>) -> Result<Var<B>> {
        self.unary(UnaryOp::Log, x)
    }

    /// The square root elementwise (NaN below 0).
    pub fn sqrt(&self, x: &Var<B>) -> Result<Var<B>> {
        self.unary(UnaryOp::Sqrt, x)
    }

    /// The hyperbolic tangent elementwise.
    pub fn tanh(&self, x: &Var<B>) -> Result<Var<B>> {
        self.unary(UnaryOp::Tanh, x)
    }

    /// The logistic function 1 / (1 + e^-x) elementwise.
    pub fn sigmoid(&self, x: &Var<B>) -> Result<Var<B>> {
        self.unary(UnaryOp::Sigmoid, x)
    }

    /// -x elementwise.
    pub fn neg(&self, x: &Var<B>) -> Result<Var<B>> {
        self.unary(UnaryOp::Neg, x)
    }

    /// x * x elementwise.
    pub fn square(&self, x: &Var<B>) -> Result<Var<B>> {
        self.unary(UnaryOp::Square, x)
    }

    /// alpha * x elementwise, for a constant alpha.
    pub fn scale(&self, x: &Var<B>, alpha: f32) -> Result<Var<B>> {
        let y = self.backend().scale(&x.value, alpha)?;
        self.record(
            "scale",
            &[x],
            y,
            0,
            Box::new(move |b, dy, _| Ok(vec![Some(b.scale(dy, alpha)?)])),
        )
    }

    /// Sum of all elements.
    pub fn sum(&self, x: &Var<B>) -> Result<Var<B>> {
        let y = self.backend().sum_all(&x.value)?;
        let shape = x.shape().clone();
        self.record(
            "sum",
            &[x],
            y,
            0,
            Box::new(move |b, g, _| Ok(vec![Some(b.broadcast_scalar(g, &shape)?)])),
        )
    }

    /// Mean of all elements.
    pub fn mean(&self, x: &Var<B>) -> Result<Var<B>> {
        let n = x.shape().elements().max(1) as f32;
        let s = self.sum(x)?;
        self.scale(&s, 1.0 / n)
    }

    /// Sum over `axes`, which keep length 1.
    pub fn sum_axes(&self, x: &Var<B>, axes: &[usize]) -> Result<Var<B>> {
        let y = self.backend().reduce(ReduceOp::Sum, &x.value, axes)?;
        let shape = x.shape().clone();
        self.record(
            "sum_axes",
            &[x],
            y,
            0,
            Box::new(move |b, g, _| Ok(vec![Some(expand(b, g, &shape)?)])),
        )
    }

    /// Mean over `axes`, which keep length 1.
    pub fn mean_axes(&self, x: &Var<B>, axes: &[usize]) -> Result<Var<B>> {
        let n = count(x.shape(), axes).max(1) as f32;
        self.scale(&self.sum_axes(x, axes)?, 1.0 / n)
    }

    /// Maximum over `axes`, which keep length 1; ties share the gradient evenly (as PyTorch's
    /// `amax`).
    pub fn max_axes(&self, x: &Var<B>, axes: &[usize]) -> Result<Var<B>> {
        let y = self.backend().reduce(ReduceOp::Max, &x.value, axes)?;
        let (xv, yv) = (x.value.clone(), y.clone());
        let axes = axes.to_vec();
        let saved = xv.bytes() + yv.bytes();
        self.record(
            "max_axes",
            &[x],
            y,
            saved,
            Box::new(move |b, g, _| {
                let winners = b.binary(BinaryOp::Equal, &xv, &yv)?;
                let ties = b.reduce(ReduceOp::Sum, &winners, &axes)?;
                Ok(vec![Some(b.mul(&winners, &b.div(g, &ties)?)?)])
            }),
        )
    }

    /// The axes reordered: axis i of the result is axis `perm[i]` of `x`.
    pub fn permute(&self, x: &Var<B>, perm: &[usize]) -> Result<Var<B>> {
        let y = self.backend().permute(&x.value, perm)?;
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        self.record(
            "permute",
            &[x],
            y,
            0,
            Box::new(move |b, g, _| Ok(vec![Some(b.permute(g, &inverse)?)])),
        )
    }

    /// Axes `a` and `b` swapped (the matrix transpose for rank 2).
    pub fn transpose(&self, x: &Var<B>, a: usize, b: usize) -> Result<Var<B>> {
        let mut perm: Vec<usize> = (0..x.shape().rank()).collect();
        if a >= perm.len() || b >= perm.len() {
            return Err(TensorError::InvalidArgument {
                op: "transpose",
                message: format!("axes {a} and {b} of {}", x.shape()),
            }
            .into());
        }
        perm.swap(a, b);
        self.permute(x, &perm)
    }

    /// `len` elements from `start` along `axis`.
    pub fn slice(&self, x: &Var<B>, axis: usize, start: usize, len: usize) -> Result<Var<B>> {
        let y = self.backend().slice(&x.value, axis, start, len)?;
        let shape = x.shape().clone();
        self.record(
            "slice",
            &[x],
            y,
            0,
            Box::new(move |b, g, _| {
                // The gradient in place, zeros before and after it.
                let zeros = |n: usize| {
                    let mut dims = shape.dims().to_vec();
                    dims[axis] = n;
                    b.zeros(&Shape::from(dims))
                };
                let after = shape.dims()[axis] - start - len;
                let (before, after) = (zeros(start)?, zeros(after)?);
                let mut parts = Vec::new();
                if start > 0 {
                    parts.push(&before);
                }
                parts.push(g);
                if after.shape().dims()[axis] > 0 {
                    parts.push(&after);
                }
                Ok(vec![Some(b.concat(&parts, axis)?)])
            }),
        )
    }

    /// The values joined along `axis`, in order.
    pub fn concat(&self, xs: &[&Var<B>], axis: usize) -> Result<Var<B>> {
        let values: Vec<&Value<B>> = xs.iter().map(|v| &v.value).collect();
        let y = self.backend().concat(&values, axis)?;
        let lengths: Vec<usize> = xs.iter().map(|v| v.shape().dims()[axis]).collect();
        self.record(
            "concat",
            xs,
            y,
            0,
            Box::new(move |b, g, needs| {
                let mut at = 0;
                lengths
                    .iter()
                    .zip(needs)
                    .map(|(&len, &need)| {
                        let part = when(need, || b.slice(g, axis, at, len));
                        at += len;
                        part
                    })
                    .collect()
            }),
        )
    }

    /// Average-pool (no padding, floored sizes).
    pub fn avg_pool2d(&self, x: &Var<B>, p: Pool2dParams) -> Result<Var<B>> {
        let y = self.backend().avg_pool2d(&x.value, p)?;
        let shape = x.shape().clone();
        self.record(
            "avg_pool2d",
            &[x],
            y,
            0,
            Box::new(move |b, g, _| Ok(vec![Some(b.avg_pool2d_backward(g, &shape, p)?)])),
        )
    }

    /// PyTorch's `AdaptiveAvgPool2d((out_h, out_w))`: output cell (i, j) is the mean of input
    /// rows floor(i H / out_h) .. ceil((i + 1) H / out_h) and the columns likewise, so windows
    /// may overlap or repeat (a 1x1 input becomes out_h x out_w copies). The pool is separable:
    /// two products with averaging matrices, whose gradients the tape already has. An input of
    /// the output's size is returned as it is.
    pub fn adaptive_avg_pool2d(&self, x: &Var<B>, out: (usize, usize)) -> Result<Var<B>> {
        let (n, c, h, w) = x.shape().nchw("adaptive_avg_pool2d")?;
        let (out_h, out_w) = out;
        if out_h == 0 || out_w == 0 {
            return Err(TensorError::InvalidArgument {
                op: "adaptive_avg_pool2d",
                message: format!("the output size {out_h}x{out_w} must be at least 1x1"),
            }
            .into());
        }
        if (h, w) == out {
            return Ok(x.clone());
        }
        // Averages over one axis: [out, len] with row i weighing its window equally.
        let averaging = |len: usize, out: usize| -> Result<Var<B>> {
            let mut m = vec![0.0f32; out * len];
            for i in 0..out {
                let (start, end) = (i * len / out, ((i + 1) * len).div_ceil(out));
                for v in &mut m[i * len + start..i * len + end] {
                    *v = 1.0 / (end - start) as f32;
                }
            }
            Ok(self.constant(self.backend().upload(&Shape::from([out, len]), &m)?))
        };
        let planes = n * c;
        // Columns: [N C H, W] x [W, out_w]^T.
        let x = self.reshape(x, &Shape::from([planes * h, w]))?;
        let y = self.matmul(&x, &averaging(w, out_w)?, false, true)?;
        // Rows: bring H last, then the same.
        let y = self.reshape(&y, &Shape::from([planes, h, out_w]))?;
        let y = self.permute(&y, &[0, 2, 1])?;
        let y = self.reshape(&y, &Shape::from([planes * out_w, h]))?;
        let y = self.matmul(&y, &averaging(h, out_h)?, false, true)?;
        let y = self.reshape(&y, &Shape::from([planes, out_w, out_h]))?;
        let y = self.permute(&y, &[0, 2, 1])?;
        self.reshape(&y, &Shape::from([n, c, out_h, out_w]))
    }

    /// The mean of each channel of an NCHW tensor: [N, C].
    pub fn global_avg_pool(&self, x: &Var<B>) -> Result<Var<B>> {
        let (n, c, _, _) = x.shape().nchw("global_avg_pool")?;
        let m = self.mean_axes(x, &[2, 3])?;
        self.reshape(&m, &Shape::from([n, c]))
    }

    /// Batch normalisation with the batch's statistics (training): each channel of `x` (axis 1 of
    /// [N, C] or NCHW) normalised by its mean and biased variance over the other axes, then
    /// scaled by `gamma` and shifted by `beta` (`[C]` each). Gradients flow to `x`, `gamma` and
    /// `beta` through the statistics, as in PyTorch; the statistics are returned for running
    /// averages.
    pub fn batch_norm(
        &self,
        x: &Var<B>,
        gamma: &Var<B>,
        beta: &Var<B>,
        eps: f32,
    ) -> Result<BatchNormOutput<B>> {
        let (axes, channel_shape) = norm_axes(x.shape(), gamma.shape(), beta.shape())?;
        let b = self.backend();
        let per_channel = count(x.shape(), &axes).max(1) as f32;
        let channels = ChannelOps {
            axes,
            channel_shape,
        };
        // Per-channel statistics and arithmetic, all [C]: the backend's channel kernels on NCHW.
        let mean = b.scale(&channels.sums(b, &x.value)?, 1.0 / per_channel)?;
        let centred = channels.affine(
            b,
            &x.value,
            &b.full(mean.shape(), 1.0)?,
            &b.scale(&mean, -1.0)?,
        )?;
        let squares = b.unary(UnaryOp::Square, &centred)?;
        let var = b.scale(&channels.sums(b, &squares)?, 1.0 / per_channel)?;
        drop(squares);
        let inv_std = inverse_std(b, &var, eps)?;
        let normalised = channels.affine(b, &centred, &inv_std, &b.zeros(inv_std.shape())?)?;
        drop(centred);
        let y = channels.affine(b, &normalised, &gamma.value, &beta.value)?;
        // One node that keeps only the normalised input (as PyTorch's own kernel does), where
        // the same arithmetic as separate ops would keep it and the centred input both.
        let saved = normalised.bytes() + inv_std.bytes() + gamma.value.bytes();
        let g = gamma.value.clone();
        let y = self.record(
            "batch_norm",
            &[x, gamma, beta],
            y,
            saved,
            Box::new(move |b, dy, needs| {
                let dbeta = channels.sums(b, dy)?;
                let dgamma = channels.sums(b, &b.mul(dy, &normalised)?)?;
                // dx = gamma inv_std (dy - mean(dy) - normalised mean(dy normalised)).
                let dx = needs[0]
                    .then(|| {
                        let along = channels.affine(
                            b,
                            &normalised,
                            &b.scale(&dgamma, -1.0 / per_channel)?,
                            &b.scale(&dbeta, -1.0 / per_channel)?,
                        )?;
                        let step = b.mul(&g, &inv_std)?;
                        channels.affine(b, &b.add(dy, &along)?, &step, &b.zeros(step.shape())?)
                    })
                    .transpose()?;
                Ok(vec![dx, Some(dgamma), Some(dbeta)])
            }),
        )?;
        Ok(BatchNormOutput { y, mean, var })
    }

    /// Batch normalisation with given statistics (evaluation): (x - mean) / sqrt(var + eps) *
    /// gamma + beta per channel; `mean` and `var` are constants.
    pub fn batch_norm_eval(
        &self,
        x: &Var<B>,
        mean: &Value<B>,
        var: &Value<B>,
        gamma: &Var<B>,
        beta: &Var<B>,
        eps: f32,
    ) -> Result<Var<B>> {
        let (_, channel_shape) = norm_axes(x.shape(), gamma.shape(), beta.shape())?;
        let b = self.backend();
        let inv_std = inverse_std(b, var, eps)?;
        let mean = self.constant(b.reshape(mean, &channel_shape)?);
        let inv_std = self.constant(b.reshape(&inv_std, &channel_shape)?);
        let normalised = self.mul(&self.sub(x, &mean)?, &inv_std)?;
        self.affine(&normalised, gamma, beta, &channel_shape)
    }

    /// x * gamma + beta with [C] parameters reshaped to broadcast along axis 1.
    fn affine(
        &self,
        x: &Var<B>,
        gamma: &Var<B>,
        beta: &Var<B>,
        channel_shape: &Shape,
    ) -> Result<Var<B>> {
        let gamma = self.reshape(gamma, channel_shape)?;
        let beta = self.reshape(beta, channel_shape)?;
        self.add(&self.mul(x, &gamma)?, &beta)
    }
}

/// 1 / sqrt(var + eps): what batch normalisation divides each channel by.
pub fn inverse_std<B: Backend>(b: &B, var: &B::Tensor, eps: f32) -> vgg_tensor::Result<B::Tensor> {
    b.unary(
        UnaryOp::Recip,
        &b.unary(UnaryOp::Sqrt, &b.add(var, &b.scalar(eps)?)?)?,
    )
}

/// Batch normalisation's per-channel sums and arithmetic on `[C]` vectors: the backend's channel
/// kernels for NCHW, broadcasting for [N, C].
struct ChannelOps {
    axes: Vec<usize>,
    channel_shape: Shape,
}

impl ChannelOps {
    /// Each channel's sum over the other axes, `[C]`.
    fn sums<B: Backend>(&self, b: &B, x: &B::Tensor) -> vgg_tensor::Result<B::Tensor> {
        if x.shape().rank() == 4 {
            return b.channel_bias_grad(x);
        }
        let c = Shape::from([self.channel_shape.elements()]);
        b.reshape(&b.reduce(ReduceOp::Sum, x, &self.axes)?, &c)
    }

    /// x * scale + shift per channel.
    fn affine<B: Backend>(
        &self,
        b: &B,
        x: &B::Tensor,
        scale: &B::Tensor,
        shift: &B::Tensor,
    ) -> vgg_tensor::Result<B::Tensor> {
        if x.shape().rank() == 4 {
            return b.channel_affine(x, scale, shift);
        }
        b.add(
            &b.mul(x, &b.reshape(scale, &self.channel_shape)?)?,
            &b.reshape(shift, &self.channel_shape)?,
        )
    }
}

/// The axes batch norm reduces over (all but 1) and the shape its [C] parameters broadcast as.
fn norm_axes(x: &Shape, gamma: &Shape, beta: &Shape) -> Result<(Vec<usize>, Shape)> {
    let dims = x.dims();
    if !(dims.len() == 2 || dims.len() == 4)
        || gamma.dims() != [dims[1]]
        || beta.dims() != [dims[1]]
    {
        return Err(TensorError::ShapeMismatch {
            op: "batch_norm",
            what: "input must be [N, C] or NCHW with gamma and beta of [C]",
            lhs: x.clone(),
            rhs: gamma.clone(),
        }
        .into());
    }
    let axes: Vec<usize> = (0..dims.len()).filter(|&a| a != 1).collect();
    let mut channel = vec![1; dims.len()];
    channel[1] = dims[1];
    Ok((axes, Shape::from(channel)))
}
