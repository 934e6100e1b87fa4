//! A backend of plain loops that implements the primitives only and takes every composite op
//! from `Backend`'s provided methods: the obviously correct reference the fast backends are
//! tested against, and the template for a new backend. It is slow (one thread, no blocking);
//! use it on small tensors.

use std::sync::Arc;

use crate::checks::{
    broadcast_shapes, check_axes, check_concat, check_permutation, check_reshape, check_slice,
    check_upload, matmul_dims,
};
use crate::ops::{BinaryOp, ReduceOp, UnaryOp};
use crate::{
    Backend, Conv2dParams, ConvGeometry, ConvMethod, ConvPass, Convolution, Device, DeviceTensor,
    Elementwise, Layout, Matmul, Pool2dParams, PoolGeometry, Pooling, Reduce, Result, Shape,
    TensorError,
};

/// The plain-loops backend.
#[derive(Clone, Debug, Default)]
pub struct ReferenceBackend;

/// A tensor in host memory; clones share the values.
#[derive(Clone, Debug)]
pub struct RefTensor {
    shape: Shape,
    data: Arc<Vec<f32>>,
}

impl RefTensor {
    /// The values in row-major order.
    pub fn values(&self) -> &[f32] {
        &self.data
    }
}

impl DeviceTensor for RefTensor {
    fn shape(&self) -> &Shape {
        &self.shape
    }
}

fn tensor(shape: Shape, data: Vec<f32>) -> RefTensor {
    debug_assert_eq!(shape.elements(), data.len());
    RefTensor {
        shape,
        data: Arc::new(data),
    }
}

/// The multi-index of flat position `flat` in `dims`.
fn unravel(mut flat: usize, dims: &[usize]) -> Vec<usize> {
    let mut index = vec![0; dims.len()];
    for (i, &d) in dims.iter().enumerate().rev() {
        index[i] = flat % d.max(1);
        flat /= d.max(1);
    }
    index
}

/// The flat position of `index` in a tensor of `shape` broadcast to `index`'s rank: axes of
/// length 1 repeat, missing leading axes too.
fn broadcast_offset(index: &[usize], shape: &Shape) -> usize {
    let offset = index.len() - shape.rank();
    let strides = shape.strides();
    shape
        .dims()
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            if d == 1 {
                0
            } else {
                index[i + offset] * strides[i]
            }
        })
        .sum()
}

impl Device for ReferenceBackend {
    type Tensor = RefTensor;

    fn name(&self) -> String {
        "reference (plain loops)".into()
    }

    fn upload(&self, shape: &Shape, data: &[f32]) -> Result<RefTensor> {
        check_upload(shape, data.len())?;
        Ok(tensor(shape.clone(), data.to_vec()))
    }

    fn download(&self, t: &RefTensor) -> Result<Vec<f32>> {
        Ok(t.data.to_vec())
    }

    fn full(&self, shape: &Shape, value: f32) -> Result<RefTensor> {
        Ok(tensor(
            shape.clone(),
            vec![value; shape.checked_elements()?],
        ))
    }

    fn reshape(&self, t: &RefTensor, shape: &Shape) -> Result<RefTensor> {
        check_reshape(&t.shape, shape)?;
        Ok(RefTensor {
            shape: shape.clone(),
            data: t.data.clone(),
        })
    }
}

impl Elementwise for ReferenceBackend {
    fn unary(&self, op: UnaryOp, x: &RefTensor) -> Result<RefTensor> {
        Ok(tensor(
            x.shape.clone(),
            x.data.iter().map(|&v| op.apply(v)).collect(),
        ))
    }

    fn binary(&self, op: BinaryOp, a: &RefTensor, b: &RefTensor) -> Result<RefTensor> {
        let shape = broadcast_shapes(op.name(), &a.shape, &b.shape)?;
        let data = (0..shape.checked_elements()?)
            .map(|i| {
                let index = unravel(i, shape.dims());
                op.apply(
                    a.data[broadcast_offset(&index, &a.shape)],
                    b.data[broadcast_offset(&index, &b.shape)],
                )
            })
            .collect();
        Ok(tensor(shape, data))
    }
}

