//! Tensor shapes and the arithmetic of convolution and pooling windows.

use std::fmt;

use crate::{Result, TensorError};

/// Dimensions, outermost first (NCHW for images, [rows, cols] for matrices, [] for a scalar).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    /// A shape of `dims`, outermost first.
    pub fn new(dims: impl Into<Vec<usize>>) -> Shape {
        Shape(dims.into())
    }

    /// The shape of a scalar (no dimensions, one element).
    pub fn scalar() -> Shape {
        Shape(Vec::new())
    }

    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Row-major strides, in elements: the last axis has stride 1.
    pub fn strides(&self) -> Vec<usize> {
        let mut strides = vec![1; self.0.len()];
        for i in (0..self.0.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * self.0[i + 1];
        }
        strides
    }

    /// Number of elements; 1 for a scalar.
    pub fn elements(&self) -> usize {
        self.0.iter().product()
    }

    /// Number of elements, refusing shapes whose size overflows.
    pub fn checked_elements(&self) -> Result<usize> {
        self.0
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| TensorError::TooLarge {
                shape: self.clone(),
            })
    }

    /// (N, C, H, W) of a rank-4 shape.
    pub fn nchw(&self, op: &'static str) -> Result<(usize, usize, usize, usize)> {
        match self.0[..] {
            [n, c, h, w] => Ok((n, c, h, w)),
            _ => Err(TensorError::Rank {
                op,
                expected: 4,
                shape: self.clone(),
            }),
        }
    }

    /// (rows, cols) of a rank-2 shape.
    pub fn matrix(&self, op: &'static str) -> Result<(usize, usize)> {
        match self.0[..] {
            [r, c] => Ok((r, c)),
            _ => Err(TensorError::Rank {
                op,
                expected: 2,
                shape: self.clone(),
            }),
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(dims: [usize; N]) -> Shape {
        Shape(dims.to_vec())
    }
}

impl From<&[usize]> for Shape {
    fn from(dims: &[usize]) -> Shape {
        Shape(dims.to_vec())
    }
}

impl From<Vec<usize>> for Shape {
    fn from(dims: Vec<usize>) -> Shape {
        Shape(dims)
    }
}

/// Stride and zero padding of a 2-D convolution, the same along height and width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    /// Step between windows.
    pub stride: usize,
    /// Zeros added on each side.
    pub padding: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams {
            stride: 1,
            padding: 0,
        }
    }
}

/// The window of a 2-D max-pool (no padding; sizes are floored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pool2dParams {
    /// Side of the square window.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
}

/// Output length of a sliding window, or None when the window does not fit.
pub fn window_len(len: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    let padded = padding.checked_mul(2)?.checked_add(len)?;
    (stride > 0 && kernel > 0 && padded >= kernel).then(|| (padded - kernel) / stride + 1)
}

/// The validated geometry of one convolution: everything a kernel needs to index safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvGeometry {
    /// Images.
    pub batch: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Output channels (filters).
    pub out_channels: usize,
    /// Filter height.
    pub kernel_h: usize,
    /// Filter width.
    pub kernel_w: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// Step between windows.
    pub stride: usize,
    /// Zeros added on each side.
    pub padding: usize,
}

impl ConvGeometry {
    /// Checks an NCHW input against OIHW weights.
    pub fn new(input: &Shape, weight: &Shape, p: Conv2dParams) -> Result<ConvGeometry> {
        const OP: &str = "conv2d";
        let (batch, in_channels, in_h, in_w) = input.nchw(OP)?;
        let (out_channels, w_in, kernel_h, kernel_w) = weight.nchw(OP)?;
        if w_in != in_channels {
            return Err(TensorError::ShapeMismatch {
                op: OP,
                what: "input channels vs weight's second dimension",
                lhs: input.clone(),
                rhs: weight.clone(),
            });
        }
        if p.stride == 0 {
            return Err(TensorError::InvalidArgument {
                op: OP,
                message: "stride must be at least 1".into(),
            });
        }
        let (out_h, out_w) = match (
            window_len(in_h, kernel_h, p.stride, p.padding),
            window_len(in_w, kernel_w, p.stride, p.padding),
        ) {
            (Some(h), Some(w)) if h > 0 && w > 0 => (h, w),
            _ => {
                return Err(TensorError::ShapeMismatch {
                    op: OP,
                    what: "kernel larger than the padded input",
                    lhs: input.clone(),
                    rhs: weight.clone(),
                })
            }
        };
        if [batch, in_channels, out_channels, kernel_h, kernel_w].contains(&0) {
            return Err(TensorError::InvalidArgument {
                op: OP,
                message: format!("empty input {input} or weight {weight}"),
            });
        }
        Ok(ConvGeometry {
            batch,
            in_channels,
            in_h,
            in_w,
            out_channels,
            kernel_h,
            kernel_w,
            out_h,
            out_w,
            stride: p.stride,
            padding: p.padding,
        })
    }

    /// Stride and padding.
    pub fn params(&self) -> Conv2dParams {
        Conv2dParams {
            stride: self.stride,
            padding: self.padding,
        }
    }

    /// NCHW shape of the input.
    pub fn input_shape(&self) -> Shape {
        Shape::from([self.batch, self.in_channels, self.in_h, self.in_w])
    }

    /// OIHW shape of the weights.
    pub fn weight_shape(&self) -> Shape {
        Shape::from([
            self.out_channels,
            self.in_channels,
            self.kernel_h,
            self.kernel_w,
        ])
    }

    /// NCHW shape of the output.
    pub fn output_shape(&self) -> Shape {
        Shape::from([self.batch, self.out_channels, self.out_h, self.out_w])
    }

