//! `Fused`: the kernels this backend computes in one pass (convolution with bias and ReLU and
//! their backward, softmax, losses, dropout, optimiser steps) instead of the composites. `Backend`
//! checks their operands before calling them.

use std::sync::Arc;

use rayon::prelude::*;
use vgg_tensor::fused::{Nchw, Rows};
use vgg_tensor::{argmax, AdamParams, Backend, ConvGeometry, Device, Fused, Result, Shape};

use super::kernels::*;
use super::{CpuBackend, CpuTensor};
use crate::conv;
use crate::CHUNK;

impl Backend for CpuBackend {}

impl Fused for CpuBackend {
    fn fused_conv2d_bias_act(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        b: &CpuTensor,
        g: &ConvGeometry,
        relu: bool,
    ) -> Result<CpuTensor> {
        let g = *g;
        Ok(self.build(g.output_shape(), |y| {
            let weights = conv::Weights::Kept(&w.buf);
            conv::forward_with(
                x.as_slice(),
                weights,
                Some(b.as_slice()),
                relu,
                &g,
                &self.tuning,
                vgg_tensor::ConvPass::Forward,
                y,
            )
        }))
    }

    fn fused_add_channel_bias(
        &self,
        x: &CpuTensor,
        b: &CpuTensor,
        (_, c, h, w): Nchw,
    ) -> Result<CpuTensor> {
        let plane = (h * w).max(1);
        let bias = b.as_slice();
        Ok(self.build(x.shape.clone(), |y| {
            y.par_chunks_mut(plane)
                .zip(x.as_slice().par_chunks(plane))
                .enumerate()
                .for_each(|(i, (y, x))| {
                    let b = bias[i % c];
                    y.iter_mut().zip(x).for_each(|(y, &x)| *y = x + b);
                })
        }))
    }

    fn fused_channel_affine(
        &self,
        x: &CpuTensor,
        scale: &CpuTensor,
        shift: &CpuTensor,
        (_, c, h, w): Nchw,
    ) -> Result<CpuTensor> {
        let plane = (h * w).max(1);
        let (scale, shift) = (scale.as_slice(), shift.as_slice());
        Ok(self.build(x.shape.clone(), |y| {
            y.par_chunks_mut(plane)
                .zip(x.as_slice().par_chunks(plane))
                .enumerate()
                .for_each(|(i, (y, x))| {
                    let (a, b) = (scale[i % c], shift[i % c]);
                    y.iter_mut().zip(x).for_each(|(y, &x)| *y = x * a + b);
                })
        }))
    }

    fn fused_channel_bias_grad(&self, dy: &CpuTensor, (n, c, h, w): Nchw) -> Result<CpuTensor> {
        let plane = h * w;
        let data = dy.as_slice();
        let plane_sums: Vec<f64> = if plane == 0 {
            vec![0.0; n * c]
        } else {
            data.par_chunks(plane).map(plane_sum).collect()
        };
        Ok(self.build(Shape::from([c]), |db| per_channel(&plane_sums, n, c, db)))
    }

    fn fused_add_row_bias(&self, x: &CpuTensor, b: &CpuTensor, (_, f): Rows) -> Result<CpuTensor> {
        let bias = b.as_slice();
        Ok(self.build(x.shape.clone(), |y| {
            if f > 0 {
                y.par_chunks_mut(f)
                    .zip(x.as_slice().par_chunks(f))
                    .for_each(|(y, x)| {
                        for ((y, &x), &b) in y.iter_mut().zip(x).zip(bias) {
                            *y = x + b;
                        }
                    })
            }
        }))
    }

    fn fused_sum_rows(&self, x: &CpuTensor, (n, f): Rows) -> Result<CpuTensor> {
        let data = x.as_slice();
        Ok(self.build(Shape::from([f]), |sums| {
            sums.par_iter_mut()
                .enumerate()
                .for_each(|(j, s)| *s = (0..n).map(|i| data[i * f + j] as f64).sum::<f64>() as f32)
        }))
    }