impl Reduce for ReferenceBackend {
    fn reduce(&self, op: ReduceOp, x: &RefTensor, axes: &[usize]) -> Result<RefTensor> {
        let out = check_axes(op.name(), &x.shape, axes)?;
        let mut groups: Vec<Vec<f32>> = vec![Vec::new(); out.elements()];
        for (i, &v) in x.data.iter().enumerate() {
            // An input element belongs to the output whose index is its own with the reduced
            // axes at 0: exactly what the broadcast offset computes.
            groups[broadcast_offset(&unravel(i, x.shape.dims()), &out)].push(v);
        }
        Ok(tensor(
            out,
            groups.into_iter().map(|g| op.apply(g)).collect(),
        ))
    }
}

impl Layout for ReferenceBackend {
    fn permute(&self, x: &RefTensor, perm: &[usize]) -> Result<RefTensor> {
        let out = check_permutation("permute", &x.shape, perm)?;
        let strides = x.shape.strides();
        let data = (0..out.elements())
            .map(|i| {
                let index = unravel(i, out.dims());
                let from: usize = index.iter().zip(perm).map(|(&v, &p)| v * strides[p]).sum();
                x.data[from]
            })
            .collect();
        Ok(tensor(out, data))
    }

    fn slice(&self, x: &RefTensor, axis: usize, start: usize, len: usize) -> Result<RefTensor> {
        let out = check_slice("slice", &x.shape, axis, start, len)?;
        let strides = x.shape.strides();
        let data = (0..out.elements())
            .map(|i| {
                let mut index = unravel(i, out.dims());
                index[axis] += start;
                x.data[index
                    .iter()
                    .zip(&strides)
                    .map(|(v, s)| v * s)
                    .sum::<usize>()]
            })
            .collect();
        Ok(tensor(out, data))
    }

    fn concat(&self, xs: &[&RefTensor], axis: usize) -> Result<RefTensor> {
        let shapes: Vec<&Shape> = xs.iter().map(|x| &x.shape).collect();
        let out = check_concat("concat", &shapes, axis)?;
        let data = (0..out.elements())
            .map(|i| {
                let mut index = unravel(i, out.dims());
                let mut part = 0;
                while index[axis] >= xs[part].shape.dims()[axis] {
                    index[axis] -= xs[part].shape.dims()[axis];
                    part += 1;
                }
                let strides = xs[part].shape.strides();
                xs[part].data[index
                    .iter()
                    .zip(&strides)
                    .map(|(v, s)| v * s)
                    .sum::<usize>()]
            })
            .collect();
        Ok(tensor(out, data))
    }
}

impl Matmul for ReferenceBackend {
    fn matmul(&self, a: &RefTensor, b: &RefTensor, ta: bool, tb: bool) -> Result<RefTensor> {
        let (m, n, k) = matmul_dims(&a.shape, &b.shape, ta, tb)?;
        let (_, ac) = a.shape.matrix("matmul")?;
        let (_, bc) = b.shape.matrix("matmul")?;
        let at = |i: usize, p: usize| {
            if ta {
                a.data[p * ac + i]
            } else {
                a.data[i * ac + p]
            }
        };
        let bt = |p: usize, j: usize| {
            if tb {
                b.data[j * bc + p]
            } else {
                b.data[p * bc + j]
            }
        };
        let mut c = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| at(i, p) as f64 * bt(p, j) as f64)
                    .sum::<f64>() as f32;
            }
        }
        Ok(tensor(Shape::from([m, n]), c))
    }
}

/// The input position a kernel tap reads, or None in the padding.
fn tap(out: usize, k: usize, g: &ConvGeometry, len: usize) -> Option<usize> {
    (out * g.stride + k)
        .checked_sub(g.padding)
        .filter(|&i| i < len)
}

