//! The composite ops the CUDA backend fuses into kernels of its own (bias and ReLU in place on a
//! convolution's output, softmax and cross-entropy per row, dropout, optimiser steps), overriding
//! `Backend`'s defaults.

use cudarc::driver::PushKernelArg;
use vgg_tensor::{
    adam_corrections, argmax, check_argmax_rows, check_channel_bias, check_keep_prob, check_labels,
    check_row_bias, check_scalar, same_shape, AdamParams, Backend, BinaryOp, Conv2dParams,
    ConvGeometry, Convolution, Device, Elementwise, Result, Shape,
};

use crate::backend::{elementwise, launch, per_row, CudaBackend, CudaTensor};
use crate::device_error;

impl Backend for CudaBackend {
    fn conv2d_bias_act(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        b: &CudaTensor,
        p: Conv2dParams,
        relu: bool,
    ) -> Result<CudaTensor> {
        let g = ConvGeometry::new(&x.shape, &w.shape, p)?;
        g.check_bias("conv2d_bias_act", &w.shape, &b.shape)?;
        let mut y = self.conv2d(x, w, p)?;
        // Bias and ReLU in place on the fresh output: one pass over it.
        let n = y.shape.elements() as i64;
        let plane = (g.out_h * g.out_w) as i64;
        let (channels, relu) = (g.out_channels as i64, relu as i32);
        let out = self.unique(&mut y)?;
        launch!(
            self,
            "bias_act_in_place",
            elementwise(n as usize),
            out,
            b.slice(),
            &n,
            &plane,
            &channels,
            &relu
        );
        Ok(y)
    }

    fn add_channel_bias(&self, x: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        let (_, c, h, w) = check_channel_bias("add_channel_bias", &x.shape, &b.shape)?;
        let n = x.shape.elements() as i64;
        let (plane, channels, relu) = ((h * w) as i64, c as i64, 0i32);
        self.build(x.shape.clone(), |out| {
            launch!(
                self,
                "add_channel_bias",
                elementwise(n as usize),
                x.slice(),
                b.slice(),
                out,
                &n,
                &plane,
                &channels,
                &relu
            );
            Ok(())
        })
    }

    fn channel_bias_grad(&self, dy: &CudaTensor) -> Result<CudaTensor> {
        let (n, c, h, w) = dy.shape.nchw("channel_bias_grad")?;
        let (batch, channels, plane) = (n as i64, c as i64, (h * w) as i64);
        self.build(Shape::from([c]), |db| {
            if c > 0 {
                launch!(
                    self,
                    "channel_bias_grad",
                    per_row(c)?,
                    dy.slice(),
                    db,
                    &batch,
                    &channels,
                    &plane
                );
            }
            Ok(())
        })
    }

    fn add_row_bias(&self, x: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        let (_, f) = check_row_bias("add_row_bias", &x.shape, &b.shape)?;
        let n = x.shape.elements() as i64;
        let f = f.max(1) as i64;
        self.build(x.shape.clone(), |out| {
            launch!(
                self,
                "add_row_bias",
                elementwise(n as usize),
                x.slice(),
                b.slice(),
                out,
                &n,
                &f
            );
            Ok(())
        })
    }

    fn sum_rows(&self, x: &CudaTensor) -> Result<CudaTensor> {
        let (rows, f) = x.shape.matrix("sum_rows")?;
        let (rows, cols) = (rows as i64, f as i64);
        self.build(Shape::from([f]), |out| {
            launch!(
                self,
                "sum_rows",
                elementwise(f),
                x.slice(),
                out,
                &rows,
                &cols
            );
            Ok(())
        })
    }

    fn relu(&self, x: &CudaTensor) -> Result<CudaTensor> {
        let n = x.shape.elements() as i64;
        self.build(x.shape.clone(), |out| {
            launch!(self, "relu", elementwise(n as usize), x.slice(), out, &n);
            Ok(())
        })
    }

    fn relu_backward(&self, dy: &CudaTensor, y: &CudaTensor) -> Result<CudaTensor> {
        self.same_shape_op("relu_backward", dy, y)
    }

