//! The differentiable ops. Each computes its forward value on the backend and records a closure
//! that owns what its backward needs; inputs that need no gradient get no gradient work.

use vgg_tensor::{Backend, Conv2dParams, DeviceTensor, Pool2dParams, Shape};

use crate::tape::{Tape, Var};
use crate::Result;

/// Runs `f` only for inputs whose gradient is needed.
fn when<T>(need: bool, f: impl FnOnce() -> vgg_tensor::Result<T>) -> Result<Option<T>> {
    Ok(if need { Some(f()?) } else { None })
}

impl<B: Backend> Tape<B> {
    /// 2-D convolution, NCHW input and OIHW weight.
    pub fn conv2d(&self, x: &Var<B>, w: &Var<B>, p: Conv2dParams) -> Result<Var<B>> {
        let y = self.backend().conv2d(&x.value, &w.value, p)?;
        let (xv, wv) = (x.value.clone(), w.value.clone());
        let saved = xv.bytes() + wv.bytes();
        self.record(
            "conv2d",
            &[x, w],
            y,
            saved,
            Box::new(move |b, dy, needs| {
                Ok(vec![
                    when(needs[0], || b.conv2d_backward_input(dy, &wv, xv.shape(), p))?,
                    when(needs[1], || {
                        b.conv2d_backward_weight(&xv, dy, wv.shape(), p)
                    })?,
                ])
            }),
        )
    }

    /// Adds a per-channel bias ([C]) to an NCHW tensor.
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
        let (xv, wv) = (x.value.clone(), w.value.clone());
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
                Ok(vec![
                    when(needs[0], || {
                        b.conv2d_backward_input(&dz, &wv, xv.shape(), p)
                    })?,
                    when(needs[1], || {
                        b.conv2d_backward_weight(&xv, &dz, wv.shape(), p)
                    })?,
                    db,
                ])
            }),
        )
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
        self.record(
            "matmul",
            &[a, bm],
            c,
            saved,
            Box::new(move |b, dc, needs| {
                let (a, bm) = (&av, &bv);
                // C = op(A) op(B): dA and dB as products of dC with the other operand.
                Ok(vec![
                    when(needs[0], || match (ta, tb) {
                        (false, false) => b.matmul(dc, bm, false, true),
                        (false, true) => b.matmul(dc, bm, false, false),
                        (true, false) => b.matmul(bm, dc, false, true),
                        (true, true) => b.matmul(bm, dc, true, true),
                    })?,
                    when(needs[1], || match (ta, tb) {
                        (false, false) => b.matmul(a, dc, true, false),
                        (false, true) => b.matmul(dc, a, true, false),
                        (true, false) => b.matmul(a, dc, false, false),
                        (true, true) => b.matmul(dc, a, true, true),
                    })?,
                ])
            }),
        )
    }

    /// Adds a bias ([F]) to every row of an [N, F] tensor.
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

    /// A fully connected layer: x [N, in] times w [out, in] transposed, plus b [out].
    pub fn linear(&self, x: &Var<B>, w: &Var<B>, bias: &Var<B>) -> Result<Var<B>> {
        let xw = self.matmul(x, w, false, true)?;
        self.add_row_bias(&xw, bias)
    }

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

    pub fn add(&self, a: &Var<B>, c: &Var<B>) -> Result<Var<B>> {
        let y = self.backend().add(&a.value, &c.value)?;
        self.record(
            "add",
            &[a, c],
            y,
            0,
            Box::new(move |_, dy, needs| {
                Ok(vec![
                    needs[0].then(|| dy.clone()),
                    needs[1].then(|| dy.clone()),
                ])
            }),
        )
    }

    pub fn sub(&self, a: &Var<B>, c: &Var<B>) -> Result<Var<B>> {
        let y = self.backend().sub(&a.value, &c.value)?;
        self.record(
            "sub",
            &[a, c],
            y,
            0,
            Box::new(move |b, dy, needs| {
                Ok(vec![
                    needs[0].then(|| dy.clone()),
                    when(needs[1], || b.scale(dy, -1.0))?,
                ])
            }),
        )
    }

    pub fn mul(&self, a: &Var<B>, c: &Var<B>) -> Result<Var<B>> {
        let y = self.backend().mul(&a.value, &c.value)?;
        let (av, cv) = (a.value.clone(), c.value.clone());
        let saved = av.bytes() + cv.bytes();
        self.record(
            "mul",
            &[a, c],
            y,
            saved,
            Box::new(move |b, dy, needs| {
                Ok(vec![
                    when(needs[0], || b.mul(dy, &cv))?,
                    when(needs[1], || b.mul(dy, &av))?,
                ])
            }),
        )
    }

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
}