/// Every (output, input, weight) flat index triple a convolution multiplies, outputs in order
/// and each output's taps consecutive (over input channel, kernel row, kernel column): the one
/// loop nest the forward pass and both gradients share.
fn conv_taps(g: &ConvGeometry, mut visit: impl FnMut(usize, usize, usize)) {
    for n in 0..g.batch {
        for k in 0..g.out_channels {
            for oh in 0..g.out_h {
                for ow in 0..g.out_w {
                    let y = ((n * g.out_channels + k) * g.out_h + oh) * g.out_w + ow;
                    for c in 0..g.in_channels {
                        for ky in 0..g.kernel_h {
                            let Some(ih) = tap(oh, ky, g, g.in_h) else {
                                continue;
                            };
                            for kx in 0..g.kernel_w {
                                let Some(iw) = tap(ow, kx, g, g.in_w) else {
                                    continue;
                                };
                                let x = ((n * g.in_channels + c) * g.in_h + ih) * g.in_w + iw;
                                let w =
                                    ((k * g.in_channels + c) * g.kernel_h + ky) * g.kernel_w + kx;
                                visit(y, x, w);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// f64 sums rounded to f32.
fn rounded(shape: Shape, sums: Vec<f64>) -> RefTensor {
    tensor(shape, sums.into_iter().map(|v| v as f32).collect())
}

impl Convolution for ReferenceBackend {
    fn conv2d(&self, x: &RefTensor, w: &RefTensor, p: Conv2dParams) -> Result<RefTensor> {
        let g = ConvGeometry::new(&x.shape, &w.shape, p)?;
        let mut y = vec![0.0f64; g.output_shape().elements()];
        conv_taps(&g, |yi, xi, wi| {
            y[yi] += x.data[xi] as f64 * w.data[wi] as f64
        });
        Ok(rounded(g.output_shape(), y))
    }

    fn conv2d_backward_input(
        &self,
        dy: &RefTensor,
        w: &RefTensor,
        input_shape: &Shape,
        p: Conv2dParams,
    ) -> Result<RefTensor> {
        let g = ConvGeometry::new(input_shape, &w.shape, p)?;
        g.check_output("conv2d_backward_input", &dy.shape)?;
        let mut dx = vec![0.0f64; input_shape.elements()];
        conv_taps(&g, |yi, xi, wi| {
            dx[xi] += dy.data[yi] as f64 * w.data[wi] as f64
        });
        Ok(rounded(input_shape.clone(), dx))
    }

    fn conv2d_backward_weight(
        &self,
        x: &RefTensor,
        dy: &RefTensor,
        weight_shape: &Shape,
        p: Conv2dParams,
    ) -> Result<RefTensor> {
        let g = ConvGeometry::new(&x.shape, weight_shape, p)?;
        g.check_output("conv2d_backward_weight", &dy.shape)?;
        let mut dw = vec![0.0f64; weight_shape.elements()];
        conv_taps(&g, |yi, xi, wi| {
            dw[wi] += dy.data[yi] as f64 * x.data[xi] as f64
        });
        Ok(rounded(weight_shape.clone(), dw))
    }

    fn conv_method(&self, _g: &ConvGeometry, _pass: ConvPass) -> ConvMethod {
        ConvMethod::Direct
    }
}

/// Each output's window: (plane, flat input positions within the plane) in row-major order.
fn windows(g: &PoolGeometry) -> impl Iterator<Item = (usize, Vec<usize>)> + '_ {
    (0..g.batch * g.channels * g.out_h * g.out_w).map(move |i| {
        let (plane, rest) = (i / (g.out_h * g.out_w), i % (g.out_h * g.out_w));
        let (oh, ow) = (rest / g.out_w, rest % g.out_w);
        let taps = (0..g.kernel)
            .flat_map(|ky| {
                (0..g.kernel).map(move |kx| (oh * g.stride + ky) * g.in_w + ow * g.stride + kx)
            })
            .collect();
        (plane, taps)
    })
}

impl Pooling for ReferenceBackend {
    /// Each output's maximum as a flat index into the input.
    type PoolIndices = Arc<Vec<usize>>;

    fn max_pool2d(&self, x: &RefTensor, p: Pool2dParams) -> Result<(RefTensor, Arc<Vec<usize>>)> {
        let g = PoolGeometry::new(&x.shape, p)?;
        let plane = g.in_h * g.in_w;
        let (mut y, mut arg) = (Vec::new(), Vec::new());
        for (pl, taps) in windows(&g) {
            let mut best = pl * plane + taps[0];
            for &t in &taps[1..] {
                let (v, b) = (x.data[pl * plane + t], x.data[best]);
                if v > b || (v.is_nan() && !b.is_nan()) {
                    best = pl * plane + t;
                }
            }
            y.push(x.data[best]);
            arg.push(best);
        }
        Ok((tensor(g.output_shape(), y), Arc::new(arg)))
    }

    fn max_pool2d_backward(
        &self,
        dy: &RefTensor,
        indices: &Arc<Vec<usize>>,
        input_shape: &Shape,
    ) -> Result<RefTensor> {
        if dy.shape.elements() != indices.len() {
            return Err(TensorError::InvalidArgument {
                op: "max_pool2d_backward",
                message: format!(
                    "{} gradients for {} pooled values",
                    dy.shape.elements(),
                    indices.len()
                ),
            });
        }
        let mut dx = vec![0.0f32; input_shape.checked_elements()?];
        for (&d, &at) in dy.data.iter().zip(indices.iter()) {
            *dx.get_mut(at).ok_or_else(|| TensorError::InvalidArgument {
                op: "max_pool2d_backward",
                message: format!("indices do not belong to input {input_shape}"),
            })? += d;
        }
        Ok(tensor(input_shape.clone(), dx))
    }

    fn avg_pool2d(&self, x: &RefTensor, p: Pool2dParams) -> Result<RefTensor> {
        let g = PoolGeometry::for_op("avg_pool2d", &x.shape, p)?;
        let plane = g.in_h * g.in_w;
        let y = windows(&g)
            .map(|(pl, taps)| {
                let sum: f64 = taps.iter().map(|&t| x.data[pl * plane + t] as f64).sum();
                (sum / taps.len() as f64) as f32
            })
            .collect();
        Ok(tensor(g.output_shape(), y))
    }

    fn avg_pool2d_backward(
        &self,
        dy: &RefTensor,
        input_shape: &Shape,
        p: Pool2dParams,
    ) -> Result<RefTensor> {
        let g = PoolGeometry::for_op("avg_pool2d_backward", input_shape, p)?;
        crate::same_shape("avg_pool2d_backward", &dy.shape, &g.output_shape())?;
        let plane = g.in_h * g.in_w;
        let mut dx = vec![0.0f32; input_shape.elements()];
        for ((pl, taps), &d) in windows(&g).zip(dy.data.iter()) {
            let share = d / taps.len() as f32;
            for t in taps {
                dx[pl * plane + t] += share;
            }
        }
        Ok(tensor(input_shape.clone(), dx))
    }
}

/// Every composite op comes from the trait's provided methods.
impl crate::Fused for ReferenceBackend {}

impl Backend for ReferenceBackend {}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(dims: &[usize], v: &[f32]) -> RefTensor {
        ReferenceBackend.upload(&Shape::from(dims), v).unwrap()
    }

    #[test]
    fn broadcasting_binary_ops() {
        let b = ReferenceBackend;
        let a = t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let row = t(&[3], &[10.0, 20.0, 30.0]);
        let col = t(&[2, 1], &[100.0, 200.0]);
        assert_eq!(
            b.add(&a, &row).unwrap().values(),
            [11.0, 22.0, 33.0, 14.0, 25.0, 36.0]
        );
        assert_eq!(
            b.binary(BinaryOp::Sub, &col, &a).unwrap().values(),
            [99.0, 98.0, 97.0, 196.0, 195.0, 194.0]
        );
        let outer = b
            .mul(&t(&[3, 1], &[1.0, 2.0, 3.0]), &t(&[1, 2], &[1.0, 10.0]))
            .unwrap();
        assert_eq!(outer.shape().dims(), [3, 2]);
        assert_eq!(outer.values(), [1.0, 10.0, 2.0, 20.0, 3.0, 30.0]);
        assert!(b.add(&a, &t(&[2], &[1.0, 2.0])).is_err());
    }

    #[test]
    fn reductions_keep_their_axes() {
        let b = ReferenceBackend;
        let x = t(&[2, 3], &[1.0, 5.0, 3.0, 4.0, 2.0, 6.0]);
        let rows = b.reduce(ReduceOp::Sum, &x, &[1]).unwrap();
        assert_eq!(
            (rows.shape().dims(), rows.values()),
            (&[2, 1][..], &[9.0, 12.0][..])
        );
        let cols = b.reduce(ReduceOp::Max, &x, &[0]).unwrap();
        assert_eq!(cols.values(), [4.0, 5.0, 6.0]);
        assert_eq!(
            b.reduce(ReduceOp::Min, &x, &[0, 1]).unwrap().values(),
            [1.0]
        );
        assert_eq!(
            b.reduce(ReduceOp::Sum, &x, &[]).unwrap().values(),
            x.values()
        );
    }

    #[test]
    fn permutes_slices_and_joins() {
        let b = ReferenceBackend;
        let x = t(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let xt = b.permute(&x, &[1, 0]).unwrap();
        assert_eq!(xt.values(), [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let s = b.slice(&x, 1, 1, 2).unwrap();
        assert_eq!(s.values(), [2.0, 3.0, 5.0, 6.0]);
        let j = b.concat(&[&x, &s], 1).unwrap();
        assert_eq!(j.shape().dims(), [2, 5]);
        assert_eq!(
            j.values(),
            [1.0, 2.0, 3.0, 2.0, 3.0, 4.0, 5.0, 6.0, 5.0, 6.0]
        );
        let rows = b.concat(&[&x, &x], 0).unwrap();
        assert_eq!(rows.values()[6..], *x.values());
    }

    #[test]
    fn convolution_by_hand() {
        let b = ReferenceBackend;
        // A 3x3 input, a 2x2 kernel of ones, stride 1, no padding: sums of 2x2 windows.
        let x = t(
            &[1, 1, 3, 3],
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        );
        let w = t(&[1, 1, 2, 2], &[1.0; 4]);
        let y = b.conv2d(&x, &w, Conv2dParams::default()).unwrap();
        assert_eq!(y.values(), [12.0, 16.0, 24.0, 28.0]);
        // Padding 1, stride 2: the corners see one, two or four inputs.
        let p = Conv2dParams {
            stride: 2,
            padding: 1,
        };
        let y = b.conv2d(&x, &w, p).unwrap();
        assert_eq!(y.values(), [1.0, 5.0, 11.0, 28.0]);
        // The input gradient of ones is how many windows read each input.
        let ones = b.full(y.shape(), 1.0).unwrap();
        let dx = b.conv2d_backward_input(&ones, &w, x.shape(), p).unwrap();
        assert_eq!(dx.values(), [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn pooling_by_hand() {
        let b = ReferenceBackend;
        let x = t(&[1, 1, 2, 4], &[1.0, 7.0, 3.0, 2.0, 5.0, 6.0, 4.0, 9.0]);
        let p = Pool2dParams {
            kernel: 2,
            stride: 2,
        };
        let (y, arg) = b.max_pool2d(&x, p).unwrap();
        assert_eq!(y.values(), [7.0, 9.0]);
        let dx = b
            .max_pool2d_backward(&t(&[1, 1, 1, 2], &[1.0, 2.0]), &arg, x.shape())
            .unwrap();
        assert_eq!(dx.values(), [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]);
        let avg = b.avg_pool2d(&x, p).unwrap();
        assert_eq!(avg.values(), [4.75, 4.5]);
        let dx = b
            .avg_pool2d_backward(&t(&[1, 1, 1, 2], &[4.0, 8.0]), x.shape(), p)
            .unwrap();
        assert_eq!(dx.values(), [1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0]);
    }

    #[test]
    fn composites_from_the_primitives() {
        let b = ReferenceBackend;
        let logits = t(&[2, 3], &[1.0, 2.0, 3.0, 1.0, 1.0, 1.0]);
        let p = b.download(&b.softmax_rows(&logits).unwrap()).unwrap();
        assert!((p[3] - 1.0 / 3.0).abs() < 1e-6);
        assert!((p[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let (loss, _) = b.cross_entropy(&logits, &[2, 0]).unwrap();
        let want = ((-(p[2] as f64).ln() - (p[3] as f64).ln()) / 2.0) as f32;
        assert!((b.scalar_value(&loss).unwrap() - want).abs() < 1e-6);
        assert_eq!(b.argmax_rows(&logits).unwrap(), [2, 0]);
        assert_eq!(b.scalar_value(&b.l2_loss(&logits).unwrap()).unwrap(), 8.5);
        let bias = t(&[3], &[1.0, 0.0, -1.0]);
        assert_eq!(
            b.add_row_bias(&logits, &bias).unwrap().values(),
            [2.0, 2.0, 2.0, 2.0, 1.0, 0.0]
        );
        assert_eq!(b.sum_rows(&logits).unwrap().values(), [2.0, 3.0, 4.0]);
        let summed = b.sum_to_shape(&logits, &Shape::from([1, 3])).unwrap();
        assert_eq!(summed.values(), [2.0, 3.0, 4.0]);
    }
}
