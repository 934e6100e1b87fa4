//! The `Fused` kernels the CUDA backend has (bias and ReLU in place on a convolution's output,
//! softmax and cross-entropy per row, dropout, optimiser steps), overriding the composites.
//! `Backend` checks their operands before calling them.

use cudarc::driver::PushKernelArg;
use vgg_tensor::fused::{Nchw, Rows};
use vgg_tensor::{
    argmax, AdamParams, Backend, ConvGeometry, Convolution, Device, Fused, Result, Shape,
};

use crate::backend::{elementwise, launch, per_row, CudaBackend, CudaTensor};
use crate::device_error;

impl Backend for CudaBackend {}

impl Fused for CudaBackend {
    fn fused_conv2d_bias_act(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        b: &CudaTensor,
        g: &ConvGeometry,
        relu: bool,
    ) -> Result<CudaTensor> {
        let mut y = self.conv2d(x, w, g.params())?;
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

    fn fused_add_channel_bias(
        &self,
        x: &CudaTensor,
        b: &CudaTensor,
        (_, c, h, w): Nchw,
    ) -> Result<CudaTensor> {
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

    fn fused_channel_bias_grad(&self, dy: &CudaTensor, (n, c, h, w): Nchw) -> Result<CudaTensor> {
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

    fn fused_add_row_bias(
        &self,
        x: &CudaTensor,
        b: &CudaTensor,
        (_, f): Rows,
    ) -> Result<CudaTensor> {
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

    fn fused_sum_rows(&self, x: &CudaTensor, (rows, f): Rows) -> Result<CudaTensor> {
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

    fn fused_relu(&self, x: &CudaTensor) -> Result<CudaTensor> {
        let n = x.shape.elements() as i64;
        self.build(x.shape.clone(), |out| {
            launch!(self, "relu", elementwise(n as usize), x.slice(), out, &n);
            Ok(())
        })
    }

    fn fused_relu_backward(&self, dy: &CudaTensor, y: &CudaTensor) -> Result<CudaTensor> {
        self.same_shape_op("relu_backward", dy, y)
    }

    fn fused_dropout(&self, x: &CudaTensor, keep_prob: f32, seed: u64) -> Result<CudaTensor> {
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

    fn fused_softmax_rows(&self, x: &CudaTensor, (rows, f): Rows) -> Result<CudaTensor> {
        let cols = f as i64;
        self.build(x.shape.clone(), |y| {
            if rows > 0 && f > 0 {
                launch!(self, "softmax_rows", per_row(rows)?, x.slice(), y, &cols);
            }
            Ok(())
        })
    }

    fn fused_softmax_rows_backward(
        &self,
        dy: &CudaTensor,
        y: &CudaTensor,
        (rows, f): Rows,
    ) -> Result<CudaTensor> {
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

    fn fused_argmax_rows(&self, x: &CudaTensor, (_, f): Rows) -> Result<Vec<usize>> {
        // Rows of logits are small: the host picks the maxima exactly as the CPU backend does.
        Ok(self.download(x)?.chunks(f).map(argmax).collect())
    }

    fn fused_l2_loss(&self, x: &CudaTensor) -> Result<CudaTensor> {
        self.sum_everything(x, true)
    }

    fn fused_cross_entropy(
        &self,
        logits: &CudaTensor,
        labels: &[usize],
        (n, f): Rows,
    ) -> Result<(CudaTensor, CudaTensor)> {
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

    fn fused_cross_entropy_backward(
        &self,
        probs: &CudaTensor,
        labels: &[usize],
        g: &CudaTensor,
        (n, f): Rows,
    ) -> Result<CudaTensor> {
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

    fn fused_add(&self, a: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        self.same_shape_op("add", a, b)
    }

    fn fused_sub(&self, a: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        self.same_shape_op("sub", a, b)
    }

    fn fused_mul(&self, a: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        self.same_shape_op("mul", a, b)
    }

    fn fused_scale(&self, x: &CudaTensor, alpha: f32) -> Result<CudaTensor> {
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

    fn fused_axpy(&self, y: &mut CudaTensor, alpha: f32, x: &CudaTensor) -> Result<()> {
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

    fn fused_sgd_step(
        &self,
        param: &mut CudaTensor,
        velocity: &mut CudaTensor,
        grad: &CudaTensor,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    ) -> Result<()> {
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

    fn fused_adam_step(
        &self,
        param: &mut CudaTensor,
        m: &mut CudaTensor,
        v: &mut CudaTensor,
        grad: &CudaTensor,
        hp: AdamParams,
        (correction1, correction2): (f32, f32),
    ) -> Result<()> {
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

    fn fused_sum_all(&self, x: &CudaTensor) -> Result<CudaTensor> {
        self.sum_everything(x, false)
    }

    fn fused_broadcast_scalar(&self, s: &CudaTensor, shape: &Shape) -> Result<CudaTensor> {
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

    fn fused_mul_scalar(&self, x: &CudaTensor, s: &CudaTensor) -> Result<CudaTensor> {
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