    /// Multiply-accumulates of the forward pass (each backward costs the same).
    pub fn macs(&self) -> u64 {
        (self.batch * self.out_channels * self.out_h * self.out_w) as u64
            * (self.in_channels * self.kernel_h * self.kernel_w) as u64
    }

    /// Checks that `grad` has this convolution's output shape.
    pub fn check_output(&self, op: &'static str, grad: &Shape) -> Result<()> {
        let expected = self.output_shape();
        if grad != &expected {
            return Err(TensorError::ShapeMismatch {
                op,
                what: "output gradient vs the convolution's output",
                lhs: grad.clone(),
                rhs: expected,
            });
        }
        Ok(())
    }

    /// Checks a bias for this convolution's output: [output channels].
    pub fn check_bias(&self, op: &'static str, weight: &Shape, bias: &Shape) -> Result<()> {
        if bias.dims() != [self.out_channels] {
            return Err(TensorError::ShapeMismatch {
                op,
                what: "bias must be [output channels]",
                lhs: weight.clone(),
                rhs: bias.clone(),
            });
        }
        Ok(())
    }
}

/// The validated geometry of one pooling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolGeometry {
    /// Images.
    pub batch: usize,
    /// Channels (the same in and out).
    pub channels: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// Side of the square window.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
}

impl PoolGeometry {
    /// A max-pool's geometry.
    pub fn new(input: &Shape, p: Pool2dParams) -> Result<PoolGeometry> {
        Self::for_op("max_pool2d", input, p)
    }

    /// The geometry of any pooling op, named `op` in errors.
    pub fn for_op(op: &'static str, input: &Shape, p: Pool2dParams) -> Result<PoolGeometry> {
        let (batch, channels, in_h, in_w) = input.nchw(op)?;
        if p.kernel == 0 || p.stride == 0 {
            return Err(TensorError::InvalidArgument {
                op,
                message: "kernel and stride must be at least 1".into(),
            });
        }
        match (
            window_len(in_h, p.kernel, p.stride, 0),
            window_len(in_w, p.kernel, p.stride, 0),
        ) {
            (Some(out_h), Some(out_w)) => Ok(PoolGeometry {
                batch,
                channels,
                in_h,
                in_w,
                out_h,
                out_w,
                kernel: p.kernel,
                stride: p.stride,
            }),
            _ => Err(TensorError::InvalidArgument {
                op,
                message: format!(
                    "a {}x{} window does not fit input {input}",
                    p.kernel, p.kernel
                ),
            }),
        }
    }

    /// NCHW shape of the input.
    pub fn input_shape(&self) -> Shape {
        Shape::from([self.batch, self.channels, self.in_h, self.in_w])
    }

    /// NCHW shape of the output.
    pub fn output_shape(&self) -> Shape {
        Shape::from([self.batch, self.channels, self.out_h, self.out_w])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_a_list() {
        assert_eq!(Shape::from([2, 3, 4]).to_string(), "[2, 3, 4]");
        assert_eq!(Shape::scalar().to_string(), "[]");
        assert_eq!(Shape::scalar().elements(), 1);
    }

    #[test]
    fn conv_geometry_checks_channels_and_fit() {
        let p = Conv2dParams {
            stride: 2,
            padding: 1,
        };
        let g = ConvGeometry::new(&[1, 3, 7, 5].into(), &[4, 3, 3, 3].into(), p).unwrap();
        assert_eq!((g.out_h, g.out_w), (4, 3));
        let err = ConvGeometry::new(&[1, 2, 7, 5].into(), &[4, 3, 3, 3].into(), p).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("[1, 2, 7, 5]") && text.contains("[4, 3, 3, 3]"),
            "{text}"
        );
        assert!(ConvGeometry::new(
            &[1, 3, 2, 2].into(),
            &[4, 3, 5, 5].into(),
            Conv2dParams::default()
        )
        .is_err());
        assert!(ConvGeometry::new(&[1, 3, 2].into(), &[4, 3, 5, 5].into(), p).is_err());
    }

    #[test]
    fn strides_are_row_major() {
        assert_eq!(Shape::from([2, 3, 4]).strides(), [12, 4, 1]);
        assert_eq!(Shape::scalar().strides(), Vec::<usize>::new());
        assert_eq!(Shape::from([5]).strides(), [1]);
    }

    #[test]
    fn windows_and_pool_geometry() {
        assert_eq!(window_len(7, 3, 2, 1), Some(4));
        assert_eq!(window_len(2, 5, 1, 0), None);
        assert_eq!(window_len(5, 3, 0, 0), None);
        assert_eq!(window_len(usize::MAX, 3, 1, 1), None);
        let p = Pool2dParams {
            kernel: 2,
            stride: 2,
        };
        let g = PoolGeometry::new(&[1, 2, 5, 4].into(), p).unwrap();
        assert_eq!((g.out_h, g.out_w), (2, 2));
        let e = PoolGeometry::for_op("avg_pool2d", &[1, 2, 1, 4].into(), p).unwrap_err();
        assert!(e.to_string().starts_with("avg_pool2d:"), "{e}");
        assert!(PoolGeometry::new(&[2, 5, 4].into(), p).is_err());
    }

    #[test]
    fn ranks_are_checked_with_the_op_named() {
        let e = Shape::from([2, 3]).nchw("conv2d").unwrap_err().to_string();
        assert!(
            e.contains("conv2d") && e.contains("rank-4") && e.contains("[2, 3]"),
            "{e}"
        );
        assert_eq!(Shape::from([2, 3]).matrix("m").unwrap(), (2, 3));
        assert!(Shape::from([2]).matrix("m").is_err());
    }

    #[test]
    fn overflowing_shapes_are_refused() {
        assert!(Shape::from([usize::MAX, 2]).checked_elements().is_err());
    }
}