    fn dropout(&self, x: &CudaTensor, keep_prob: f32, seed: u64) -> Result<CudaTensor> {
        check_keep_prob("dropout", keep_prob)?;
        if keep_prob == 1.0 {
            return Ok(x.clone());
        }
        let n = x.shape.elements() as i64;
        self.build(x.shape.clone(), |out| {
            launch!(
                self,
                "dropout",
                elementwise(n as usize),
                x.slice(),
                out,
                &n,
                &keep_prob,
                &seed
            );
            Ok(())
        })
    }

    fn dropout_backward(&self, dy: &CudaTensor, keep_prob: f32, seed: u64) -> Result<CudaTensor> {
        // Linear in its input with a fixed mask: its own backward.
        self.dropout(dy, keep_prob, seed)
    }

    fn softmax_rows(&self, x: &CudaTensor) -> Result<CudaTensor> {
        let (rows, f) = x.shape.matrix("softmax_rows")?;
        let cols = f as i64;
        self.build(x.shape.clone(), |y| {
            if rows > 0 && f > 0 {
                launch!(self, "softmax_rows", per_row(rows)?, x.slice(), y, &cols);
            }
            Ok(())
        })
    }

    fn softmax_rows_backward(&self, dy: &CudaTensor, y: &CudaTensor) -> Result<CudaTensor> {
        same_shape("softmax_rows_backward", &dy.shape, &y.shape)?;
        let (rows, f) = y.shape.matrix("softmax_rows_backward")?;
        let cols = f as i64;
        self.build(y.shape.clone(), |dx| {
            if rows > 0 && f > 0 {
                launch!(
                    self,
                    "softmax_rows_backward",
                    per_row(rows)?,
                    dy.slice(),
                    y.slice(),
                    dx,
                    &cols
                );
            }
            Ok(())
        })
    }

    fn argmax_rows(&self, x: &CudaTensor) -> Result<Vec<usize>> {
        let (_, f) = check_argmax_rows(&x.shape)?;
        // Rows of logits are small: the host picks the maxima exactly as the CPU backend does.
        Ok(self.download(x)?.chunks(f).map(argmax).collect())
    }

    fn l2_loss(&self, x: &CudaTensor) -> Result<CudaTensor> {
        self.sum_everything(x, true)
    }

    fn cross_entropy(
        &self,
        logits: &CudaTensor,
        labels: &[usize],
    ) -> Result<(CudaTensor, CudaTensor)> {
        let (n, f) = check_labels("cross_entropy", &logits.shape, labels)?;
        let labels = self.upload_labels(labels)?;
        // Per-row losses in f64: two f32 slots each.
        let (_, mut row_loss) = self.alloc(Shape::from([2 * n]))?;
        let cols = f as i64;
        let rows = n as i64;
        let probs = self.build(logits.shape.clone(), |probs| {
            if n > 0 && f > 0 {
                launch!(
                    self,
                    "softmax_cross_entropy",
                    per_row(n)?,
                    logits.slice(),
                    probs,
                    &cols,
                    labels.slice(),
                    row_loss.slice_mut()
                );
            }
            Ok(())
        })?;
        let loss = self.build(Shape::scalar(), |out| {
            launch!(self, "mean_rows", per_row(1)?, row_loss.slice(), out, &rows);
            Ok(())
        })?;
        Ok((loss, probs))
    }

    fn cross_entropy_backward(
        &self,
        probs: &CudaTensor,
        labels: &[usize],
        g: &CudaTensor,
    ) -> Result<CudaTensor> {
        let (n, f) = check_labels("cross_entropy_backward", &probs.shape, labels)?;
        check_scalar("cross_entropy_backward", &g.shape)?;
        let labels = self.upload_labels(labels)?;
        let (rows, cols) = (n as i64, f as i64);
        self.build(probs.shape.clone(), |out| {
            launch!(
                self,
                "cross_entropy_backward",
                elementwise(n * f),
                probs.slice(),
                labels.slice(),
                g.slice(),
                out,
                &rows,
                &cols
            );
            Ok(())
        })
    }