    fn fused_relu(&self, x: &CpuTensor) -> Result<CpuTensor> {
        Ok(self.map(x, vgg_tensor::relu))
    }

    fn fused_bias_act_backward(
        &self,
        dy: &CpuTensor,
        y: Option<&CpuTensor>,
        dims: Nchw,
    ) -> Result<(CpuTensor, CpuTensor)> {
        let Some(y) = y else {
            // No ReLU: dz is dy itself, and one pass sums it.
            return Ok((dy.clone(), self.fused_channel_bias_grad(dy, dims)?));
        };
        self.bias_relu_backward(dy, y.clone(), false, dims)
    }

    fn fused_bias_relu_backward_consuming(
        &self,
        dy: &CpuTensor,
        mut y: CpuTensor,
        dims: Nchw,
    ) -> Result<(CpuTensor, CpuTensor)> {
        let unshared = Arc::get_mut(&mut y.buf).is_some();
        self.bias_relu_backward(dy, y, unshared, dims)
    }

    fn fused_relu_backward(&self, dy: &CpuTensor, y: &CpuTensor) -> Result<CpuTensor> {
        Ok(self.zip_map(dy, y, |d, y| if y > 0.0 { d } else { 0.0 }))
    }

    fn fused_dropout(&self, x: &CpuTensor, keep_prob: f32, seed: u64) -> Result<CpuTensor> {
        Ok(self.build(x.shape.clone(), |out| {
            dropout_apply(x.as_slice(), keep_prob, seed, out)
        }))
    }

    fn fused_softmax_rows(&self, x: &CpuTensor, (_, f): Rows) -> Result<CpuTensor> {
        Ok(self.build(x.shape.clone(), |y| {
            y.copy_from_slice(x.as_slice());
            if f > 0 {
                y.par_chunks_mut(f).for_each(softmax_in_place);
            }
        }))
    }

    fn fused_softmax_rows_backward(
        &self,
        dy: &CpuTensor,
        y: &CpuTensor,
        (_, f): Rows,
    ) -> Result<CpuTensor> {
        Ok(self.build(y.shape.clone(), |dx| {
            if f > 0 {
                dx.par_chunks_mut(f)
                    .zip(dy.as_slice().par_chunks(f).zip(y.as_slice().par_chunks(f)))
                    .for_each(|(dx, (dy, y))| {
                        let dot: f64 = dy.iter().zip(y).map(|(&d, &y)| d as f64 * y as f64).sum();
                        for ((dx, &d), &y) in dx.iter_mut().zip(dy).zip(y) {
                            *dx = y * (d - dot as f32);
                        }
                    })
            }
        }))
    }

    fn fused_argmax_rows(&self, x: &CpuTensor, (_, f): Rows) -> Result<Vec<usize>> {
        Ok(x.as_slice().chunks(f).map(argmax).collect())
    }

    fn fused_l2_loss(&self, x: &CpuTensor) -> Result<CpuTensor> {
        let s = self.run(|| sum_f64(x.as_slice(), |v| (v as f64) * (v as f64)));
        Ok(self.adopt(Shape::scalar(), vec![(s / 2.0) as f32]))
    }

    fn fused_cross_entropy(
        &self,
        logits: &CpuTensor,
        labels: &[usize],
        (n, f): Rows,
    ) -> Result<(CpuTensor, CpuTensor)> {
        let mut losses = Vec::new();
        // Per row: log(sum exp(x - max)) + max - x[label], computed before the softmax overwrites x.
        let probs = self.build(logits.shape.clone(), |probs| {
            probs.copy_from_slice(logits.as_slice());
            losses = probs
                .par_chunks_mut(f)
                .zip(labels.par_iter())
                .map(|(row, &label)| {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let log_sum = row
                        .iter()
                        .map(|&v| ((v - max) as f64).exp())
                        .sum::<f64>()
                        .ln();
                    let loss = log_sum + max as f64 - row[label] as f64;
                    softmax_in_place(row);
                    loss
                })
                .collect::<Vec<f64>>();
        });
        let mean = losses.iter().sum::<f64>() / n as f64;
        Ok((self.adopt(Shape::scalar(), vec![mean as f32]), probs))
    }