    fn add(&self, a: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        if a.shape != b.shape {
            return self.binary(BinaryOp::Add, a, b);
        }
        self.same_shape_op("add", a, b)
    }

    fn sub(&self, a: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        if a.shape != b.shape {
            return self.binary(BinaryOp::Sub, a, b);
        }
        self.same_shape_op("sub", a, b)
    }

    fn mul(&self, a: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        if a.shape != b.shape {
            return self.binary(BinaryOp::Mul, a, b);
        }
        self.same_shape_op("mul", a, b)
    }

    fn scale(&self, x: &CudaTensor, alpha: f32) -> Result<CudaTensor> {
        let n = x.shape.elements() as i64;
        self.build(x.shape.clone(), |out| {
            launch!(
                self,
                "scale",
                elementwise(n as usize),
                x.slice(),
                out,
                &n,
                &alpha
            );
            Ok(())
        })
    }

    fn axpy(&self, y: &mut CudaTensor, alpha: f32, x: &CudaTensor) -> Result<()> {
        same_shape("axpy", &y.shape, &x.shape)?;
        let n = x.shape.elements() as i64;
        let out = self.unique(y)?;
        launch!(
            self,
            "axpy",
            elementwise(n as usize),
            out,
            x.slice(),
            &n,
            &alpha
        );
        Ok(())
    }

    fn sgd_step(
        &self,
        param: &mut CudaTensor,
        velocity: &mut CudaTensor,
        grad: &CudaTensor,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    ) -> Result<()> {
        same_shape("sgd_step", &param.shape, &grad.shape)?;
        same_shape("sgd_step", &velocity.shape, &grad.shape)?;
        let n = grad.shape.elements() as i64;
        let p = self.unique(param)?;
        let v = self.unique(velocity)?;
        launch!(
            self,
            "sgd_step",
            elementwise(n as usize),
            p,
            v,
            grad.slice(),
            &n,
            &lr,
            &momentum,
            &weight_decay
        );
        Ok(())
    }

    fn adam_step(
        &self,
        param: &mut CudaTensor,
        m: &mut CudaTensor,
        v: &mut CudaTensor,
        grad: &CudaTensor,
        hp: AdamParams,
    ) -> Result<()> {
        for t in [&param.shape, &m.shape, &v.shape] {
            same_shape("adam_step", t, &grad.shape)?;
        }
        let (correction1, correction2) = adam_corrections(&hp)?;
        let n = grad.shape.elements() as i64;
        let p = self.unique(param)?;
        let m = self.unique(m)?;
        let v = self.unique(v)?;
        launch!(
            self,
            "adam_step",
            elementwise(n as usize),
            p,
            m,
            v,
            grad.slice(),
            &n,
            &hp.lr,
            &hp.beta1,
            &hp.beta2,
            &hp.eps,
            &hp.weight_decay,
            &correction1,
            &correction2
        );
        Ok(())
    }

    fn sum_all(&self, x: &CudaTensor) -> Result<CudaTensor> {
        self.sum_everything(x, false)
    }

    fn broadcast_scalar(&self, s: &CudaTensor, shape: &Shape) -> Result<CudaTensor> {
        check_scalar("broadcast_scalar", &s.shape)?;
        let n = shape.checked_elements()? as i64;
        self.build(shape.clone(), |out| {
            launch!(
                self,
                "broadcast_scalar",
                elementwise(n as usize),
                s.slice(),
                out,
                &n
            );
            Ok(())
        })
    }

    fn mul_scalar(&self, x: &CudaTensor, s: &CudaTensor) -> Result<CudaTensor> {
        check_scalar("mul_scalar", &s.shape)?;
        let n = x.shape.elements() as i64;
        self.build(x.shape.clone(), |out| {
            launch!(
                self,
                "mul_scalar",
                elementwise(n as usize),
                x.slice(),
                s.slice(),
                out,
                &n
            );
            Ok(())
        })
    }
}