    fn fused_cross_entropy_backward(
        &self,
        probs: &CpuTensor,
        labels: &[usize],
        g: &CpuTensor,
        (n, f): Rows,
    ) -> Result<CpuTensor> {
        let scale = g.as_slice()[0] / n as f32;
        Ok(self.build(probs.shape.clone(), |d| {
            d.copy_from_slice(probs.as_slice());
            for (row, &label) in d.chunks_mut(f).zip(labels) {
                row[label] -= 1.0;
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }))
    }

    fn fused_add(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        Ok(self.zip_map(a, b, |a, b| a + b))
    }

    fn fused_sub(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        Ok(self.zip_map(a, b, |a, b| a - b))
    }

    fn fused_mul(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        Ok(self.zip_map(a, b, |a, b| a * b))
    }

    fn fused_scale(&self, x: &CpuTensor, alpha: f32) -> Result<CpuTensor> {
        Ok(self.map(x, |v| v * alpha))
    }

    fn fused_axpy(&self, y: &mut CpuTensor, alpha: f32, x: &CpuTensor) -> Result<()> {
        let workers = self.workers.clone();
        let ys = y.as_mut_slice();
        workers.install(|| {
            ys.par_chunks_mut(CHUNK)
                .zip(x.as_slice().par_chunks(CHUNK))
                .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, &x)| *y += alpha * x))
        });
        Ok(())
    }

    fn fused_sgd_step(
        &self,
        param: &mut CpuTensor,
        velocity: &mut CpuTensor,
        grad: &CpuTensor,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    ) -> Result<()> {
        let workers = self.workers.clone();
        let (p, v) = (param.as_mut_slice(), velocity.as_mut_slice());
        workers.install(|| {
            p.par_chunks_mut(CHUNK)
                .zip(v.par_chunks_mut(CHUNK))
                .zip(grad.as_slice().par_chunks(CHUNK))
                .for_each(|((p, v), g)| {
                    for ((p, v), &g) in p.iter_mut().zip(v).zip(g) {
                        *v = momentum * *v + g + weight_decay * *p;
                        *p -= lr * *v;
                    }
                })
        });
        Ok(())
    }

    fn fused_adam_step(
        &self,
        param: &mut CpuTensor,
        m: &mut CpuTensor,
        v: &mut CpuTensor,
        grad: &CpuTensor,
        hp: AdamParams,
        (correction1, correction2): (f32, f32),
    ) -> Result<()> {
        let workers = self.workers.clone();
        let (p, m, v) = (param.as_mut_slice(), m.as_mut_slice(), v.as_mut_slice());
        workers.install(|| {
            p.par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
                .zip(grad.as_slice().par_chunks(CHUNK))
                .for_each(|((p, (m, v)), g)| {
                    for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                        let g = g + hp.weight_decay * *p;
                        *m = hp.beta1 * *m + (1.0 - hp.beta1) * g;
                        *v = hp.beta2 * *v + (1.0 - hp.beta2) * g * g;
                        let m_hat = *m / correction1;
                        let v_hat = *v / correction2;
                        *p -= hp.lr * m_hat / (v_hat.sqrt() + hp.eps);
                    }
                })
        });
        Ok(())
    }

    fn fused_sum_all(&self, x: &CpuTensor) -> Result<CpuTensor> {
        let s = self.run(|| sum_f64(x.as_slice(), |v| v as f64));
        Ok(self.adopt(Shape::scalar(), vec![s as f32]))
    }

    fn fused_broadcast_scalar(&self, s: &CpuTensor, shape: &Shape) -> Result<CpuTensor> {
        self.full(shape, s.as_slice()[0])
    }

    fn fused_mul_scalar(&self, x: &CpuTensor, s: &CpuTensor) -> Result<CpuTensor> {
        self.fused_scale(x, s.as_slice()[0])
    }
}

/// Numerically stable softmax of one row, in place.
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|v| *v *= inv);
}
